"""Index sizes of every primitive statement, and the shape of every tensor, from the inputs' shapes alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from . import positions
from .check import sized_like
from .errors import IndexgradError, NoArray
from .lower import Prim, Reduction, prim_refs
from .nodes import DELTA, Affine, Gather, Ref, Span, is_plain, plain_names, ref_index_names
from .printer import format_ref
from .shapes import axis_classes

Shape = tuple[int, ...]
Origin = Callable[[Ref, int], tuple[Ref, int]]


def place(r: Ref, fallback: Span) -> Span:
    """Where an error about r points: r itself when it has a place, else its statement."""
    return r.span if r.span.line else fallback


class _Where:
    """A place described lazily: the text is built only when an error needs it. `origin` traces an
    axis of a temporary back to the reference the user wrote that gave it its size."""

    def __init__(self, r: Ref, axis: int, origin: Origin | None = None) -> None:
        self.r, self.axis, self.origin = r, axis, origin

    def user(self) -> tuple[Ref, int]:
        return (self.r, self.axis) if self.origin is None else self.origin(self.r, self.axis)

    def __str__(self) -> str:
        r, axis = self.user()
        return f"{format_ref(r)} (axis {axis})"


class _Known:
    """Index sizes of one statement, each remembered with what fixed it (for the error naming both)."""

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
                span = place(what.user()[0], span)
            hint = ""  # two arrays disagree: reading the longer's first positions may be what is meant
            if isinstance(what, _Where) and isinstance(self.where[name], _Where):
                hint = f"; to read the first {min(old, size)} positions of the longer, index it by {name}+0"
            raise IndexgradError(
                f"index '{name}' has size {old} from {self.where[name]} but size {size} from {what}{hint}",
                span,
            )


def check_bounds(r: Ref, shape: Shape, sizes: dict[str, int], span: Span, hint: str = "") -> None:
    """Refuse a shifted read (or scatter) that leaves its axis (a boundary mode never does)."""
    for axis, i in enumerate(r.indices):
        if isinstance(i, Affine) and i.plain is None and i.mode is None and not positions.empty(i, sizes):
            lo, hi = positions.value_range(i, sizes)
            if lo < 0 or hi >= shape[axis]:
                raise IndexgradError(
                    f"{format_ref(r)} reaches position {hi if hi >= shape[axis] else lo} "
                    f"along axis {axis}, but '{r.name}' has size {shape[axis]} there{hint}",
                    place(r, span),
                )


# what a write past the end of a tensor several '+=' define adds to check_bounds's message
_GROWN = (
    " (the '+=' into '{}' make it as long as the farthest writes, but a plain index in the first "
    "fixes its axis: write that one shifted by 0, as i+0)"
)


class Sizer:
    """Sizes primitive statements one after the other, as a run would meet them.

    `temporaries` are the names lowering made up: a size error about one of them is traced to
    what the user wrote."""

    def __init__(self, prims: list[Prim], temporaries: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.prims = prims
        self.temporaries = temporaries
        self.made = {p.out.name: p for p in reversed(prims) if p.op == "="}
        # tensors that several '+=' define (no '=', not a gradient's shape): each axis reaches as
        # far as the farthest of them writes, which a first sizing pass (growing) records in grown
        adds = Counter(p.out.name for p in prims if p.op == "+=" and p.out.name not in self.made)
        self.added = {n for n, count in adds.items() if count > 1 and sized_like(n) is None}
        self.growing = False
        self.grown: dict[str, list[int]] = {}

    def grow(self, out: Ref, shape: Shape, sizes: dict[str, int]) -> Shape:
        """Record how far a '+=' into a tensor of `added` writes along each axis: the tensor's
        shape so far."""
        reach = [
            d if not isinstance(i, Affine) or i.mode is not None else positions.written_extent(i, sizes) or d
            for i, d in zip(out.indices, shape)
        ]
        self.grown[out.name] = [max(a, b) for a, b in zip(shape, reach)]
        return tuple(self.grown[out.name])

    def sizes(self, k: int, shapes: dict[str, Shape], dtypes: dict[str, np.dtype]) -> dict[str, int]:
        """The index sizes of statement k, with every operand's shape in `shapes`."""
        p = self.prims[k]
        fast = None if p.dims else _plain_sizes(p, shapes)
        if fast is not None:
            return fast
        known = _Known(p.span)
        for n, v in p.dims:
            known.note(n, v, f"dim {n}={v}", p.span)
        pairs: list[tuple[Ref, Shape]] = []
        axes: list[positions.Axis] = []
        for r in prim_refs(p):
            if r.name == DELTA:  # no array: its axes size nothing (but a square delta's second name)
                axes += positions.axes_of(r, None, p.span)
                continue
            shape = _shape(shapes, r, p.span)
            axes += self._axes(shapes, dtypes, r, shape, p.span)
            pairs.append((r, shape))
        target = self.target_shape(p, shapes)
        deferred = self.growing and p.out.name in self.added  # its extent is what is being found
        if target is not None and not deferred:
            axes += self._axes(shapes, dtypes, p.out, target, p.span, written=True)
            pairs.append((p.out, target))
        needed = set(ref_index_names(p.out)).union(*(ref_index_names(r) for r in prim_refs(p)))
        if isinstance(p, Reduction):
            needed |= set(p.indices)
        fixed = {n for n, _ in p.dims}
        traced = {r.name for r in prim_refs(p) if r.name in self.temporaries}

        def solve() -> None:
            def note(n: str, extent: int | None, ax: positions.Axis) -> None:
                origin = self.origin if ax.ref.name in traced else None
                known.note(n, extent, _Where(ax.ref, ax.axis, origin), place(ax.ref, p.span))  # type: ignore[arg-type]

            positions.solve(axes, known.size, fixed, note)  # type: ignore[arg-type]

        if p.out.name in self.temporaries and needed - set(known.size):
            self._size_from_uses(k, shapes, known)  # a temporary's sizes are its statement's: before "valid"
        solve()
        if p.op == "=" and p.out.name not in self.temporaries and needed - set(known.size):
            self._size_from_uses(k, shapes, known)  # a later plain read (check.sized_by_later_reads)
            solve()
        if deferred and target is not None and needed - set(known.size):  # sized by the target alone
            axes += self._axes(shapes, dtypes, p.out, target, p.span, written=True)
            solve()
        if target is None and needed - set(known.size):
            target = self.inferred_shape(p.out.name, shapes)
            if target is not None:
                axes += self._axes(shapes, dtypes, p.out, target, p.span)
                pairs.append((p.out, target))
                solve()
        for n in sorted(needed - set(known.size)):
            raise IndexgradError(f"the size of index '{n}' cannot be worked out here", p.span)
        if deferred and target is not None:  # how far it writes is recorded, not checked
            shapes[p.out.name] = self.grow(p.out, target, known.size)
        for r, shape in pairs:
            hint = _GROWN.format(r.name) if r is p.out and r.name in self.added else ""
            check_bounds(r, shape, known.size, p.span, hint)
            for g in r.indices:  # a label read through arithmetic (E[lab[b+j]]) stays in lab too
                if isinstance(g, Gather):
                    check_bounds(g.ref, _shape(shapes, g.ref, p.span), known.size, p.span)
        return known.size

    def out_shape(self, k: int, shapes: dict[str, Shape], sizes: dict[str, int]) -> Shape:
        """The shape of what statement k writes: by its index names, or the scattered-into tensor's."""
        p = self.prims[k]
        if is_plain(p.out):
            return tuple(sizes[n] for n in ref_index_names(p.out))
        shape = self.target_shape(p, shapes)
        if shape is None:
            shape = self.inferred_shape(p.out.name, shapes)
        if shape is None and sized_like(p.out.name) is None:  # a '+=' that defines its tensor (SPEC 9)
            written = [positions.written_extent(i, sizes) for i in p.out.indices]
            shape = None if None in written else tuple(written)  # type: ignore[arg-type]
            if shape is not None and p.out.name in self.grown:  # and the '+=' after it
                shape = tuple(max(a, b) for a, b in zip(shape, self.grown[p.out.name]))
        if shape is None:
            raise IndexgradError(f"the shape of '{p.out.name}' cannot be worked out here", p.span)
        return shape

    def _axes(
        self, shapes: dict[str, Shape], dtypes: dict[str, np.dtype], r: Ref, shape: Shape, span: Span,
        written: bool = False,
    ) -> list[positions.Axis]:
        """The sizing axes of r read (or written) with this shape, and of the label tensors in its
        positions."""
        out = positions.axes_of(r, shape, span, written)
        for i in r.indices:
            if isinstance(i, Gather):
                out += positions.axes_of(i.ref, _labels(shapes, dtypes, i.ref, span), span)
        return out

    def _size_from_uses(self, k: int, shapes: dict[str, Shape], known: _Known) -> None:
        """Sizes of k's unsized output indices from the plain reads of its target that follow: for
        `y[j] = tanh(x[j+k]) w[k]`, in `y.tanh[j,k] = tanh(x[j+k])` k from `y[j] = y.tanh[j,k] w[k]`
        (j then gets the valid size). A temporary's index names are its statement's own, so the
        search stops at the primitive that writes the statement's target; a tensor the program
        names is sized by any later statement (check.sized_by_later_reads)."""
        p = self.prims[k]
        end = k if p.out.name in self.temporaries else len(self.prims) - 1
        while end + 1 < len(self.prims) and self.prims[end].out.name in self.temporaries:
            end += 1
        uses = _shape_from_uses(self.prims[k : end + 1], p.out.name, shapes)
        for i, d in zip(p.out.indices, uses):
            if isinstance(i, Affine) and i.plain is not None and i.plain not in known.size and d is not None:
                known.note(i.plain, d, f"the use of '{p.out.name}'", p.span)

    def origin(self, r: Ref, axis: int) -> tuple[Ref, int]:
        """The reference, and its axis, that sizes axis `axis` of temporary r: in `y.prod[b,i] =
        x[b,j] W[j,i]`, axis 1 of y.prod comes from axis 1 of W."""
        seen: set[str] = set()
        while r.name in self.temporaries and r.name not in seen:
            seen.add(r.name)
            made = self.made.get(r.name)
            index = made.out.indices[axis] if made is not None else None
            if not (made is not None and isinstance(index, Affine) and index.plain):
                break
            found = next(
                (
                    (u, a)
                    for u in sorted(prim_refs(made), key=lambda u: not is_plain(u))
                    for a, i in enumerate(u.indices)
                    if isinstance(i, Affine) and index.plain in {n for _, n in i.terms}
                ),  # a plain read first; else the shifted read whose valid extent it is
                None,
            )
            if found is None:
                break
            r, axis = found
        return r, axis

    def target_shape(self, p: Prim, shapes: dict[str, Shape]) -> Shape | None:
        """The shape a `+=` adds into: the target's own, or x's for a first write of `x.grad`."""
        t = shapes.get(p.out.name)
        if t is not None:
            if p.op == "=":
                return None
            if len(t) != len(p.out.indices):
                _shape(shapes, p.out, p.span)
            return t
        base = sized_like(p.out.name)
        if base is not None and base in shapes and len(shapes[base]) == len(p.out.indices):
            return shapes[base]
        return None

    def inferred_shape(self, name: str, shapes: dict[str, Shape]) -> Shape | None:
        """A gradient's shape from how the statements use it, when nothing gives it directly."""
        if sized_like(name) is None:
            return None
        shape = _shape_from_uses(self.prims, name, shapes)
        return None if None in shape else tuple(shape)  # type: ignore[arg-type]


def _shape(shapes: dict[str, Shape], r: Ref, span: Span) -> Shape:
    s = shapes.get(r.name)
    if s is None:
        raise NoArray(r.name, place(r, span))
    if len(s) != len(r.indices):
        raise IndexgradError(
            f"'{r.name}' is used with {len(r.indices)} indices but its array has "
            f"{len(s)} dimensions (shape {s})",
            place(r, span),
        )
    return s


def _labels(shapes: dict[str, Shape], dtypes: dict[str, np.dtype], g: Ref, span: Span) -> Shape:
    shape = _shape(shapes, g, span)
    if dtypes[g.name].kind not in "iu":
        raise IndexgradError(
            f"'{g.name}' is used as labels inside an index position, so it must hold integers, "
            f"but its array has dtype {dtypes[g.name]}",
            place(g, span),
        )
    return shape


def _plain_sizes(p: Prim, shapes: dict[str, Shape]) -> dict[str, int] | None:
    """The sizes of a statement whose positions are all plain names, when they agree and are all
    known; None sends it to the full check, which also words any error."""
    pairs = [(r, shapes.get(r.name)) for r in prim_refs(p)]
    t = shapes.get(p.out.name)
    if t is not None and p.op != "=":
        pairs.append((p.out, t))
    elif t is None and (base := sized_like(p.out.name)) in shapes:
        pairs.append((p.out, shapes[base]))  # `x.grad` has x's shape (a temporary's, its statement's)
    size: dict[str, int] = {}
    for r, s in pairs:
        names = plain_names(r)
        if s is None or names is None or len(s) != len(names):
            return None
        for n, d in zip(names, s):
            if size.setdefault(n, d) != d:
                return None
    for n in ref_index_names(p.out):
        if n not in size:
            return None
    return size


def _shape_from_uses(prims: list[Prim], name: str, shapes: dict[str, Shape]) -> list[int | None]:
    """The sizes of `name`'s axes from the arrays they meet in any statement (by index name);
    None for an axis that meets none."""
    uf = axis_classes([p.out, *prim_refs(p)] for p in prims)
    size: dict[tuple[Any, ...], int] = {}
    for n, s in shapes.items():
        for axis, d in enumerate(s):
            if ("T", n, axis) in uf.parent:
                size.setdefault(uf.find(("T", n, axis)), d)
    rank = next((len(r.indices) for p in prims for r in [p.out, *prim_refs(p)] if r.name == name), 0)
    return [size.get(uf.find(("T", name, axis))) for axis in range(rank)]
