"""indexgrad against hand-written numpy, PyTorch eager and JAX jit (issue 6; conv from issue 5).

    make bench                      # = .venv/bin/python benchmarks/run.py
    python benchmarks/run.py --reps 50 --only mlp_small,chain_square
    python benchmarks/run.py --quick                 # a smoke run: few repetitions, nothing written

For every workload: each implementation is checked against the hand-written numpy step (b), then
all are timed in this one process, interleaved (one call of each per repetition, in a new seeded
random order each repetition), after a warm-up; the garbage collector runs between repetitions,
never inside one.
Ratios are medians divided by (b)'s median. Then the extras: the per-call floor of one primitive
statement on 4×4 arrays, parse + derive + plan of a 200-statement program, and peak memory
(tracemalloc, which numpy reports its buffers to) of one step, indexgrad vs (b).

A full run writes benchmarks/results.json and benchmarks/results.png; a run with --only or
--quick writes nothing unless --out is given.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform

try:
    import resource
except ImportError:  # not on this platform
    resource = None
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# PyTorch's OpenMP threads spin after each call by default and take the cores from whatever runs
# next in the interleaved loop (numpy's OpenBLAS threads): every other implementation then looks
# 1.3-4x slower. Passive waiting, set before torch is imported, removes that interference.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import workloads as W  # noqa: E402
from conv import CONV_KEYS, conv_workloads  # noqa: E402

import indexgrad as ig  # noqa: E402

IMPL_ORDER = ["indexgrad", "numpy", "torch", "jax"]
ALL_KEYS = W.WORKLOAD_KEYS + CONV_KEYS


# ---------------------------------------------------------------------------------------------
# measuring


def _minflt() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def time_interleaved(
    calls: dict[str, Callable[[], Any]], reps: int, warmup: int, desc: str, blocked: bool = False
) -> tuple[dict[str, list[float]], dict[str, list[int]], dict[str, list[str]]]:
    """Seconds, minor page faults and the callable run just before, per call of each callable.

    Warm-up, then `reps` rounds of one call each, in a new random order each round. With `blocked`,
    each callable instead runs its warm-up and all its repetitions back to back (a cross-check:
    interleaving lets one implementation's freed memory and idle thread pools affect the next).

    The collector runs between rounds, never inside one, over what the rounds allocate: the heap
    that exists after the warm-up (every imported module, PyTorch's and JAX's included) is frozen
    first. A full collection walks all of it (4 ms with both loaded), evicting the caches and idling
    the BLAS threads that the next call then pays for; no training loop runs one per step.
    """
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    after: dict[str, list[str]] = {n: [] for n in names}
    last = [names[-1]]
    clock = time.perf_counter

    def measure(n: str) -> None:
        after[n].append(last[0])
        last[0] = n
        f = calls[n]
        f0 = _minflt()
        t0 = clock()
        out = f()
        t1 = clock()
        faults[n].append(_minflt() - f0)
        del out
        times[n].append(t1 - t0)

    gc_was = gc.isenabled()
    try:
        if blocked:
            for n in tqdm(names, desc=desc, unit="impl", leave=False, file=sys.stderr):
                for _ in range(warmup):
                    calls[n]()
                gc.collect()
                gc.freeze()
                gc.disable()
                for _ in range(reps):
                    measure(n)
                gc.enable()
            return times, faults, after
        for _ in range(warmup):
            for n in names:
                calls[n]()
        gc.collect()
        gc.freeze()
        # a fresh (seeded) order each round: a rotation would keep every implementation right
        # behind the same neighbour, whose spinning thread pool or cache traffic it would inherit
        order = np.random.default_rng(0)
        for _ in tqdm(range(reps), desc=desc, unit="rep", leave=False, file=sys.stderr):
            gc.collect()
            gc.disable()  # one round runs back to back, without the collector
            for k in order.permutation(len(names)):
                measure(names[k])
            gc.enable()
    finally:
        gc.unfreeze()
        if gc_was:
            gc.enable()
    return times, faults, after


def by_predecessor(times: list[float], after: list[str]) -> dict[str, float]:
    """Median seconds of one implementation's calls, by which implementation ran just before."""
    groups: dict[str, list[float]] = {}
    for t, p in zip(times, after):
        groups.setdefault(p, []).append(t)
    return {p: statistics.median(ts) for p, ts in groups.items()}


def summary(ts: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(ts),
        "min_s": min(ts),
        "max_s": max(ts),
        "reps": len(ts),
        "times_s": ts,
    }


def peak_bytes(step: Callable[[], Any]) -> int:
    """Peak bytes allocated (as tracemalloc sees them) during one call, above what was live before."""
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


def choose_reps(step_seconds: float, want: int, budget: float, floor: int) -> int:
    """`want` repetitions unless that would take longer than `budget` seconds; never below `floor`."""
    if step_seconds <= 0:
        return want
    return max(min(want, int(budget / step_seconds)), min(floor, want))


# ---------------------------------------------------------------------------------------------
# the parts of a run


def run_workload(w: W.Workload, args: argparse.Namespace) -> dict[str, Any]:
    ref = w.impls[w.reference]
    expected = ref.unpack(ref.step())
    order = [n for n in IMPL_ORDER if n in w.impls]
    checked = {}
    for name in order:
        impl = w.impls[name]
        t0 = time.perf_counter()
        got = impl.unpack(impl.step())  # the first call: compiles (jax), plans (indexgrad)
        first = time.perf_counter() - t0
        W.assert_close(got, expected, w.dtype, f"{w.key}/{name}")
        checked[name] = first
    calls = {n: w.impls[n].step for n in order}
    # size the run from one warm round
    t0 = time.perf_counter()
    for n in order:
        calls[n]()
    round_s = time.perf_counter() - t0
    reps = choose_reps(round_s, args.reps, args.budget, args.min_reps)
    times, faults, after = time_interleaved(calls, reps, args.warmup, w.key, blocked=args.blocked)
    res: dict[str, Any] = {"key": w.key, "title": w.title, "target": w.target, "note": w.note, "impls": {}}
    base = statistics.median(times[w.reference])
    for n in order:
        s = summary(times[n])
        s["ratio"] = s["median_s"] / base
        s["ratio_min"] = s["min_s"] / base
        s["ratio_max"] = s["max_s"] / base
        s["first_call_s"] = checked[n]
        s["minor_faults_median"] = statistics.median(faults[n])
        s["median_s_after"] = by_predecessor(times[n], after[n])
        res["impls"][n] = s
    if "indexgrad" in w.impls and not args.no_memory:
        res["peak_bytes"] = {n: peak_bytes(w.impls[n].step) for n in ("indexgrad", w.reference)}
    return res


def run_micro(args: argparse.Namespace) -> dict[str, Any]:
    calls = W.micro_calls()
    inner = 2000 if not args.quick else 200

    def looped(f: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(inner):
                f()

        return run

    times, _, _ = time_interleaved({n: looped(f) for n, f in calls.items()}, args.reps, 1, "micro 4x4")
    out = {"statement": W.MICRO_IDX.strip(), "calls_per_rep": inner, "impls": {}}
    for n, ts in times.items():
        us = [t / inner * 1e6 for t in ts]
        out["impls"][n] = {"median_us": statistics.median(us), "min_us": min(us), "max_us": max(us)}
    out["target_us"] = 5.0
    return out


def run_long_program(args: argparse.Namespace) -> dict[str, Any]:
    """ig.compile of a generated 200-statement program plus one forward + backward on tiny arrays.

    indexgrad keeps opt_einsum plans in a process-wide cache; it is cleared before each repetition
    (when indexgrad exposes `plan.clear_cache`), so every repetition plans from scratch.
    """
    n = 200
    text, params = W.long_program(n)
    arrays = W.long_program_arrays(n)
    try:
        from indexgrad.plan import clear_cache
    except ImportError:  # the executor's internals moved; the figures then include a warm cache
        clear_cache = None
    reps = max(5, args.reps // 2) if not args.quick else 3
    parts: dict[str, list[float]] = {"compile": [], "forward": [], "backward": [], "total": []}
    clock = time.perf_counter
    gc.collect()
    gc.freeze()  # the collections compiling triggers walk its own objects, not every loaded module
    for _ in tqdm(range(reps), desc="200 statements", unit="rep", leave=False, file=sys.stderr):
        if clear_cache is not None:
            clear_cache()
        gc.collect()
        t0 = clock()
        model = ig.compile(text)
        t1 = clock()
        vals = model.forward(**arrays)
        t2 = clock()
        grads = model.backward(vals, loss="loss", wrt=params)
        t3 = clock()
        parts["compile"].append(t1 - t0)
        parts["forward"].append(t2 - t1)
        parts["backward"].append(t3 - t2)
        parts["total"].append(t3 - t0)
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


def meta() -> dict[str, Any]:
    m: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "indexgrad": ig.__version__,
        "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("OPENBLAS", "OMP_", "MKL_"))},
    }
    try:  # which indexgrad was measured: the commit, and whether the working tree had changes
        git = ["git", "-C", str(HERE.parent)]
        m["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "indexgrad"], capture_output=True, text=True)
        m["indexgrad_modified"] = bool(status.stdout.strip())
    except OSError:
        pass
    try:
        import opt_einsum

        m["opt_einsum"] = opt_einsum.__version__
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        m["blas"] = [
            {k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for d in threadpool_info()
        ]
    except ImportError:
        pass
    if W.HAVE_TORCH:
        import torch

        m["torch"] = torch.__version__
        m["torch_threads"] = torch.get_num_threads()
    if W.HAVE_JAX:
        import jax

        m["jax"] = jax.__version__
    return m


# ---------------------------------------------------------------------------------------------
# reporting


def fmt_ratio(s: dict[str, Any] | None) -> str:
    if s is None:
        return "—"
    return f"{s['ratio']:.2f} ({s['ratio_min']:.2f}–{s['ratio_max']:.2f})"


def table(results: list[dict[str, Any]], impls: list[str]) -> str:
    head = ["work", *impls, "target", "met"]
    rows = []
    for r in results:
        ig_s = r["impls"].get("indexgrad")
        met = "—"
        if r["target"] is not None and ig_s is not None:
            met = "yes" if ig_s["ratio"] <= r["target"] else "no"
        target = f"≤ {r['target']:.2f}" if r["target"] is not None else "—"
        rows.append([r["title"], *(fmt_ratio(r["impls"].get(n)) for n in impls), target, met])
    rows.append(["median ms per step", *[""] * len(impls), "", ""])
    for r in results:
        rows.append(
            [
                f"  {r['key']}",
                *(f"{r['impls'][n]['median_s'] * 1e3:.2f} ms" if n in r["impls"] else "—" for n in impls),
                f"{r['impls']['numpy']['reps']} reps",
                "",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(wd) for c, wd in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (wd + 2) for wd in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def report(out: dict[str, Any]) -> str:
    lines = []
    results = out["workloads"]
    impls = [n for n in IMPL_ORDER if any(n in r["impls"] for r in results)]
    if results:
        mode = "each implementation back to back" if out["args"]["blocked"] else "interleaved"
        lines.append(f"Median time as a ratio to hand-written numpy (b); (min–max) over repetitions; {mode}.")
        lines.append(table(results, impls))
        for r in results:
            if r["key"] in CONV_KEYS and "torch" in r["impls"] and "indexgrad" in r["impls"]:
                x = r["impls"]["indexgrad"]["median_s"] / r["impls"]["torch"]["median_s"]
                lines.append(f"{r['key']}: indexgrad / PyTorch conv2d = {x:.2f}")
        if resource is not None:
            lines.append("\nMinor page faults per step while timed (median; fresh pages touched):")
            for r in results:
                cells = "  ".join(
                    f"{n} {r['impls'][n]['minor_faults_median']:>6.0f}" for n in impls if n in r["impls"]
                )
                lines.append(f"  {r['key']:<17} {cells}")
        if not out["args"]["blocked"] and len(impls) > 2:
            lines.append(
                "\nMedian ms per step by the implementation that ran just before it "
                "(interleaved; each neighbour's caches and idle threads weigh on the next call):"
            )
            for r in results:
                for n in ("indexgrad", "numpy"):
                    med = r["impls"].get(n, {}).get("median_s_after", {})
                    cells = "  ".join(f"after {p} {med[p] * 1e3:7.2f}" for p in impls if p in med)
                    lines.append(f"  {r['key']:<17} {n:<9} {cells}")
        mem = [r for r in results if "peak_bytes" in r]
        if mem:
            lines.append("\nPeak memory of one step (tracemalloc), indexgrad vs hand-written numpy:")
            for r in mem:
                pi, pn = r["peak_bytes"]["indexgrad"], r["peak_bytes"]["numpy"]
                target = " (target ≤ 1.20)" if r["key"] == "mlp_large" else ""
                mib = f"{pi / 2**20:8.1f} MiB vs {pn / 2**20:8.1f} MiB"
                lines.append(f"  {r['key']:<17} {mib} = {pi / pn:.2f}x{target}")
    if "micro" in out:
        mi = out["micro"]
        lines.append(f"\nOne primitive statement on 4x4 float64 arrays, `{mi['statement']}`, µs per call:")
        for n, s in mi["impls"].items():
            lines.append(f"  {n:<22} {s['median_us']:8.2f}  ({s['min_us']:.2f}–{s['max_us']:.2f})")
        lines.append(f"  target for indexgrad: ≤ {mi['target_us']:.0f} µs")
    if "long_program" in out:
        lp = out["long_program"]
        lines.append(
            f"\nParse + derive + plan of a generated {lp['statements']}-statement program, ms "
            f"(median of {lp['reps']}; plan cache cleared each time: {lp['plan_cache_cleared']}):"
        )
        for k in ("compile", "forward", "backward", "total"):
            s = lp[k]
            lines.append(f"  {k:<9} {s['median_ms']:8.1f}  ({s['min_ms']:.1f}–{s['max_ms']:.1f})")
        lines.append(f"  target for the total: ≤ {lp['target_ms']:.0f} ms")
    return "\n".join(lines)


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = out["workloads"]
    impls = [n for n in IMPL_ORDER if any(n in r["impls"] for r in results)]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(results)), 4.5))
    width = 0.8 / len(impls)
    for k, n in enumerate(impls):
        xs, ys, lo, hi = [], [], [], []
        for i, r in enumerate(results):
            s = r["impls"].get(n)
            if s is None:
                continue
            xs.append(i + (k - (len(impls) - 1) / 2) * width)
            ys.append(s["ratio"])
            lo.append(s["ratio"] - s["ratio_min"])
            hi.append(s["ratio_max"] - s["ratio"])
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=n, error_kw={"lw": 0.8})
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=6, padding=1, rotation=90)
    for i, r in enumerate(results):
        if r["target"] is not None:
            ax.hlines(r["target"], i - 0.45, i + 0.45, colors="k", linestyles="dotted")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([r["key"] for r in results], rotation=15)
    ax.set_yscale("log")  # outliers of 10x and more would flatten a linear axis
    ax.set_ylabel("median time / hand-written numpy (log)")
    ax.set_title("forward + backward step (bars: min–max; dotted: issue 6 target for indexgrad)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=200, help="timed repetitions per workload (default 200)")
    p.add_argument("--min-reps", type=int, default=20, help="never fewer repetitions than this (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing (default 3)")
    p.add_argument(
        "--budget", type=float, default=30.0, help="seconds of timing per workload before --reps is cut (30)"
    )
    p.add_argument("--only", default="", help="comma-separated workload keys: " + ",".join(ALL_KEYS))
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-jax", action="store_true")
    p.add_argument("--no-indexgrad", action="store_true", help="time the references alone")
    p.add_argument("--no-conv", action="store_true")
    p.add_argument("--no-extras", action="store_true", help="skip the micro, 200-statement runs")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument(
        "--blocked", action="store_true", help="time each implementation's repetitions back to back"
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: 3 repetitions, 1 warm-up")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.png (default: benchmarks/results)")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.min_reps, args.warmup = 3, 3, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use = {"indexgrad", "numpy", "torch", "jax"}
    for n in ("torch", "jax", "indexgrad"):
        if getattr(args, f"no_{n}"):
            use.discard(n)
    keys = [k for k in args.only.split(",") if k] or ALL_KEYS
    unknown = [k for k in keys if k not in ALL_KEYS]
    if unknown:
        print(f"unknown workload {', '.join(unknown)}; known: {', '.join(ALL_KEYS)}", file=sys.stderr)
        return 2
    builders = dict(zip(W.WORKLOAD_KEYS, W.main_workloads(use)))
    if not args.no_conv:
        builders.update(zip(CONV_KEYS, conv_workloads(use)))
    out: dict[str, Any] = {"meta": meta(), "args": vars(args), "workloads": []}
    print(
        f"indexgrad benchmarks: torch {'yes' if 'torch' in use and W.HAVE_TORCH else 'no'}, "
        f"jax {'yes' if 'jax' in use and W.HAVE_JAX else 'no'}, "
        f"BLAS env {out['meta']['env'] or 'machine defaults'}",
        file=sys.stderr,
    )
    start = time.perf_counter()
    for key in tqdm([k for k in keys if k in builders], desc="workloads", unit="wl", file=sys.stderr):
        w = builders[key]()
        out["workloads"].append(run_workload(w, args))
        del w
        gc.collect()
    if not args.no_extras and "indexgrad" in use:
        out["micro"] = run_micro(args)
        out["long_program"] = run_long_program(args)
    out["meta"]["seconds"] = time.perf_counter() - start
    print(report(out))
    print(f"\n({out['meta']['seconds']:.0f} s)")
    dest = (
        args.out if args.out is not None else (None if (args.only or args.quick) else str(HERE / "results"))
    )
    if dest is not None:
        Path(dest + ".json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        if out["workloads"]:
            plot(out, Path(dest + ".png"))
        print(f"wrote {dest}.json" + (f", {dest}.png" if out["workloads"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
