"""Elementwise functions and reductions: each entry holds its numpy forward and its derivative."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .nodes import Call, Expr, Num, Power, Product, Sum

Array = np.ndarray


def _mul(*factors: Expr) -> Expr:
    return Product(tuple(factors), (False,) * len(factors))


def _add(a: Expr, b: Expr, sign: int = 1) -> Expr:
    return Sum((a, b), (1, sign))


def _half_sign(a: Expr, b: Expr, sign: int) -> Expr:
    """(1 ± sign(a - b)) / 2: the max/min gate's derivative, splitting ties equally."""
    return _add(Num(0.5), _mul(Num(0.5), Call("sign", (_add(a, b, -1),))), sign)


@dataclass(frozen=True)
class Function:
    """An elementwise function: forward on arrays, and d f / d arg_n written from args and output y."""

    name: str
    arity: int
    forward: Callable[..., Array]
    derivative: Callable[..., tuple[Expr | None, ...]]  # (args..., y) -> one Expr per argument
    positive_domain: bool = False  # check and random inputs keep its argument positive


def _sigmoid(x: Array) -> Array:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # never overflows


def _log(x: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)  # log 0 = -inf on purpose


def _sqrt(x: Array) -> Array:
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


def _exp(x: Array) -> Array:
    with np.errstate(over="ignore"):
        return np.exp(x)


_ZERO_ROWS: dict[tuple[int, np.dtype], Array] = {}


def zero_row(n: int, dtype: np.dtype) -> Array:
    """A read-only row of n zeros of this dtype (cached up to 65536 entries)."""
    key = (n, dtype)
    zeros = _ZERO_ROWS.get(key)
    if zeros is None:
        zeros = np.zeros(n, dtype)
        zeros.flags.writeable = False
        if n <= 1 << 16:
            _ZERO_ROWS[key] = zeros
    return zeros


def relu(x: Array, out: Array | None = None) -> Array:
    """max(x, 0). A float array whose last axis has 16 or more entries is compared against a
    row of zeros (`zero_row`) rather than the scalar 0: numpy's loop for an array operand is
    several times faster than its loop for a scalar one, and gives the same values bit for bit
    (NaNs and signed zeros included)."""
    if type(x) is np.ndarray and x.ndim and x.dtype.kind == "f" and x.shape[-1] >= 16:
        return np.maximum(x, zero_row(x.shape[-1], x.dtype), out=out)
    return np.maximum(x, 0, out=out)


def _step(x: Array) -> Array:
    x = np.asarray(x)
    return (x > 0).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def _eq(a: Array, b: Array) -> Array:
    out = np.equal(a, b)
    dtype = np.result_type(a, b)
    return out.astype(dtype if dtype.kind == "f" else np.float64)


FUNCTIONS: dict[str, Function] = {}


def register(f: Function) -> Function:
    FUNCTIONS[f.name] = f
    return f


register(Function("relu", 1, relu, lambda u, y: (Call("step", (u,)),)))
register(Function("sigmoid", 1, _sigmoid, lambda u, y: (_mul(y, _add(Num(1), y, -1)),)))
register(Function("tanh", 1, np.tanh, lambda u, y: (_add(Num(1), Power(y, 2), -1),)))
register(Function("exp", 1, _exp, lambda u, y: (y,)))
register(Function("log", 1, _log, lambda u, y: (Power(u, -1),), positive_domain=True))
register(Function("sqrt", 1, _sqrt, lambda u, y: (_mul(Num(0.5), Power(y, -1)),), positive_domain=True))
register(Function("sin", 1, np.sin, lambda u, y: (Call("cos", (u,)),)))
register(Function("cos", 1, np.cos, lambda u, y: (_mul(Num(-1), Call("sin", (u,))),)))
register(Function("abs", 1, np.abs, lambda u, y: (Call("sign", (u,)),)))
register(Function("softplus", 1, lambda x: np.logaddexp(0, x), lambda u, y: (Call("sigmoid", (u,)),)))
register(Function("step", 1, _step, lambda u, y: (None,)))
register(Function("sign", 1, np.sign, lambda u, y: (None,)))
register(
    Function(
        "max",
        2,
        np.maximum,
        lambda a, b, y: (_half_sign(a, b, 1), _half_sign(a, b, -1)),
    )
)
register(
    Function(
        "min",
        2,
        np.minimum,
        lambda a, b, y: (_half_sign(a, b, -1), _half_sign(a, b, 1)),
    )
)
register(Function("eq", 2, _eq, lambda a, b, y: (None, None)))


def _logsumexp(x: Array, axis: tuple[int, ...]) -> Array:
    if any(x.shape[a] == 0 for a in axis):  # log of an empty sum
        return np.full([d for k, d in enumerate(x.shape) if k not in axis], -np.inf, x.dtype)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


REDUCTIONS: dict[str, Callable[[Array, tuple[int, ...]], Array]] = {
    "sum": lambda x, axis: np.sum(x, axis=axis),
    "mean": lambda x, axis: np.mean(x, axis=axis),
    "max": lambda x, axis: np.max(x, axis=axis),
    "min": lambda x, axis: np.min(x, axis=axis),
    "logsumexp": _logsumexp,
}

RESERVED = frozenset(FUNCTIONS) | frozenset(REDUCTIONS) | {"size"}


def reserved_kind(name: str) -> str:
    """What a reserved name is, in words: a "function", a "reduction", or just "reserved"."""
    return "function" if name in FUNCTIONS else "reduction" if name in REDUCTIONS else "reserved"
