"""The jax backend: one builder per step kind turning a Step into jax.numpy calls, and an executor
that traces a whole Plan into one `jax.jit` computation, so that XLA fuses its elementwise work.

Builders read nothing but the Step, as the numpy backend's do; jax arrays are never updated in
place, so the planner lends no buffers (`in_place = False`). float64 needs `jax_enable_x64`;
without it a float64 array is refused rather than rounded to float32 behind the user's back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.layout import Layout, with_layout_constraint

from .. import iterate, positions
from ..errors import IndexgradError
from ..memory import keep_freed_memory
from ..nodes import DELTA, Ref
from ..plan import Operand, Plan, Step, basic_index, inverse
from . import Env, builder_for, float_option, integers_fit, model_dtype
from .jax_iterate import fixed_point, newton
from .numpy import _then, aligner, sizes, slice_adds

Array = Any  # a jax array, or a tracer while the plan is traced
Compute = Callable[[Env], Array]


def float_dtype(dtype: Any) -> np.dtype:
    """The dtype jax makes of `dtype` (float64 is float32 unless jax_enable_x64 is on)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))


# ---- the functions and reductions, as jax computes them ------------------------------------


def _step(x: Array) -> Array:
    return (x > 0).astype(x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else float_dtype(np.float64))


def _eq(a: Array, b: Array) -> Array:
    dtype = jnp.result_type(a, b)
    return jnp.equal(a, b).astype(dtype if jnp.issubdtype(dtype, jnp.floating) else float_dtype(np.float64))


def _where(c: Array, a: Array, b: Array) -> Array:
    out = jnp.where(c != 0, a, b)
    if not jnp.issubdtype(out.dtype, jnp.floating):  # two numbers: c's float dtype, as numpy's
        out = out.astype(c.dtype if jnp.issubdtype(c.dtype, jnp.floating) else float_dtype(np.float64))
    return out


def _comparison(test: Callable[[Array, Array], Array]) -> Callable[[Array, Array], Array]:
    def compare(a: Array, b: Array) -> Array:
        dtype = jnp.result_type(a, b)
        return test(a, b).astype(dtype if jnp.issubdtype(dtype, jnp.floating) else float_dtype(np.float64))

    return compare


FORWARDS: dict[str, Callable[..., Array]] = {
    "relu": lambda x: jnp.maximum(x, 0),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "exp": jnp.exp,
    "log": jnp.log,
    "sqrt": jnp.sqrt,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "abs": jnp.abs,
    "softplus": lambda x: jnp.logaddexp(0.0, x),
    "erf": jax.lax.erf,
    "step": _step,
    "sign": jnp.sign,
    "max": jnp.maximum,
    "min": jnp.minimum,
    "eq": _eq,
    "where": _where,
    "<": _comparison(jnp.less),
    "<=": _comparison(jnp.less_equal),
    ">": _comparison(jnp.greater),
    ">=": _comparison(jnp.greater_equal),
    "==": _comparison(jnp.equal),
    "!=": _comparison(jnp.not_equal),
}


def _logsumexp(x: Array, axes: tuple[int, ...]) -> Array:
    """log Σ exp over `axes`, shifted by the finite maxima (as the numpy backend computes it)."""
    if 0 in x.shape:
        return jnp.full(tuple(d for k, d in enumerate(x.shape) if k not in axes), -jnp.inf, x.dtype)
    m = jnp.max(x, axis=axes, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0)
    return (jnp.log(jnp.sum(jnp.exp(x - m), axis=axes, keepdims=True)) + m).reshape(
        tuple(d for k, d in enumerate(x.shape) if k not in axes)
    )


REDUCTIONS: dict[str, Callable[[Array, tuple[int, ...]], Array]] = {
    "sum": lambda x, axes: jnp.sum(x, axis=axes),
    "mean": lambda x, axes: jnp.mean(x, axis=axes),
    "max": lambda x, axes: jnp.max(x, axis=axes),
    "min": lambda x, axes: jnp.min(x, axis=axes),
    "logsumexp": _logsumexp,
}


def _function(name: str, table: dict[str, Any], what: str) -> Any:
    f = table.get(name)
    if f is None:
        raise IndexgradError(
            f"the jax backend has no {what} '{name}'; it has: " + ", ".join(sorted(table))
        )
    return f


# ---- reading operands ----------------------------------------------------------------------


def _raised(k: float) -> Callable[[Array], Array] | None:
    if k == 1:
        return None
    if k == 2:
        return jnp.square
    if k == -1:
        return jnp.reciprocal
    if k == 0.5:
        return jnp.sqrt
    return lambda a: jnp.power(a, k)


def _mover(sum_axes: tuple[int, ...], perm: Any, shape: Any) -> Callable[[Array], Array] | None:
    """A sum over the axes only this operand has, a transpose, a reshape (as plan.pair_layout says)."""
    out = None
    if sum_axes:
        out = _then(out, lambda a: jnp.sum(a, axis=sum_axes))
    if perm is not None:
        out = _then(out, lambda a: jnp.transpose(a, perm))
    if shape is not None:
        out = _then(out, lambda a: jnp.reshape(a, shape))
    return out


def _reader(o: Operand, move: Callable[[Array], Array] | None = None) -> Compute:
    name, prep = o.name, _then(_raised(o.power), move)
    if prep is None:
        return lambda env: env[name]
    return lambda env: prep(env[name])


def _aligned(o: Operand, out: tuple[str, ...], size: dict[str, int]) -> Compute:
    return _reader(o, aligner(o.axes, out, size))


def _finish(step: Step, body: Compute) -> Compute:
    """The body's result times the coefficient, broadcast along the step's axes no operand has."""
    coef = step.args.get("coef", 1)
    kept = step.args.get("kept", step.axes)
    scaled = body if coef == 1 else (lambda env: body(env) * coef)
    if kept == step.axes:
        return scaled
    widen, shape = aligner(kept, step.axes, sizes(step)) or (lambda a: a), step.shape
    return lambda env: jnp.broadcast_to(widen(scaled(env)), shape)


def _full(step: Step, body: Compute) -> Compute:
    """The result broadcast to the step's shape when its operands lack some of its axes."""
    present = {n for o in step.inputs for n in o.axes}
    if step.inputs and all(n in present for n in step.axes):
        return body
    shape = step.shape
    return lambda env: jnp.broadcast_to(body(env), shape)


# ---- contractions ----------------------------------------------------------------------------


def _pairwise(step: Step) -> Compute:
    args = step.args
    first, second = step.inputs[::-1] if args["swap"] else step.inputs
    call = {"matmul": jnp.matmul, "vecdot": jnp.vecdot, "multiply": jnp.multiply}[step.call]
    ra = _reader(first, _mover(args["a_sum"], args["a_perm"], args["a_shape"]))
    rb = _reader(second, _mover(args["b_sum"], args["b_perm"], args["b_shape"]))
    finish = _mover((), None, args["res_shape"])
    finish = _then(finish, None if args["res_perm"] is None else lambda a: jnp.transpose(a, args["res_perm"]))
    if finish is None:
        return lambda env: call(ra(env), rb(env))
    return lambda env: finish(call(ra(env), rb(env)))


def _scale(step: Step) -> Compute:
    s = step.inputs[step.args["scalar"]].name
    t = step.inputs[1 - step.args["scalar"]].name
    coef = step.args["coef"]
    return lambda env: env[t] * (env[s] * coef)


def _dot(step: Step) -> Compute:
    name, coef, shape = step.inputs[0].name, step.args["coef"], step.shape

    def dot(env: Env) -> Array:
        a = jnp.ravel(env[name])
        return jnp.broadcast_to(jnp.dot(a, a) * coef, shape)

    return dot


def _copy(step: Step) -> Compute:
    perm = step.args["perm"]
    move = None if perm == tuple(range(len(perm))) else (lambda a: jnp.transpose(a, perm))
    return _finish(step, _reader(step.inputs[0], move))


def _sum(step: Step) -> Compute:
    perm = step.args["perm"]
    move = _mover(step.args["over"], None if perm == tuple(range(len(perm))) else perm, None)
    return _finish(step, _reader(step.inputs[0], move))


def _ones_sum(step: Step) -> Compute:
    """A sum over leading or trailing axes: a reduction XLA fuses (numpy's product with a vector
    of ones pays off only outside a compiler)."""
    over = step.args["over"]
    return _finish(step, _reader(step.inputs[0], lambda a: jnp.sum(a, axis=over)))


def _einsum(step: Step) -> Compute:
    equation, path = step.args["equation"], [tuple(p) for p in step.args["path"]]
    reads = [_reader(o) for o in step.inputs]
    return _finish(step, lambda env: jnp.einsum(equation, *[r(env) for r in reads], optimize=path))


_CONTRACTIONS: dict[str, Callable[[Step], Compute]] = {
    "matmul": lambda s: _finish(s, _pairwise(s)),
    "vecdot": lambda s: _finish(s, _pairwise(s)),
    "multiply": lambda s: _finish(s, _pairwise(s)),
    "scale": _scale,
    "dot": _dot,
    "copy": _copy,
    "sum": _sum,
    "ones_sum": _ones_sum,
    "einsum": _einsum,
}


def contract(step: Step) -> Compute:
    return _function(step.call, _CONTRACTIONS, "contraction call")(step)  # type: ignore[no-any-return]


# ---- elementwise work, sums of terms, reductions, constants ---------------------------------


def elementwise(step: Step) -> Compute:
    if step.call == "mask":
        name = step.inputs[0].name
        return lambda env: env[name] > 0
    fn = _function(step.call, FORWARDS, "function")
    size = sizes(step)
    ops = iter(step.inputs)
    getters: list[Compute] = []
    for c in step.args["constants"]:
        if c is None:
            getters.append(_aligned(next(ops), step.axes, size))
        else:
            getters.append(lambda env, c=c: c)  # a Python float is weakly typed: float32 stays float32
    return _full(step, lambda env: fn(*[g(env) for g in getters]))


def terms(step: Step) -> Compute:
    size = sizes(step)
    gets = [_aligned(o, step.axes, size) for o in step.inputs]
    coefs, const = step.args["coefs"], step.args["constant"]

    def total(env: Env) -> Array:
        t = gets[0](env) if coefs[0] == 1 else gets[0](env) * coefs[0]
        for c, g in zip(coefs[1:], gets[1:]):
            t = t + g(env) if c == 1 else t - g(env) if c == -1 else t + g(env) * c
        return t + const if const else t

    return _full(step, total)


def reduce(step: Step) -> Compute:
    (o,) = step.inputs
    order = step.args["order"]
    read = _reader(o, aligner(o.axes, order, sizes(step)))
    axes = tuple(range(len(step.axes), len(order)))
    red = _function(step.call, REDUCTIONS, "reduction")
    return lambda env: red(read(env), axes)


def fill(step: Step) -> Compute:
    shape, dtype, value = step.shape, float_dtype(step.dtype), step.args["value"]
    return lambda env: jnp.full(shape, value, dtype)


# ---- reads and writes through index arithmetic and labels -----------------------------------


def view(step: Step) -> Compute:
    """x[j+k] as an array over (j, k): slicing where it can; else, where each index sits in one
    axis, one strided slice per offset of the smaller indices, stacked (a strided convolution's
    patches: nine slices and one concatenation for a 3x3 kernel, where a gather at index arrays
    reads element by element); else a gather at fixed positions."""
    src = step.inputs[0].name
    index = basic_index(step.args["positions"], dict(zip(step.axes, step.shape)))
    if index is not None:
        return lambda env: env[src][index]
    slices = slice_adds(step.args["positions"], step.axes, step.shape)
    if slices is None or len(slices[1]) > 64:
        return gather(step)
    order, moves = slices
    laid = tuple(step.shape[k] for k in order)
    back = inverse(order)

    def patches(env: Env) -> Array:
        x = env[src]
        return jnp.transpose(jnp.stack([x[at] for at, _ in moves], axis=-1).reshape(laid), back)

    return patches


Indexer = Callable[[Env], tuple[tuple[Any, ...], Any]]


def _indexer(step: Step, names: tuple[str, ...], shape: tuple[int, ...], extents: tuple[int, ...]) -> Indexer:
    """Per axis of the tensor read or written, an integer array broadcast over `names`, and the
    mask of the entries a `pad` position finds inside (None: all), as indexgrad/positions.py
    computes them: fixed arrays for index arithmetic, made once; label tensors read per call."""
    at = tuple(positions.from_data(t) for t in step.args["positions"])
    size = dict(zip(names, shape))
    where = Ref(step.inputs[0].name if step.kind != "scatter" else step.out, at)  # type: ignore[arg-type]
    if not any(t[0] in ("label", "label_at") for t in step.args["positions"]):
        fixed = positions.index_arrays(where, extents, names, size, _no_labels)
        return lambda env: fixed

    def arrays(env: Env) -> tuple[tuple[Any, ...], Any]:
        def labels(g: Ref, out: tuple[str, ...]) -> Array:
            return positions.label_values(g, env[g.name], out, size)

        return positions.index_arrays(where, extents, names, size, labels)

    return arrays


def _no_labels(g: Ref, names: tuple[str, ...]) -> Array:
    raise AssertionError("positions without labels read none")


def gather(step: Step) -> Compute:
    """x[b, y[b]], x[2*i+k], x[pad(i+k-1)]: an out-of-range label reads NaN under a trace, where
    it cannot be checked (the executor checks labels it can see before running); a `pad`
    position outside the array reads 0."""
    src = step.inputs[0]
    index = _indexer(step, step.axes, step.shape, src.shape)

    def take(env: Env) -> Array:
        idx, mask = index(env)
        v = env[src.name].at[idx].get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False)
        return v if mask is None else jnp.where(mask, v, 0)

    return take


def _padding(at: tuple[Any, ...], extents: tuple[int, ...], lengths: tuple[int, ...]) -> list[Any]:
    """lax.pad's (low, high, interior) per axis that put an array of these lengths at the slices
    `at` of an array of these extents."""
    out = []
    for i, extent, n in zip(at, extents, lengths):
        out.append((i.start, extent - i.start - i.step * (n - 1) - 1, i.step - 1))
    return out


def scatter(step: Step) -> Compute:
    """target[positions] += value, into zeros or a copy of the target (jax arrays are values):
    a few slice-adds, one per kernel offset, where each index sits in one axis; else a
    scatter-add, which drops a label that is out of range and what a `pad` position writes
    outside the target."""
    value = step.inputs[0]
    vn, out, shape, dtype = value.name, step.out, step.shape, float_dtype(step.dtype)
    fresh = step.args["fresh"]

    def base(env: Env) -> Array:
        return jnp.zeros(shape, dtype) if fresh else env[out].astype(dtype)

    plain = all(t[0] in ("affine", "label") for t in step.args["positions"])
    slices = slice_adds(step.args["positions"], value.axes, value.shape) if plain else None
    if slices is not None and len(slices[1]) <= 64:
        order, moves = slices
        laid = tuple(value.shape[k] for k in order)
        if all(isinstance(i, slice) for at, _ in moves for i in at):
            # each slice-add as the part padded with zeros to the target's shape (its stride as
            # interior padding): one sum, which XLA fuses into one pass over the target, where
            # the adds into slices are one pass each
            widths = [_padding(at, shape, laid) for at, _ in moves]

            def add_pads(env: Env) -> Array:
                v = jnp.transpose(env[vn], order)
                zero = jnp.zeros((), v.dtype)
                return base(env) + sum(jax.lax.pad(v[part], zero, w) for (_, part), w in zip(moves, widths))

            return add_pads

        def add_slices(env: Env) -> Array:
            t, v = base(env), jnp.transpose(env[vn], order)
            for target, part in moves:
                t = t.at[target].add(v[part])
            return t

        return add_slices
    index = _indexer(step, value.axes, value.shape, shape)

    def add(env: Env) -> Array:
        idx, mask = index(env)
        v = env[vn] if mask is None else jnp.where(mask, env[vn], 0)
        return base(env).at[idx].add(v, mode="drop", wrap_negative_indices=False)

    return add


def delta(step: Step) -> Compute:
    """`delta[i,j]` for the step's sizes: 1 where its two positions agree, in the step's dtype."""
    at = tuple(positions.from_data(t) for t in step.args["positions"])
    size = dict(zip(step.axes, step.shape))
    value = positions.delta_values(Ref(DELTA, at), step.axes, size).astype(float_dtype(step.dtype))  # type: ignore[arg-type]
    return lambda env: jnp.asarray(value)


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
    "fix": lambda step: _fix(step),
    "solve": lambda step: _solve(step),
}


# ---- implicit layers: fix and solve as while loops in the traced computation -----------------


def report_key(step: Step) -> str:
    """Where a fix or solve step leaves (residual, iterations, whether a Jacobian was singular)
    in the env: not a tensor name, so it never meets one."""
    return f"{step.out}#iteration"


def _prepared(step: Step, plans: tuple[Plan, ...]) -> Callable[[Env], Env]:
    """env -> what the nested plans read that stays fixed while z moves: the setup plan's values
    (run once) and the step's inputs."""
    a = step.args
    moving = {a["iterate"], a.get("direction")} | {n for p in plans for n in p.outputs}
    reads = {n for p in plans for n, _, _ in p.inputs if n not in moving}
    setup = None if a["setup"] is None else JaxExecutor(a["setup"])

    def prepare(env: Env) -> Env:
        got = dict(env)
        if setup is not None:
            got.update(setup.trace({n: env[n] for n in setup.reads}))
        return {n: got[n] for n in reads}

    return prepare


def _fix(step: Step) -> Compute:
    """z = f(z) by Anderson acceleration in a lax.while_loop (jax_iterate.fixed_point)."""
    a = step.args
    z, r, body = a["iterate"], a["result"], JaxExecutor(a["body"])
    prepare, dtype, key = _prepared(step, (a["body"],)), float_dtype(step.dtype), report_key(step)

    def compute(env: Env) -> Array:
        fixed = prepare(env)

        def f(x: Array) -> Array:
            return body.trace({**fixed, z: x})[r]

        x0 = iterate.start_value(step, env, dtype, lambda v: v, jnp)
        point, res, used = fixed_point(f, x0, a["tol"], a["max_iter"], a["m"])
        env[key] = (res, used, False)
        return point

    return compute


def _solve(step: Step) -> Compute:
    """g(z) = 0 by Newton's method in a lax.while_loop (jax_iterate.newton), its Jacobian's
    columns from the tangent plan, every column at once under jax.vmap."""
    a = step.args
    z, r, direction, slope = a["iterate"], a["result"], a["direction"], a["slope"]
    body, tangent = JaxExecutor(a["body"]), JaxExecutor(a["tangent"])
    prepare = _prepared(step, (a["body"], a["tangent"]))
    saved = [n for n in tangent.reads if n == z or n in a["body"].outputs]
    dtype, key = float_dtype(step.dtype), report_key(step)

    def compute(env: Env) -> Array:
        fixed = prepare(env)

        def g(x: Array) -> tuple[Array, Env]:
            e = body.trace({**fixed, z: x})
            e[z] = x
            return e[r], {n: e[n] for n in saved}

        def derivative(kept: Env, dx: Array) -> Array:
            return tangent.trace({**fixed, **kept, direction: dx})[slope]

        x0 = iterate.start_value(step, env, dtype, lambda v: v, jnp)
        root, res, used, singular = newton(g, derivative, x0, a["diagonal"], a["tol"], a["max_iter"])
        env[key] = (res, used, singular)
        return root

    return compute


# ---- convolutions: a product that reads a view through r+u as one lax.conv --------------------


def _conv_layout(view: Step, step: Step) -> tuple[Any, ...] | None:
    """How a product of a view x[b,ch,r+u,c+v] (each position one name, or the sum of two) with
    another tensor k is one `lax.conv_general_dilated` (a correlation, VALID): per axis of x its
    role (the batch: kept, not in k; the feature: summed with k; a spatial axis: a kept name plus
    an offset that k holds), and k's axes as (out-feature, feature, the offsets). None when the
    product is not one (a name in both operands and kept, a depthwise convolution, powers, ...)."""
    ops = step.inputs
    if len(ops) != 2 or any(o.power != 1 for o in ops) or [o.name for o in ops].count(view.out) != 1:
        return None
    k = ops[0] if ops[1].name == view.out else ops[1]
    out = tuple(step.args.get("kept", step.axes))
    kn, on = set(k.axes), set(out)
    if len(kn) != len(k.axes) or len(on) != len(out):
        return None
    batch: list[int] = []
    feature: list[int] = []
    spatial: list[tuple[int, str, str]] = []  # (axis of x, the kept name, the offset k holds)
    for axis, p in enumerate(view.args["positions"]):
        if p[0] != "affine" or p[1] != 0 or any(c != 1 for c, _ in p[2]):
            return None
        names = [n for _, n in p[2]]
        if len(names) == 1 and names[0] in on and names[0] not in kn:
            batch.append(axis)
        elif len(names) == 1 and names[0] in kn and names[0] not in on:
            feature.append(axis)
        elif len(names) == 2 and {n in kn and n not in on for n in names} == {True, False}:
            offset = next(n for n in names if n in kn and n not in on)
            kept = names[0] if names[1] == offset else names[1]
            if kept not in on or kept in kn:
                return None
            spatial.append((axis, kept, offset))
        else:
            return None
    xnames = {n for p in view.args["positions"] for _, n in p[2]}
    if len(xnames) != sum(len(p[2]) for p in view.args["positions"]):
        return None  # a name in two positions (x[r+u, r+v]) is no convolution's
    out_feature = [n for n in k.axes if n in on and n not in xnames]
    feature_names = [view.args["positions"][a][2][0][1] for a in feature]
    produced = [view.args["positions"][a][2][0][1] for a in batch] + out_feature + [n for _, n, _ in spatial]
    if not spatial or len(batch) > 1 or len(feature) > 1 or len(out_feature) > 1 or set(produced) != on:
        return None
    if set(k.axes) != set(out_feature) | set(feature_names) | {o for _, _, o in spatial}:
        return None
    return k, out, batch, feature, spatial, out_feature, feature_names


def _conv(view: Step, step: Step) -> Compute | None:
    """The product `step` of the view `view` (read by no other step) as one convolution, or None."""
    layout = _conv_layout(view, step)
    if layout is None:
        return None
    k, out, batch, feature, spatial, out_feature, feature_names = layout
    size = dict(zip(view.axes, view.shape))
    src, name = view.inputs[0].name, k.name
    cut = [slice(None)] * len(view.args["positions"])
    for a, n, o in spatial:  # the extent the positions read
        cut[a] = slice(0, size[n] + size[o] - 1)
    x_order = [*batch, *feature, *(a for a, _, _ in spatial)]
    k_order = [k.axes.index(n) for n in [*out_feature, *feature_names, *(o for _, _, o in spatial)]]
    drop = tuple(a for a, there in ((0, batch), (1, out_feature)) if not there)
    made = [view.args["positions"][a][2][0][1] for a in batch] + out_feature + [n for _, n, _ in spatial]
    back = [made.index(n) for n in out]
    strides = (1,) * len(spatial)

    def convolve(env: Env) -> Array:
        x = jnp.transpose(env[src][tuple(cut)], x_order)  # (batch, feature, spatial...)
        w = jnp.transpose(env[name], k_order)  # (out-feature, feature, offsets...)
        if not batch:
            x = x[None]
        if not out_feature:
            w = w[None]
        if not feature:
            x, w = jnp.expand_dims(x, 1), jnp.expand_dims(w, 1)
        y = jax.lax.conv_general_dilated(x, w, strides, "VALID", precision=jax.lax.Precision.HIGHEST)
        return jnp.transpose(jnp.squeeze(y, drop) if drop else y, back)

    return _finish(step, convolve)


def _conv_scatter(product: Step, scatter: Step) -> Compute | None:
    """A product t[b,ch,r,u,c,v] = y[b,o,r,c] w[o,ch,u,v] added at t's positions r+u, c+v (the
    input's gradient of a convolution) as one convolution of y, padded by the kernel's extent
    less one, with w reversed along its offsets; or None when it is not one."""
    a, k = product.inputs if len(product.inputs) == 2 else (None, None)
    kept = tuple(product.args.get("kept", product.axes))
    if a is None or k is None or product.accumulate or kept != product.axes or a.power != 1 or k.power != 1:
        return None
    positions = scatter.args["positions"]
    if any(p[0] != "affine" or p[1] != 0 or any(c != 1 for c, _ in p[2]) for p in positions):
        return None
    pairs = [tuple(n for _, n in p[2]) for p in positions]
    if sum(len(p) == 2 for p in pairs) == 0 or any(len(p) not in (1, 2) for p in pairs):
        return None
    if len({n for p in pairs for n in p}) != sum(map(len, pairs)) or scatter.inputs[0].power != 1:
        return None
    size = dict(zip(product.axes, product.shape))
    if math.prod(size[n] for p in pairs if len(p) == 2 for n in p if n in a.axes) < math.prod(
        size[n] for p in pairs if len(p) == 2 for n in p if n in k.axes
    ):
        a, k = k, a  # the kernel is the smaller operand
    an, kn = set(a.axes), set(k.axes)
    summed = [n for n in a.axes if n in kn]
    batch = [p[0] for p in pairs if len(p) == 1 and p[0] in an and p[0] not in kn]
    out_feature = [p[0] for p in pairs if len(p) == 1 and p[0] in kn and p[0] not in an]
    spatial = [p if p[0] in an else p[::-1] for p in pairs if len(p) == 2]
    if (
        len(batch) + len(out_feature) + len(spatial) != len(pairs)
        or any(n in kn or o in an or o not in kn for n, o in spatial)
        or len(batch) > 1 or len(out_feature) > 1 or len(summed) > 1
        or set(a.axes) != {*batch, *summed, *(n for n, _ in spatial)}
        or set(k.axes) != {*out_feature, *summed, *(o for _, o in spatial)}
        or len(set(a.axes)) != len(a.axes) or len(set(k.axes)) != len(k.axes)
    ):  # fmt: skip
        return None
    a_order = [a.axes.index(n) for n in [*batch, *summed, *(n for n, _ in spatial)]]
    k_order = [k.axes.index(n) for n in [*out_feature, *summed, *(o for _, o in spatial)]]
    spatial_axes = [i for i, p in enumerate(pairs) if len(p) == 2]
    # y padded so that each of the target's positions i sees every r with r + u = i
    padding = [(size[o] - 1, scatter.shape[i] - size[n]) for i, (n, o) in zip(spatial_axes, spatial)]
    made = [i for i, p in enumerate(pairs) if len(p) == 1 and p[0] in batch]
    made += [i for i, p in enumerate(pairs) if len(p) == 1 and p[0] in out_feature] + spatial_axes
    back = [made.index(i) for i in range(len(pairs))]
    drop = tuple(i for i, there in ((0, batch), (1, out_feature)) if not there)
    flip = tuple(slice(None, None, -1) if i >= 2 else slice(None) for i in range(2 + len(spatial)))
    coef, fresh, out = product.args.get("coef", 1), scatter.args["fresh"], scatter.out
    strides = (1,) * len(spatial)

    def convolve(env: Env) -> Array:
        x = jnp.transpose(env[a.name], a_order)  # (batch, summed, spatial...)
        w = jnp.transpose(env[k.name], k_order)  # (out-feature, summed, offsets...)
        if not batch:
            x = x[None]
        if not out_feature:
            w = w[None]
        if not summed:
            x, w = jnp.expand_dims(x, 1), jnp.expand_dims(w, 1)
        y = jax.lax.conv_general_dilated(x, w[flip], strides, padding, precision=jax.lax.Precision.HIGHEST)
        y = jnp.transpose(jnp.squeeze(y, drop) if drop else y, back)
        y = y if coef == 1 else y * coef
        return y if fresh else env[out] + y

    return convolve


def _fused(steps: tuple[Step, ...]) -> dict[int, tuple[int, Compute]]:
    """{a step's position: (the position of the step it takes in, the compute of both)} for the
    convolutions among the steps, which XLA then runs as its own, without the patches (a 3x3
    kernel's are nine times the input): a view through r+u read by one product alone, and a
    product read only by a scatter-add through r+u (the input's gradient)."""
    out: dict[int, tuple[int, Compute]] = {}
    for i, s in enumerate(steps):
        readers = [j for j, t in enumerate(steps) if j > i and any(o.name == s.out for o in t.inputs)]
        if len(readers) != 1 or s.out not in steps[readers[0]].release:
            continue
        reader = steps[readers[0]]
        conv = None
        if s.kind == "view" and reader.kind == "contract":
            if basic_index(s.args["positions"], dict(zip(s.axes, s.shape))) is None:
                conv = _conv(s, reader)
        elif s.kind == "contract" and reader.kind == "scatter" and reader.inputs[0].name == s.out:
            conv = _conv_scatter(s, reader)
        if conv is not None:
            out[readers[0]] = (i, conv)
    return out


# ---- the executor ------------------------------------------------------------------------------


Entry = tuple[Compute, str, bool, tuple[str, ...]]


def _entry(step: Step, body: Compute | None = None, release: tuple[str, ...] | None = None) -> Entry:
    """A step as the executor runs it: its compute (giving the step's dtype and shape; `body`
    where the step is built otherwise), its target, whether it adds into the target, and what it
    frees (`release` where not the step's own)."""
    body = body or builder_for(BUILDERS, step, "jax")(step)  # type: ignore[arg-type]
    dtype = float_dtype(step.dtype)

    def compute(env: Env) -> Array:
        a = body(env)
        return a if a.dtype == dtype else a.astype(dtype)  # a weakly typed number, say

    frees = step.release if release is None else release
    return compute, step.out, step.accumulate and step.kind != "scatter", frees


def _entries(plan: Plan) -> list[tuple[Entry, Step]]:
    """The plan's steps as the executor runs them, each with its step; a view that one product
    reads through r+u is part of that product's convolution (what it frees freed there)."""
    fused = _fused(plan.steps)
    views = {i for i, _ in fused.values()}
    out = []
    for j, s in enumerate(plan.steps):
        if j in views:
            continue
        if j in fused:
            i, conv = fused[j]
            view = plan.steps[i]
            release = tuple(n for n in view.release + s.release if n != view.out)
            out.append((_entry(s, conv, release), s))
        else:
            out.append((_entry(s), s))
    return out


def _label_checks(plan: Plan) -> list[tuple[str, int, int, str, Any]]:
    """(label, the extent it indexes, that axis, the tensor read or written, the place) per label."""
    out = []
    for s in plan.steps:
        if s.kind not in ("gather", "scatter"):
            continue
        extents = s.inputs[0].shape if s.kind == "gather" else s.shape
        into = s.inputs[0].name if s.kind == "gather" else s.out
        for axis, p in enumerate(s.args["positions"]):
            if p[0] in ("label", "label_at"):
                out.append((p[1], extents[axis], axis, into, s.span))
    return out


class JaxExecutor:
    """A Plan made runnable on jax arrays: its steps traced into one jitted function of the arrays
    it reads, returning the arrays it defines and keeps."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.entries, self.steps = map(list, zip(*_entries(plan))) if plan.steps else ([], [])
        given = {n for n, _, _ in plan.inputs}
        read = [o.name for s in plan.steps for o in s.inputs] + [s.out for s in plan.steps if s.accumulate]
        self.reads = tuple(n for n in dict.fromkeys(read) if n in given)
        freed = {n for s in plan.steps for n in s.release}
        self.defines = tuple(n for n in dict.fromkeys(s.out for s in plan.steps) if n not in freed)
        self.labels = _label_checks(plan)
        self.iterations = [s for s in plan.steps if s.kind in ("fix", "solve")]
        self.jitted = self._jit()
        keep_freed_memory(plan.peak_bytes)  # XLA's buffers are glibc's too

    def _jit(self) -> Callable[[dict[str, Array]], dict[str, Array]]:
        """laid_out, jitted; differentiated as the plain trace."""
        # XLA may return a residual of a jitted function with layout constraints in another layout
        # than jax assumes (jax 0.10: a wrong jax.vjp through it, so a wrong second derivative of
        # ig.jax.function); what is differentiated is therefore the plain trace
        laid_out = jax.custom_jvp(self.laid_out)
        laid_out.defjvp(lambda primals, tangents: jax.jvp(self.trace, primals, tangents))
        return jax.jit(laid_out)

    def trace(self, arrays: dict[str, Array]) -> dict[str, Array]:
        """The steps as one function of the arrays they read (traced by jit, grad or vmap), and
        how each fix or solve ended (report_key)."""
        env = dict(arrays)
        for compute, out, add, release in self.entries:
            env[out] = env[out] + compute(env) if add else compute(env)
            for n in release:
                del env[n]
        return {n: env[n] for n in self.defines} | {k: env[k] for k in map(report_key, self.iterations)}

    def laid_out(self, arrays: dict[str, Array]) -> dict[str, Array]:
        """trace, each array it returns made where it is computed in the row-major layout it is
        returned in. XLA otherwise keeps a value in the layout of the op that made it (a
        convolution's channels last) and copies it for the caller, while a reader inside that
        needs it row-major (its sum of squares) gets a copy of its own: two extra passes over y
        in a convolution's forward."""
        out = self.trace(arrays)
        for n in self.defines:
            if out[n].ndim > 1:
                out[n] = with_layout_constraint(out[n], Layout(major_to_minor=tuple(range(out[n].ndim))))
        return out

    def run(self, env: Env, check_finite: bool = False) -> Env:
        """Run the plan on env (adding what it defines); with `check_finite`, step by step, and
        the first NaN or Inf is an error at its statement."""
        arrays = {n: env[n] for n in self.reads}
        try:
            self.check_labels(arrays)
            out = self._checked(arrays) if check_finite else self.jitted(arrays)
            for step in self.iterations:
                self.check_iteration(step, out.pop(report_key(step)))
            env.update(out)
        except IndexgradError as e:
            raise e.located(self.plan.filename, self.plan.source) from None
        return env

    def check_iteration(self, step: Step, report: tuple[Array, Array, Array]) -> None:
        """A fix or solve that did not converge is an error naming it, when its values are known
        (under a trace it cannot raise: its value is NaN)."""
        if any(isinstance(v, jax.core.Tracer) for v in report):
            return
        res, used, singular = (np.asarray(v).item() for v in report)
        if not res <= step.args["tol"]:
            more = f"; its Jacobian in '{step.args['iterate']}' is singular there" if singular else ""
            raise iterate.not_converged(step, res, used, more)

    def check_labels(self, arrays: dict[str, Array]) -> None:
        """An out-of-range label is an error naming it, when its values are known (not traced)."""
        for label, extent, axis, into, span in self.labels:
            lab = arrays[label]
            if isinstance(lab, jax.core.Tracer) or not lab.size:
                continue
            # a concrete label inside another trace (closed over by a function jax.jit(jax.grad)
            # traces) is still known: compute its range now rather than into that trace
            with jax.ensure_compile_time_eval():
                low, high = (int(v) for v in np.asarray(jnp.stack([lab.min(), lab.max()])))
            if low < 0 or high >= extent:
                bad = low if low < 0 else high
                raise IndexgradError(
                    f"label {bad} in '{label}' is out of range for axis {axis} of '{into}', "
                    f"which has size {extent}",
                    span,
                )

    def _checked(self, arrays: dict[str, Array]) -> dict[str, Array]:
        env = dict(arrays)
        for (compute, out, add, release), step in zip(self.entries, self.steps):
            env[out] = env[out] + compute(env) if add else compute(env)
            if step.kind in ("fix", "solve"):
                self.check_iteration(step, env[report_key(step)])
            if step.dtype != "bool" and not bool(jnp.all(jnp.isfinite(env[out]))):
                bad = "NaN" if bool(jnp.any(jnp.isnan(env[out]))) else "Inf"
                raise IndexgradError(f"this statement produced {bad} in '{out}'", step.span)
            for n in release:
                del env[n]
        return {n: env[n] for n in self.defines} | {k: env[k] for k in map(report_key, self.iterations)}


class JaxChain(JaxExecutor):
    """Executors' plans traced one after another into one jitted function (a forward plan, then
    the backward plan that reads what it keeps) returning `returns` alone: one dispatch, XLA
    fuses across the plans, and what the caller never sees stays in the layout XLA chose for it
    (`laid_out` constrains only what is returned)."""

    def __init__(self, executors: Sequence[JaxExecutor], returns: tuple[str, ...]) -> None:
        self.parts = tuple(executors)
        self.plan = self.parts[-1].plan
        made: set[str] = set()
        reads: list[str] = []
        for e in self.parts:
            reads += (n for n in e.reads if n not in made)
            made.update(e.defines)
        self.reads = tuple(dict.fromkeys(reads))
        self.defines = tuple(n for n in dict.fromkeys(returns) if n in made)
        first: dict[tuple[str, int], tuple[str, int, int, str, Any]] = {}
        for check in (c for e in self.parts for c in e.labels):
            first.setdefault(check[:2], check)  # a label read and written at one extent: checked once
        self.labels = list(first.values())
        self.iterations = [s for e in self.parts for s in e.iterations]
        self.jitted = self._jit()

    def trace(self, arrays: dict[str, Array]) -> dict[str, Array]:
        return self._through(arrays, JaxExecutor.trace)

    def _checked(self, arrays: dict[str, Array]) -> dict[str, Array]:
        return self._through(arrays, JaxExecutor._checked)

    def _through(self, arrays: dict[str, Array], run: Callable[[JaxExecutor, dict[str, Array]], Env]) -> Env:
        """Each part run by `run` on what it reads of the arrays and the earlier parts' results."""
        env = dict(arrays)
        for e in self.parts:
            env.update(run(e, {n: env[n] for n in e.reads}))
        return {n: env[n] for n in self.defines} | {k: env[k] for k in map(report_key, self.iterations)}


class JaxBackend:
    """Plans traced into jax computations: on `device` (or jax's default), with `dtype` (or the
    dtype of the arrays given) for every float."""

    name = "jax"
    in_place = False
    array_types: tuple[type, ...] = (type(jnp.zeros(())),)

    def __init__(self, device: Any = None, dtype: np.dtype | None = None) -> None:
        self.device = device
        self.dtype = dtype

    def executor(self, plan: Plan) -> JaxExecutor:
        return JaxExecutor(plan)

    chain = staticmethod(JaxChain)

    def asarray(self, value: Any, dtype: Any = None) -> Array:
        """value as a jax array; a float64 array without jax_enable_x64 is an error (jax would
        round it to float32), an integer array asked to become float64 becomes jax's float."""
        if self.dtype is not None:
            dtype = model_dtype(value, dtype, self.dtype, "x.astype(numpy.{})")
        given = getattr(value, "dtype", None)
        if given is not None and np.dtype(given) == np.float64 and float_dtype(np.float64) != np.float64:
            raise IndexgradError(f"is float64, and {_X64}, or give float32 arrays (x.astype(numpy.float32))")
        if given is not None and np.dtype(given).kind in "iu" and float_dtype(given) != given:
            integers_fit(
                np.asarray(value), float_dtype(given), "jax without 64-bit mode",
                "turn 64-bit mode on with jax.config.update('jax_enable_x64', True) before using jax",
            )
        a = jnp.asarray(value, None if dtype is None else float_dtype(dtype))
        return a if self.device is None else jax.device_put(a, self.device)

    def describe(self, a: Array) -> tuple[tuple[int, ...], np.dtype]:
        return a.shape, a.dtype  # a tuple and a numpy dtype already (this runs per input per call)

    def to_numpy(self, a: Array) -> np.ndarray:
        return np.asarray(a)

    def zeros_like(self, a: Array) -> Array:
        return jnp.zeros_like(a)

    def contiguous(self, a: Array) -> Array:
        return a  # jax arrays are values: nothing shares or changes them

    def copy(self, a: Array) -> Array:
        return a

    def one(self, dtype: np.dtype) -> Array:
        return jnp.ones((), float_dtype(dtype), device=self.device)


# what a float64 array or dtype needs, in Python and on the command line
_X64 = (
    "the jax backend computes in float32 unless jax's 64-bit mode is on; turn it on with "
    "jax.config.update('jax_enable_x64', True) before using jax, or by setting the environment "
    "variable JAX_ENABLE_X64=1"
)


def make_backend(device: Any = None, dtype: Any = None) -> JaxBackend:
    """A jax backend on `device` (a jax device, or a platform name: "cpu", "gpu", "tpu" for its
    first device) computing in `dtype` (float32, or float64 when 64-bit mode is on); either None
    follows jax's default device and the arrays given."""
    d = float_option(dtype, "jax", ("float32", "float64"))
    if d is not None and float_dtype(d) != d:
        raise IndexgradError(f"dtype={dtype!r}: {_X64}; or use dtype='float32'")
    return JaxBackend(_device(device), d)


def _device(device: Any) -> Any:
    if device is None or isinstance(device, jax.Device):
        return device
    if not isinstance(device, str):
        raise IndexgradError(f"device={device!r} is not a jax device; give one, or 'cpu', 'gpu' or 'tpu'")
    try:
        return jax.devices(device)[0]
    except RuntimeError:  # no such platform here, or an unknown name
        there = ", ".join(sorted({x.platform for x in jax.devices()}))
        raise IndexgradError(
            f"device={device!r} is not a platform jax has here ({there}); give one of those, or a jax device"
        ) from None


__all__ = [
    "BUILDERS",
    "FORWARDS",
    "REDUCTIONS",
    "JaxBackend",
    "JaxChain",
    "JaxExecutor",
    "float_dtype",
    "make_backend",
]
