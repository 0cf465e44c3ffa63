"""Execution of primitive statements on numpy arrays: sizes, strided and gathered reads, scatter-adds."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .check import sized_like
from .errors import IndexgradError
from .functions import FUNCTIONS, REDUCTIONS
from .gcpause import gc_paused
from .kernels import Kernel, aligner, fuse_chains, kernel_for, operand_value, power, raised
from .lower import Contract, Elementwise, Prim, Reduction, Terms, prim_refs
from .memory import human_bytes, memory_limit
from .nodes import Affine, Gather, Ref, Span, is_plain, ref_index_names
from .plan import plan_contraction
from .printer import format_ref
from .shapes import axis_classes, valid_extent

Array = np.ndarray


def _ref_place(r: Ref, fallback: Span) -> Span:
    return r.span if r.span.line else fallback


class Sizes:
    """Index sizes of one statement, each remembered with the place that fixed it."""

    def __init__(self, span: Span) -> None:
        self.size: dict[str, int] = {}
        self.where: dict[str, Any] = {}
        self.span = span

    def note(self, name: str, size: int, what: Any, span: Span) -> None:
        old = self.size.get(name)
        if old is None:
            self.size[name] = size
            self.where[name] = what
        elif old != size:
            if isinstance(what, _Where) and what.origin is not None:
                span = _ref_place(what.user()[0], span)
            raise IndexgradError(
                f"index '{name}' has size {old} from {self.where[name]} but size {size} from {what}",
                span,
            )


def _array(env: dict[str, Array], r: Ref, span: Span) -> Array:
    a = env.get(r.name)
    if a is None:
        raise IndexgradError(f"no array was given for input '{r.name}'", _ref_place(r, span))
    if a.ndim != len(r.indices):
        raise IndexgradError(
            f"'{r.name}' is used with {len(r.indices)} indices but its array has "
            f"{a.ndim} dimensions (shape {a.shape})",
            _ref_place(r, span),
        )
    return a


def _labels(env: dict[str, Array], g: Ref, span: Span) -> Array:
    a = _array(env, g, span)
    if a.dtype.kind not in "iu":
        raise IndexgradError(
            f"'{g.name}' is used as labels inside an index position, so it must hold integers, "
            f"but its array has dtype {a.dtype}",
            _ref_place(g, span),
        )
    return a


Origin = Callable[[Ref, int], tuple[Ref, int]]


class _Where:
    """A place described lazily: the text is only built when an error needs it. `origin` traces
    an axis of a temporary back to the reference the user wrote that gave it its size."""

    def __init__(self, r: Ref, axis: int, origin: Origin | None = None) -> None:
        self.r, self.axis, self.origin = r, axis, origin

    def user(self) -> tuple[Ref, int]:
        return (self.r, self.axis) if self.origin is None else self.origin(self.r, self.axis)

    def __str__(self) -> str:
        r, axis = self.user()
        return f"{format_ref(r)} (axis {axis})"


def _size_ref(
    sizes: Sizes, env: dict[str, Array], r: Ref, a: Array, span: Span, origin: Origin | None = None
) -> None:
    for axis, i in enumerate(r.indices):
        what: Any = _Where(r, axis, origin)
        if isinstance(i, Gather):
            lab = _labels(env, i.ref, span)
            for ax2, j in enumerate(i.ref.indices):
                assert isinstance(j, Affine) and j.plain
                sizes.note(j.plain, lab.shape[ax2], f"{format_ref(i.ref)} (axis {ax2})", span)
        elif i.plain is not None:
            sizes.note(i.plain, a.shape[axis], what, _ref_place(r, span))


def _size_affine(sizes: Sizes, refs: list[tuple[Ref, Array]], span: Span) -> None:
    """Sizes of indices known only through index arithmetic: the 'valid' extent."""
    progress = True
    while progress:
        progress = False
        for r, a in refs:
            for axis, i in enumerate(r.indices):
                if not isinstance(i, Affine) or i.plain is not None:
                    continue
                found = valid_extent(i, a.shape[axis], sizes.size.get)
                if found is None:
                    continue
                n, size = found
                if size < 1:
                    raise IndexgradError(
                        f"index '{n}' in {format_ref(r)} has no valid positions: "
                        f"{r.name} has size {a.shape[axis]} along axis {axis}",
                        _ref_place(r, span),
                    )
                sizes.note(n, size, f"the valid extent of {format_ref(r)}", span)
                progress = True


def _plain_sizes(p: Prim, env: dict[str, Array]) -> dict[str, int] | None:
    """The sizes of a statement whose positions are all plain names, when they agree and are all
    known; None sends it to the full check, which also words any error."""
    pairs = [(r, env.get(r.name)) for r in prim_refs(p)]
    t = env.get(p.out.name)
    if t is not None and p.op != "=":
        pairs.append((p.out, t))
    elif t is None and (base := sized_like(p.out.name)) is not None:
        pairs.append((p.out, env.get(base)))  # `x.grad` has x's shape
    size: dict[str, int] = {}
    for r, a in pairs:
        if a is None or not is_plain(r) or a.ndim != len(r.indices):
            return None
        for n, d in zip(ref_index_names(r), a.shape):
            if size.setdefault(n, d) != d:
                return None
    for n in ref_index_names(p.out):
        if n not in size:
            return None
    return size


def _affine_range(i: Affine, sizes: dict[str, int]) -> tuple[int, int]:
    lo = hi = i.const
    for c, n in i.terms:
        ext = c * (sizes[n] - 1)
        lo, hi = lo + min(ext, 0), hi + max(ext, 0)
    return lo, hi


def _index_arrays(
    r: Ref,
    a_shape: tuple[int, ...],
    names: tuple[str, ...],
    sizes: dict[str, int],
    env: dict[str, Array],
    span: Span,
) -> tuple[Array, ...]:
    """Per-axis integer arrays broadcast over `names`, for gathers and scatter-adds."""
    nd = len(names)
    pos = {n: k for k, n in enumerate(names)}

    def along(n: str) -> Array:
        shape = [1] * nd
        shape[pos[n]] = sizes[n]
        return np.arange(sizes[n]).reshape(shape)

    out = []
    for axis, i in enumerate(r.indices):
        if isinstance(i, Gather):
            lab = _labels(env, i.ref, span)
            lnames = [j.plain for j in i.ref.indices]  # type: ignore[union-attr]
            lab = _align(lab, tuple(lnames), names)  # type: ignore[arg-type]
            if lab.size and (lab.min() < 0 or lab.max() >= a_shape[axis]):
                bad = lab.min() if lab.min() < 0 else lab.max()
                raise IndexgradError(
                    f"label {int(bad)} in '{i.ref.name}' is out of range for axis {axis} of "
                    f"'{r.name}', which has size {a_shape[axis]}",
                    _ref_place(r, span),
                )
            out.append(lab)
        else:
            v: Any = np.full([1] * nd, i.const, dtype=np.intp)
            for c, n in i.terms:
                v = v + c * along(n)
            out.append(v)
    return tuple(out)


def _check_bounds(r: Ref, a: Array, sizes: dict[str, int], span: Span) -> None:
    for axis, i in enumerate(r.indices):
        if isinstance(i, Affine) and i.plain is None:
            lo, hi = _affine_range(i, sizes)
            if lo < 0 or hi >= a.shape[axis]:
                raise IndexgradError(
                    f"{format_ref(r)} reaches position {hi if hi >= a.shape[axis] else lo} "
                    f"along axis {axis}, but '{r.name}' has size {a.shape[axis]} there",
                    _ref_place(r, span),
                )


def read(r: Ref, env: dict[str, Array], sizes: dict[str, int], span: Span) -> tuple[Array, tuple[str, ...]]:
    """The values of a reference as an array whose axes are its distinct index names."""
    a = env[r.name]
    names = ref_index_names(r)
    if is_plain(r):
        return a, names
    if any(isinstance(i, Gather) for i in r.indices):
        return a[_index_arrays(r, a.shape, names, sizes, env, span)], names
    _check_bounds(r, a, sizes, span)
    strides = {n: 0 for n in names}
    start = []
    for axis, i in enumerate(r.indices):
        assert isinstance(i, Affine)
        start.append(i.const)
        for c, n in i.terms:
            strides[n] += c * a.strides[axis]
    base = a[tuple(slice(s, None) for s in start)]
    view = as_strided(
        base,
        shape=tuple(sizes[n] for n in names),
        strides=tuple(strides[n] if sizes[n] > 1 else 0 for n in names),  # a huge unused step
        writeable=False,
    )
    return view, names


def _align(a: Array, names: tuple[str, ...], out: tuple[str, ...]) -> Array:
    """a with its axes permuted into the order of `out`, with length-1 axes for missing names."""
    return aligner(names, out)(a)


def _result_dtype(arrays: list[Array]) -> np.dtype:
    if not arrays:
        return np.dtype(np.float64)
    dt = np.result_type(*arrays)
    return dt if dt.kind in "fc" else np.dtype(np.float64)


class Executor:
    """Runs a list of primitive statements on an environment of named arrays."""

    def __init__(
        self,
        prims: list[Prim],
        filename: str = "<string>",
        source: str = "",
        keep: set[str] | None = None,
        temporaries: set[str] | None = None,
    ) -> None:
        """`temporaries` are the names lowering made up: a size error traces them to what the user wrote."""
        self._kernels: dict[Any, list[tuple[Kernel | None, Prim, list[str]]]] = {}
        self._fast: dict[Any, list[Kernel]] = {}  # per signature: what a planned run calls
        self.temporaries = temporaries or set()
        self._limit: int | None = None
        self.prims = prims
        self.filename = filename
        self.source = source
        self.release = _releases(prims, keep) if keep is not None else [[] for _ in prims]
        self._gates = _gates(prims, self.release)

    def run(
        self,
        env: dict[str, Array],
        check_finite: bool = False,
        dims: dict[str, int] | None = None,
        key: Any = None,
        owned: set[str] | None = None,
    ) -> dict[str, Array]:
        """Run every primitive in order, adding what each defines to env.

        The first run for a signature (names, shapes and dtypes of env) checks sizes and plans
        every statement; later runs with the same signature go straight to the planned kernels.
        `owned`, when given, receives the names whose arrays this run allocated for itself.
        """
        if owned is None:
            owned = set()
        if check_finite or dims:
            key = None
        elif key is None:
            key = _signature(env)
        fast = self._fast.get(key) if key is not None else None
        if fast is not None:
            return self.run_planned(fast, env, owned)
        built: list[Kernel | None] = []
        self._limit = memory_limit()
        gates = self._gates
        with gc_paused() if key is not None else contextlib.nullcontext():  # planning, not every call
            for k, (p, dead) in enumerate(zip(self.prims, self.release)):
                release = tuple(dead) if key is not None else ()  # a kept kernel drops them itself
                built.append(
                    self._guarded(p, env, owned, check_finite, dims or {}, set(dead), gates.get(k), release)
                )
                for n in dead:
                    env.pop(n, None)
        if key is not None:
            self._kernels[key] = steps = list(zip(built, self.prims, self.release))
            self._fast[key] = self.compose(steps)
        return env

    def planned(self, key: Any) -> list[Kernel] | None:
        """The kernels a run with this signature calls, once a run has planned them."""
        return self._fast.get(key)

    def run_planned(self, kernels: list[Kernel], env: dict[str, Array], owned: set[str]) -> dict[str, Array]:
        """A planned run: `planned(key)`'s kernels on an env of that signature."""
        for kernel in kernels:
            kernel(env, owned)
        return env

    def compose(self, steps: list[tuple[Kernel | None, Prim, list[str]]]) -> list[Kernel]:
        """The kernels a planned run calls in order; a statement without one runs generically."""
        return fuse_chains([k if k is not None else self._generic(p, tuple(dead)) for k, p, dead in steps])

    def _generic(self, p: Prim, release: tuple[str, ...]) -> Kernel:
        def run(env: dict[str, Array], owned: set[str]) -> None:
            self._guarded(p, env, owned, False, {}, set())
            for n in release:
                del env[n]

        return run

    def _guarded(
        self,
        p: Prim,
        env: dict[str, Array],
        owned: set[str],
        check_finite: bool,
        dims: dict[str, int],
        dead: set[str],
        gate: str | None = None,
        release: tuple[str, ...] = (),
    ) -> Kernel | None:
        try:
            return self.step(p, env, owned, check_finite, dims, dead, gate, release)
        except IndexgradError as e:
            if e.span is None:
                e.span = p.span if p.span.line else None
            raise e.located(self.filename, self.source) from None

    def sizes(self, p: Prim, env: dict[str, Array], dims: dict[str, int]) -> Sizes:
        if not dims:
            fast = _plain_sizes(p, env)
            if fast is not None:
                sz = Sizes(p.span)
                sz.size = fast
                return sz
        sz = Sizes(p.span)
        pairs: list[tuple[Ref, Array]] = []
        for r in prim_refs(p):
            a = _array(env, r, p.span)
            _size_ref(sz, env, r, a, p.span, self.origin if r.name in self.temporaries else None)
            pairs.append((r, a))
        target = self.target_array(p, env)
        if target is not None:
            _size_ref(sz, env, p.out, target, p.span)
            pairs.append((p.out, target))
        for n, v in dims.items():
            if n not in sz.size and any(n in ref_index_names(r) for r, _ in pairs):
                sz.note(n, v, "--dims", p.span)
        needed = set(ref_index_names(p.out))
        for r in prim_refs(p):
            needed |= set(ref_index_names(r))
        if p.out.name in self.temporaries and needed - set(sz.size):
            self._size_from_uses(p, env, sz)  # a temporary's sizes are its statement's: before "valid"
        _size_affine(sz, pairs, p.span)
        if target is None and needed - set(sz.size):
            target = self.inferred_target(p, env)
            if target is not None:
                _size_ref(sz, env, p.out, target, p.span)
                pairs.append((p.out, target))
                _size_affine(sz, pairs, p.span)
        for n in sorted(needed - set(sz.size)):
            raise IndexgradError(f"the size of index '{n}' cannot be worked out here", p.span)
        for r, a in pairs:
            _check_bounds(r, a, sz.size, p.span)
        return sz

    def _size_from_uses(self, p: Prim, env: dict[str, Array], sz: Sizes) -> None:
        """Sizes of temporary p's unsized output indices from the rest of its statement: for
        `y[j] = tanh(x[j+k]) w[k]`, in `y.tanh[j,k] = tanh(x[j+k])` k from `y[j] = y.tanh[j,k] w[k]`
        (j then gets the valid size). Index names are the statement's own, so the search stops at
        the primitive that writes the statement's target."""
        start = next(k for k, q in enumerate(self.prims) if q is p)
        end = start
        while end + 1 < len(self.prims) and self.prims[end].out.name in self.temporaries:
            end += 1
        uses = _shape_from_uses(self.prims[start : end + 1], p.out.name, env)
        for i, d in zip(p.out.indices, uses):
            if isinstance(i, Affine) and i.plain is not None and i.plain not in sz.size and d is not None:
                sz.note(i.plain, d, f"the use of '{p.out.name}'", p.span)

    def origin(self, r: Ref, axis: int) -> tuple[Ref, int]:
        """The reference, and its axis, that sizes axis `axis` of temporary r: in `y.prod[b,i] =
        x[b,j] W[j,i]`, axis 1 of y.prod comes from axis 1 of W."""
        seen: set[str] = set()
        while r.name in self.temporaries and r.name not in seen:
            seen.add(r.name)
            made = next((p for p in self.prims if p.out.name == r.name and p.op == "="), None)
            index = made.out.indices[axis] if made is not None else None
            if not (isinstance(index, Affine) and index.plain):
                break
            found = next(
                (
                    (u, k)
                    for u in sorted(prim_refs(made), key=lambda u: not is_plain(u))  # type: ignore[arg-type]
                    for k, i in enumerate(u.indices)
                    if isinstance(i, Affine) and index.plain in {n for _, n in i.terms}
                ),  # a plain read first; else the shifted read whose valid extent it is
                None,
            )
            if found is None:
                break
            r, axis = found
        return r, axis

    def target_array(self, p: Prim, env: dict[str, Array]) -> Array | None:
        t = env.get(p.out.name)
        if t is not None:
            if p.op == "=":
                return None
            if t.ndim != len(p.out.indices):
                _array(env, p.out, p.span)
            return t
        base = sized_like(p.out.name)
        if base is not None and base in env and env[base].ndim == len(p.out.indices):
            return env[base]
        return None

    def inferred_target(self, p: Prim, env: dict[str, Array]) -> Array | None:
        """A stand-in with the target's shape, from how other statements use it."""
        if sized_like(p.out.name) is None:
            return None
        shape = _shape_from_uses(self.prims, p.out.name, env)
        return None if None in shape else np.broadcast_to(np.zeros((), np.float16), tuple(shape))  # type: ignore[arg-type]

    def guard_memory(self, p: Prim, env: dict[str, Array], sizes: dict[str, int]) -> None:
        """Refuse a statement whose result or largest intermediate would not fit (SPEC: no OOM)."""
        arrays = [env[r.name] for r in prim_refs(p)]
        itemsize = _result_dtype(arrays).itemsize
        out = ref_index_names(p.out)
        need = math.prod([sizes[n] for n in out]) * itemsize
        if isinstance(p, Contract):
            refs = [f for f, _ in p.factors if isinstance(f, Ref)]
            if len(refs) > 2 and all(is_plain(r) for r in refs):  # two run pairwise: no intermediate
                names = [ref_index_names(r) for r in refs]
                present = {n for nm in names for n in nm}
                kept = tuple(n for n in out if n in present)
                plan = plan_contraction(names, kept, [env[r.name].shape for r in refs])
                need = max(need, plan.largest_intermediate * itemsize)
        limit = self._limit if self._limit is not None else memory_limit()
        if need > limit:
            raise IndexgradError(
                f"this statement would need {human_bytes(need)} for '{p.out.name}' or an intermediate, "
                f"over the memory limit of {human_bytes(limit)}; use smaller sizes, or raise the limit "
                "with indexgrad.set_memory_limit() or INDEXGRAD_MEMORY_LIMIT",
                p.span,
            )

    def step(
        self,
        p: Prim,
        env: dict[str, Array],
        owned: set[str],
        check_finite: bool,
        dims: dict[str, int],
        dead: set[str],
        gate: str | None = None,
        release: tuple[str, ...] = (),
    ) -> Kernel | None:
        """Check sizes and memory, then run p by its planned kernel (returned) or generically.

        The first call runs the same kernel later calls reuse, so repeated calls agree bit for bit.
        `gate` names the other factor of the product that is the only reader of this `step`;
        `release` names what the returned kernel drops from env after writing.
        """
        sizes = self.sizes(p, env, dims).size
        if isinstance(p, Reduction) and p.reducer in ("max", "min"):
            for n in p.indices:
                if sizes[n] == 0:
                    raise IndexgradError(f"{p.reducer}[{n}] over an empty range: '{n}' has size 0", p.span)
        self.guard_memory(p, env, sizes)
        if gate is not None and not _gate_fits(p, env, gate):
            gate = None
        kernel = kernel_for(p, sizes, env, dead, gate, release)
        if kernel is not None:
            kernel(env, owned)
        else:
            out_names = ref_index_names(p.out)
            result = np.asarray(self.compute(p, env, sizes, out_names))
            shape = tuple(sizes[n] for n in out_names)
            if result.shape != shape:
                result = np.broadcast_to(result, shape)
            self.write(p, env, owned, result, sizes, out_names)
        if check_finite:
            value = env[p.out.name]
            if not np.all(np.isfinite(value)):
                bad = "NaN" if np.isnan(value).any() else "Inf"
                raise IndexgradError(f"this statement produced {bad} in '{p.out.name}'", p.span)
        return kernel

    def compute(self, p: Prim, env: dict[str, Array], sizes: dict[str, int], out: tuple[str, ...]) -> Array:
        span = p.span
        if isinstance(p, Contract):
            coef = p.coef
            ops: list[Array] = []
            names: list[tuple[str, ...]] = []
            for f, k in p.factors:
                if isinstance(f, Ref):
                    a, nm = read(f, env, sizes, span)
                    ops.append(raised(a, k))
                    names.append(nm)
                else:
                    coef *= power(operand_value(f, sizes), k)
            dtype = _result_dtype(ops)
            if not ops:
                return np.full(tuple(sizes[n] for n in out), coef, dtype=dtype)
            present = {n for nm in names for n in nm}
            kept = tuple(n for n in out if n in present)
            plan = plan_contraction(names, kept, [o.shape for o in ops])
            res = plan.expression(*ops) if len(ops) > 1 or names[0] != kept else ops[0]
            res = np.asarray(res)
            if coef != 1:
                res = res * coef
            return _align(res, kept, out)
        if isinstance(p, Elementwise):
            args = []
            for a in p.args:
                if isinstance(a, Ref):
                    arr, nm = read(a, env, sizes, span)
                    args.append(_align(arr, nm, out))
                else:
                    args.append(operand_value(a, sizes))  # a Python float keeps float32 float32
            return np.asarray(FUNCTIONS[p.func].forward(*args))
        if isinstance(p, Terms):
            total: Any = None
            arrays = []
            for c, u in p.terms:
                if isinstance(u, Ref):
                    arr, nm = read(u, env, sizes, span)
                    arrays.append(arr)
                    term = _align(arr, nm, out)
                    term = term * c if c != 1 else term
                else:
                    term = c * operand_value(u, sizes)
                total = term if total is None else total + term
            res = np.asarray(total)
            if not arrays:
                res = res.astype(np.float64)
            return res
        assert isinstance(p, Reduction)
        arr, nm = read(p.arg, env, sizes, span)
        full = out + tuple(p.indices)
        arr = _align(arr, nm, full)
        axes = tuple(range(len(out), len(full)))
        return np.asarray(REDUCTIONS[p.reducer](arr, axes))

    def write(
        self,
        p: Prim,
        env: dict[str, Array],
        owned: set[str],
        result: Array,
        sizes: dict[str, int],
        out_names: tuple[str, ...],
    ) -> None:
        name = p.out.name
        if is_plain(p.out):
            if p.op == "=" or name not in env:
                env[name] = result  # it may be an operand's buffer: neither is owned any more
                owned.discard(name)
                owned.difference_update(r.name for r in prim_refs(p))
                return
            target = env[name]
            if name in owned and target.dtype == np.result_type(target, result) and target.ndim:
                np.add(target, result, out=target)
            else:
                env[name] = target + result
                if target.ndim:
                    owned.add(name)
            return
        # a scatter-add through index arithmetic, labels or a diagonal
        target = env.get(name)
        if target is None or name not in owned:
            like = self.target_array(p, env)
            if like is None:
                like = self.inferred_target(p, env)
            if like is None:
                raise IndexgradError(f"the shape of '{name}' cannot be worked out here", p.span)
            dtype = np.result_type(like, result)
            target = np.zeros(like.shape, dtype=dtype) if target is None else target.astype(dtype)
            env[name] = target
            owned.add(name)
        _check_bounds(p.out, target, sizes, p.span)
        if not _scatter_by_slices(p.out, target, result, out_names, sizes):
            idx = _index_arrays(p.out, target.shape, out_names, sizes, env, p.span)
            np.add.at(target, idx, result)


def _scatter_by_slices(
    r: Ref, target: Array, result: Array, names: tuple[str, ...], sizes: dict[str, int]
) -> bool:
    """target[r] += result as a few strided slice-adds, one per offset of the smaller indices.

    Works when every index name sits in one axis of r (no labels, no diagonals): each axis keeps
    its largest index as a strided slice and loops over the others (a kernel's offsets).
    """
    axis_of: dict[str, int] = {}
    for axis, i in enumerate(r.indices):
        if not isinstance(i, Affine):
            return False
        for _, n in i.terms:
            if n in axis_of:
                return False
            axis_of[n] = axis
    main: list[str | None] = []
    for i in r.indices:
        assert isinstance(i, Affine)
        cands = [(sizes[n], c, n) for c, n in i.terms if c > 0]
        main.append(max(cands)[2] if cands else None)
    others = [n for n in names if n not in main]
    loops = 1
    for n in others:
        loops *= sizes[n]
    if loops > 4096:
        return False
    kept = [m for m in main if m is not None]
    order = [names.index(m) for m in kept] + [names.index(n) for n in others]
    res = np.transpose(result, order)
    for offs in itertools.product(*(range(sizes[n]) for n in others)):
        val = dict(zip(others, offs))
        index: list[Any] = []
        for axis, i in enumerate(r.indices):
            assert isinstance(i, Affine)
            start = i.const + sum(c * val[n] for c, n in i.terms if n != main[axis])
            m = main[axis]
            if m is None:
                index.append(start)
            else:
                c = dict((n, c) for c, n in i.terms)[m]
                index.append(slice(start, start + c * (sizes[m] - 1) + 1, c))
        target[tuple(index)] += res[(Ellipsis, *offs)] if offs else res
    return True


def _signature(env: dict[str, Array]) -> tuple[Any, ...] | None:
    try:
        return tuple([(n, a.shape, a.dtype) for n, a in env.items()])
    except AttributeError:
        return None


def _shape_from_uses(prims: list[Prim], name: str, env: dict[str, Array]) -> list[int | None]:
    """The sizes of `name`'s axes from the arrays they meet in any statement (by index name);
    None for an axis that meets none."""
    uf = axis_classes([p.out, *prim_refs(p)] for p in prims)
    size: dict[tuple[Any, ...], int] = {}
    for n, a in env.items():
        for axis, d in enumerate(np.shape(a)):
            if ("T", n, axis) in uf.parent:
                size.setdefault(uf.find(("T", n, axis)), d)
    rank = next((len(r.indices) for p in prims for r in [p.out, *prim_refs(p)] if r.name == name), 0)
    return [size.get(uf.find(("T", name, axis))) for axis in range(rank)]


def _releases(prims: list[Prim], keep: set[str]) -> list[list[str]]:
    """Per statement, the temporaries to drop after it: read no more and not in `keep`."""
    last: dict[str, int] = {}
    made = {p.out.name for p in prims}
    for k, p in enumerate(prims):
        for r in [*prim_refs(p), p.out]:
            last[r.name] = k
            for i in r.indices:
                if isinstance(i, Gather):
                    last[i.ref.name] = k
    out: list[list[str]] = [[] for _ in prims]
    for n, k in last.items():
        if n in made and n not in keep:
            out[k].append(n)
    return out


def _gates(prims: list[Prim], release: list[list[str]]) -> dict[int, str]:
    """`step` statements that can produce a boolean mask: statement index -> the mask's partner.

    `T = step(u)` qualifies when the next statement is `out op= g T` (a product of the two alone,
    nothing summed) and drops T: `g * (u > 0)` then has the same values and dtype as
    `g * step(u)` (see `_gate_fits` for the dtypes), and no float array of 0s and 1s is made.
    """
    writes: dict[str, int] = {}
    for p in prims:
        writes[p.out.name] = writes.get(p.out.name, 0) + 1
    out: dict[int, str] = {}
    for k, p in enumerate(prims[:-1]):
        if not (isinstance(p, Elementwise) and p.func == "step" and p.op == "=" and len(p.args) == 1):
            continue
        (u,) = p.args
        t = p.out.name
        q = prims[k + 1]
        if (
            not isinstance(u, Ref)
            or writes[t] != 1
            or t not in release[k + 1]
            or not is_plain(u)
            or not is_plain(p.out)
            or ref_index_names(u) != ref_index_names(p.out)
            or not isinstance(q, Contract)
            or len(q.factors) != 2
            or q.out.name == t
        ):
            continue
        (f0, k0), (f1, k1) = q.factors
        if not (isinstance(f0, Ref) and isinstance(f1, Ref) and k0 == 1 and k1 == 1):
            continue
        if not (is_plain(f0) and is_plain(f1) and is_plain(q.out)):
            continue
        if [f0.name, f1.name].count(t) != 1:
            continue
        if not set(ref_index_names(f0)) | set(ref_index_names(f1)) <= set(ref_index_names(q.out)):
            continue  # an index summed: leave the product to BLAS on float operands
        out[k] = f1.name if f0.name == t else f0.name
    return out


def _gate_fits(p: Prim, env: dict[str, Array], partner: str) -> bool:
    """The mask gives the product step(u) would: the partner is a float array at least as wide as u."""
    assert isinstance(p, Elementwise)
    u = p.args[0]
    assert isinstance(u, Ref)
    a, g = env.get(u.name), env.get(partner)
    if a is None or g is None:
        return False
    return a.dtype.kind == "f" and g.dtype.kind == "f" and np.result_type(g, a) == g.dtype


def relu_outputs(prims: list[Prim]) -> dict[str, str]:
    """`u -> y` for every `y = relu(u)` whose y is written once, with u's axes in y's order.

    step(u) = step(y) exactly (relu keeps the positive entries, NaN included: both give 0), so a
    derivative may read y in place of u, and forward need not keep u alive.
    """
    writes: dict[str, int] = {}
    for p in prims:
        writes[p.out.name] = writes.get(p.out.name, 0) + 1
    out: dict[str, str] = {}
    for p in prims:
        if (
            isinstance(p, Elementwise)
            and p.func == "relu"
            and p.op == "="
            and writes[p.out.name] == 1
            and isinstance(p.args[0], Ref)
            and is_plain(p.out)
            and is_plain(p.args[0])
            and ref_index_names(p.args[0]) == ref_index_names(p.out)
            and p.args[0].name != p.out.name
        ):
            out[p.args[0].name] = p.out.name
    return out


def read_steps_of_outputs(prims: list[Prim], gates: dict[str, str]) -> list[Prim]:
    """prims with each `step(u)` for a relu argument u in `gates` reading `step(y)` instead."""
    if not gates:
        return prims
    out: list[Prim] = []
    for p in prims:
        if isinstance(p, Elementwise) and p.func == "step" and isinstance(p.args[0], Ref):
            a = p.args[0]
            if a.name in gates:
                p = Elementwise(p.out, p.op, p.func, (Ref(gates[a.name], a.indices, a.span),), p.span)
        out.append(p)
    return out
