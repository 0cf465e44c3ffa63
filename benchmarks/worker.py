"""One measurement in a fresh process, as run.py spawns it: builds, checks, times, prints JSON.

    python benchmarks/worker.py '{"kind": "block", "workload": "mlp_small", "impl": "torch"}'

Kinds (the JSON's other keys, with their defaults, are in DEFAULTS):

- block: one implementation of one workload, checked against the hand-written numpy step, warmed
  up, then called back to back (`seconds` of calls, between `min_reps` and `max_reps`). Each
  call's result is dropped before the clock stops (a training loop frees it too); the garbage
  collector stays on, over what the calls allocate (the heap after the warm-up is frozen).
- interleaved: every implementation of each workload in this one process, one call of each per
  repetition in a new seeded random order (the earlier round's timing, kept as a cross-check).
- extras: for one package (indexgrad, or indexgrad_before from `baseline`): µs per call of one
  statement on 4x4 arrays, parse + derive + plan of a 200-statement program, and peak memory of
  the large MLP's step against the hand-written one.

The JSON goes to stdout as its last line; everything else the libraries print goes to stderr. An
implementation that cannot run here gives {"skipped": why}; a failed check exits with status 1.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

try:
    import resource
except ImportError:  # not on this platform
    resource = None

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import workloads as W  # noqa: E402

import indexgrad as ig  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "tiny": False,  # the workloads' tiny sizes (tests/test_benchmarks.py)
    "baseline": None,  # a directory holding an earlier copy of the package as indexgrad_before
    "warmup": 3,  # calls before timing (and at least warmup_s seconds of them)
    "warmup_s": 0.1,
    "seconds": 1.0,  # block: about this long of timed calls
    "min_reps": 10,
    "max_reps": 200,
    "reps": 60,  # interleaved: repetitions, fewer when they would take longer than budget_s
    "budget_s": 10.0,
    "workloads": [],  # interleaved: which workloads, and which implementations
    "impls": list(W.IMPLS),
    "package": "indexgrad",  # extras
    "quick": False,
}
clock = time.perf_counter


def baseline(directory: str | None) -> ModuleType | None:
    """The earlier copy of the package in `directory` (importable as indexgrad_before), or None."""
    if directory is None:
        return None
    sys.path.insert(0, str(Path(directory).resolve()))
    return importlib.import_module("indexgrad_before")


def first_call(w: W.Workload, name: str) -> tuple[float | None, str | None]:
    """Call the implementation once (jax compiles, indexgrad plans) and check its loss and gradients
    against the hand-written step. Returns the seconds it took, or None and why it cannot run:
    an indexgrad backend other than numpy that refuses the program is skipped, not failed."""
    impl, ref = w.impls[name], w.impls[w.reference]
    expected = ref.unpack(ref.step()) if name != w.reference else None
    t0 = clock()
    try:
        got = impl.unpack(impl.step())
    except ig.IndexgradError as e:
        if W.BACKENDS.get(name, "numpy") == "numpy":
            raise
        return None, getattr(e, "message", str(e)).splitlines()[0]
    seconds = clock() - t0
    if expected is not None:
        W.assert_close(got, expected, w.dtype, f"{w.key}: {name}")
    return seconds, None


def minflt() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def preempted() -> int:
    """Times this process's threads were made to give up a core so far (0 where unknown): how
    much the rest of the machine got in the way."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw if resource is not None else 0


def time_block(step: Callable[[], Any], o: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then call back to back until o["seconds"] have passed (at least min_reps calls, at
    most max_reps); the seconds of each call."""
    start, warm = clock(), 0
    while warm < o["warmup"] or clock() - start < o["warmup_s"]:
        step()
        warm += 1
    gc.collect()
    gc.freeze()  # the collector walks what the calls allocate, not every loaded module
    times: list[float] = []
    f0, p0 = minflt(), preempted()
    start = clock()
    while len(times) < o["min_reps"] or (clock() - start < o["seconds"] and len(times) < o["max_reps"]):
        t0 = clock()
        step()
        times.append(clock() - t0)
    faults, switches = minflt() - f0, preempted() - p0
    gc.unfreeze()
    n = len(times)
    return {
        "times_s": times,
        "warmup_calls": warm,
        "minor_faults_per_call": faults / n,
        "preemptions_per_call": switches / n,
    }


def block(o: dict[str, Any]) -> dict[str, Any]:
    w = W.build(o["workload"], {o["impl"]}, o["tiny"], baseline(o["baseline"]))
    out: dict[str, Any] = {
        "kind": "block", "workload": w.key, "impl": o["impl"], "title": w.title, "flops": w.flops,
    }  # fmt: skip
    if o["impl"] not in w.impls:
        return {**out, "skipped": w.skipped.get(o["impl"], "not written for this workload")}
    seconds, why = first_call(w, o["impl"])
    if why is not None:
        return {**out, "skipped": why}
    step = w.impls[o["impl"]].step
    if o["impl"] != w.reference:
        del w.impls[w.reference]  # only the timed implementation stays alive
    return {**out, "first_call_s": seconds, "checked": o["impl"] != w.reference, **time_block(step, o)}


# ---- interleaved ------------------------------------------------------------------------------


def time_interleaved(
    calls: dict[str, Callable[[], Any]], reps: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[int]], dict[str, list[str]]]:
    """Seconds, minor page faults and the callable run just before, per call of each callable:
    `reps` rounds of one call each, in a new (seeded) random order each round.

    The collector runs between rounds, never inside one, over what the rounds allocate: the heap
    after the warm-up (every loaded module, PyTorch's and JAX's included) is frozen first."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    after: dict[str, list[str]] = {n: [] for n in names}
    last = names[-1]
    for _ in range(warmup):
        for n in names:
            calls[n]()
    gc.collect()
    gc.freeze()
    # a fresh order each round: a rotation would keep every implementation right behind the same
    # neighbour, whose spinning thread pool or cache traffic it would inherit
    order = np.random.default_rng(0)
    try:
        for _ in range(reps):
            gc.collect()
            gc.disable()
            for k in order.permutation(len(names)):
                n = names[k]
                after[n].append(last)
                last = n
                f0 = minflt()
                t0 = clock()
                out = calls[n]()
                t1 = clock()
                faults[n].append(minflt() - f0)
                del out
                times[n].append(t1 - t0)
            gc.enable()
    finally:
        gc.enable()
        gc.unfreeze()
    return times, faults, after


def interleaved(o: dict[str, Any]) -> dict[str, Any]:
    """Every implementation of each workload in this process, interleaved; ratios to the hand-written step."""
    # PyTorch's OpenMP threads would otherwise spin after each call and take the cores from the
    # next implementation in the rotation; set before torch loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    before = baseline(o["baseline"])
    return {"kind": "interleaved", "workloads": [interleave(key, before, o) for key in o["workloads"]]}


def interleave(key: str, before: ModuleType | None, o: dict[str, Any]) -> dict[str, Any]:
    w = W.build(key, set(o["impls"]), o["tiny"], before)
    skipped = dict(w.skipped)
    first: dict[str, float] = {}
    for name in list(w.impls):
        seconds, why = first_call(w, name)
        if seconds is None:
            skipped[name] = str(why)
            del w.impls[name]
        else:
            first[name] = seconds
    calls = {n: impl.step for n, impl in w.impls.items()}
    t0 = clock()
    for f in calls.values():
        f()
    reps = max(min(o["reps"], int(o["budget_s"] / max(clock() - t0, 1e-9))), min(o["min_reps"], o["reps"]))
    times, faults, after = time_interleaved(calls, reps, o["warmup"])
    base = statistics.median(times[w.reference])
    impls = {}
    for n, ts in times.items():
        med = statistics.median(ts)
        by: dict[str, list[float]] = {}
        for t, p in zip(ts, after[n]):
            by.setdefault(p, []).append(t)
        impls[n] = {
            "median_s": med,
            "min_s": min(ts),
            "max_s": max(ts),
            "reps": len(ts),
            "ratio": med / base,
            "ratio_min": min(ts) / base,
            "ratio_max": max(ts) / base,
            "first_call_s": first[n],
            "minor_faults_median": statistics.median(faults[n]),
            "median_s_after": {p: statistics.median(v) for p, v in by.items()},
        }
    return {"key": w.key, "title": w.title, "impls": impls, "skipped": skipped}


# ---- extras -----------------------------------------------------------------------------------


def peak_bytes(step: Callable[[], Any]) -> int:
    """Peak bytes allocated (as tracemalloc sees them: numpy reports its buffers to it) during one
    call, above what was live before, including what the call returns."""
    out = step()  # warm: plans and caches are built before measuring
    del out
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        out = step()
        _, peak = tracemalloc.get_traced_memory()
        del out
    finally:
        tracemalloc.stop()
    return peak - base


def micro(package: ModuleType, quick: bool) -> dict[str, Any]:
    """µs per call of one statement on 4x4 arrays, and of numpy's own ways to the same product;
    each callable's repetitions back to back, `inner` calls per repetition."""
    inner, reps = (200, 5) if quick else (2000, 25)
    out: dict[str, Any] = {
        "statement": W.MICRO_IDX.strip(),
        "calls_per_rep": inner,
        "impls": {},
        "target_us": 5.0,
    }
    for name, f in W.micro_calls(package).items():
        for _ in range(inner):
            f()
        us = []
        for _ in range(reps):
            t0 = clock()
            for _ in range(inner):
                f()
            us.append((clock() - t0) / inner * 1e6)
        out["impls"][name] = {"median_us": statistics.median(us), "min_us": min(us), "max_us": max(us)}
    return out


def long_program(package: ModuleType, quick: bool) -> dict[str, Any]:
    """`compile` of a generated 200-statement program, then its first forward and first backward
    on 2x3 arrays (when indexgrad probes, derives and plans). The process-wide cache of
    contraction orders is cleared before each repetition, so each one plans from scratch."""
    n = 200
    text, params = W.long_program(n)
    arrays = W.long_program_arrays(n)
    clear_cache = getattr(importlib.import_module(package.__name__ + ".plan"), "clear_cache", None)
    reps = 3 if quick else 10
    parts: dict[str, list[float]] = {"compile": [], "forward": [], "backward": [], "total": []}
    gc.collect()
    gc.freeze()  # the collections compiling triggers walk its own objects, not every loaded module
    for _ in range(reps):
        if clear_cache is not None:
            clear_cache()
        gc.collect()
        t0 = clock()
        model = package.compile(text)
        t1 = clock()
        vals = model.forward(**arrays)
        t2 = clock()
        grads = model.backward(vals, loss="loss", wrt=params)
        t3 = clock()
        for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            parts[k].append(dt)
        assert len(grads) == len(params) and np.isfinite(vals["loss"])
        del model, vals, grads  # each repetition starts as the first did, with no model alive
    gc.unfreeze()
    out: dict[str, Any] = {
        "statements": n,
        "reps": reps,
        "plan_cache_cleared": clear_cache is not None,
        "target_ms": 150.0,
    }
    for k, ts in parts.items():
        ms = [t * 1e3 for t in ts]
        out[k] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}
    return out


def memory(package: ModuleType, name: str, tiny: bool) -> dict[str, Any]:
    """Peak bytes of one step of the large MLP, indexgrad's against the hand-written one's."""
    w = W.build("mlp_large", {name}, tiny, package if name == W.BEFORE else None)
    got = {n: peak_bytes(w.impls[n].step) for n in (name, w.reference)}
    return {"workload": w.key, "bytes": got[name], "hand_bytes": got[w.reference], "target_ratio": 1.2}


def extras(o: dict[str, Any]) -> dict[str, Any]:
    before = o["package"] == "indexgrad_before"
    package = baseline(o["baseline"]) if before else ig
    assert package is not None, "extras of indexgrad_before need a baseline directory"
    return {
        "kind": "extras",
        "package": o["package"],
        "micro": micro(package, o["quick"]),
        "long_program": long_program(package, o["quick"]),
        "memory": memory(package, W.BEFORE if before else "indexgrad", o["tiny"]),
    }


KINDS = {"block": block, "interleaved": interleaved, "extras": extras}


def main(argv: list[str]) -> int:
    o = {**DEFAULTS, **json.loads(argv[0])}
    result = sys.stdout
    sys.stdout = sys.stderr  # what the libraries print does not mix with the JSON
    try:
        out = KINDS[o["kind"]](o)
    except AssertionError as e:  # a failed check: that implementation computes something else
        out = {"kind": o["kind"], "error": f"check failed: {e}"}
        print(json.dumps(out), file=result)
        return 1
    print(json.dumps(out), file=result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
