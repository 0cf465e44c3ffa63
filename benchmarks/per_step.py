"""Where indexgrad's step spends its time: each Step of its forward and backward plans, timed in place.

    python benchmarks/per_step.py                        # mlp_small
    python benchmarks/per_step.py --only transformer --reps 100 --sort
    python benchmarks/per_step.py --only transformer --backend torch   # against PyTorch eager

The workload's plans come from `model.plan(arrays, mode=...)`, and run by the backend's executor
(numpy's; torch's with --backend torch) on the real arrays, its own loop, with a clock read as
each step's compute starts: a step's time runs from there to the start of the next one, so it
includes writing its result (`+=` included) and dropping what the step frees. Printed per step:
its statement, its call, median µs, share of the plan's total. Then the whole step as a user
calls it (value_and_grad(), which checks and binds the arrays around the executors)
against the hand-written numpy step (PyTorch eager's, with --backend torch), each timed back to
back in this process, so that what a ratio in run.py misses can be put on the steps that take
the time.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads as W  # noqa: E402

from indexgrad.plan import Plan  # noqa: E402

clock = time.perf_counter


def stamped(ex: Any, stamps: list[float]) -> None:
    """Make each of the executor's computes read the clock as it starts."""

    def wrap(compute: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def timed(env: Any) -> Any:
            stamps.append(clock())
            return compute(env)

        return timed

    ex.entries = [(wrap(compute), *rest) for compute, *rest in ex.entries]


def time_steps(plan: Plan, env: dict[str, Any], reps: int, engine: Any) -> tuple[list[float], dict[str, Any]]:
    """Median seconds of each step of the plan run on copies of env, and what the last run left."""
    ex = engine.executor(plan)
    stamps: list[float] = []
    stamped(ex, stamps)
    spent: list[list[float]] = [[] for _ in plan.steps]
    for k in range(reps + 2):  # two runs to warm up
        stamps.clear()
        got = ex.run(dict(env))
        stamps.append(clock())
        if k >= 2:
            for i in range(len(plan.steps)):
                spent[i].append(stamps[i + 1] - stamps[i])
    return [statistics.median(s) for s in spent], got


def block(step: Callable[[], Any], reps: int) -> float:
    """Median seconds of back-to-back calls, after three to warm up."""
    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        t0 = clock()
        step()
        times.append(clock() - t0)
    return statistics.median(times)


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def show(title: str, plan: Plan, medians: list[float], sort: bool) -> float:
    total = sum(medians)
    print(f"\n{title}: {len(plan.steps)} steps, {total * 1e6:.0f} µs in all")
    print(f"{'#':>3}  {'statement':<58} {'call':<52} {'µs':>8} {'share':>6}")
    rows = list(enumerate(zip(plan.steps, medians), 1))
    if sort:
        rows.sort(key=lambda r: -r[1][1])
    for k, (s, t) in rows:
        print(f"{k:3d}  {cut(s.text, 58):<58} {cut(s.describe(), 52):<52} {t * 1e6:8.1f} {t / total:6.1%}")
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="mlp_small", choices=W.MAIN_KEYS + W.OTHER_KEYS)
    ap.add_argument("--reps", type=int, default=50, help="timed runs of each plan (default 50)")
    ap.add_argument("--sort", action="store_true", help="list the steps slowest first")
    ap.add_argument("--tiny", action="store_true", help="the workload's tiny sizes (a test of this tool)")
    ap.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    args = ap.parse_args(argv)
    name, peer = ("indexgrad", "numpy") if args.backend == "numpy" else ("indexgrad-torch", "torch")
    w = W.build(args.only, {name, peer}, args.tiny)
    impl = w.impls[name]
    model, inputs, wrt = impl.model, dict(impl.inputs), impl.wrt
    vals = model.forward(**inputs)
    forward = model.plan(inputs, mode="forward")
    backward = model.plan(inputs, mode="backward", loss="loss", wrt=wrt)
    gc.collect()
    gc.freeze()
    engine = model.engine
    f_med, f_env = time_steps(forward, inputs, args.reps, engine)
    seeds = dict(backward.constants)
    seeded = {n: engine.asarray(np.full(s, seeds[n], d)) for n, s, d in backward.inputs if n in seeds}
    env = {**vals, **seeded}
    missing = [n for n, _, _ in backward.inputs if n not in env]
    if missing:
        raise SystemExit(f"the backward plan reads {missing}, which forward() did not return")
    b_med, _ = time_steps(backward, env, args.reps, engine)
    assert set(f_env) >= set(vals), "the forward plan run here returned less than forward()"
    print(w.title)
    f_total = show("forward plan", forward, f_med, args.sort)
    b_total = show("backward plan", backward, b_med, args.sort)
    ig_s = block(impl.step, args.reps)
    hand_s = block(w.impls[peer].step, args.reps)
    them, short = ("hand-written numpy", "hand numpy") if peer == "numpy" else ("PyTorch eager",) * 2
    print(f"\n{'steps of both plans':<44} {(f_total + b_total) * 1e6:10.0f} µs")
    print(f"{'value_and_grad() around them':<44} {(ig_s - f_total - b_total) * 1e6:10.0f} µs")
    print(f"{'indexgrad step (value_and_grad)':<44} {ig_s * 1e6:10.0f} µs")
    print(f"{them + ' step':<44} {hand_s * 1e6:10.0f} µs")
    print(f"{'ratio indexgrad / ' + short:<44} {ig_s / hand_s:10.3f}")
    gc.unfreeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
