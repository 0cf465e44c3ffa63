"""Where indexgrad's training step spends its time: every planned kernel, timed in place.

    python benchmarks/per_kernel.py                              # mlp_small
    python benchmarks/per_kernel.py --only chain_bottleneck --reps 100

A workload's indexgrad step and its hand-written numpy step run interleaved, as in run.py: first
the two alone, then with PyTorch's and JAX's steps in the rotation (when installed). Printed: the
median time of each kernel in both rotations, the time indexgrad spends outside its kernels
(forward() and backward() themselves, and the loop between kernels), and each step's median. The
timers add about a quarter of a microsecond per kernel to indexgrad's step, and each kernel runs
on its own: the chains and relu masks that a planned run fuses (kernels.fuse_chains) run unfused.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run.py: PyTorch's threads wait passively

import workloads as W  # noqa: E402

clock = time.perf_counter


def timed_kernels(model: Any) -> dict[str, list[float]]:
    """Wrap every planned kernel of the model's forward and backward executors with a timer, and
    each executor's planned run (keyed "forward run", "backward run")."""
    executors = [("forward", hit[1]) for key, hit in model._cache.items() if key[0] == "exec"]
    executors += [("backward", hit) for key, hit in model._cache.items() if key[0] == "vjp run"]
    times: dict[str, list[float]] = {}
    for which, ex in executors:
        times[f"{which} run"] = spent = []
        ex.run_planned = _timed(ex.run_planned, spent)  # the instance's: only this executor is timed
        for key, steps in ex._kernels.items():
            wrapped = []
            for k, (kernel, p, dead) in enumerate(steps):
                label = f"{which} {k:2d}  {p.out.name}"
                times[label] = spent = []
                wrapped.append((_timed(kernel, spent) if kernel is not None else None, p, dead))
            ex._kernels[key] = wrapped
            ex._fast[key][:] = ex.compose(wrapped)  # in place: the model holds this list too
    return times


def _timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        t = clock()
        out = fn(*args, **kwargs)
        spent.append(clock() - t)
        return out

    return run


def rotation(
    steps: dict[str, Callable[[], Any]], reps: int, kernels: dict[str, list[float]]
) -> dict[str, float]:
    """Median µs per step of each implementation, interleaved in a new seeded order per repetition;
    the kernels' timings are collected for the same repetitions."""
    for _ in range(3):
        for step in steps.values():
            step()
    for spent in kernels.values():
        spent.clear()
    gc.collect()
    gc.freeze()
    rng = np.random.default_rng(0)
    order = list(steps)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            t = clock()
            steps[name]()
            times[name].append(clock() - t)
        gc.collect()
    gc.unfreeze()
    return {name: 1e6 * statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="mlp_small", choices=W.WORKLOAD_KEYS)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    builder = dict(zip(W.WORKLOAD_KEYS, W.main_workloads({"indexgrad", "numpy", "torch", "jax"})))
    w = builder[args.only]()
    ig_impl = w.impls["indexgrad"]
    ig_impl.step()  # plans the kernels
    kernels = timed_kernels(ig_impl.model)
    alone = {n: w.impls[n].step for n in ("indexgrad", "numpy")}
    every = {n: impl.step for n, impl in w.impls.items()}
    medians, per_kernel = [], []
    for steps in (alone, every):
        medians.append(rotation(steps, args.reps, kernels))
        per_kernel.append({label: 1e6 * statistics.median(ts) for label, ts in kernels.items()})
    with_libs = " + ".join(n for n in every if n not in alone) or "nothing else installed"
    print(f"{w.title}: median µs over {args.reps} repetitions")
    print(f"{'':38} {'with numpy':>11} {'with ' + with_libs:>22} {'change':>8}")
    for label in kernels:
        if not label.endswith(" run"):
            a, b = per_kernel[0][label], per_kernel[1][label]
            print(f"  {label:36} {a:11.1f} {b:22.1f} {b - a:+8.1f}")
    inside = [sum(v for n, v in k.items() if not n.endswith(" run")) for k in per_kernel]
    runs = [k["forward run"] + k["backward run"] for k in per_kernel]
    rows = [
        ("sum of the kernels", *inside),
        ("the executors' loops and timers", *(r - i for r, i in zip(runs, inside))),
        ("forward() and backward() around them", *(m["indexgrad"] - r for m, r in zip(medians, runs))),
        ("indexgrad step", *(m["indexgrad"] for m in medians)),
        ("hand-written numpy step", *(m["numpy"] for m in medians)),
    ]
    for label, a, b in rows:
        print(f"{label:38} {a:11.1f} {b:22.1f} {b - a:+8.1f}")
    ratios = [m["indexgrad"] / m["numpy"] for m in medians]
    print(f"{'ratio indexgrad / numpy':38} {ratios[0]:11.3f} {ratios[1]:22.3f}")


if __name__ == "__main__":
    main()
