"""backend="auto": each plan run by the installed backend that runs it fastest, measured once per signature.

The Model keeps numpy arrays at its edge (what forward() takes and returns, whichever backend
runs); for each signature it plans the call once per installed backend, times each on arrays of
that signature (conversions in and out included, as every call pays them), and keeps the
fastest, unless the backend it prefers (numpy, or the one its last plan chose) is within MARGIN
of it: a loop that switches library between calls pays what one plan's timing does not show
(the other library's threads waking up on the same cores), and on a busy machine a few
milliseconds of timing can favour any of them. The plan it runs records every candidate's time,
or why it was left out.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np

from ..errors import IndexgradError
from ..plan import Plan
from . import Backend, Env, Executor, get_backend, known

clock = time.perf_counter  # tests give it a clock of their own
BUDGET_S = 0.2  # seconds of timed runs per candidate, in ROUNDS blocks
RUNS, ROUNDS = 3, 3  # runs a block makes at least, however long they take; blocks per candidate
MARGIN = 0.85  # the preferred backend is left only for one that takes at most this share of its time

Choice = tuple[str, float | None, str]  # a backend, its seconds per run (None: not timed), why left out
Build = Callable[[Backend], tuple[Plan, Executor]]


def candidates() -> tuple[list[Backend], list[tuple[str, str]]]:
    """The backends this installation can run (numpy first), and those it cannot, with why."""
    found, missing = [], []
    for name in known():
        try:
            found.append(get_backend(name))
        except IndexgradError as e:
            missing.append((name, e.message))
    return found, missing


class Converted:
    """A backend's executor behind numpy arrays: the inputs converted to its arrays, what it
    defines converted back (an input it passes through stays the array given)."""

    def __init__(self, engine: Backend, executor: Executor) -> None:
        self.engine, self.executor, self.plan = engine, executor, executor.plan

    def run(self, env: Env, check_finite: bool = False) -> Env:
        asarray, to_numpy = self.engine.asarray, self.engine.to_numpy
        given = {n: asarray(v) for n, v in env.items()}
        out = self.executor.run(dict(given), check_finite)
        return {n: env[n] if n in given and v is given[n] else to_numpy(v) for n, v in out.items()}


def sample_inputs(plan: Plan) -> Env:
    """Arrays of the plan's signature to time it on: floats in [0.5, 1.5) (logs and roots stay
    finite), integer labels 0 (in range of any axis that has an entry)."""
    rng = np.random.default_rng(0)
    env: Env = {}
    for name, shape, dtype in plan.inputs:
        d = np.dtype(dtype)
        env[name] = rng.uniform(0.5, 1.5, shape).astype(d) if d.kind == "f" else np.zeros(shape, d)
    return env


def seconds_per_run(executors: list[Executor], env: Env) -> list[float | IndexgradError]:
    """Each executor's fastest run, or the error it raised: one run each to warm up (JAX compiles
    then), then ROUNDS rounds in which each runs a block of calls back to back, in turn and in
    an order that rotates, so that a stretch in which the machine is busy slows them alike. A
    block lasts BUDGET_S / ROUNDS and RUNS runs at least: the first runs after another
    library's can find that library's threads still spinning on the cores (a loop running one
    library never does), and what the host takes away in a few milliseconds, a longer block
    finds back."""
    best: list[float | IndexgradError] = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # sample values may overflow
        warnings.simplefilter("ignore")
        for executor in executors:
            try:
                executor.run(dict(env))
                best.append(float("inf"))
            except IndexgradError as e:
                best.append(e)
        live = [k for k, b in enumerate(best) if isinstance(b, float)]
        for turn in range(ROUNDS if live else 0):
            for k in live[turn % len(live) :] + live[: turn % len(live)]:
                start, runs = clock(), 0
                while runs < RUNS or clock() - start < BUDGET_S / ROUNDS:
                    t0 = clock()
                    executors[k].run(dict(env))
                    best[k] = min(best[k], clock() - t0)  # type: ignore[type-var]
                    runs += 1
    return best


def choose(
    engines: Iterable[Backend], missing: list[tuple[str, str]], build: Build, prefer: str = "numpy"
) -> tuple[Plan, Executor]:
    """The plan and executor of the backend that runs the call fastest, or of `prefer` when it
    takes at most 1/MARGIN times as long; its plan's `auto` lists the one chosen, the others
    fastest first, then those left out. One backend is taken without timing; one that refuses
    the program (an IndexgradError while planning or running it) is left out with its message;
    when every one does, the first message is the error."""
    built: list[tuple[str, Plan, Executor]] = []
    notes: list[Choice] = [(n, None, why) for n, why in missing]
    errors: list[IndexgradError] = []
    for engine in engines:
        try:
            plan, executor = build(engine)
        except IndexgradError as e:
            errors.append(e)
            notes.append((engine.name, None, e.message))
            continue
        wrapped = executor if engine.name == "numpy" else Converted(engine, executor)
        built.append((engine.name, plan, wrapped))
    timed: list[tuple[float | None, str, Plan, Executor]] = []
    if len(built) == 1:
        timed = [(None, *built[0])]  # nothing to choose between
    elif built:
        seconds = seconds_per_run([executor for _, _, executor in built], sample_inputs(built[0][1]))
        for (name, plan, executor), t in zip(built, seconds):
            if isinstance(t, IndexgradError):
                errors.append(t)
                notes.append((name, None, t.message))
            else:
                timed.append((t, name, plan, executor))
    if not timed:
        raise errors[0]
    timed.sort(key=lambda t: t[0] or 0.0)
    kept = [t for t in timed if t[1] == prefer and (t[0] or 0.0) * MARGIN <= (timed[0][0] or 0.0)]
    timed = kept + [t for t in timed if t not in kept]
    _, name, plan, executor = timed[0]
    plan = replace(plan, auto=tuple((n, s, "") for s, n, _, _ in timed) + tuple(notes))
    executor.plan = plan  # type: ignore[misc]
    return plan, executor


__all__ = ["Converted", "candidates", "choose", "sample_inputs", "seconds_per_run"]
