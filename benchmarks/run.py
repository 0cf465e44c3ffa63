"""indexgrad against hand-written numpy, PyTorch eager and JAX jit, timed as users run one library: in a loop.

    make bench                                    # = .venv/bin/python benchmarks/run.py
    python benchmarks/run.py --quick              # a smoke run: one short round, nothing written
    python benchmarks/run.py --only mlp_small,transformer --rounds 5
    python benchmarks/run.py --baseline /tmp/bl   # adds "indexgrad (before)": /tmp/bl/indexgrad_before

Blocked (the primary figure): for every round, workload and implementation, a fresh Python process
(benchmarks/worker.py) builds the workload, checks the implementation's loss and gradients
against the hand-written numpy step, warms up and times back-to-back calls. The order of the
implementations rotates from round to round. A workload's figure per implementation is its best
block: the smallest of the blocks' medians, with the range of the medians over the rounds.
Reported per workload: the best indexgrad backend against the best peer, the numpy backend
against hand-written numpy, and each library's flop rate as a fraction of the machine's BLAS peak
(a 2048^3 float32 product timed blocked in the same run, per library).

Then the cross-check of the earlier round, all implementations interleaved in one process, and
the extras (one statement's cost per call, planning a 200-statement program, the large MLP's peak
memory), for indexgrad and, with --baseline, for the earlier copy.

A full run writes benchmarks/results.json and benchmarks/results.png; a run with --only, --quick
or --tiny writes nothing unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as W  # noqa: E402

import indexgrad as ig  # noqa: E402

WORKER = HERE / "worker.py"
ENV_PREFIXES = ("OPENBLAS", "OMP_", "MKL_", "MALLOC_")  # settings recorded with the figures
KNOWN = W.MAIN_KEYS + W.OTHER_KEYS


# ---------------------------------------------------------------------------------------------
# running workers


def spawn(spec: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
    """Run worker.py on spec in a fresh Python process; its JSON, or {"error": ...}."""
    try:
        p = subprocess.run(
            [sys.executable, str(WORKER), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no answer after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = (p.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
    return {"error": f"worker exited with status {p.returncode}: {tail}"}


def available(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The implementations this run times, and those it leaves out with the reason."""
    out, why = [], {}
    for name in W.IMPLS:
        if name not in args.impls:
            continue
        backend = W.BACKENDS.get(name)
        if backend not in (None, "numpy"):
            try:
                ig.compile("y[i] = x[i]\n", backend=backend)
            except ig.IndexgradError as e:
                why[name] = getattr(e, "message", str(e)).splitlines()[0]
                continue
        if name == W.BEFORE and args.baseline is None:
            continue  # only asked for with --baseline
        if (name == "torch" and not W.HAVE_TORCH) or (name == "jax" and not W.HAVE_JAX):
            why[name] = f"{name} is not installed"
            continue
        out.append(name)
    return out, why


def check_baseline(directory: str) -> str | None:
    """Why the earlier copy in `directory` cannot be used, or None when it imports and compiles."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import indexgrad_before as b; "
        "b.compile('y[i] = x[i]\\n'); print(b.__file__)"
    )
    p = subprocess.run([sys.executable, "-c", probe, directory], capture_output=True, text=True)
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or ["it does not import"])[-1]
    return None


def run_blocked(keys: list[str], impls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every (round, workload, implementation) block, each in its own process, the order of the
    implementations rotated by one per round. Returns per workload its title, flop count and per
    implementation the blocks, or why it was skipped or failed."""
    plan = []
    for r in range(args.rounds):
        for key in keys:
            names = [n for n in impls if n in W.PEERS] if key == W.PEAK_KEY else impls
            k = r % len(names)
            for pos, name in enumerate(names[k:] + names[:k]):
                plan.append((r, pos, key, name))
    results: dict[str, dict[str, Any]] = {key: {"impls": {}} for key in keys}
    spec = {
        "kind": "block", "seconds": args.seconds, "min_reps": args.min_reps, "max_reps": args.max_reps,
        "warmup": args.warmup, "tiny": args.tiny, "baseline": args.baseline,
    }  # fmt: skip
    for r, pos, key, name in tqdm(plan, desc="blocks", unit="block", file=sys.stderr):
        entry = results[key]["impls"].setdefault(name, {"blocks": []})
        if "skipped" in entry or "error" in entry:
            continue  # no use asking again
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        got = spawn({**spec, "workload": key, "impl": name})
        if "skipped" in got or "error" in got:
            entry.update({k: got[k] for k in ("skipped", "error") if k in got})
            if "error" in got:
                tqdm.write(f"{key} {name}: {got['error']}", file=sys.stderr)
            continue
        ts = got["times_s"]
        results[key].update(title=got["title"], flops=got["flops"])
        entry["blocks"].append(
            {
                "round": r,
                "position": pos,
                "median_s": statistics.median(ts),
                "mean_s": statistics.fmean(ts),
                "min_s": min(ts),
                "max_s": max(ts),
                "reps": len(ts),
                "first_call_s": got["first_call_s"],
                "checked": got["checked"],
                "minor_faults_per_call": got["minor_faults_per_call"],
                "preemptions_per_call": got["preemptions_per_call"],
                "load": load,
                "times_s": ts,
            }
        )
    return results


# ---------------------------------------------------------------------------------------------
# the figures


def best(entry: dict[str, Any]) -> dict[str, Any] | None:
    """An implementation's figure: its best block (smallest median), and the medians' range over rounds."""
    blocks = entry.get("blocks") or []
    if not blocks:
        return None
    b = min(blocks, key=lambda x: x["median_s"])
    meds = [x["median_s"] for x in blocks]
    return {
        "s": b["median_s"],
        "mean_s": b["mean_s"],
        "lo_s": min(meds),
        "hi_s": max(meds),
        "rounds": len(meds),
        "floor_s": min(x["min_s"] for x in blocks),
    }


def fastest(figures: dict[str, dict[str, Any]], among: tuple[str, ...] | list[str]) -> str | None:
    names = [n for n in among if n in figures]
    return min(names, key=lambda n: figures[n]["s"]) if names else None


def per_round(impls: dict[str, Any], top: list[str], bottom: list[str]) -> list[float]:
    """Per round in which both sides ran: the best of `top` over the best of `bottom` that round."""
    med: dict[int, dict[str, float]] = {}
    for name, entry in impls.items():
        for b in entry.get("blocks", []):
            med.setdefault(b["round"], {})[name] = b["median_s"]
    out = []
    for m in med.values():
        t, u = [m[n] for n in top if n in m], [m[n] for n in bottom if n in m]
        if t and u:
            out.append(min(t) / min(u))
    return out


def summarize(blocked: dict[str, Any]) -> dict[str, Any]:
    """Per workload: each implementation's figure, and the ratios the goals are about."""
    out = {}
    for key, res in blocked.items():
        impls = res["impls"]
        figures = {n: f for n, e in impls.items() if (f := best(e)) is not None}
        s: dict[str, Any] = {"title": res.get("title", key), "flops": res.get("flops"), "figures": figures}
        for kind in ("skipped", "error"):
            s[kind] = {n: e[kind] for n, e in impls.items() if kind in e}
        ig_best, peer = fastest(figures, list(W.BACKENDS)), fastest(figures, W.PEERS)
        pairs = {
            "vs_peer": (ig_best, peer, W.GOALS.get(key), list(W.BACKENDS), list(W.PEERS)),
            "numpy_vs_hand": ("indexgrad", "numpy", W.NUMPY_GOAL, ["indexgrad"], ["numpy"]),
            "new_vs_before": ("indexgrad", W.BEFORE, None, ["indexgrad"], [W.BEFORE]),
        }
        for label, (a, b, goal, top, bottom) in pairs.items():
            if key == W.PEAK_KEY or a not in figures or b not in figures:
                continue
            rounds = per_round(impls, top, bottom)
            ratio = figures[a]["s"] / figures[b]["s"]
            s[label] = {
                "top": a, "bottom": b, "ratio": ratio, "goal": goal,
                "met": None if goal is None else ratio <= goal,
                "round_lo": min(rounds, default=ratio), "round_hi": max(rounds, default=ratio),
            }  # fmt: skip
        out[key] = s
    peak = out.get(W.PEAK_KEY)
    if peak is not None:
        rates = {n: peak["flops"] / f["s"] for n, f in peak["figures"].items()}
        top = max(rates.values(), default=None)
        peak["gflops"] = {n: r / 1e9 for n, r in rates.items()}
        for key, s in out.items():
            if key != W.PEAK_KEY and top and s["flops"]:
                for f in s["figures"].values():
                    f["peak"] = s["flops"] / f["s"] / top
    return out


# ---------------------------------------------------------------------------------------------
# reporting


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def ms(f: dict[str, Any] | None) -> str:
    if f is None:
        return "—"
    return f"{f['s'] * 1e3:.3g} ({f['lo_s'] * 1e3:.3g}–{f['hi_s'] * 1e3:.3g})"


def ratio_cell(r: dict[str, Any] | None, who: bool = False) -> str:
    if r is None:
        return "—"
    names = f" {W.LABELS[r['top']]} / {W.LABELS[r['bottom']]}" if who else ""
    return f"{r['ratio']:.2f} ({r['round_lo']:.2f}–{r['round_hi']:.2f}){names}"


def goal_cell(r: dict[str, Any] | None) -> str:
    if r is None or r["goal"] is None:
        return "—"
    return f"≤ {r['goal']:.2f} {'yes' if r['met'] else 'NO'}"


def report_blocked(summary: dict[str, Any], impls: list[str], rounds: int) -> list[str]:
    keys = [k for k in summary if k != W.PEAK_KEY]
    shown = [n for n in W.IMPLS if n in impls and any(n in summary[k]["figures"] for k in keys)]

    def per_impl(cell: Any) -> str:
        """A table of one cell per workload and implementation, from its figure (or None)."""
        rows = [[k, *(cell(summary[k]["figures"].get(n)) for n in shown)] for k in keys]
        return table(["workload", *(W.LABELS[n] for n in shown)], rows)

    def fraction(f: dict[str, Any] | None) -> str:
        return "—" if f is None or "peak" not in f else f"{f['peak']:.0%}"

    lines = [
        f"Blocked: ms per step, each implementation's best block (median of its calls), "
        f"(min–max of the block medians over {rounds} round{'s' * (rounds != 1)}).",
        per_impl(ms),
        "",
        "The fastest single call of all blocks, ms (a floor: the step when nothing got in its way;",
        "on a loaded machine a library whose threads wait on each other misses it by the most):",
        per_impl(lambda f: "—" if f is None else f"{f['floor_s'] * 1e3:.3g}"),
        "",
        "Blocked ratios (best block over best block; in brackets the same ratio round by round, min–max):",
    ]
    rows = []
    for k in keys:
        s = summary[k]
        rows.append([
            k, ratio_cell(s.get("vs_peer"), who=True), goal_cell(s.get("vs_peer")),
            ratio_cell(s.get("numpy_vs_hand")), goal_cell(s.get("numpy_vs_hand")),
            ratio_cell(s.get("new_vs_before")),
        ])  # fmt: skip
    head = ["workload", "best indexgrad / best peer", "goal", "numpy backend / hand numpy", "goal"]
    lines.append(table([*head, "indexgrad now / before"], rows))
    peak = summary.get(W.PEAK_KEY)
    if peak is not None and peak.get("gflops"):
        rates = ", ".join(f"{W.LABELS[n]} {g:.3g}" for n, g in peak["gflops"].items())
        lines += ["", f"BLAS peak, {peak['title']}, GFLOP/s of the best block: {rates}."]
        lines.append(
            "Each step's products (flops as the hand-written step does them) as a fraction of the best:"
        )
        lines.append(per_impl(fraction))
    return lines


def report_interleaved(inter: list[dict[str, Any]]) -> list[str]:
    names = [n for n in W.IMPLS if any(n in r["impls"] for r in inter)]
    lines = [
        "Interleaved (the earlier round's cross-check: one process, one call of each implementation "
        "per repetition, random order), median / hand numpy's median (min–max over repetitions):"
    ]
    rows = []
    for r in inter:
        cells = []
        for n in names:
            s = r["impls"].get(n)
            cells.append(
                "—" if s is None else f"{s['ratio']:.2f} ({s['ratio_min']:.2f}–{s['ratio_max']:.2f})"
            )
        target = W.INTERLEAVED_TARGETS.get(r["key"])
        met = "—"
        if target is not None and "indexgrad" in r["impls"]:
            met = f"≤ {target:.2f} {'yes' if r['impls']['indexgrad']['ratio'] <= target else 'NO'}"
        reps = r["impls"]["numpy"]["reps"]
        rows.append([r["key"], *cells, met, str(reps)])
    lines.append(table(["workload", *(W.LABELS[n] for n in names), "numpy backend target", "reps"], rows))
    return lines


def report_extras(extras: list[dict[str, Any]]) -> list[str]:
    lines = []
    for e in extras:
        if "error" in e:
            lines.append(f"\nextras of {e.get('package')}: {e['error']}")
            continue
        mi, lp, mem = e["micro"], e["long_program"], e["memory"]
        lines.append(f"\nExtras, {e['package']}:")
        lines.append(
            f"  one statement `{mi['statement']}` on 4x4 float64, µs per call "
            f"(target ≤ {mi['target_us']:.0f} for indexgrad):"
        )
        for n, s in mi["impls"].items():
            lines.append(f"    {n:<26} {s['median_us']:8.2f}  ({s['min_us']:.2f}–{s['max_us']:.2f})")
        lines.append(
            f"  parse + derive + plan of {lp['statements']} statements, ms (median of {lp['reps']}; "
            f"plan cache cleared: {lp['plan_cache_cleared']}; target ≤ {lp['target_ms']:.0f} total):"
        )
        for k in ("compile", "forward", "backward", "total"):
            s = lp[k]
            lines.append(f"    {k:<9} {s['median_ms']:8.1f}  ({s['min_ms']:.1f}–{s['max_ms']:.1f})")
        ratio = mem["bytes"] / mem["hand_bytes"]
        lines.append(
            f"  peak memory of one {mem['workload']} step (tracemalloc): {mem['bytes'] / 2**20:.1f} MiB "
            f"vs hand numpy {mem['hand_bytes'] / 2**20:.1f} MiB = {ratio:.2f}x "
            f"(target ≤ {mem['target_ratio']:.2f})"
        )
    return lines


def loadavg(m: Any) -> str:
    return "?" if not m else "/".join(f"{x:.1f}" for x in m)


def load_line(out: dict[str, Any]) -> str:
    """How busy the machine was while the blocks ran: the 1-minute load average as each began."""
    loads = sorted(
        b["load"] for res in out.get("blocked", {}).values() for e in res["impls"].values()
        for b in e.get("blocks", []) if b.get("load") is not None
    )  # fmt: skip
    if not loads:
        return "load average not known"
    cores = out.get("meta", {}).get("cpu_count")
    return (
        f"1-minute load average as the blocks began: median {statistics.median(loads):.1f} "
        f"({loads[0]:.1f}–{loads[-1]:.1f}) on {cores} cores"
    )


def report(out: dict[str, Any]) -> str:
    lines = []
    if out.get("summary"):
        lines += report_blocked(out["summary"], out["impls"], out["args"]["rounds"])
        lines += [
            "",
            load_line(out) + "; figures between libraries are comparable while it stays below the cores.",
        ]
    if out.get("interleaved"):
        lines += ["", *report_interleaved(out["interleaved"])]
    lines += report_extras(out.get("extras", []))
    notes = [f"  {W.LABELS[n]}: {why}" for n, why in out.get("left_out", {}).items()]
    for key, s in out.get("summary", {}).items():
        notes += [f"  {W.LABELS[n]}, {key}: {why}" for n, why in s["skipped"].items()]
        notes += [f"  {W.LABELS[n]}, {key}: FAILED: {why}" for n, why in s["error"].items()]
    if notes:
        lines += ["\nLeft out:", *notes]
    return "\n".join(lines)


def plot(out: dict[str, Any], path: Path) -> None:
    """Per workload, each implementation's best block over the best peer's (log scale), the range
    over rounds as error bars, the goal for the best indexgrad backend as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {k: s for k, s in out["summary"].items() if k != W.PEAK_KEY and "vs_peer" in s}
    if not summary:
        return
    names = [n for n in W.IMPLS if any(n in s["figures"] for s in summary.values())]
    fig, ax = plt.subplots(figsize=(max(8, 1.7 * len(summary)), 4.8))
    width = 0.8 / len(names)
    for j, n in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for i, s in enumerate(summary.values()):
            f = s["figures"].get(n)
            if f is None:
                continue
            base = s["figures"][s["vs_peer"]["bottom"]]["s"]
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            ys.append(f["s"] / base)
            lo.append((f["s"] - f["lo_s"]) / base)
            hi.append((f["hi_s"] - f["s"]) / base)
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=W.LABELS[n], error_kw={"lw": 0.8})
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=6, padding=1, rotation=90)
    for i, s in enumerate(summary.values()):
        goal = s["vs_peer"]["goal"]
        if goal is not None:
            ax.hlines(goal, i - 0.45, i + 0.45, colors="k", linestyles="dotted")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(summary)))
    ax.set_xticklabels(list(summary), rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("best block / best peer's best block (log)")
    title = "forward + backward step, blocked (bars: range over rounds; dotted: goal for indexgrad)"
    ax.set_title(f"{title}\n{load_line(out)}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def meta() -> dict[str, Any]:
    import numpy as np

    m: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "indexgrad": ig.__version__,
        "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(ENV_PREFIXES)},
        "load_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    git = ["git", "-C", str(HERE.parent)]
    try:  # which indexgrad was measured: the commit, and whether the working tree had changes
        m["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "indexgrad"], capture_output=True, text=True)
        m["indexgrad_modified"] = bool(status.stdout.strip())
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        m["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                     for d in threadpool_info()]  # fmt: skip
    except ImportError:
        pass
    return m


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="blocks per implementation and workload (default 5)")
    p.add_argument("--seconds", type=float, default=1.0, help="timed calls per block, in seconds (default 1)")
    p.add_argument("--min-reps", type=int, default=10, help="calls per block at least (default 10)")
    p.add_argument("--max-reps", type=int, default=200, help="calls per block at most (default 200)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--only", default="", help="comma-separated workloads: " + ",".join(KNOWN))
    p.add_argument(
        "--impls", default=",".join(W.IMPLS), help="comma-separated implementations (default: all)"
    )
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-jax", action="store_true")
    p.add_argument(
        "--baseline",
        default=None,
        metavar="DIR",
        help="time DIR/indexgrad_before (an earlier copy) beside indexgrad",
    )
    p.add_argument("--no-peak", action="store_true", help="skip the 2048^3 matmul")
    p.add_argument("--no-interleaved", action="store_true", help="skip the interleaved cross-check")
    p.add_argument("--interleaved-reps", type=int, default=60, help="its repetitions (default 60)")
    p.add_argument(
        "--interleaved-budget", type=float, default=8.0, help="its seconds per workload at most (8)"
    )
    p.add_argument(
        "--no-extras", action="store_true", help="skip the per-statement, planning and memory figures"
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: one short round")
    p.add_argument(
        "--tiny", action="store_true", help="tiny sizes: tests the harness; the figures mean nothing"
    )
    p.add_argument("--out", default=None, help="write OUT.json and OUT.png (default: benchmarks/results)")
    args = p.parse_args(argv)
    args.impls = [n for n in args.impls.split(",") if n]
    for n in ("torch", "jax"):
        if getattr(args, f"no_{n}") and n in args.impls:
            args.impls.remove(n)
    if args.quick:
        args.rounds, args.seconds, args.min_reps, args.warmup = 1, 0.1, 3, 1
        args.interleaved_reps, args.interleaved_budget = 3, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = [k for k in args.only.split(",") if k] or list(W.MAIN_KEYS)
    unknown = [k for k in keys if k not in KNOWN] + [n for n in args.impls if n not in W.IMPLS]
    if unknown:
        print(f"unknown {', '.join(unknown)}; workloads: {', '.join(KNOWN)}; implementations: "
              f"{', '.join(W.IMPLS)}", file=sys.stderr)  # fmt: skip
        return 2
    if args.baseline is not None:
        why = check_baseline(args.baseline)
        if why is not None:
            print(f"--baseline {args.baseline}: indexgrad_before does not work there: {why}", file=sys.stderr)
            return 2
    impls, left_out = available(args)
    out: dict[str, Any] = {"meta": meta(), "args": vars(args), "impls": impls, "left_out": left_out}
    m = out["meta"]
    print(f"indexgrad benchmarks: {', '.join(W.LABELS[n] for n in impls)}; "
          f"BLAS env {m['env'] or 'machine defaults'}; load average {loadavg(m['load_before'])}",
          file=sys.stderr)  # fmt: skip
    start = time.perf_counter()
    blocked_keys = keys + ([] if args.no_peak or not any(n in W.PEERS for n in impls) else [W.PEAK_KEY])
    out["blocked"] = run_blocked(blocked_keys, impls, args)
    out["summary"] = summarize(out["blocked"])
    common = {"tiny": args.tiny, "baseline": args.baseline, "quick": args.quick}
    if not args.no_interleaved:
        print("interleaved cross-check ...", file=sys.stderr)
        spec = {"kind": "interleaved", "workloads": keys, "impls": impls, "reps": args.interleaved_reps,
                "budget_s": args.interleaved_budget, "min_reps": min(args.min_reps, args.interleaved_reps),
                "warmup": args.warmup}  # fmt: skip
        got = spawn({**common, **spec})
        if "error" in got:
            print(f"interleaved: {got['error']}", file=sys.stderr)
        out["interleaved"] = got.get("workloads", [])
    if not args.no_extras and "indexgrad" in impls:
        packages = ["indexgrad"] + (["indexgrad_before"] if W.BEFORE in impls else [])
        out["extras"] = []
        for package in tqdm(packages, desc="extras", unit="package", file=sys.stderr):
            out["extras"].append(
                {"package": package, **spawn({**common, "kind": "extras", "package": package})}
            )
    out["meta"]["seconds"] = time.perf_counter() - start
    out["meta"]["load_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(report(out))
    before, after = loadavg(m["load_before"]), loadavg(m["load_after"])
    print(f"\n({m['seconds']:.0f} s; load average (1/5/15 min) before {before}, after {after})")
    quiet = args.only or args.quick or args.tiny
    dest = args.out if args.out is not None else (None if quiet else str(HERE / "results"))
    if dest is not None:
        Path(dest + ".json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        plot(out, Path(dest + ".png"))
        print(f"wrote {dest}.json, {dest}.png")
    return 1 if any(s["error"] for s in out["summary"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
