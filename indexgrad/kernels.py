"""Planned kernels: what one primitive statement does once its sizes are known, as a closure.

A kernel is built on the first run for a signature and reused by every later run, so the first
call and later calls compute the same way (bit for bit). `owned` is per run: it holds the names
whose array is a buffer this run allocated and nobody else references (writeable, of the
statement's full shape), which may therefore be updated in place: `+=` into it, and a temporary
that dies at a statement may lend its buffer to that statement's result. A result that may be an
operand's buffer (a copy that is no copy, a scale by exactly 1) makes that buffer shared: the
operands leave `owned` with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .functions import FUNCTIONS, REDUCTIONS, relu, zero_row
from .lower import Contract, Elementwise, Operand, Prim, Reduction, Terms, prim_refs
from .nodes import Num, Ref, SizeOf, is_plain, ref_index_names
from .plan import matrix_layout, pairwise, plan_contraction

Array = np.ndarray
Kernel = Callable[[dict[str, Array], set[str]], None]
Compute = Callable[[dict[str, Array], set[str]], Any]


def operand_value(o: Operand, sizes: dict[str, int]) -> float:
    """A number operand's value: the literal, or the extent of the index `size[k]` names."""
    if isinstance(o, Num):
        return o.value
    assert isinstance(o, SizeOf)
    return float(sizes[o.index])


def power(v: float, k: float) -> float:
    """v**k for a number, with IEEE results where Python raises: 0**-1 is inf (a size of 0)."""
    try:
        return v**k
    except ZeroDivisionError:
        return math.inf


def raised(a: Array, k: float) -> Array:
    """a**k, with the common powers by their cheaper ufuncs and no warnings (IEEE results)."""
    if k == 1:
        return a
    if k == 2:
        return a * a
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if k == -1:
            return np.reciprocal(a) if a.dtype.kind == "f" else 1.0 / a
        if k == 0.5:
            return np.sqrt(a)
        return np.power(a, k)


def aligner(
    names: tuple[str, ...], out: tuple[str, ...], sizes: dict[str, int] | None = None
) -> Callable[[Array], Array]:
    """A function putting an array's axes (named `names`) in the order of `out`, with length-1
    axes for names it lacks; the permutation (and, given the sizes, the shape) is worked out once."""
    if names == out:
        return _same
    present = [n for n in out if n in names]
    order = [names.index(n) for n in present]
    identity = order == list(range(len(order)))
    if len(present) == len(out):
        return _same if identity else (lambda a: a.transpose(order))
    if sizes is not None:
        shape = tuple(sizes[n] if n in names else 1 for n in out)
        if identity:
            return lambda a: a.reshape(shape)
        return lambda a: a.transpose(order).reshape(shape)
    shape_of = [n in names for n in out]

    def align(a: Array) -> Array:
        if not identity:
            a = a.transpose(order)
        it = iter(a.shape)
        return a.reshape([next(it) if keep else 1 for keep in shape_of])

    return align


def _same(a: Array) -> Array:
    return a


def _broadcaster(
    names: tuple[str, ...], out: tuple[str, ...], sizes: dict[str, int]
) -> Callable[[Array], Array]:
    """`aligner`, except that an array whose axes are the last of `out`, in order, is left as it
    is: numpy's broadcasting lines it up (a bias B[h] added to h[b,h])."""
    return _same if names == out[len(out) - len(names) :] else aligner(names, out, sizes)


def _relu_into(a: Array, env: Any = None) -> Array:
    return relu(a, out=a)


def _relu_row_into(zeros: Array) -> Callable[..., Array]:
    return lambda a, env=None: np.maximum(a, zeros, out=a)  # relu's values for zeros' dtype


def _sigmoid_into(a: Array, env: Any = None) -> Array:  # 0.5 (1 + tanh(0.5 a)), as functions.py
    np.multiply(a, 0.5, out=a)
    np.tanh(a, out=a)
    np.add(a, 1.0, out=a)
    return np.multiply(a, 0.5, out=a)


def _ufunc_into(f: Any, **errstate: str) -> Callable[..., Array]:
    into = lambda a, env=None: f(a, out=a)  # noqa: E731
    return np.errstate(**errstate)(into) if errstate else into  # as a decorator: one frame, not three


# Elementwise functions that can overwrite their argument's buffer: the same ufuncs, in the same
# order, as their FUNCTIONS entry, so the values are those of the allocating version. Each takes
# (and ignores) an env too, to serve as a chain's in-place step (InPlace.step) itself.
_IN_PLACE: dict[str, Callable[..., Array]] = {
    "relu": _relu_into,
    "sigmoid": _sigmoid_into,
    "tanh": _ufunc_into(np.tanh),
    "exp": _ufunc_into(np.exp, over="ignore"),
    "log": _ufunc_into(np.log, divide="ignore", invalid="ignore"),
    "sqrt": _ufunc_into(np.sqrt, invalid="ignore"),
    "sin": _ufunc_into(np.sin),
    "cos": _ufunc_into(np.cos),
    "abs": _ufunc_into(np.abs),
    "sign": _ufunc_into(np.sign),
}


def kernel_for(
    p: Prim,
    sizes: dict[str, int],
    env: dict[str, Array],
    dead: set[str] | None = None,
    gate: str | None = None,
    release: tuple[str, ...] = (),
) -> Kernel | None:
    """A closure that computes and writes p without re-checking sizes, or None to stay generic.

    `dead` names temporaries dropped after p, whose buffers p may reuse; the kernel itself drops
    those in `release`. `gate` (for a `step` statement whose only reader multiplies it by that
    operand) asks for a boolean mask instead of a float array of 0s and 1s: the product then has
    the same values and dtype. `env` is the state p runs in, which every run for the same
    signature repeats: a `+=` into a name it does not hold yet is built as a plain write.
    """
    if not all(is_plain(r) for r in [p.out, *prim_refs(p)]):
        return None
    out = ref_index_names(p.out)
    shape = tuple(sizes[n] for n in out)
    built = _compute_kernel(p, sizes, env, out, dead or set(), gate)
    if built is None:
        return None
    compute, fresh = built
    fresh = fresh and len(shape) > 0
    small = 0 < len(shape) and math.prod(shape) <= 4096
    operands = tuple(r.name for r in prim_refs(p))
    accumulate = p.op == "+=" and p.out.name in env
    exact = fresh and getattr(compute, "exact", False)
    run = _runner(compute, p.out.name, tuple(set(operands)), shape, fresh, small, accumulate, release, exact)
    in_place = getattr(compute, "in_place", None)
    run.parts = Parts(compute, p.out.name, operands, shape, fresh, small, accumulate, release, in_place)  # type: ignore[attr-defined]
    return run


@dataclass(frozen=True)
class InPlace:
    """How a kernel computes its result in the buffer of an operand that dies at it (`donor`):
    `step(buffer, env)`, for a buffer this run owns that holds the donor's value."""

    donor: str
    step: Callable[[Array, dict[str, Array]], Array]


@dataclass(frozen=True)
class Parts:
    """What a kernel is made of, for `fuse_chains`."""

    compute: Compute
    name: str
    operands: tuple[str, ...]
    shape: tuple[int, ...]
    fresh: bool
    small: bool
    accumulate: bool
    release: tuple[str, ...]
    in_place: InPlace | None


def _continues(compute: Compute, donor: str, step: Callable[[Array, dict[str, Array]], Array]) -> Compute:
    compute.in_place = InPlace(donor, step)  # type: ignore[attr-defined]
    return compute


def fuse_chains(kernels: list[Kernel]) -> list[Kernel]:
    """Kernels with each chain of statements that pass a fresh buffer along (`h.prod = x W`,
    `h.sum = h.prod + B` into h.prod's buffer, `h = relu(h.sum)` into it again) made one kernel:
    the same numpy calls on the same buffer, without writing, owning and dropping the temporaries
    in between. Then each `step` mask is computed in the call of the kernel that reads it
    (`_gated`). Values are those of the kernels one by one."""
    out: list[Kernel] = []
    i = 0
    while i < len(kernels):
        first: Parts | None = getattr(kernels[i], "parts", None)
        links: list[Parts] = []
        if first is not None and first.fresh and not first.accumulate:
            prev = first
            for k in kernels[i + 1 :]:
                q: Parts | None = getattr(k, "parts", None)
                if (
                    q is None
                    or q.in_place is None
                    or q.in_place.donor != prev.name
                    or q.operands.count(prev.name) != 1
                    or prev.name not in q.release
                    or prev.name in prev.release
                    or q.name == prev.name
                    or q.shape != first.shape
                ):
                    break
                links.append(q)
                prev = q
                if q.accumulate:  # it adds to what its target holds: the chain's last link
                    break
        if links:
            out.append(_chain(first, links, kernels[i : i + 1 + len(links)]))  # type: ignore[arg-type]
        else:
            out.append(kernels[i])
        i += 1 + len(links)
    return _fuse_masks(out)


def _fuse_masks(kernels: list[Kernel]) -> list[Kernel]:
    """Kernels with each `step` mask that only the next kernel reads (and drops) made part of
    that kernel's call."""
    out: list[Kernel] = []
    i = 0
    while i < len(kernels):
        p: Parts | None = getattr(kernels[i], "parts", None)
        u = getattr(p.compute, "mask_of", None) if p is not None else None
        q: Parts | None = getattr(kernels[i + 1], "parts", None) if u and i + 1 < len(kernels) else None
        if p and q and not p.release and p.name in q.release and q.operands.count(p.name) == 1:
            out.append(_gated(u, p.name, kernels[i], kernels[i + 1]))  # type: ignore[arg-type]
            i += 2
        else:
            out.append(kernels[i])
            i += 1
    return out


def _gated(u: str, name: str, mask_kernel: Kernel, then: Kernel) -> Kernel:
    """`name = step(u)` as a boolean mask, then the kernel that reads and drops it, in one call."""
    greater, ndarray = np.greater, np.ndarray

    def run(env: dict[str, Array], owned: set[str]) -> None:
        m = greater(env[u], 0)
        if type(m) is ndarray:
            env[name] = m
        else:  # a subclass of ndarray: written as the mask's own kernel writes it
            mask_kernel(env, owned)
        then(env, owned)

    return run


def _chain(first: Parts, links: list[Parts], one_by_one: list[Kernel]) -> Kernel:
    compute0, name0, shape = first.compute, first.name, first.shape
    steps = tuple(q.in_place.step for q in links)  # type: ignore[union-attr]
    last = links[-1]
    name, small, accumulate = last.name, last.small, last.accumulate
    passed = {first.name, *(q.name for q in links[:-1])}
    release = tuple(dict.fromkeys(n for q in (first, *links) for n in q.release if n not in passed))
    rest = one_by_one[1:]
    ndarray = np.ndarray

    def run(env: dict[str, Array], owned: set[str]) -> None:
        a = compute0(env, owned)
        if type(a) is not ndarray or a.shape != shape:  # not a buffer of the full shape: one by one
            _write(a, env, owned, name0, shape, True, first.small, False)
            for n in first.release:
                del env[n]
            for k in rest:
                k(env, owned)
            return
        for step in steps:
            a = step(a, env)
        if accumulate:
            _write(a, env, owned, name, shape, True, small, True)
        else:
            env[name] = a
            owned.add(name)
        for n in release:
            del env[n]

    run.parts = first  # type: ignore[attr-defined]  # what reads a chain's operands: its first link
    return run


def _runner(
    compute: Compute,
    name: str,
    reads: tuple[str, ...],
    shape: tuple[int, ...],
    fresh: bool,
    small: bool,
    accumulate: bool,
    release: tuple[str, ...],
    exact: bool = False,
) -> Kernel:
    """The kernel: compute, write (or add) the result under `name`, then drop `release`.

    When the result may be an operand's buffer (not `fresh`), no name that holds it is owned.
    An `exact` compute returns a new array of the planned shape for ndarray operands: an ndarray
    result is written without checking its shape."""
    ndarray = np.ndarray
    if accumulate:

        def run(env: dict[str, Array], owned: set[str]) -> None:
            r = compute(env, owned)
            if not fresh:
                owned.difference_update(reads)
            _write(r, env, owned, name, shape, fresh, small, True)
            for n in release:
                del env[n]

    elif fresh:

        def run(env: dict[str, Array], owned: set[str]) -> None:
            r = compute(env, owned)
            if type(r) is ndarray and (exact or r.shape == shape):
                env[name] = r
                owned.add(name)
            else:  # a broadcast, a scalar, or a subclass of ndarray the caller gave (np.matrix)
                _write(r, env, owned, name, shape, fresh, small, False)
            for n in release:
                del env[n]

    else:

        def run(env: dict[str, Array], owned: set[str]) -> None:
            r = compute(env, owned)
            owned.difference_update(reads)
            if type(r) is ndarray and r.shape == shape:
                env[name] = r
                owned.discard(name)
            else:
                _write(r, env, owned, name, shape, fresh, small, False)
            for n in release:
                del env[n]

    return run


def _write(
    r: Any,
    env: dict[str, Array],
    owned: set[str],
    name: str,
    shape: tuple[int, ...],
    fresh: bool,
    small: bool,
    accumulate: bool,
) -> None:
    """Write a result of any shape (broadcast to `shape`), or add it into what `name` holds."""
    if type(r) is not np.ndarray:
        r = np.asarray(r)
    own = fresh
    if r.shape != shape:
        own = small
        if small:  # a small result is cheaper to fill than to wrap as a broadcast view
            full = np.empty(shape, r.dtype)
            full[...] = r
            r = full
        else:
            r = np.broadcast_to(r, shape)
    if not accumulate or name not in env:
        env[name] = r
        if own:
            owned.add(name)
        else:
            owned.discard(name)
        return
    t = env[name]
    if name in owned and t.ndim and (t.dtype == r.dtype or t.dtype == np.result_type(t, r)):
        np.add(t, r, out=t)
    else:
        env[name] = t + r
        if t.ndim:
            owned.add(name)


def _compute_kernel(
    p: Prim,
    sizes: dict[str, int],
    env: dict[str, Array],
    out: tuple[str, ...],
    dead: set[str],
    gate: str | None = None,
) -> tuple[Compute, bool] | None:
    """(compute, fresh): fresh when compute's result is always a new buffer of its own.

    Each case is built by a function of its own, so that a kernel's closure holds only the cells
    it uses (a kernel is built per statement; they add up in long programs).
    """
    shape = tuple(sizes[n] for n in out)
    if isinstance(p, Contract):
        return _contract_kernel(p, sizes, env, out, shape, dead)
    if isinstance(p, Elementwise):
        return _elementwise_kernel(p, sizes, env, out, shape, dead, gate)
    if isinstance(p, Terms):
        return _terms_kernel(p, sizes, env, out, shape, dead)
    assert isinstance(p, Reduction)
    full = out + tuple(p.indices)
    red = _FAST_REDUCTIONS.get(p.reducer, REDUCTIONS[p.reducer])
    if p.reducer == "logsumexp":  # (functions.REDUCTIONS' values: see _logsumexp)
        red = _logsumexp_to(shape)
    return _reduce_body(
        red,
        p.arg.name,
        aligner(ref_index_names(p.arg), full, sizes),
        tuple(range(len(out), len(full))),
    ), True


def _logsumexp_to(shape: tuple[int, ...]) -> Callable[[Array, tuple[int, ...]], Array]:
    return lambda x, axes: _logsumexp(x, axes, shape)


def _reduce_body(red: Callable[[Array, tuple[int, ...]], Array], arg: str, align: Any, axes: Any) -> Compute:
    if align is _same:
        return lambda env, owned: red(env[arg], axes)
    return lambda env, owned: red(align(env[arg]), axes)


def _contract_kernel(
    p: Contract,
    sizes: dict[str, int],
    env: dict[str, Array],
    out: tuple[str, ...],
    shape: tuple[int, ...],
    dead: set[str],
) -> tuple[Compute, bool] | None:
    coef = p.coef
    ops: list[tuple[str, tuple[str, ...], float]] = []
    for f, k in p.factors:
        if isinstance(f, Ref):
            ops.append((f.name, ref_index_names(f), k))
        else:
            coef *= power(operand_value(f, sizes), k)
    if not ops:
        return None
    present = {n for _, nm, _ in ops for n in nm}
    kept = tuple(n for n in out if n in present)
    fresh = True
    body: Compute
    if len(ops) == 1 and not kept and ops[0][2] == 2:
        if not out:  # a scalar sum of squares (a loss): one BLAS dot product, times coef
            return _dot_body(ops[0][0], coef), False
        body = _dot_body(ops[0][0], 1.0)
    elif len(ops) == 1:
        ((n0, nm0, k0),) = ops
        axes = tuple(i for i, n in enumerate(nm0) if n not in kept)
        align0 = aligner(tuple(n for n in nm0 if n in kept), kept, sizes)
        fresh = bool(axes) or k0 != 1 or coef != 1
        if not axes and k0 == 1:
            body = _copy_body(n0, align0)
        elif k0 == 1 and align0 is _same and (ones := _ones_sum_body(n0, axes, env[n0])) is not None:
            body = ones  # a bias gradient: one BLAS product with a vector of ones
        else:
            body = _sum_body(n0, k0, align0, axes)
    elif len(ops) == 2:
        (n0, nm0, k0), (n1, nm1, k1) = ops
        product = _product_kernel(ops, sizes, env, out, shape, dead, coef) if kept == out else None
        if product is not None:
            return product, True
        scale = _scale_kernel(ops, env, out, shape, dead, coef) if kept == out else None
        if scale is not None:
            return scale, False  # it may hand back its operand itself: never updated in place
        layout = matrix_layout(nm0, nm1, kept) if k0 == k1 == 1 else None
        if layout is not None:
            body = _matmul_body(n0, n1, *layout)
        else:
            body = _pair_body(pairwise(nm0, nm1, kept, env[n0].shape, env[n1].shape), n0, k0, n1, k1)
    else:
        plan = plan_contraction([nm for _, nm, _ in ops], kept, [env[n].shape for n, _, _ in ops])
        body = _expression_body(plan.expression, ops)
    if kept == out and coef == 1:
        return body, fresh
    return _widened(body, aligner(kept, out, sizes), coef), fresh or coef != 1


def _dot_body(n0: str, coef: float) -> Compute:
    """Σ a² as np.dot of a with itself; the coefficient multiplies the numpy scalar it returns,
    whose arithmetic gives a 0-d array's values without the ufunc machinery."""

    def body(env: dict[str, Array], owned: set[str]) -> Array:
        a = env[n0].ravel()
        d = np.dot(a, a)
        return np.asarray(d * coef if coef != 1 else d)

    return body


def _copy_body(n0: str, align0: Callable[[Array], Array]) -> Compute:
    return lambda env, owned: align0(env[n0])


def _ones_sum_body(n0: str, axes: tuple[int, ...], a: Array) -> Compute | None:
    """A sum over the leading (or trailing) axes of a float32/float64 array as a matrix-vector
    product with ones, which BLAS runs about twice as fast as np.add.reduce (a bias gradient)."""
    shape, nd = a.shape, a.ndim
    if a.dtype not in (np.float32, np.float64) or nd < 2 or len(axes) >= nd or 0 in shape:
        return None
    k = len(axes)
    mm = np.matmul
    if axes == tuple(range(k)):  # leading axes: ones @ a
        ones = np.ones(math.prod(shape[:k]), a.dtype)
        if nd == 2:
            return _exact(lambda env, owned: mm(ones, env[n0]))
        rows, rest = len(ones), shape[k:]
        return _exact(lambda env, owned: mm(ones, env[n0].reshape(rows, -1)).reshape(rest))
    if axes == tuple(range(nd - k, nd)):  # trailing axes: a @ ones
        ones = np.ones(math.prod(shape[nd - k :]), a.dtype)
        if nd == 2:
            return _exact(lambda env, owned: mm(env[n0], ones))
        cols, lead = len(ones), shape[: nd - k]
        return _exact(lambda env, owned: mm(env[n0].reshape(-1, cols), ones).reshape(lead))
    return None


def _sum_body(n0: str, k0: float, align0: Callable[[Array], Array], axes: tuple[int, ...]) -> Compute:
    if k0 == 1 and axes and align0 is _same:  # a bias gradient: one reduction
        return lambda env, owned: np.add.reduce(env[n0], axis=axes)

    def body(env: dict[str, Array], owned: set[str]) -> Array:
        a = raised(env[n0], k0)
        return align0(np.add.reduce(a, axis=axes) if axes else a)

    return body


def _matmul_body(n0: str, n1: str, swap: bool, ta: bool, tb: bool) -> Compute:
    """One np.matmul of two operands or their transposed views (plan.matrix_layout's layout)."""
    x, y = (n1, n0) if swap else (n0, n1)
    mm = np.matmul
    if ta and tb:
        return _exact(lambda env, owned: mm(env[x].T, env[y].T))
    if ta:
        return _exact(lambda env, owned: mm(env[x].T, env[y]))
    if tb:
        return _exact(lambda env, owned: mm(env[x], env[y].T))
    return _exact(lambda env, owned: mm(env[x], env[y]))


def _pair_body(pw: Callable[[Array, Array], Array], n0: str, k0: float, n1: str, k1: float) -> Compute:
    if k0 == 1 and k1 == 1:
        return lambda env, owned: pw(env[n0], env[n1])
    return lambda env, owned: pw(raised(env[n0], k0), raised(env[n1], k1))


def _expression_body(
    expression: Callable[..., Array], ops: list[tuple[str, tuple[str, ...], float]]
) -> Compute:
    return lambda env, owned: expression(*[raised(env[n], k) for n, _, k in ops])


def _widened(body: Compute, widen: Callable[[Array], Array], coef: float) -> Compute:
    if coef == 1:
        return lambda env, owned: widen(np.asarray(body(env, owned)))
    return lambda env, owned: widen(np.asarray(body(env, owned)) * coef)


def _elementwise_kernel(
    p: Elementwise,
    sizes: dict[str, int],
    env: dict[str, Array],
    out: tuple[str, ...],
    shape: tuple[int, ...],
    dead: set[str],
    gate: str | None,
) -> tuple[Compute, bool]:
    if gate is not None:
        (u,) = p.args  # a `step` whose product with `gate` is its only use: a boolean mask
        assert isinstance(u, Ref)
        return _mask_body(u.name), True
    fn = FUNCTIONS[p.func].forward
    into = _IN_PLACE.get(p.func)
    if len(p.args) == 1 and isinstance(p.args[0], Ref):
        a0 = p.args[0]
        n0 = a0.name
        align0 = aligner(ref_index_names(a0), out, sizes)
        if into is not None and n0 in dead and n0 != p.out.name and align0 is _same:
            if p.func == "relu" and env[n0].dtype.kind == "f" and shape and shape[-1] >= 16:
                into = _relu_row_into(zero_row(shape[-1], env[n0].dtype))  # relu's row, found once
            return _unary_into_body(fn, into, n0, shape, env[n0].dtype.kind == "f"), True  # dies here
        return _unary_body(fn, n0, align0), True
    getters: list[Callable[[dict[str, Array]], Any]] = []
    for a in p.args:
        if isinstance(a, Ref):
            getters.append(_getter(a.name, aligner(ref_index_names(a), out, sizes)))
        else:
            getters.append(_constant(operand_value(a, sizes)))
    return _call_body(fn, getters), True


def _mask_body(un: str) -> Compute:
    mask = _exact(lambda env, owned: np.greater(env[un], 0))
    mask.mask_of = un  # type: ignore[attr-defined]  # for _fuse_masks
    return mask


def _exact(compute: Compute) -> Compute:
    """Mark a compute that always returns a new array of its statement's shape (see `_runner`)."""
    compute.exact = True  # type: ignore[attr-defined]
    return compute


def _unary_into_body(
    fn: Any, into: Callable[..., Array], n0: str, shape: tuple[int, ...], floats: bool
) -> Compute:
    """fn of an argument that dies here, into its buffer when this run owns it; `floats` says
    whether the argument's dtype (the signature's) is a float one."""

    def unary(env: dict[str, Array], owned: set[str]) -> Array:
        a = env[n0]
        if floats and n0 in owned and a.shape == shape:
            return into(a)  # overwrite the dying argument's buffer
        return fn(a)

    return _continues(unary, n0, into if floats else lambda a, env: fn(a))


def _unary_body(fn: Any, n0: str, align0: Callable[[Array], Array]) -> Compute:
    if align0 is _same:
        return lambda env, owned: fn(env[n0])
    return lambda env, owned: fn(align0(env[n0]))


def _constant(value: float) -> Callable[[dict[str, Array]], Any]:
    return lambda env: value


def _call_body(fn: Any, getters: list[Callable[[dict[str, Array]], Any]]) -> Compute:
    return lambda env, owned: fn(*[g(env) for g in getters])


def _terms_kernel(
    p: Terms,
    sizes: dict[str, int],
    env: dict[str, Array],
    out: tuple[str, ...],
    shape: tuple[int, ...],
    dead: set[str],
) -> tuple[Compute, bool] | None:
    if not any(isinstance(u, Ref) for _, u in p.terms):
        return None
    first = p.terms[0][1]
    donor = first.name if isinstance(first, Ref) and first.name in dead else None
    if donor is not None and (p.terms[0][0] != 1 or ref_index_names(first) != out):
        donor = None
    if donor is not None:  # the dtypes are fixed by the signature: check them once
        dt = env[donor].dtype
        if any(np.result_type(dt, env[u.name]) != dt for _, u in p.terms[1:] if isinstance(u, Ref)):
            donor = None
    (c0, a), *rest = p.terms
    b = rest[0][1] if len(rest) == 1 and rest[0][0] in (1, -1) else None
    if c0 == 1 and isinstance(a, Ref) and isinstance(b, Ref):  # `a ± b`: one ufunc call
        sign = rest[0][0]
        al0, al1 = (_broadcaster(ref_index_names(r), out, sizes) for r in (a, b))
        if donor is None and b.name in dead and a.name != b.name and ref_index_names(b) == out:
            dt = env[b.name].dtype
            if np.result_type(dt, env[a.name]) == dt:
                return _into_second_body(a.name, al0, b.name, sign, shape), True
        return _two_terms_body(donor, a.name, al0, b.name, al1, sign, shape), True
    parts: list[tuple[float, Callable[[dict[str, Array]], Any] | None, float]] = []
    for c, u in p.terms:
        if isinstance(u, Ref):
            parts.append((c, _getter(u.name, _broadcaster(ref_index_names(u), out, sizes)), 0.0))
        else:
            parts.append((c, None, operand_value(u, sizes)))
    fresh = len(parts) > 1 or parts[0][0] != 1 or parts[0][1] is None
    return _terms_body(parts, donor, shape), fresh


def _terms_body(
    parts: list[tuple[float, Callable[[dict[str, Array]], Any] | None, float]],
    donor: str | None,
    shape: tuple[int, ...],
) -> Compute:
    rest = parts[1:]

    def add_into(total: Array, env: dict[str, Array]) -> Array:
        for c, g, v in rest:
            if g is None:
                total += c * v
            elif c == 1:
                np.add(total, g(env), out=total)
            elif c == -1:
                np.subtract(total, g(env), out=total)  # = total + (-1 * term), exactly
            else:
                total += g(env) * c
        return total

    def terms(env: dict[str, Array], owned: set[str]) -> Array:
        if donor is not None and donor in owned:  # add into the first term's array, which dies here
            a = env[donor]
            if a.shape == shape:
                return add_into(a, env)
        c, g, v = parts[0]
        total: Any = (g(env) * c if c != 1 else g(env)) if g is not None else c * v
        for c, g, v in rest:
            if g is None:
                total = total + c * v
            elif c == 1:
                total = total + g(env)
            elif c == -1:
                total = total - g(env)  # = total + (-1 * term), exactly
            else:
                total = total + g(env) * c
        return total

    return terms if donor is None else _continues(terms, donor, add_into)


def _two_terms_body(
    donor: str | None,
    n0: str,
    al0: Callable[[Array], Array],
    n1: str,
    al1: Callable[[Array], Array],
    sign: float,
    shape: tuple[int, ...],
) -> Compute:
    """`a ± b`; when a (the donor, with the result's axes) dies here, into a's buffer if this run
    owns it (a bias added in place)."""
    op = np.add if sign == 1 else np.subtract
    if donor is None:
        if al0 is _same and al1 is _same:
            return lambda env, owned: op(env[n0], env[n1])
        return lambda env, owned: op(al0(env[n0]), al1(env[n1]))

    def two(env: dict[str, Array], owned: set[str]) -> Array:
        a = env[n0]
        if n0 in owned and a.shape == shape:
            return op(a, al1(env[n1]), out=a)
        return op(a, al1(env[n1]))

    if al1 is _same:
        return _continues(two, n0, lambda a, env: op(a, env[n1], out=a))
    return _continues(two, n0, lambda a, env: op(a, al1(env[n1]), out=a))


def _into_second_body(
    n0: str, al0: Callable[[Array], Array], n1: str, sign: float, shape: tuple[int, ...]
) -> Compute:
    """`u ± b` where b (with the result's axes) dies here: into b's buffer when this run owns it."""
    op = np.add if sign == 1 else np.subtract

    def two(env: dict[str, Array], owned: set[str]) -> Array:
        b = env[n1]
        if n1 in owned and b.shape == shape:
            return op(al0(env[n0]), b, out=b)
        return op(al0(env[n0]), b)

    return _continues(two, n1, lambda b, env: op(al0(env[n0]), b, out=b))


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


def _logsumexp(x: Array, axes: tuple[int, ...], shape: tuple[int, ...]) -> Array:
    """functions._logsumexp's ufunc calls, in its order, without numpy's Python wrappers; `shape`
    is the result's.

    When every maximum is finite, the maxima are used as they are and nothing can divide by
    zero, so that case skips the masking and the error-state switch.
    """
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


# Reductions run by planned kernels (and logsumexp, above): the same values as
# functions.REDUCTIONS, fewer Python layers.
_FAST_REDUCTIONS: dict[str, Callable[[Array, tuple[int, ...]], Array]] = {
    "sum": lambda x, axes: np.add.reduce(x, axis=axes),
    "mean": _mean,
}


def _product_kernel(
    ops: list[tuple[str, tuple[str, ...], float]],
    sizes: dict[str, int],
    env: dict[str, Array],
    out: tuple[str, ...],
    shape: tuple[int, ...],
    dead: set[str],
    coef: float,
) -> Compute | None:
    """An elementwise product of two operands (no index summed), into a dying operand's buffer.

    Returns None (leave it to `pairwise`) unless some operand can lend its buffer: it dies at
    this statement, has exactly the output's axes in order, and is not raised to a power.
    """
    (n0, nm0, k0), (n1, nm1, k1) = ops
    if set(nm0) | set(nm1) != set(out) or coef != 1 or k0 != 1 or k1 != 1 or n0 == n1:
        return None
    if nm0 == out and n0 in dead:
        donor, other, other_names = n0, n1, nm1
    elif nm1 == out and n1 in dead:
        donor, other, other_names = n1, n0, nm0
    else:
        return None
    align0, align1 = aligner(nm0, out, sizes), aligner(nm1, out, sizes)
    align_other = aligner(other_names, out, sizes)
    if np.result_type(env[donor], env[other]) != env[donor].dtype:  # dtypes are the signature's
        return None

    def body(env: dict[str, Array], owned: set[str]) -> Array:
        a = env[donor]
        if donor in owned and a.shape == shape:
            return np.multiply(a, align_other(env[other]), out=a)
        return np.multiply(align0(env[n0]), align1(env[n1]))

    return _continues(body, donor, lambda a, env: np.multiply(a, align_other(env[other]), out=a))


def _scale_kernel(
    ops: list[tuple[str, tuple[str, ...], float]],
    env: dict[str, Array],
    out: tuple[str, ...],
    shape: tuple[int, ...],
    dead: set[str],
    coef: float,
) -> Compute | None:
    """A tensor times a scalar tensor and the coefficient, in one pass (into the tensor's buffer
    when it dies here); when the factor comes to exactly 1 (`y.grad = 2 (0.5) y` for a loss of
    ½Σy²) the tensor itself, as a hand-written backward pass reuses y as its own gradient."""
    (n0, nm0, k0), (n1, nm1, k1) = ops
    if k0 != 1 or k1 != 1 or n0 == n1:
        return None
    if nm0 == () and nm1 == out:
        s_name, t_name = n0, n1
    elif nm1 == () and nm0 == out:
        s_name, t_name = n1, n0
    else:
        return None
    keeps = np.result_type(env[t_name].dtype, env[s_name].dtype) == env[t_name].dtype  # t's dtype
    dies = keeps and t_name in dead

    def body(env: dict[str, Array], owned: set[str]) -> Array:
        t = env[t_name]
        # the factor as a numpy scalar, whose arithmetic gives a 0-d array's values, faster
        factor = env[s_name][()] * coef if coef != 1 else env[s_name][()]
        if keeps and factor == 1:
            return t
        if dies and t_name in owned and t.shape == shape:
            return np.multiply(t, factor, out=t)
        return np.multiply(t, factor)

    if not dies:
        return body

    def scale_into(t: Array, env: dict[str, Array]) -> Array:
        factor = env[s_name][()] * coef if coef != 1 else env[s_name][()]
        return t if factor == 1 else np.multiply(t, factor, out=t)

    return _continues(body, t_name, scale_into)


def _getter(name: str, align: Callable[[Array], Array]) -> Callable[[dict[str, Array]], Array]:
    if align is _same:
        return lambda env: env[name]
    return lambda env: align(env[name])
