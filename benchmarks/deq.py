"""The deep equilibrium layer of examples/deq.idx: backward against forward, and forward's memory
against the number of iterations (SPEC 11: nothing is differentiated through the iterations).

A fixed point found to a tighter tolerance takes more Anderson iterations, hence more time; its
peak memory (tracemalloc) stays the same, as only the last m iterates are kept. The backward pass
solves one linear fixed point (the adjoint) and applies the swap rule once, so it should cost
about one forward pass, not one per iteration: the bound checked here is 1.5x.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

import indexgrad as ig
import indexgrad.iterate as iterate

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "deq.idx"


def slow(rng: np.random.Generator, h: int) -> np.ndarray:
    """W whose A = W / sqrt(1 + |W|^2) contracts by about 0.98 along two directions: a fixed point
    plain iteration would take hundreds of steps to find."""
    u, _ = np.linalg.qr(rng.standard_normal((h, 2)))
    v, _ = np.linalg.qr(rng.standard_normal((h, 2)))
    return 5 * u @ v.T + 0.1 * rng.standard_normal((h, h)) / np.sqrt(h)


def arrays(b: int, d: int, h: int, c: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((b, d)),
        "Y": np.eye(c)[rng.integers(0, c, b)],
        "U": rng.standard_normal((d, h)) / np.sqrt(d),
        "B": 0.1 * rng.standard_normal(h),
        "W": slow(rng, h),
        "V": rng.standard_normal((h, c)) / np.sqrt(h),
        "C": np.zeros(c),
    }


def median_seconds(f, reps: int) -> float:  # type: ignore[no-untyped-def]
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


EVALUATIONS: list[int] = []  # f's evaluations per fixed point, as anderson() reports them


def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
    out = ANDERSON(*args, **kwargs)
    EVALUATIONS.append(out[2])
    return out


ANDERSON = iterate.anderson
iterate.anderson = counted  # the fix step looks anderson up when it runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--sizes", default="256,64,128,10", help="b,d,h,c")
    a = p.parse_args(argv)
    b, d, h, c = (int(s) for s in a.sizes.split(","))
    data = arrays(b, d, h, c)
    params = ["U", "B", "W", "V", "C"]
    print(f"deq.idx, b={b} d={d} h={h} c={c}, float64")
    worst = 0.0
    for tol in (1e-3, 1e-6, 1e-9, 1e-12):
        m = ig.compile(EXAMPLE, tol=tol)
        EVALUATIONS.clear()
        vals = m.forward(**data)
        m.backward(vals, wrt=params)
        forward_iterations, backward_iterations = EVALUATIONS
        fwd = median_seconds(lambda m=m: m.forward(**data), a.reps)
        bwd = median_seconds(lambda m=m, vals=vals: m.backward(vals, wrt=params), a.reps)
        tracemalloc.start()
        m.forward(**data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        worst = max(worst, bwd / fwd)
        print(
            f"tol {tol:.0e}: forward {1e3 * fwd:7.2f} ms, {forward_iterations:3d} evaluations of f, "
            f"peak {peak / 2**20:5.2f} MiB; backward {1e3 * bwd:7.2f} ms = {bwd / fwd:.2f}x forward "
            f"(the adjoint's fix: {backward_iterations} evaluations)"
        )
    ok = worst <= 1.5
    print(f"backward / forward at most {worst:.2f}x: {'within' if ok else 'OVER'} the 1.5x bound")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
