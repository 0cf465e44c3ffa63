"""Elementwise functions and reductions: each entry holds its numpy forward and its derivative."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .nodes import MODES, Call, Expr, Num, Power, Product, Sum

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
    """An elementwise function: its numpy forward, and d f / d arg_n written from args and output y.

    A one-argument forward takes `out=` too, so that a planned step may write the result into
    its argument's buffer with the same numpy calls, in the same order (the same values)."""

    name: str
    arity: int
    forward: Callable[..., Array]
    derivative: Callable[..., tuple[Expr | None, ...]]  # (args..., y) -> one Expr per argument
    positive_domain: bool = False  # check and random inputs keep its argument positive


def sigmoid(x: Array, out: Array | None = None) -> Array:
    """1 / (1 + exp(-x)), exact to rounding in both tails and never overflowing.

    exp(-|x|) lies in [0, 1]; x >= 0 gives 1 / (1 + e) and x < 0 gives e / (1 + e), so
    sigmoid(-40) is 4.2e-18 in float64 and sigmoid(-20) 2.1e-9 in float32, where
    0.5 (1 + tanh(x / 2)) rounds both to 0. `out` may be x itself (an in-place step).
    """
    x = np.asarray(x)
    negative = x < 0  # before `out`, which may be x, is written
    e = np.abs(x, out=np.empty(x.shape, np.result_type(x.dtype, np.float16)))  # the one scratch array
    np.negative(e, out=e)
    np.exp(e, out=e)
    out = np.add(e, 1, out=np.empty_like(e) if out is None else out)
    np.divide(1, out, out=out)
    return np.multiply(e, out, out=out, where=negative)


@np.errstate(divide="ignore", invalid="ignore")  # log 0 = -inf on purpose
def _log(x: Array, out: Array | None = None) -> Array:
    return np.log(x, out=out)


@np.errstate(invalid="ignore")
def _sqrt(x: Array, out: Array | None = None) -> Array:
    return np.sqrt(x, out=out)


@np.errstate(over="ignore")
def _exp(x: Array, out: Array | None = None) -> Array:
    return np.exp(x, out=out)


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


def _step(x: Array, out: Array | None = None) -> Array:
    x = np.asarray(x)
    if out is not None:
        return np.greater(x, 0, out=out, casting="unsafe")
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
register(Function("sigmoid", 1, sigmoid, lambda u, y: (_mul(y, _add(Num(1), y, -1)),)))
register(Function("tanh", 1, np.tanh, lambda u, y: (_add(Num(1), Power(y, 2), -1),)))
register(Function("exp", 1, _exp, lambda u, y: (y,)))
register(Function("log", 1, _log, lambda u, y: (Power(u, -1),), positive_domain=True))
register(Function("sqrt", 1, _sqrt, lambda u, y: (_mul(Num(0.5), Power(y, -1)),), positive_domain=True))
register(Function("sin", 1, np.sin, lambda u, y: (Call("cos", (u,)),)))
register(Function("cos", 1, np.cos, lambda u, y: (_mul(Num(-1), Call("sin", (u,))),)))
register(Function("abs", 1, np.abs, lambda u, y: (Call("sign", (u,)),)))
def _softplus(x: Array, out: Array | None = None) -> Array:
    return np.logaddexp(0, x, out=out)


register(Function("softplus", 1, _softplus, lambda u, y: (Call("sigmoid", (u,)),)))

_ERF = np.frompyfunc(math.erf, 1, 1)


def _erf(x: Array, out: Array | None = None) -> Array:
    """The error function (GELU's exact form), entry by entry through the C library's erf:
    numpy has none, and a polynomial fit would not agree with torch.erf to the last bits."""
    x = np.asarray(x)
    y = np.asarray(_ERF(x), dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    if out is None:
        return y
    out[...] = y
    return out


# d/du erf(u) = 2/sqrt(pi) exp(-u^2)
def _erf_slope(u: Expr) -> Expr:
    return _mul(Num(2 / math.sqrt(math.pi)), Call("exp", (_mul(Num(-1), Power(u, 2)),)))


register(Function("erf", 1, _erf, lambda u, y: (_erf_slope(u),)))
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


def _where(c: Array, a: Array, b: Array) -> Array:
    out = np.where(np.not_equal(c, 0), a, b)
    if out.dtype.kind != "f":  # two numbers, as in the derivative's where(c, 1, 0): c's float dtype
        dtype = np.asarray(c).dtype
        out = out.astype(dtype if dtype.kind == "f" else np.float64)
    return out


# where(c, a, b): the gradient follows the chosen branch; the condition gets none
register(
    Function(
        "where",
        3,
        _where,
        lambda c, a, b, y: (None, Call("where", (c, Num(1), Num(0))), Call("where", (c, Num(0), Num(1)))),
    )
)


def _comparison(test: Callable[[Array, Array], Array]) -> Callable[[Array, Array], Array]:
    def compare(a: Array, b: Array) -> Array:
        dtype = np.result_type(a, b)
        return np.asarray(test(a, b)).astype(dtype if dtype.kind == "f" else np.float64)

    return compare


# comparisons `a < b` ...: 1 where they hold, else 0, and no gradient (written infix, see Compare)
COMPARISONS = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
for _op, _test in COMPARISONS.items():
    register(Function(_op, 2, _comparison(_test), lambda a, b, y: (None, None)))


def _mean(x: Array, axes: tuple[int, ...]) -> Array:
    """np.mean's own steps (sum, then true division by the count as np.intp) without its wrappers."""
    if x.dtype.kind != "f" or x.dtype.itemsize < 4:
        return np.mean(x, axis=axes)  # integers and float16 take numpy's other paths
    if len(axes) == x.ndim and x.size and x.dtype.itemsize <= 8:  # the sum over the count in float64
        return np.array(float(np.add.reduce(x, axis=axes)) / x.size, x.dtype)
    count = np.intp(math.prod([x.shape[a] for a in axes]))
    whole = len(axes) == x.ndim  # a 0-d array, not a numpy scalar: the same value
    s = np.add.reduce(x, axis=axes, keepdims=whole)
    np.true_divide(s, count, out=s, casting="unsafe")
    return s.reshape(()) if whole else s


def _logsumexp(x: Array, axes: tuple[int, ...]) -> Array:
    """log Σ exp over `axes`, shifted by the maximum so that it never overflows.

    When every maximum is finite, the maxima are used as they are and nothing can divide by
    zero, so that case skips the masking and the error-state switch."""
    shape = tuple(d for k, d in enumerate(x.shape) if k not in axes)
    if not x.size:  # log of an empty sum (or nothing to compute)
        return np.full(shape, -np.inf, x.dtype)
    m = np.maximum.reduce(x, axis=axes, keepdims=True)
    if x.dtype.kind != "f" or not np.logical_and.reduce(np.isfinite(m), axis=None):
        m = np.where(np.isfinite(m), m, 0)
        with np.errstate(divide="ignore"):
            return (np.log(np.add.reduce(np.exp(x - m), axis=axes, keepdims=True)) + m).reshape(shape)
    e = np.subtract(x, m)
    np.exp(e, out=e)
    s = np.add.reduce(e, axis=axes, keepdims=True)
    np.log(s, out=s)
    s += m
    return s.reshape(shape)


REDUCTIONS: dict[str, Callable[[Array, tuple[int, ...]], Array]] = {
    "sum": lambda x, axes: np.add.reduce(x, axis=axes),
    "mean": _mean,
    "max": lambda x, axes: np.maximum.reduce(x, axis=axes),
    "min": lambda x, axes: np.minimum.reduce(x, axis=axes),
    "logsumexp": _logsumexp,
}

CALLS = tuple(sorted(n for n in FUNCTIONS if n not in COMPARISONS))  # the names a call may use
IMPLICIT = ("fix", "solve")  # reserved for implicit layers
RESERVED = frozenset(CALLS) | frozenset(REDUCTIONS) | {"size", "delta", *MODES, *IMPLICIT}


def reserved_kind(name: str) -> str:
    """What a reserved name is, in words: a "function", a "reduction", or just "reserved"."""
    return "function" if name in FUNCTIONS else "reduction" if name in REDUCTIONS else "reserved"
