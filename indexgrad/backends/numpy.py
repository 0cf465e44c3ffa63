"""The numpy backend: one builder per step kind, each turning a Step into a call of numpy.

A builder reads nothing but the Step: its call, operands, layout and `into` say everything. The
closures it returns hold only what the Step says, worked out once (permutations, shapes, a
vector of ones), so that a run is a loop of numpy calls.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import opt_einsum as oe
from numpy.lib.stride_tricks import as_strided

from ..errors import IndexgradError
from ..functions import FUNCTIONS, REDUCTIONS
from ..plan import Operand, Plan, Step
from . import Builder, Env, Runner, builder_for

Array = np.ndarray
Compute = Callable[[Env], Any]


def _same(a: Array) -> Array:
    return a


def aligner(names: tuple[str, ...], out: tuple[str, ...], size: dict[str, int]) -> Callable[[Array], Array]:
    """A function putting an array's axes (named `names`) in the order of `out`, with length-1 axes
    for the names it lacks (numpy then broadcasts it)."""
    if names == out or names == out[len(out) - len(names) :]:
        return _same  # already in order, or the trailing axes: broadcasting lines it up
    order = [names.index(n) for n in out if n in names]
    identity = order == list(range(len(order)))
    if len(order) == len(out):
        return _same if identity else (lambda a: a.transpose(order))
    shape = tuple(size[n] if n in names else 1 for n in out)
    if identity:
        return lambda a: a.reshape(shape)
    return lambda a: a.transpose(order).reshape(shape)


def _sizes(step: Step) -> dict[str, int]:
    size = dict(zip(step.axes, step.shape))
    for o in step.inputs:
        size.update(zip(o.axes, o.shape))
    return size


def _raised(k: float) -> Callable[[Array], Array] | None:
    """a**k by its cheapest ufunc, without warnings (IEEE results); None for k = 1."""
    if k == 1:
        return None
    if k == 2:
        return lambda a: a * a
    if k == -1:
        return np.errstate(divide="ignore")(lambda a: np.reciprocal(a) if a.dtype.kind == "f" else 1.0 / a)
    if k == 0.5:
        return np.errstate(invalid="ignore")(np.sqrt)
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")(lambda a: np.power(a, k))


def _get(o: Operand) -> Callable[[Env], Array]:
    """Reads an operand from env, raised to its power."""
    name, raise_ = o.name, _raised(o.power)
    if raise_ is None:
        return lambda env: env[name]
    return lambda env: raise_(env[name])


def _mover(sum_axes: tuple[int, ...], perm: Any, shape: Any) -> Callable[[Array], Array] | None:
    """What lays an operand out for its call: a sum over the axes only it has, a transpose, a reshape."""
    if not sum_axes and perm is None and shape is None:
        return None
    if not sum_axes and shape is None:
        return (lambda x: x.T) if perm == (1, 0) else (lambda x: x.transpose(perm))
    if not sum_axes and perm is None:
        return lambda x: x.reshape(shape)
    if not sum_axes:
        return lambda x: x.transpose(perm).reshape(shape)

    def move(x: Array) -> Array:
        x = np.add.reduce(x, axis=sum_axes)
        if perm is not None:
            x = x.transpose(perm)
        return x if shape is None else x.reshape(shape)

    return move


def _finish(step: Step, body: Compute) -> Compute:
    """The body's result times the coefficient, broadcast to the step's axes when an index is in
    no operand (a gradient that broadcasts)."""
    coef = step.args.get("coef", 1)
    kept = step.args.get("kept", step.axes)
    if kept == step.axes:
        return body if coef == 1 else (lambda env: body(env) * coef)
    widen, shape = aligner(kept, step.axes, _sizes(step)), step.shape
    if coef == 1:
        return lambda env: np.broadcast_to(widen(body(env)), shape)
    return lambda env: np.broadcast_to(widen(body(env) * coef), shape)


# ---- contractions ----------------------------------------------------------------------------


def _pairwise(step: Step) -> Compute:
    """matmul, vecdot or a broadcast product of two operands laid out as `plan.pair_layout` says
    (its a_* and b_* settings are the call's first and second operand: inputs[1] first on `swap`)."""
    args = step.args
    first, second = step.inputs[::-1] if args["swap"] else step.inputs
    call = {"matmul": np.matmul, "vecdot": np.vecdot, "multiply": np.multiply}[step.call]
    ga, gb = _get(first), _get(second)
    ma = _mover(args["a_sum"], args["a_perm"], args["a_shape"])
    mb = _mover(args["b_sum"], args["b_perm"], args["b_shape"])
    res_shape, res_perm = args["res_shape"], args["res_perm"]
    donor = step.donor
    if donor is not None:  # a product into the buffer of the operand that dies here
        other, move = (gb, mb) if donor == first.name else (ga, ma)
        if move is None:
            return lambda env: np.multiply(env[donor], other(env), out=env[donor])
        return lambda env: np.multiply(env[donor], move(other(env)), out=env[donor])
    if ma is None and mb is None and res_shape is None and res_perm is None:
        return lambda env: call(ga(env), gb(env))

    def product(env: Env) -> Array:
        x, y = ga(env), gb(env)
        r = call(x if ma is None else ma(x), y if mb is None else mb(y))
        if res_shape is not None:
            r = r.reshape(res_shape)
        return r if res_perm is None else r.transpose(res_perm)

    return product


def _scale(step: Step) -> Compute:
    """A tensor times a scalar tensor and the coefficient (into the tensor's buffer when it dies)."""
    s = step.inputs[step.args["scalar"]]
    t = step.inputs[1 - step.args["scalar"]]
    sn, tn, coef = s.name, t.name, step.args["coef"]
    if step.donor is not None:
        return lambda env: np.multiply(env[tn], env[sn][()] * coef, out=env[tn])
    return lambda env: np.multiply(env[tn], env[sn][()] * coef)


def _dot(step: Step) -> Compute:
    """Σ a² as one BLAS dot product of a with itself, times the coefficient."""
    name, coef = step.inputs[0].name, step.args["coef"]

    def dot(env: Env) -> Array:
        a = env[name].ravel()
        return np.asarray(np.dot(a, a) * coef)

    widen = aligner((), step.axes, _sizes(step))
    if not step.axes:
        return dot
    return lambda env: np.broadcast_to(widen(dot(env)), step.shape)


def _copy(step: Step) -> Compute:
    (o,) = step.inputs
    get, perm = _get(o), step.args["perm"]
    body = get if perm == tuple(range(len(perm))) else (lambda env: get(env).transpose(perm))
    return _finish(step, body)


def _sum(step: Step) -> Compute:
    (o,) = step.inputs
    get, over, perm = _get(o), step.args["over"], step.args["perm"]
    if perm == tuple(range(len(perm))):
        return _finish(step, lambda env: np.add.reduce(get(env), axis=over))
    return _finish(step, lambda env: np.add.reduce(get(env), axis=over).transpose(perm))


def _ones_sum(step: Step) -> Compute:
    """A sum over leading (trailing) axes as a product with a vector of ones: BLAS runs it about
    twice as fast as np.add.reduce."""
    (o,) = step.inputs
    name, over, shape = o.name, step.args["over"], o.shape
    nd, k = len(shape), len(over)
    mm = np.matmul
    if over == tuple(range(k)):
        ones = np.ones(math.prod(shape[:k]), step.dtype)
        rest = shape[k:]
        body = (lambda env: mm(ones, env[name])) if nd == 2 else (lambda env: mm(ones, env[name].reshape(len(ones), -1)).reshape(rest))
    else:
        ones = np.ones(math.prod(shape[nd - k :]), step.dtype)
        lead = shape[: nd - k]
        body = (lambda env: mm(env[name], ones)) if nd == 2 else (lambda env: mm(env[name].reshape(-1, len(ones)), ones).reshape(lead))
    return _finish(step, body)


def _einsum(step: Step) -> Compute:
    expression = oe.contract_expression(step.args["equation"], *[o.shape for o in step.inputs], optimize=step.args["path"])
    gets = [_get(o) for o in step.inputs]
    return lambda env: expression(*[g(env) for g in gets])


_CONTRACTIONS: dict[str, Callable[[Step], Compute]] = {
    "matmul": _pairwise,
    "vecdot": _pairwise,
    "multiply": _pairwise,
    "scale": _scale,
    "dot": _dot,
    "copy": _copy,
    "sum": _sum,
    "ones_sum": _ones_sum,
    "einsum": _einsum,
}


def contract(step: Step) -> Compute:
    body = _CONTRACTIONS[step.call](step)
    if step.call in ("matmul", "vecdot", "multiply", "einsum"):
        return _finish(step, body)
    return body


# ---- elementwise work, sums of terms, reductions, constants ---------------------------------


def elementwise(step: Step) -> Compute:
    size = _sizes(step)
    if step.call == "mask":
        (u,) = step.inputs
        name = u.name
        return lambda env: np.greater(env[name], 0)
    fn = FUNCTIONS[step.call].forward
    if step.donor is not None:
        name = step.donor
        return lambda env: fn(env[name], out=env[name])
    getters: list[Callable[[Env], Any]] = []
    ops = iter(step.inputs)
    for c in step.args["constants"]:
        if c is None:
            o = next(ops)
            getters.append(_aligned(o, step.axes, size))
        else:
            getters.append(lambda env, c=c: c)  # a Python float keeps float32 float32
    if len(getters) == 1:
        (g,) = getters
        return _full(step, lambda env: fn(g(env)))
    return _full(step, lambda env: fn(*[g(env) for g in getters]))


def _aligned(o: Operand, out: tuple[str, ...], size: dict[str, int]) -> Callable[[Env], Array]:
    align, name = aligner(o.axes, out, size), o.name
    if align is _same:
        return lambda env: env[name]
    return lambda env: align(env[name])


def _full(step: Step, body: Compute) -> Compute:
    """The result broadcast to the step's shape when its operands lack some of its axes."""
    present = {n for o in step.inputs for n in o.axes}
    if all(n in present for n in step.axes) and step.inputs:
        return body
    shape = step.shape
    return lambda env: np.broadcast_to(body(env), shape)


def terms(step: Step) -> Compute:
    size = _sizes(step)
    gets = [_aligned(o, step.axes, size) for o in step.inputs]
    coefs, const = step.args["coefs"], step.args["constant"]
    if step.call in ("add", "subtract"):
        op = np.add if step.call == "add" else np.subtract
        g0, g1 = gets
        if step.donor == step.inputs[0].name:
            n0 = step.donor
            return lambda env: op(env[n0], g1(env), out=env[n0])
        if step.donor == step.inputs[1].name:
            n1 = step.donor
            return lambda env: op(g0(env), env[n1], out=env[n1])
        return _full(step, lambda env: op(g0(env), g1(env)))
    rest = list(zip(coefs[1:], gets[1:]))
    first = step.donor

    def total(env: Env) -> Any:
        if first is not None:
            t = env[first]
            for c, g in rest:
                if c == 1:
                    np.add(t, g(env), out=t)
                elif c == -1:
                    np.subtract(t, g(env), out=t)  # = t + (-1 * term), exactly
                else:
                    t += g(env) * c
            if const:
                t += const
            return t
        c0, g0 = coefs[0], gets[0]
        t = g0(env) * c0 if c0 != 1 else g0(env)
        for c, g in rest:
            t = t + g(env) if c == 1 else t - g(env) if c == -1 else t + g(env) * c
        return t + const if const else t

    return _full(step, total)


def reduce(step: Step) -> Compute:
    (o,) = step.inputs
    order = step.args["order"]
    align = aligner(o.axes, order, _sizes(step))
    axes = tuple(range(len(step.axes), len(order)))
    red, name = REDUCTIONS[step.call], o.name
    return lambda env: red(align(env[name]), axes)


def fill(step: Step) -> Compute:
    value, shape = step.args["value"], step.shape
    if math.prod(shape) <= 4096:
        return lambda env: np.full(shape, value)
    one = np.float64(value)
    return lambda env: np.broadcast_to(one, shape)


# ---- reads and writes through index arithmetic and labels -----------------------------------


def view(step: Step) -> Compute:
    """A strided view: x[j+k] as an array over (j, k), sharing x's memory."""
    src = step.inputs[0].name
    names, shape = step.axes, step.shape
    pos = {n: k for k, n in enumerate(names)}
    starts = tuple(slice(c, None) for _, c, _ in step.args["positions"])
    terms_ = [(axis, terms) for axis, (_, _, terms) in enumerate(step.args["positions"])]
    unit = tuple(d > 1 for d in shape)

    def read(env: Env) -> Array:
        a = env[src]
        strides = [0] * len(names)
        for axis, ts in terms_:
            for c, n in ts:
                strides[pos[n]] += c * a.strides[axis]
        strides = [st if u else 0 for st, u in zip(strides, unit)]  # a huge unused step stays 0
        return as_strided(a[starts], shape=shape, strides=strides, writeable=False)

    return read


def _index_arrays(step: Step, names: tuple[str, ...], shape: tuple[int, ...], extents: tuple[int, ...]) -> Callable[[Env], tuple[Array, ...]]:
    """Per axis of the tensor read or written, an integer array broadcast over `names`."""
    nd = len(names)
    size = dict(zip(names, shape))
    fixed: list[Any] = []
    for axis, p in enumerate(step.args["positions"]):
        if p[0] == "affine":
            v: Any = np.full([1] * nd, p[1], dtype=np.intp)
            for c, n in p[2]:
                along = [1] * nd
                along[names.index(n)] = size[n]
                v = v + c * np.arange(size[n]).reshape(along)
            fixed.append(v)
        else:
            fixed.append((p[1], aligner(p[2], names, size), axis))
    if all(isinstance(f, np.ndarray) for f in fixed):
        result = tuple(fixed)
        return lambda env: result
    span = step.span

    def arrays(env: Env) -> tuple[Array, ...]:
        out = []
        for f in fixed:
            if isinstance(f, np.ndarray):
                out.append(f)
                continue
            label, align, axis = f
            lab = align(env[label])
            if lab.size and (lab.min() < 0 or lab.max() >= extents[axis]):
                bad = lab.min() if lab.min() < 0 else lab.max()
                raise IndexgradError(
                    f"label {int(bad)} in '{label}' is out of range for axis {axis} of "
                    f"'{step.inputs[0].name if step.kind == 'gather' else step.out}', which has size {extents[axis]}",
                    span,
                )
            out.append(lab)
        return tuple(out)

    return arrays


def gather(step: Step) -> Compute:
    src = step.inputs[0]
    index = _index_arrays(step, step.axes, step.shape, src.shape)
    name = src.name
    return lambda env: env[name][index(env)]


def scatter(step: Step) -> Compute:
    """target[positions] += value: strided slice-adds where each index sits in one axis, else np.add.at."""
    value = step.inputs[0]
    vn, out, shape, dtype = value.name, step.out, step.shape, step.dtype
    slices = _slices(step.args["positions"], value.axes, value.shape)
    index = None if slices is not None else _index_arrays(step, value.axes, value.shape, shape)
    fresh, in_place = step.args["fresh"], step.into == step.out

    def add(env: Env) -> Array:
        if fresh:
            t = np.zeros(shape, dtype)
        elif in_place:
            t = env[out]
        else:
            t = env[out].astype(dtype, copy=True)
        v = env[vn]
        if slices is None:
            np.add.at(t, index(env), v)  # type: ignore[misc]
        else:
            order, moves = slices
            v = v.transpose(order)
            for target, part in moves:
                t[target] += v[part]
        return t

    return add


def _slices(positions: tuple[Any, ...], names: tuple[str, ...], shape: tuple[int, ...]) -> Any:
    """target[r] += value as a few strided slice-adds, one per offset of the smaller indices: each
    axis keeps its largest index as a strided slice and loops over the others (a kernel's offsets).
    None when some name sits in two axes, a label is involved, or the loop would be long."""
    size = dict(zip(names, shape))
    seen: set[str] = set()
    for p in positions:
        if p[0] != "affine":
            return None
        for _, n in p[2]:
            if n in seen:
                return None
            seen.add(n)
    main: list[str | None] = []
    for p in positions:
        cands = [(size[n], c, n) for c, n in p[2] if c > 0]
        main.append(max(cands)[2] if cands else None)
    others = [n for n in names if n not in main]
    if math.prod(size[n] for n in others) > 4096:
        return None
    kept = [m for m in main if m is not None]
    order = [names.index(m) for m in kept] + [names.index(n) for n in others]
    moves = []
    for offs in itertools.product(*(range(size[n]) for n in others)):
        val = dict(zip(others, offs))
        index: list[Any] = []
        for (_, const, terms), m in zip(positions, main):
            start = const + sum(c * val[n] for c, n in terms if n != m)
            if m is None:
                index.append(start)
            else:
                c = dict((n, c) for c, n in terms)[m]
                index.append(slice(start, start + c * (size[m] - 1) + 1, c))
        moves.append((tuple(index), (Ellipsis, *offs)))
    return tuple(order), moves


BUILDERS: dict[str, Callable[[Step], Compute]] = {
    "contract": contract,
    "elementwise": elementwise,
    "terms": terms,
    "reduce": reduce,
    "fill": fill,
    "view": view,
    "gather": gather,
    "scatter": scatter,
}


# ---- the executor ------------------------------------------------------------------------------


def runner(step: Step) -> Runner:
    """A step's compute, then its write: assign, add into the target (in place when `into` is the
    target itself), then drop what dies here."""
    compute = builder_for(BUILDERS, step, "numpy")(step)  # type: ignore[arg-type]
    out, release = step.out, step.release
    scalar = step.shape == ()
    if step.accumulate and step.kind != "scatter":
        in_place = step.into == out

        def run(env: Env) -> None:
            r = compute(env)
            if in_place:
                t = env[out]
                np.add(t, r, out=t)
            else:
                env[out] = np.asarray(env[out] + r)
            for n in release:
                del env[n]

        return run
    if scalar:

        def run_scalar(env: Env) -> None:
            env[out] = np.asarray(compute(env))
            for n in release:
                del env[n]

        return run_scalar
    if not release:

        def run_plain(env: Env) -> None:
            env[out] = compute(env)

        return run_plain

    def run_release(env: Env) -> None:
        env[out] = compute(env)
        for n in release:
            del env[n]

    return run_release


class NumpyExecutor:
    """A Plan made runnable on numpy arrays."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.runners = [runner(s) for s in plan.steps]

    def run(self, env: Env, check_finite: bool = False) -> Env:
        try:
            if not check_finite:
                for r in self.runners:
                    r(env)
                return env
            with np.errstate(all="ignore"):
                for s, r in zip(self.plan.steps, self.runners):
                    r(env)
                    value = env[s.out]
                    if s.dtype != "bool" and not np.all(np.isfinite(value)):
                        bad = "NaN" if np.isnan(value).any() else "Inf"
                        raise IndexgradError(f"this statement produced {bad} in '{s.out}'", s.span)
            return env
        except IndexgradError as e:
            raise e.located(self.plan.filename, self.plan.source) from None


class NumpyBackend:
    name = "numpy"
    in_place = True
    array_types: tuple[type, ...] = (np.ndarray,)

    def executor(self, plan: Plan) -> NumpyExecutor:
        return NumpyExecutor(plan)

    def asarray(self, value: Any, dtype: Any = None) -> Array:
        return np.asarray(value, dtype=dtype)

    def describe(self, a: Array) -> tuple[tuple[int, ...], np.dtype]:
        return a.shape, a.dtype

    def to_numpy(self, a: Array) -> Array:
        return a

    def zeros_like(self, a: Array) -> Array:
        return np.zeros_like(a)

    def contiguous(self, a: Array) -> Array:
        return np.ascontiguousarray(a)

    def copy(self, a: Array) -> Array:
        return np.array(a, order="C", copy=True)

    def one(self, dtype: np.dtype) -> Array:
        one = np.array(1, dtype)
        one.setflags(write=False)
        return one


def make_backend() -> NumpyBackend:
    return NumpyBackend()


__all__ = ["BUILDERS", "Builder", "NumpyBackend", "NumpyExecutor", "aligner", "make_backend"]
