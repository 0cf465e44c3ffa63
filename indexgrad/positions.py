"""The integer positions an index position reads, per boundary mode, and the sizes index positions imply.

An index position (`Affine`) is a sum of integer multiples of index names, of `//` and `%` parts
and a constant, read through a boundary mode or not. Given the sizes of its names, its values form
an integer array broadcast over the reference's index names; a boundary mode then maps values that
fall outside the axis: `pad` keeps them and masks them out (they read 0, and writes there are
dropped), `clamp` moves them to the nearest edge, `wrap` takes them modulo the axis's extent.

The sizing rules of a statement live here too, in `solve`: the compile-time check runs them with
extents known only by name (None), the executor with the arrays' extents, and `--dims` with the
sizes a user gives. Sizes come from, in order: `dim` declarations and plain positions of arrays
(which must agree); the "valid" extent of a linear position with one unsized name (all its values
in range); the "same" extent of a position with a boundary mode (its axis's extent); and an index
read plainly and through a one-name shift (`x[r+1] - x[r]`) ranges where every read is in range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import IndexgradError
from .nodes import DELTA, Affine, Floor, Gather, Index, Ref, Span

Array = np.ndarray


# ---- values of a position ----------------------------------------------------------------------


def value_range(i: Affine, sizes: Mapping[str, int]) -> tuple[int, int]:
    """The lowest and highest value i's arithmetic takes over its names' ranges, before any
    boundary mode (an empty range of a name counts as its single value 0). With `//` or `%`
    parts, the values themselves are looked at ((2*i)%2 is always 0), unless there are more
    than 2**24 of them (`x[r//10**21]` gives r 10**21 values): then the range is bounded part
    by part, as without them."""
    if i.parts and not empty(i, sizes) and math.prod(sizes[n] for n in i.names()) <= 1 << 24:
        v = values(i, i.names(), sizes)
        return int(v.min()), int(v.max())
    lo = hi = i.const
    for c, n in i.terms:
        ext = c * max(sizes[n] - 1, 0)
        lo, hi = lo + min(ext, 0), hi + max(ext, 0)
    for c, f in i.parts:
        flo, fhi = _part_range(f, sizes)
        lo, hi = lo + min(c * flo, c * fhi), hi + max(c * flo, c * fhi)
    return lo, hi


def _part_range(f: Floor, sizes: Mapping[str, int]) -> tuple[int, int]:
    lo, hi = value_range(f.inner, sizes)
    k = f.divisor
    if f.op == "//":
        return lo // k, hi // k
    if lo // k == hi // k:  # the remainders do not come round
        return lo % k, hi % k
    return 0, k - 1


def empty(i: Affine, sizes: Mapping[str, int]) -> bool:
    """Whether some name of i has no values (a size of 0), so that i reads nothing."""
    return any(sizes[n] == 0 for n in i.names())


def values(i: Affine, names: tuple[str, ...], sizes: Mapping[str, int]) -> Array:
    """i's value for every combination of `names`' values, before any boundary mode: an integer
    array with one axis per name (length 1 where i does not use the name).

    A position with a number past 2**31 (`x[r//10**21]`) is worked out in Python's integers,
    which do not overflow, and is an intp array again when its values fit one."""
    exact = _has_huge(i)
    v = _values(i, names, sizes, object if exact else np.intp)
    if exact and v.size and -(2**62) < v.min() and v.max() < 2**62:
        return v.astype(np.intp)
    return v


def _has_huge(i: Affine) -> bool:
    numbers = [i.const, *(c for c, _ in i.terms), *(c for c, _ in i.parts)]
    return any(abs(k) >= 2**31 for k in numbers) or any(
        f.divisor >= 2**31 or _has_huge(f.inner) for _, f in i.parts
    )


def _values(i: Affine, names: tuple[str, ...], sizes: Mapping[str, int], dtype: Any) -> Array:
    v: Any = np.full([1] * len(names), i.const, dtype=dtype)
    for c, n in i.terms:
        v = v + c * _along(n, names, sizes).astype(dtype)
    for c, f in i.parts:
        inner = _values(f.inner, names, sizes, dtype)
        v = v + c * (inner // f.divisor if f.op == "//" else inner % f.divisor)
    return v


def _along(n: str, names: tuple[str, ...], sizes: Mapping[str, int]) -> Array:
    shape = [1] * len(names)
    shape[names.index(n)] = sizes[n]
    return np.arange(sizes[n], dtype=np.intp).reshape(shape)


def bounded(v: Array, mode: str | None, extent: int) -> tuple[Array, Array | None]:
    """Positions v on an axis of `extent` after a boundary mode, and for `pad` the mask of those
    inside (the others are moved to the edge so that indexing with them is valid)."""
    if mode is None:
        return v, None
    if extent == 0:
        if mode == "pad":
            return np.zeros_like(v), np.zeros(v.shape, bool)
        raise IndexgradError(f"{mode}(...) reads an axis of size 0")
    if mode == "clamp":
        return np.clip(v, 0, extent - 1), None
    if mode == "wrap":
        return v % extent, None
    inside = (v >= 0) & (v < extent)
    return np.clip(v, 0, extent - 1), (None if inside.all() else inside)


def index_arrays(
    r: Ref,
    shape: tuple[int, ...],
    names: tuple[str, ...],
    sizes: Mapping[str, int],
    labels: Callable[[Ref, tuple[str, ...]], Array],
) -> tuple[tuple[Array, ...], Array | None]:
    """Per-axis integer arrays broadcast over `names` (r's positions after their boundary modes),
    and the mask of the entries a `pad` position reads inside the array (None: all of them).
    `labels(g, names)` gives the values of the label tensor reference g broadcast over names."""
    out = []
    mask = None
    for axis, i in enumerate(r.indices):
        if isinstance(i, Gather):
            out.append(labels(i.ref, names))
            continue
        v, inside = bounded(values(i, names, sizes), i.mode, shape[axis])
        out.append(v)
        if inside is not None:
            mask = inside if mask is None else mask & inside
    return tuple(out), mask


def label_values(g: Ref, lab: Array, names: tuple[str, ...], sizes: Mapping[str, int]) -> Array:
    """The values of the label tensor reference g, whose array is lab, broadcast over `names`
    (a label's positions hold names or arithmetic, never other labels)."""
    idx, _ = index_arrays(g, lab.shape, names, sizes, lambda r, n: np.zeros((), np.intp))
    return lab[idx]


# ---- positions as plain data, for the plan's steps -----------------------------------------------


def as_data(i: Index) -> tuple[Any, ...]:
    """A position as plain data a Step carries (lists once read back from JSON): ("affine", const,
    terms) for a sum of names and a constant, ("label", name, index names) for labels indexed by
    names; ("at", const, terms, mode, parts) and ("label_at", name, positions) otherwise."""
    if isinstance(i, Gather):  # a label read at r+0 may be longer than r's range: read as at
        plain = [j.plain if isinstance(j, Affine) else None for j in i.ref.indices]
        if None not in plain:
            return ("label", i.ref.name, tuple(plain))
        return ("label_at", i.ref.name, tuple(as_data(j) for j in i.ref.indices))
    if i.linear():
        return ("affine", i.const, i.terms)
    parts = tuple((c, (as_data(f.inner), f.op, f.divisor)) for c, f in i.parts)
    return ("at", i.const, i.terms, i.mode, parts)


def from_data(t: Sequence[Any]) -> Index:
    """The position `as_data` gave."""
    kind = t[0]
    if kind == "label":
        return Gather(Ref(t[1], tuple(Affine(((1, n),)) for n in t[2])))
    if kind == "label_at":  # positions that would be plain were written r+0 (as_data keeps them so)
        at = [from_data(j) for j in t[2]]
        at = [replace(j, shifted=True) if isinstance(j, Affine) and j.plain else j for j in at]
        return Gather(Ref(t[1], tuple(at)))  # type: ignore[arg-type]
    terms = tuple((int(c), str(n)) for c, n in t[2])
    if kind == "affine":
        return Affine(terms, int(t[1]))
    parts = tuple((int(c), Floor(from_data(inner), op, int(k))) for c, (inner, op, k) in t[4])  # type: ignore[arg-type]
    return Affine(terms, int(t[1]), mode=t[3], parts=parts)


# ---- boundary modes of linear positions, by padding ----------------------------------------------


def nearest(i: Index, sizes: Mapping[str, int], extent: int) -> Index:
    """i with its boundary mode's constant moved as near the axis as reads the same entries: by
    a multiple of the extent for wrap, and for pad and clamp no farther than keeps every value on
    the same side of the axis. `wrap(i+10**20)` then pads an axis by a few entries, not 10**20,
    and its constant fits in a machine integer."""
    if not isinstance(i, Affine) or i.mode is None or extent == 0 or empty(i, sizes):
        return i
    lo, hi = value_range(replace(i, const=0), sizes)
    const = i.const % extent if i.mode == "wrap" else min(max(i.const, -hi - 1), extent - lo)
    return i if const == i.const else replace(i, const=const)


def margins(i: Affine, sizes: Mapping[str, int], extent: int) -> tuple[int, int]:
    """How far a position reaches before 0 and past the end of an axis of `extent`."""
    lo, hi = value_range(i, sizes)
    if empty(i, sizes):
        return 0, 0
    return max(0, -lo), max(0, hi - extent + 1)


_NUMPY_MODE = {"pad": "constant", "clamp": "edge", "wrap": "wrap"}


def padded(a: Array, axis: int, before: int, after: int, mode: str) -> Array:
    """a extended along `axis` as the boundary mode reads outside it: zeros, the edge, or around."""
    if before == after == 0:
        return a
    if a.shape[axis] == 0 and mode != "pad":
        raise IndexgradError(f"{mode}(...) reads an axis of size 0")
    widths = [(0, 0)] * a.ndim
    widths[axis] = (before, after)
    return np.pad(a, widths, mode=_NUMPY_MODE[mode])  # type: ignore[call-overload]


def folded(a: Array, axis: int, before: int, after: int, mode: str) -> Array:
    """The adjoint of `padded`: what was written to the extended axis, added back into the axis
    (dropped outside for pad, piled on the edges for clamp, wrapped around for wrap)."""
    if before == after == 0:
        return a
    length = a.shape[axis] - before - after
    inner = np.take(a, range(before, before + length), axis=axis)
    if mode == "pad":
        return inner
    out = np.array(inner, copy=True)
    moved = np.moveaxis(out, axis, 0)
    source = np.moveaxis(a, axis, 0)
    if mode == "clamp":
        moved[0] += source[:before].sum(axis=0)
        moved[-1] += source[before + length :].sum(axis=0)
    else:
        outside = np.r_[0:before, before + length : before + length + after]
        np.add.at(moved, (outside - before) % length, source[outside])
    return out


def unmoded(i: Affine, before: int) -> Affine:
    """i without its boundary mode, on its axis extended by `before` positions at the start."""
    return Affine(i.terms, i.const + before, i.span, None, i.parts, i.shifted)


def delta_values(r: Ref, names: tuple[str, ...], sizes: Mapping[str, int]) -> Array:
    """`delta[i,j]` over `names`: True where its two positions hold the same value."""
    first, second = (values(i, names, sizes) for i in r.indices)  # type: ignore[arg-type]
    return np.broadcast_to(np.equal(first, second), tuple(sizes[n] for n in names))


# ---- sizing rules --------------------------------------------------------------------------------


def _known(*sizes: int | None) -> bool:
    return all(s is not None for s in sizes)


def _rest_high(i: Affine, n: str, size: Mapping[str, int | None]) -> int | None:
    """The highest value of i without its terms in n (every other name sized), or None when a
    size is known only to exist."""
    others = [(c, m) for c, m in i.terms if m != n]
    if not _known(*(size[m] for _, m in others), *(size[m] for _, f in i.parts for m in f.names())):
        return None
    rest = Affine(tuple(others), i.const, parts=i.parts)
    return value_range(rest, size)[1]  # type: ignore[arg-type]


def sizable(i: Affine, sized: Callable[[str], bool]) -> tuple[str, int] | None:
    """(name, coefficient) when i has exactly one unsized name, and it is a term with a positive
    coefficient and in no `//` or `%` part (so that i's largest value grows with it, and the rest
    of i has a largest value without it: `x[r + r//2]` sizes nothing); else None."""
    unknown = [n for n in i.names() if not sized(n)]
    if len(unknown) != 1:
        return None
    n = unknown[0]
    coef = next((c for c, m in i.terms if m == n), 0)
    if coef <= 0 or any(n in f.names() for _, f in i.parts):
        return None
    return n, coef


Found = tuple[str, int | None] | None  # (name, size) that a rule gives, or nothing


def valid_extent(i: Affine, extent: int | None, size: Mapping[str, int | None]) -> Found:
    """(name, size) for the one unsized name of a linear position whose axis has `extent`: the most
    values that keep every value inside the axis (the "valid" extent |x| - |u| + 1 of r in x[r+u]),
    below 1 when there is none. A `//` part counts: r in x[r//2] gets 2|x|. None unless one name is
    unsized and its largest value bounds the position."""
    found = sizable(i, size.__contains__)
    if found is not None:
        n, c = found
        high = _rest_high(i, n, size)
        if extent is None or high is None:
            return n, None
        return n, (extent - 1 - high) // c + 1
    unknown = [n for n in i.names() if n not in size]
    parts = [
        k for k, (c, f) in enumerate(i.parts) if c > 0 and f.op == "//" and set(unknown) <= set(f.names())
    ]
    if len(unknown) != 1 or len(parts) != 1 or any(unknown[0] == m for _, m in i.terms):
        return None
    c, f = i.parts[parts[0]]
    rest = Affine(i.terms, i.const, parts=i.parts[: parts[0]] + i.parts[parts[0] + 1 :])
    if extent is None or not _known(*(size[m] for m in rest.names())):
        inner_extent = None
    else:  # c * (inner // k) <= extent - 1 - high  <=>  inner <= k * ((extent - 1 - high) // c) + k - 1
        high = value_range(rest, size)[1]  # type: ignore[arg-type]
        inner_extent = f.divisor * ((extent - 1 - high) // c + 1)
    return valid_extent(f.inner, inner_extent, size)


def same_extent(i: Affine, extent: int | None, size: Mapping[str, int | None]) -> Found:
    """(name, size) for the one unsized name of a position read through a boundary mode: the
    axis's extent ("same"), divided by its coefficient and rounded up (`pad(2*r+u)` gives r half
    the axis, as TensorFlow's "SAME" padding with stride 2). None unless one name is unsized and
    it is a term with a positive coefficient."""
    found = sizable(i, size.__contains__)
    if found is None:
        return None
    n, c = found
    return n, None if extent is None else -(-extent // c)


def shift_name(i: Affine) -> str | None:
    """The name of a one-name shift `x[r+1]`, `x[2*r]`, `x[r+0]` (linear, positive coefficient, not
    plain): a read that bounds r where r is also read plainly; else None."""
    if i.plain is not None or not i.linear() or len(i.terms) != 1 or i.terms[0][0] <= 0 or i.const < 0:
        return None
    return i.terms[0][1]


def shift_extent(i: Affine, extent: int | None) -> int | None:
    """The values of r that keep a one-name shift c*r + d inside an axis of `extent`."""
    if extent is None:
        return None
    c, _ = i.terms[0]
    return max(0, (extent - 1 - i.const) // c + 1)


def written_extent(i: Index, sizes: Mapping[str, int | None]) -> int | None:
    """The extent a `+=` that defines its tensor gives an axis it writes through i: its largest
    position plus one. None when that is known only to exist."""
    assert isinstance(i, Affine)
    if not _known(*(sizes[n] for n in i.names())):
        return None
    if empty(i, sizes):  # type: ignore[arg-type]
        return 0
    return max(value_range(i, sizes)[1] + 1, 0)  # type: ignore[arg-type]


def _square(ax: Axis, size: Mapping[str, int | None]) -> tuple[str, int | None] | None:
    """An unsized name of `delta[i,j]` whose other position is a sized name takes its size: the
    identity is square."""
    other = ax.ref.indices[1 - ax.axis]
    if ax.position.plain in size or not isinstance(other, Affine) or other.plain not in size:
        return None
    return ax.position.plain, size[other.plain]  # type: ignore[return-value]


@dataclass(frozen=True)
class Axis:
    """An axis of a reference as sizing sees it: its position, the axis's extent (None: known to
    exist only), whether it has one (the target of a `+=` that defines its tensor, and `delta`,
    have none), what to name in a message, and whether a `+=` writes through it."""

    position: Affine
    extent: int | None
    has_extent: bool
    ref: Ref
    axis: int
    span: Span
    written: bool = False


def axes_of(r: Ref, shape: Sequence[int | None] | None, span: Span, written: bool = False) -> list[Axis]:
    """The sizing axes of a reference with this shape (None: it has no extents); label positions
    have none (the label tensor is a reference of its own)."""
    out = []
    for axis, i in enumerate(r.indices):
        if isinstance(i, Affine):
            ext = shape[axis] if shape is not None else None
            out.append(Axis(i, ext, shape is not None, r, axis, r.span if r.span.line else span, written))
    return out


def solve(
    axes: Sequence[Axis],
    size: dict[str, int | None],
    fixed: set[str],
    note: Callable[[str, int | None, Axis], None],
) -> None:
    """Size the index names of one statement from its axes, into `size` (which may hold sizes
    already: `dim` declarations, in `fixed`, and what the caller knows).

    `note(name, extent, axis)` records the extent a plain position gives (and refuses one that
    disagrees). Then, until nothing more follows: each linear position with one unsized name
    gives it the valid extent (the smallest, when several do at once); failing that, each
    position with a boundary mode gives its one unsized name the same extent; failing that, an
    unsized name of `delta[i,j]` takes the other's size (the identity is square). Every name sized
    by an array, not by `dim`, ranges where each one-name shift of it (`x[r+1]`) it reads is in
    range; a shifted write (`y[2*i] += z[i]`) shortens nothing, as that would drop what it adds (a
    write past the end is refused when the shapes are known). An index with no valid positions
    is an error at the reference that leaves it none.
    """
    for ax in axes:
        if ax.position.plain is not None and ax.has_extent:
            note(ax.position.plain, ax.extent, ax)
    shifts: dict[str, list[Axis]] = {}
    for ax in axes:
        n = shift_name(ax.position)
        if n is not None and ax.has_extent and not ax.written:
            shifts.setdefault(n, []).append(ax)

    def settle(n: str, value: int | None, by: Axis | None) -> None:
        if n not in fixed:
            for sh in shifts.get(n, ()):
                bound = shift_extent(sh.position, sh.extent)
                if value is not None and bound is not None and bound < value:
                    value, by = bound, sh
        # an empty array reads nothing, quietly; a read that fits nowhere in a nonempty one is an error
        if value is not None and value < 1 and by is not None and by.extent:
            from .printer import format_ref

            raise IndexgradError(
                f"index '{n}' in {format_ref(by.ref)} has no valid positions: "
                f"{by.ref.name} has size {by.extent} along axis {by.axis}",
                by.span,
            )
        size[n] = None if value is None else max(value, 0)

    for n in list(size):
        if n not in fixed and n in shifts:
            settle(n, size[n], None)
    linear = [ax for ax in axes if ax.has_extent and ax.position.plain is None and ax.position.mode is None]
    moded = [ax for ax in axes if ax.has_extent and ax.position.mode is not None]
    square = [ax for ax in axes if ax.ref.name == DELTA and ax.position.plain is not None]
    rules: list[tuple[Callable[[Axis], Any], list[Axis]]] = [
        (lambda ax: valid_extent(ax.position, ax.extent, size), linear),
        (lambda ax: same_extent(ax.position, ax.extent, size), moded),
        (lambda ax: _square(ax, size), square),
    ]
    while True:
        for rule, group in rules:
            found: dict[str, tuple[int | None, Axis]] = {}
            for ax in group:
                got = rule(ax)
                if got is None:
                    continue
                n, value = got
                old = found.get(n)
                if old is None or (value is not None and (old[0] is None or value < old[0])):
                    found[n] = (value, ax)
            if found:
                for n, (value, ax) in found.items():
                    settle(n, value, ax)
                break
        else:
            return
