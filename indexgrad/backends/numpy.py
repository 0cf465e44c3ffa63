"""The numpy backend: one builder per step kind, each turning a Step into a call of numpy.

A builder reads nothing but the Step: its call, operands, layout and `into` say everything. The
closures it returns hold only what the Step says, worked out once (permutations, shapes, a
vector of ones), so that a run is a loop of numpy calls.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from operator import attrgetter, itemgetter, methodcaller
from typing import Any

import numpy as np
import opt_einsum as oe
from numpy.lib.stride_tricks import as_strided

from .. import iterate, positions
from ..errors import IndexgradError
from ..functions import FUNCTIONS, REDUCTIONS
from ..memory import keep_freed_memory
from ..nodes import DELTA, Affine, Gather, Ref
from ..plan import Operand, Plan, Step
from . import Builder, Chain, Env, builder_for, float_option, model_dtype

Array = np.ndarray
Compute = Callable[[Env], Any]


def alignment(
    names: tuple[str, ...], out: tuple[str, ...], size: dict[str, int]
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None] | None:
    """How an array's axes (named `names`) are put in the order of `out`: the transpose, then the
    reshape that adds length-1 axes for the names it lacks (the library then broadcasts it);
    either may be None, and None for both when nothing needs doing. Data, for every backend."""
    if names == out or names == out[len(out) - len(names) :]:
        return None  # already in order, or the trailing axes: broadcasting lines it up
    order = tuple(names.index(n) for n in out if n in names)
    perm = None if order == tuple(range(len(order))) else order
    if len(order) == len(out):
        return perm, None
    return perm, tuple(size[n] if n in names else 1 for n in out)


def aligner(
    names: tuple[str, ...], out: tuple[str, ...], size: dict[str, int]
) -> Callable[[Array], Array] | None:
    """What puts an array's axes (named `names`) in the order of `out` (see `alignment`) with
    numpy's calls; None when nothing needs doing."""
    how = alignment(names, out, size)
    if how is None:
        return None
    perm, shape = how
    return _then(
        None if perm is None else methodcaller("transpose", perm),
        None if shape is None else methodcaller("reshape", shape),
    )


def sizes(step: Step) -> dict[str, int]:
    """The size of every index name a step's result and operands have."""
    size = dict(zip(step.axes, step.shape))
    for o in step.inputs:
        size.update(zip(o.axes, o.shape))
    return size


def _raised(k: float, dtype: str) -> Callable[[Array], Array] | None:
    """a**k by its cheapest ufunc, without warnings (IEEE results); None for k = 1."""
    if k == 1:
        return None
    if k == 2:
        return np.square  # x * x, exactly
    if k == -1 and np.dtype(dtype).kind == "f":
        return np.errstate(divide="ignore")(np.reciprocal)
    if k == 0.5:
        return np.errstate(invalid="ignore")(np.sqrt)
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")(lambda a: np.power(a, k))


def _then(
    f: Callable[[Array], Array] | None, g: Callable[[Array], Array] | None
) -> Callable[[Array], Array] | None:
    """g after f, either of which may be None (nothing to do)."""
    if f is None or g is None:
        return f if g is None else g
    return lambda a: g(f(a))


def _mover(
    sum_axes: tuple[int, ...], perm: Any, shape: Any, flip: bool = False
) -> Callable[[Array], Array] | None:
    """What lays an operand out for its call: a sum over the axes only it has, a transpose, a
    reshape (a copy, when the transpose or a strided view cannot be reshaped in place), and with
    `flip` the matrices handed over transposed (BLAS reads them so, without copying); each one
    C-level call."""
    steps: list[Callable[[Array], Array]] = []
    if sum_axes:
        steps.append(partial(np.add.reduce, axis=sum_axes))
    if perm is not None:
        steps.append(attrgetter("T") if perm == (1, 0) else methodcaller("transpose", perm))
    if shape is not None:
        steps.append(methodcaller("reshape", shape))
    if flip:
        steps.append(partial(np.swapaxes, axis1=-1, axis2=-2))
    out = None
    for f in steps:
        out = _then(out, f)
    return out


def _reader(o: Operand, move: Callable[[Array], Array] | None = None) -> Callable[[Env], Array]:
    """Reads an operand from env, raised to its power, then laid out by `move`."""
    name, prep = o.name, _then(_raised(o.power, o.dtype), move)
    if prep is None:
        return itemgetter(name)
    return lambda env: prep(env[name])


def _finish(step: Step, body: Compute) -> Compute:
    """The body's result times the coefficient, broadcast to the step's axes when an index is in
    no operand (a gradient that broadcasts)."""
    coef = step.args.get("coef", 1)
    kept = step.args.get("kept", step.axes)
    if kept == step.axes:
        return body if coef == 1 else (lambda env: body(env) * coef)
    widen, shape = aligner(kept, step.axes, sizes(step)) or _same, step.shape
    if coef == 1:
        return lambda env: np.broadcast_to(widen(body(env)), shape)
    return lambda env: np.broadcast_to(widen(body(env) * coef), shape)


def _same(a: Array) -> Array:
    return a


# ---- contractions ----------------------------------------------------------------------------


def _pairwise(step: Step) -> Compute:
    """matmul, vecdot or a broadcast product of two operands laid out as `plan.pair_layout` says
    (its a_* and b_* settings are the call's first and second operand: inputs[1] first on `swap`)."""
    args = step.args
    first, second = step.inputs[::-1] if args["swap"] else step.inputs
    call = {"matmul": np.matmul, "vecdot": np.vecdot, "multiply": np.multiply}[step.call]
    ma = _mover(args["a_sum"], args["a_perm"], args["a_shape"], args.get("a_flip", False))
    mb = _mover(args["b_sum"], args["b_perm"], args["b_shape"], args.get("b_flip", False))
    donor = step.donor
    if donor is not None:  # a product into the buffer of the operand that dies here
        read = _reader(*((second, mb) if donor == first.name else (first, ma)))
        return lambda env: np.multiply(env[donor], read(env), out=env[donor])
    ra, rb = _reader(first, ma), _reader(second, mb)
    res_shape, res_perm, summed = args["res_shape"], args["res_perm"], args.get("sum_batch")
    finish = _then(None if res_shape is None else methodcaller("reshape", res_shape),
                   None if res_perm is None else methodcaller("transpose", res_perm))  # fmt: skip
    finish = _then(partial(np.add.reduce, axis=summed) if summed else None, finish)
    if finish is None:
        return lambda env: call(ra(env), rb(env))
    return lambda env: finish(call(ra(env), rb(env)))


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

    if not step.axes:
        return dot
    shape = step.shape
    return lambda env: np.broadcast_to(dot(env), shape)


def _copy(step: Step) -> Compute:
    (o,) = step.inputs
    perm = step.args["perm"]
    return _finish(
        step, _reader(o, None if perm == tuple(range(len(perm))) else methodcaller("transpose", perm))
    )


def _sum(step: Step) -> Compute:
    (o,) = step.inputs
    perm = step.args["perm"]
    read = _reader(o, _mover(step.args["over"], None if perm == tuple(range(len(perm))) else perm, None))
    return _finish(step, read)


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
        body = (
            (lambda env: mm(ones, env[name]))
            if nd == 2
            else (lambda env: mm(ones, env[name].reshape(len(ones), -1)).reshape(rest))
        )
    else:
        ones = np.ones(math.prod(shape[nd - k :]), step.dtype)
        lead = shape[: nd - k]
        body = (
            (lambda env: mm(env[name], ones))
            if nd == 2
            else (lambda env: mm(env[name].reshape(-1, len(ones)), ones).reshape(lead))
        )
    return _finish(step, body)


def _einsum(step: Step) -> Compute:
    expression = oe.contract_expression(
        step.args["equation"], *[o.shape for o in step.inputs], optimize=step.args["path"]
    )
    reads = [_reader(o) for o in step.inputs]
    return lambda env: expression(*[r(env) for r in reads])


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
    size = sizes(step)
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
        if isinstance(g, itemgetter):
            name = step.inputs[0].name
            return _full(step, lambda env: fn(env[name]))
        return _full(step, lambda env: fn(g(env)))
    return _full(step, lambda env: fn(*[g(env) for g in getters]))


def _aligned(o: Operand, out: tuple[str, ...], size: dict[str, int]) -> Callable[[Env], Array]:
    return _reader(o, aligner(o.axes, out, size))


def _full(step: Step, body: Compute) -> Compute:
    """The result broadcast to the step's shape when its operands lack some of its axes."""
    present = {n for o in step.inputs for n in o.axes}
    if all(n in present for n in step.axes) and step.inputs:
        return body
    shape = step.shape
    return lambda env: np.broadcast_to(body(env), shape)


def terms(step: Step) -> Compute:
    size = sizes(step)
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
    read = _reader(o, aligner(o.axes, order, sizes(step)))
    axes = tuple(range(len(step.axes), len(order)))
    red = REDUCTIONS[step.call]
    return lambda env: red(read(env), axes)


def fill(step: Step) -> Compute:
    shape, dtype = step.shape, np.dtype(step.dtype)
    value = dtype.type(step.args["value"])
    if math.prod(shape) <= 4096:
        return lambda env: np.full(shape, value, dtype)
    return lambda env: np.broadcast_to(value, shape)


# ---- reads and writes through index arithmetic and labels -----------------------------------


def view(step: Step) -> Compute:
    """A strided view: x[j+k] as an array over (j, k), sharing x's memory; through boundary modes,
    a view of x extended as the modes read outside it (positions.padded)."""
    src = step.inputs[0].name
    names, shape = step.axes, step.shape
    pos = {n: k for k, n in enumerate(names)}
    at = _affine_positions(step)
    pads, moded = _margins(at, dict(zip(names, shape)), step.inputs[0].shape)
    starts = tuple(slice(i.const + before, None) for i, (before, _) in zip(at, pads))
    terms_ = [(axis, i.terms) for axis, i in enumerate(at)]
    unit = tuple(d > 1 for d in shape)

    def read(env: Env) -> Array:
        a = env[src]
        for axis, before, after, mode in moded:
            a = positions.padded(a, axis, before, after, mode)
        strides = [0] * len(names)
        for axis, ts in terms_:
            for c, n in ts:
                strides[pos[n]] += c * a.strides[axis]
        strides = [st if u else 0 for st, u in zip(strides, unit)]  # a huge unused step stays 0
        return as_strided(a[starts], shape=shape, strides=strides, writeable=False)

    return read


def _affine_positions(step: Step) -> list[Affine]:
    """The step's positions, each a sum of names and a constant (through a boundary mode or not)."""
    at = [positions.from_data(t) for t in step.args["positions"]]
    affine = [i for i in at if isinstance(i, Affine)]
    assert len(affine) == len(at), "labels are gathered, not viewed"
    return affine


def _margins(
    at: list[Affine], size: dict[str, int], extents: tuple[int, ...]
) -> tuple[list[tuple[int, int]], list[tuple[int, int, int, str]]]:
    """Per axis how far its boundary mode reads before 0 and past the end, and the axes with a
    mode as (axis, before, after, mode)."""
    pads = [positions.margins(i, size, e) if i.mode else (0, 0) for i, e in zip(at, extents)]
    moded = [(axis, b, a, i.mode) for axis, (i, (b, a)) in enumerate(zip(at, pads)) if i.mode]
    return pads, moded


def _index_arrays(
    step: Step, names: tuple[str, ...], shape: tuple[int, ...], extents: tuple[int, ...]
) -> Callable[[Env], tuple[Array, ...]]:
    """Per axis of the tensor read or written, an integer array broadcast over `names`."""
    size = dict(zip(names, shape))
    fixed: list[Any] = []
    for axis, p in enumerate(step.args["positions"]):
        at = positions.from_data(p)
        if isinstance(at, Affine):
            fixed.append(positions.values(at, names, size))
        else:
            fixed.append((p[1], aligner(p[2], names, size) or _same, axis))
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
                into = step.inputs[0].name if step.kind == "gather" else step.out
                raise IndexgradError(
                    f"label {int(bad)} in '{label}' is out of range for axis {axis} of "
                    f"'{into}', which has size {extents[axis]}",
                    span,
                )
            out.append(lab)
        return tuple(out)

    return arrays


def general_positions(step: Step) -> bool:
    """Positions with boundary modes, // or %, or labels read through arithmetic (SPEC 9)."""
    return any(t[0] not in ("affine", "label") for t in step.args["positions"])


def positions_index(
    step: Step, names: tuple[str, ...], shape: tuple[int, ...], extents: tuple[int, ...]
) -> Callable[[Env], tuple[tuple[Array, ...], Array | None]]:
    """For general positions: per axis an integer array broadcast over `names`, after boundary
    modes, and the mask of the entries a pad position finds inside (indexgrad/positions.py).
    Data for every backend: env need only hold the labels, as numpy arrays."""
    at = tuple(positions.from_data(t) for t in step.args["positions"])
    size = dict(zip(names, shape))
    into = step.inputs[0].name if step.kind == "gather" else step.out
    where = Ref(into, at)  # type: ignore[arg-type]

    def arrays(env: Env) -> tuple[tuple[Array, ...], Array | None]:
        def labels(g: Ref, out: tuple[str, ...]) -> Array:
            return positions.label_values(g, env[g.name], out, size)

        idx, mask = positions.index_arrays(where, extents, names, size, labels)
        for axis, (i, lab) in enumerate(zip(at, idx)):
            if isinstance(i, Gather) and lab.size and (lab.min() < 0 or lab.max() >= extents[axis]):
                bad = lab.min() if lab.min() < 0 else lab.max()
                raise IndexgradError(
                    f"label {int(bad)} in '{i.ref.name}' is out of range for axis {axis} of "
                    f"'{into}', which has size {extents[axis]}",
                    step.span,
                )
        return idx, mask

    return arrays


def gather(step: Step) -> Compute:
    src = step.inputs[0]
    name = src.name
    if general_positions(step):
        general = positions_index(step, step.axes, step.shape, src.shape)

        def take(env: Env) -> Array:
            idx, mask = general(env)
            v = env[name][idx]
            return v if mask is None else np.where(mask, v, 0)

        return take
    index = _index_arrays(step, step.axes, step.shape, src.shape)
    return lambda env: env[name][index(env)]


def scatter(step: Step) -> Compute:
    """target[positions] += value: strided slice-adds where each index sits in one axis, else np.add.at.
    Through boundary modes of sums of names: into the target extended as the modes read outside
    it, then folded back (dropped for pad, piled on the edge for clamp, wrapped for wrap)."""
    value = step.inputs[0]
    vn, out, shape, dtype = value.name, step.out, step.shape, step.dtype
    fresh, in_place = step.args["fresh"], step.into == step.out
    add_into = _scatter_into(step, value, shape)

    def add(env: Env) -> Array:
        if fresh:
            t = np.zeros(shape, dtype)
        elif in_place:
            t = env[out]
        else:
            t = env[out].astype(dtype, copy=True)
        add_into(t, env[vn], env)
        return t

    return add


def _scatter_into(step: Step, value: Operand, shape: tuple[int, ...]) -> Callable[[Array, Array, Env], None]:
    """t[positions] += v, in place: the way chosen for the step's positions."""
    at = [positions.from_data(t) for t in step.args["positions"]]
    if general_positions(step) and all(isinstance(i, Affine) and not i.parts for i in at):
        affine = _affine_positions(step)
        pads, modes = _margins(affine, dict(zip(value.axes, value.shape)), shape)
        inner = tuple(positions.as_data(positions.unmoded(i, before)) for i, (before, _) in zip(affine, pads))
        extended = tuple(e + before + after for e, (before, after) in zip(shape, pads))
        slices = slice_adds(inner, value.axes, value.shape)
        plain_step = replace(step, args={**step.args, "positions": inner})
        index = None if slices is not None else _index_arrays(plain_step, value.axes, value.shape, extended)
        grouped = None if slices is None else _grouped(slices[1], extended)

        def through_modes(t: Array, v: Array, env: Env) -> None:
            ext = np.zeros(extended, t.dtype)
            _add_at(ext, v, slices, index, env, grouped)
            for axis, before, after, mode in modes:
                ext = positions.folded(ext, axis, before, after, mode)
            t += ext

        return through_modes
    if general_positions(step):
        general = positions_index(step, value.axes, value.shape, shape)

        def at_positions(t: Array, v: Array, env: Env) -> None:
            idx, mask = general(env)
            np.add.at(t, idx, v if mask is None else np.where(mask, v, 0))

        return at_positions
    slices = slice_adds(step.args["positions"], value.axes, value.shape)
    index = None if slices is not None else _index_arrays(step, value.axes, value.shape, shape)
    grouped = None if slices is None else _grouped(slices[1], shape)
    return lambda t, v, env: _add_at(t, v, slices, index, env, grouped)


def _add_at(
    t: Array, v: Array, slices: Any, index: Callable[[Env], Any] | None, env: Env, grouped: Any = None
) -> None:
    if slices is None:
        np.add.at(t, index(env), v)  # type: ignore[misc]
        return
    _add_slices(t, v.transpose(slices[0]), slices[1], grouped)


def delta(step: Step) -> Compute:
    """`delta[i,j]` for the step's sizes: 1 where its two positions agree, in the step's dtype."""
    r = Ref(DELTA, tuple(positions.from_data(t) for t in step.args["positions"]))
    value = positions.delta_values(r, step.axes, dict(zip(step.axes, step.shape))).astype(step.dtype)
    return lambda env: value.copy()  # a buffer of its own: later steps may write into it


Group = tuple[slice, list[tuple[Any, Any]], list[Any] | None]


def _add_slices(t: Array, v: Array, moves: list[tuple[Any, Any]], grouped: Any) -> None:
    """t[target] += v[part] for each move, or as `_grouped` arranged them."""
    if grouped is None:
        for target, part in moves:
            t[target] += v[part]
        return
    shape, groups = grouped
    buffer = np.empty(shape, t.dtype)
    for last, adds, outside in groups:
        (target, part), rest = adds[0], adds[1:]
        if outside is None:
            buffer.fill(0)
            buffer[target] += v[part]
        else:  # the first slab assigned, zeros around it
            buffer[target] = v[part]
            for z in outside:
                buffer[z] = 0
        for target, part in rest:
            buffer[target] += v[part]
        t[..., last] += buffer


def _grouped(
    moves: list[tuple[Any, Any]], shape: tuple[int, ...]
) -> tuple[tuple[int, ...], list[Group]] | None:
    """The slice-adds grouped by their slice of the target's last axis, each group summed in a
    buffer of the target's shape but that slice's length, then added once: a 3×3 kernel's nine
    adds of short rows (c+v) become six adds of whole [r, c] planes and three of rows (a
    col2im about 30% faster). None when no two adds share a last slice."""
    by_last: dict[tuple[int, int, int], list[tuple[Any, Any]]] = {}
    for target, part in moves:
        last = target[-1] if target else None
        if not isinstance(last, slice):
            return None
        key = last.indices(shape[-1])
        by_last.setdefault(key, []).append(((*target[:-1], slice(None)), part))
    if len(by_last) == len(moves):
        return None
    width = len(range(*next(iter(by_last))))
    buffer = (*shape[:-1], width)
    return buffer, [(slice(*k), adds, _outside(adds[0][0], buffer)) for k, adds in by_last.items()]


def _outside(index: tuple[Any, ...], shape: tuple[int, ...]) -> list[Any] | None:
    """Slabs covering an array of `shape` outside the box `index` selects (None for a strided box)."""
    box = []
    for i, n in zip(index, shape):
        start, stop, stride = (i, i + 1, 1) if isinstance(i, int) else i.indices(n)
        if stride != 1:
            return None
        box.append((start, stop))
    slabs = []
    for k, ((start, stop), n) in enumerate(zip(box, shape)):
        inside = tuple(slice(a, b) for a, b in box[:k])
        rest = (slice(None),) * (len(shape) - k - 1)
        if start > 0:
            slabs.append((*inside, slice(0, start), *rest))
        if stop < n:
            slabs.append((*inside, slice(stop, n), *rest))
    return slabs


def slice_adds(positions: tuple[Any, ...], names: tuple[str, ...], shape: tuple[int, ...]) -> Any:
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
    "delta": delta,
    # fix and solve run their nested plans on this backend's executor
    **iterate.builders(iterate.Runtime(lambda plan: NumpyExecutor(plan), np.asarray, np.asarray)),
}


# ---- the executor ------------------------------------------------------------------------------


# how a step's result is written: assigned, added into its target in place, or added anew
_ASSIGN, _ADD_INTO, _ADD = 0, 1, 2


def _entry(step: Step) -> tuple[Compute, str, int, tuple[str, ...]]:
    """A step as the executor runs it: its compute, its target, how it writes, what it frees."""
    compute = builder_for(BUILDERS, step, "numpy")(step)  # type: ignore[arg-type]
    if step.shape == () and step.kind != "scatter":  # a 0-d array, never a numpy scalar
        body = compute
        compute = lambda env: np.asarray(body(env))  # noqa: E731
    write = _ASSIGN
    if step.accumulate and step.kind != "scatter":
        write = _ADD_INTO if step.into == step.out else _ADD
    return compute, step.out, write, step.release


class NumpyExecutor:
    """A Plan made runnable on numpy arrays: a loop over its steps' computes."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.entries = [_entry(s) for s in plan.steps]
        keep_freed_memory(plan.peak_bytes)

    def run(self, env: Env, check_finite: bool = False) -> Env:
        """Run the steps on env; with `check_finite`, the first NaN or Inf is an error at its statement."""
        try:
            if not check_finite:
                return self._loop(env, False)
            with np.errstate(all="ignore"):
                return self._loop(env, True)
        except IndexgradError as e:
            raise e.located(self.plan.filename, self.plan.source) from None

    def _loop(self, env: Env, check: bool) -> Env:
        for k, (compute, out, write, release) in enumerate(self.entries):
            if write == _ASSIGN:
                env[out] = compute(env)
            elif write == _ADD_INTO:
                t = env[out]
                np.add(t, compute(env), out=t)
            else:
                env[out] = np.asarray(env[out] + compute(env))
            if check and self.plan.steps[k].dtype != "bool" and not np.all(np.isfinite(env[out])):
                bad = "NaN" if np.isnan(env[out]).any() else "Inf"
                raise IndexgradError(f"this statement produced {bad} in '{out}'", self.plan.steps[k].span)
            for n in release:
                del env[n]
        return env


class NumpyBackend:
    """Plans run on numpy arrays on the CPU, with `dtype` (or the dtype of the arrays given) for
    every float."""

    name = "numpy"
    in_place = True
    array_types: tuple[type, ...] = (np.ndarray,)

    def __init__(self, dtype: np.dtype | None = None) -> None:
        self.dtype = dtype

    def executor(self, plan: Plan) -> NumpyExecutor:
        return NumpyExecutor(plan)

    chain = staticmethod(Chain)

    def asarray(self, value: Any, dtype: Any = None) -> Array:
        if self.dtype is not None:
            dtype = model_dtype(value, dtype, self.dtype, "x.astype(numpy.{})")
        return np.asarray(value, dtype=dtype)

    describe = staticmethod(operator.attrgetter("shape", "dtype"))  # (shape, dtype) of an array

    def to_numpy(self, a: Array) -> Array:
        return a

    def zeros_like(self, a: Array) -> Array:
        return np.zeros_like(a)

    def contiguous(self, a: Array) -> Array:
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)

    def copy(self, a: Array) -> Array:
        return np.array(a, order="C", copy=True)

    def one(self, dtype: np.dtype) -> Array:
        one = np.array(1, dtype)
        one.setflags(write=False)
        return one


def make_backend(device: Any = None, dtype: Any = None) -> NumpyBackend:
    """A numpy backend computing in `dtype` (float16, float32 or float64; None follows the
    arrays given); numpy computes on the CPU, so `device` is "cpu" or None."""
    if device is not None and device != "cpu":
        raise IndexgradError(
            f"device={device!r}, but the numpy backend computes on the CPU: give device='cpu' "
            "(or none), or use the torch or jax backend for another device"
        )
    return NumpyBackend(float_option(dtype, "numpy", ("float16", "float32", "float64")))


__all__ = [
    "BUILDERS",
    "Builder",
    "NumpyBackend",
    "NumpyExecutor",
    "aligner",
    "alignment",
    "general_positions",
    "make_backend",
    "positions_index",
    "sizes",
    "slice_adds",
]
