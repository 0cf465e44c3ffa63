"""backend="auto": each plan run by the installed backend that runs it fastest, measured once per signature.

The Model keeps numpy arrays at its edge (what forward() takes and returns, whichever backend
runs); for each signature it plans the call once per installed backend, times each on arrays of
that signature (conversions in and out included, as every call pays them), and keeps the
fastest. The plan it runs records every candidate's time, or why it was left out.
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
BUDGET_S = 0.2  # timed runs per candidate stop after this long (and at least MIN_RUNS)
MIN_RUNS, MAX_RUNS = 3, 50

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


def seconds_per_run(executor: Executor, env: Env) -> float:
    """The fastest of a few runs after one to warm up (JAX compiles then): at least MIN_RUNS, then
    until BUDGET_S has passed."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # sample values may overflow
        warnings.simplefilter("ignore")
        executor.run(dict(env))
        best, start, runs = float("inf"), clock(), 0
        while runs < MIN_RUNS or (runs < MAX_RUNS and clock() - start < BUDGET_S):
            t0 = clock()
            executor.run(dict(env))
            best = min(best, clock() - t0)
            runs += 1
    return best


def choose(engines: Iterable[Backend], missing: list[tuple[str, str]], build: Build) -> tuple[Plan, Executor]:
    """The plan and executor of the backend that runs the call fastest, its plan's `auto` listing
    the backends fastest first, then those left out. One backend is taken without timing; one
    that refuses the program (an IndexgradError while planning or running it) is left out with
    its message; when every one does, the first message is the error."""
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
        env = sample_inputs(built[0][1])
        for name, plan, executor in built:
            try:
                timed.append((seconds_per_run(executor, env), name, plan, executor))
            except IndexgradError as e:
                errors.append(e)
                notes.append((name, None, e.message))
    if not timed:
        raise errors[0]
    timed.sort(key=lambda t: t[0] or 0.0)
    _, name, plan, executor = timed[0]
    plan = replace(plan, auto=tuple((n, s, "") for s, n, _, _ in timed) + tuple(notes))
    executor.plan = plan  # type: ignore[misc]
    return plan, executor


__all__ = ["Converted", "candidates", "choose", "sample_inputs", "seconds_per_run"]
