"""Running fix and solve: Anderson acceleration and Newton's method over a backend's nested plans.

The iteration's bookkeeping is numpy (Anderson's small least-squares problem, Newton's Jacobian
blocks and line search); each evaluation of the body runs on the backend through `Runtime`. The
jax backend iterates inside its traced computation instead (backends/jax_iterate.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import IndexgradError

DEFAULT_TOL = {"float64": 1e-12, "float32": 1e-5}
DEFAULT_MAX_ITER = {"fix": 500, "solve": 50}
ANDERSON_M = 5  # the history Anderson starts with
ANDERSON_MOST = 32  # and the longest it grows to when extrapolation stalls


def iteration_settings(tol: Any = None, max_iter: Any = None) -> dict[str, Any]:
    """The tolerance and iteration limit of fix and solve, checked (None: the defaults)."""
    out: dict[str, Any] = {}
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
            raise IndexgradError(f"tol must be a positive number, got {tol!r}")
        out["tol"] = float(tol)
    if max_iter is not None:
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise IndexgradError(f"max_iter must be a positive integer, got {max_iter!r}")
        out["max_iter"] = int(max_iter)
    return out


def not_converged(step: Any, residual: float, iterations: int, more: str = "") -> IndexgradError:
    a = step.args
    what = "fix(...) found no fixed point" if step.kind == "fix" else "solve(...) found no root"
    hint = (
        "f must be a contraction near its fixed point (scale its weights down), or raise max_iter or tol"
        if step.kind == "fix"
        else "start nearer a root, or raise max_iter or tol"
    )
    return IndexgradError(
        f"{what} for '{a['iterate']}': the residual is {residual:.3g} after {iterations} iterations, "
        f"over the tolerance {a['tol']:.3g}{more}; {hint}",
        step.span,
    )


def start_value(step: Any, env: dict[str, Any], dtype: Any, read: Any = np.asarray, xp: Any = np) -> Any:
    """The iteration's first value: zeros, a number, or the start tensor (`read` from env) laid out
    as z and spread over the axes it lacks, as an array of `xp` (numpy, or jax.numpy)."""
    start = step.args["start"]
    if start is None:
        return xp.zeros(step.shape, dtype)
    if isinstance(start, float):
        return xp.full(step.shape, start, dtype)
    name, axes = start
    number = {n: k for k, n in enumerate(dict.fromkeys(axes))}
    kept = [number[n] for n in step.axes if n in number]
    value = xp.einsum(read(env[name]), [number[n] for n in axes], kept)
    value = value.reshape([d if n in number else 1 for n, d in zip(step.axes, step.shape)])
    return xp.array(xp.broadcast_to(value, step.shape), dtype=dtype)


def _body(step: Any, backend: Runtime) -> tuple[Any, Any]:
    """(prepare, f): prepare(env) runs the setup plan once and gathers what the body reads;
    f(fixed, z) runs the body's plan on the backend's executor, giving (its value as a numpy
    array, the body's env)."""
    a = step.args
    run = backend.executor(a["body"]).run
    setup = a["setup"]
    run_setup = backend.executor(setup).run if setup is not None else None
    z, r = a["iterate"], a["result"]
    reads = [n for n, _, _ in a["body"].inputs if n != z]

    def prepare(env: dict[str, Any]) -> dict[str, Any]:
        if run_setup is None:
            return {n: env[n] for n in reads}
        e = {n: env[n] for n, _, _ in setup.inputs}
        run_setup(e)
        return {n: e[n] if n in e else env[n] for n in reads}

    def f(fixed: dict[str, Any], x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        e = dict(fixed)
        e[z] = backend.asarray(x)
        run(e)
        return backend.to_numpy(e[r]), e

    return prepare, f


def _residual(x: np.ndarray, fx: np.ndarray) -> float:
    """max |f(z) - z| relative to the size of z (1 when z is small)."""
    return float(np.max(np.abs(fx - x), initial=0.0) / (1.0 + np.max(np.abs(fx), initial=0.0)))


def anderson(
    f: Any, x0: np.ndarray, tol: float, max_iter: int, m: int, most: int = 32
) -> tuple[np.ndarray | None, float, int]:
    """The fixed point of f from x0 by Anderson acceleration (type II, Walker and Ni 2011).

    Starts with a history of m; when the extrapolation diverges or stops improving for 4m
    iterations, restarts from the best iterate with twice the history (up to `most`, which for a
    linear f of n <= `most` entries is exact in n + 1 steps, as GMRES is), and past that falls
    back to plain iteration. Returns (the point or None, the best residual, f's evaluations).
    Memory: the last m iterates and values, whatever the number of iterations."""
    shape, n = x0.shape, x0.size
    used = 0

    def g(v: np.ndarray) -> np.ndarray:
        nonlocal used
        used += 1
        return np.asarray(f(v.reshape(shape))).ravel()

    x = x0.ravel()
    fx = g(x)
    best, best_x = _residual(x, fx), fx.copy()
    plain = False
    while used < max_iter and best > tol:
        if plain:
            x, fx = fx, g(fx)
            res = _residual(x, fx)
            if res < best:
                best, best_x = res, fx.copy()
            continue
        fx, res, stalled = _anderson_round(g, best_x, tol, max_iter - used, m, x0.dtype)
        if res < best:
            best, best_x = res, fx.copy()
        if stalled:
            plain = m >= min(most, n)
            m = min(2 * m, most)
            if plain:
                x, fx = best_x, g(best_x)
    return (best_x.reshape(shape) if best <= tol else None), best, used


def _anderson_round(
    g: Any, x0: np.ndarray, tol: float, budget: int, m: int, dtype: np.dtype
) -> tuple[np.ndarray, float, bool]:
    """One run of Anderson(m) from x0 within `budget` evaluations of g: its best f-value and
    residual, and whether it stopped because the extrapolation diverged or stalled."""
    n = x0.size
    X = np.zeros((m, n), dtype)
    F = np.zeros((m, n), dtype)
    X[0], F[0] = x0, g(x0)
    best, best_f, since = _residual(X[0], F[0]), F[0].copy(), 0
    H = np.zeros((m + 1, m + 1))
    H[0, 1:] = H[1:, 0] = 1
    y = np.zeros(m + 1)
    y[0] = 1
    for k in range(1, budget):
        if best <= tol:
            break
        h = min(k, m)
        G = (F[:h] - X[:h]).astype(np.float64)
        gram = G @ G.T
        scale = float(np.trace(gram)) / h
        H[1 : h + 1, 1 : h + 1] = gram + 1e-10 * (scale if scale > 0 else 1.0) * np.eye(h)
        try:
            alpha = np.linalg.solve(H[: h + 1, : h + 1], y[: h + 1])[1 : h + 1]
        except np.linalg.LinAlgError:
            return best_f, best, True
        x = (alpha @ F[:h]).astype(dtype)
        X[k % m], F[k % m] = x, g(x)
        res = _residual(X[k % m], F[k % m])
        if res < best:
            best, best_f, since = res, F[k % m].copy(), 0
        else:
            since += 1
        if not math.isfinite(res) or res > 1e3 * best or since > 4 * m:
            return best_f, best, True
    return best_f, best, False


@dataclass(frozen=True)
class Runtime:
    """What fix and solve need of a backend: its executor for the nested plans, and its arrays
    to and from numpy (the iterations' bookkeeping: Anderson's least squares, Newton's blocks)."""

    executor: Callable[[Any], Any]
    to_numpy: Callable[[Any], np.ndarray]
    asarray: Callable[[np.ndarray], Any]


def builders(backend: Runtime) -> dict[str, Callable[[Any], Any]]:
    """The builders of the `fix` and `solve` step kinds for a backend's registry."""
    return {"fix": lambda step: build_fix(step, backend), "solve": lambda step: build_solve(step, backend)}


def build_fix(step: Any, backend: Runtime) -> Any:
    """A fix step as a compute: env -> the fixed point."""
    a = step.args
    prepare, body = _body(step, backend)
    dtype = np.dtype(step.dtype)

    def compute(env: dict[str, Any]) -> np.ndarray:
        fixed = prepare(env)

        def f(x: np.ndarray) -> np.ndarray:
            return body(fixed, x)[0]

        with np.errstate(all="ignore"):
            x0 = start_value(step, env, dtype, backend.to_numpy)
            z, res, used = anderson(f, x0, a["tol"], a["max_iter"], a["m"], a["most"])
        if z is None:
            raise not_converged(step, res, used)
        return backend.asarray(z)

    return compute


def build_solve(step: Any, backend: Runtime) -> Any:
    """A solve step as a compute: Newton's method with a backtracking line search, the Jacobian
    formed block by block from the tangent plan (one tangent run per entry of a block)."""
    a = step.args
    prepare, body = _body(step, backend)
    tangent = backend.executor(a["tangent"]).run
    treads = [n for n, _, _ in a["tangent"].inputs if n != a["direction"]]
    dtype = np.dtype(step.dtype)
    shape, diagonal = step.shape, a["diagonal"]
    perm = tuple(diagonal) + tuple(k for k in range(len(shape)) if k not in diagonal)
    inverse = tuple(np.argsort(perm))
    nd = math.prod(shape[k] for k in diagonal)
    block = math.prod(shape) // max(nd, 1) if nd else 0

    def rows(v: np.ndarray) -> np.ndarray:
        return v.transpose(perm).reshape(nd, block)

    def jacobian(e: dict[str, Any]) -> np.ndarray:
        J = np.empty((nd, block, block), np.float64)
        base = {n: e[n] for n in treads}
        for col in range(block):
            direction = np.zeros((nd, block), dtype)
            direction[:, col] = 1
            t = dict(base)
            t[a["direction"]] = backend.asarray(
                direction.reshape([shape[k] for k in perm]).transpose(inverse)
            )
            tangent(t)
            J[:, :, col] = rows(np.broadcast_to(backend.to_numpy(t[a["slope"]]), shape))
        return J

    def blocks(t: np.ndarray) -> np.ndarray:
        """One value per diagonal block, spread over z's shape."""
        return np.broadcast_to(t[:, None], (nd, block)).reshape([shape[k] for k in perm]).transpose(inverse)

    def compute(env: dict[str, Any]) -> Any:
        x = start_value(step, env, dtype, backend.to_numpy)
        fixed = prepare(env)
        with np.errstate(all="ignore"):
            gx, e = body(fixed, x)
            res = float(np.max(np.abs(gx), initial=0.0))
            for it in range(a["max_iter"] + 1):
                if res <= a["tol"]:
                    return backend.asarray(x)
                if it == a["max_iter"] or not math.isfinite(res):
                    break
                try:
                    d = np.linalg.solve(jacobian(e), -rows(gx)[..., None].astype(np.float64))[..., 0]
                except np.linalg.LinAlgError:
                    raise not_converged(
                        step, res, it, f"; its Jacobian in '{a['iterate']}' is singular there"
                    ) from None
                d = d.reshape([shape[k] for k in perm]).transpose(inverse).astype(dtype)
                # backtracking (Armijo) per diagonal block, which are independent problems: each
                # block's step is halved until its residual shrinks enough
                norm = np.linalg.norm(rows(gx), axis=1)
                t = np.ones(nd)
                while True:
                    xn = x + blocks(t).astype(dtype) * d
                    gn, en = body(fixed, xn)
                    short = ~(np.linalg.norm(rows(gn), axis=1) <= (1 - 1e-4 * t) * norm)  # NaN: short
                    if not short.any() or t.min() < 1e-6:
                        break
                    t = np.where(short, t / 2, t)
                x, gx, e = xn, gn, en
                res = float(np.max(np.abs(gx), initial=0.0))
        raise not_converged(step, res, it)

    return compute
