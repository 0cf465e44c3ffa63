"""How parse, fmt and derive scale with program size: each at n, 10n and 100n terms, and the ratios.

    python benchmarks/scaling.py              # n = 300: up to 30,000 terms per program
    python benchmarks/scaling.py --n 100      # quicker
    python benchmarks/scaling.py --plot benchmarks/scaling.png   # also draw time against size

Linear work shows ratios near 10 and 100 (a little more for the larger programs' garbage
collection and cache misses); quadratic work shows ratios near 100 and 10,000. Each time is the
processor time (time.process_time) of the best of --reps runs, each after a full garbage
collection, so that neither a busy machine's other processes nor a collection owed by the
previous step (parsing builds its nodes with the collector paused) weighs on it.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import indexgrad as ig  # noqa: E402
from indexgrad.printer import format_program  # noqa: E402


def long_sum(n: int) -> str:
    """One statement: a sum of n scalars (the shape of a 1 MB generated line)."""
    return "loss = " + " + ".join(f"x{k}" for k in range(n)) + "\n"


def indexed_sum(n: int) -> str:
    """One statement: a sum of n vectors, each of whose gradients needs the shape of its input."""
    return "loss = sum[i](" + " + ".join(f"x{k}[i]" for k in range(n)) + ")\n"


def sum_of_means(n: int) -> str:
    """One statement: a sum of n means, each a temporary of lowering and a broadcast gradient."""
    return "loss = " + " + ".join(f"mean[i](x{k}[i])" for k in range(n)) + "\n"


def long_product(n: int) -> str:
    """One statement: a product of n scalars, whose swap-rule derivative alone would have n^2 factors."""
    return "loss = " + " ".join(f"x{k}" for k in range(n)) + "\n"


def many_statements(n: int) -> str:
    """n statements, each with a comment that fmt keeps in place."""
    return "".join(f"y{k}[i] = x{k}[i] + 1  # step {k}\n" for k in range(n)) + "loss = sum[i](y0[i])\n"


CASES: dict[str, tuple[Callable[[int], str], str]] = {
    "parse: sum of n": (long_sum, "parse"),
    "parse: product of n": (long_product, "parse"),
    "parse: n statements": (many_statements, "parse"),
    "fmt: sum of n": (long_sum, "fmt"),
    "fmt: n commented statements": (many_statements, "fmt"),
    "derive: sum of n": (long_sum, "derive"),
    "derive: sum of n vectors": (indexed_sum, "derive"),
    "derive: sum of n means": (sum_of_means, "derive"),
    "derive: product of n": (long_product, "derive"),
}


def best(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        gc.collect()
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def measure(make: Callable[[int], str], what: str, n: int, reps: int) -> float:
    text = make(n)
    if what == "parse":
        return best(lambda: ig.parse(text), reps)
    program = ig.parse(text)
    if what == "fmt":
        return best(lambda: format_program(program, comments=True), reps)
    return best(lambda: ig.derive(program), reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="the smallest size (default 300)")
    ap.add_argument("--reps", type=int, default=2, help="runs per size; the best counts (default 2)")
    ap.add_argument("--only", help="run only the cases whose name contains this text")
    ap.add_argument("--plot", metavar="PNG", help="draw each case's time against n, log-log, into PNG")
    a = ap.parse_args()
    ig.parse("x = 1\n")  # build the parser before any timing
    sizes = [a.n, 10 * a.n, 100 * a.n]
    print(f"{'case':<30}" + "".join(f"{f'n={n:,}':>12}" for n in sizes) + f"{'10n/n':>9}{'100n/n':>9}")
    results: dict[str, list[float]] = {}
    for name, (make, what) in CASES.items():
        if a.only and a.only not in name:
            continue
        times = results[name] = [measure(make, what, n, a.reps) for n in sizes]
        cells = "".join(f"{t:>11.3f}s" for t in times)
        print(f"{name:<30}{cells}{times[1] / times[0]:>9.1f}{times[2] / times[0]:>9.1f}", flush=True)
    if a.plot:
        plot(sizes, results, a.plot)


def plot(sizes: list[int], results: dict[str, list[float]], path: str) -> None:
    """Time against n on log-log axes, with the slopes of linear and quadratic work for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, times in results.items():
        ax.plot(sizes, [max(t, 1e-6) for t in times], marker="o", label=name)
    top = max(max(t) for t in results.values())
    ax.plot(sizes, [top * n / sizes[-1] for n in sizes], "k--", lw=1, label="linear")
    ax.plot(sizes, [top * (n / sizes[-1]) ** 2 for n in sizes], "k:", lw=1, label="quadratic")
    ax.set(xscale="log", yscale="log", xlabel="n (terms, factors or statements)", ylabel="seconds")
    ax.set_title("parse, fmt and derive against program size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
