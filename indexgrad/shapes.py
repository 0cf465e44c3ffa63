"""Shapes of a program's inputs from `--dims` alone, by unifying index names across references."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .check import sized_like
from .errors import IndexgradError
from .functions import FUNCTIONS
from .memory import check_fits
from .nodes import DELTA, Affine, Call, Expr, Gather, Program, Ref, children, refs_in
from .positions import same_extent, valid_extent, written_extent


class _Classes:
    """Union-find over tensor axes and statement-local index names."""

    def __init__(self) -> None:
        self.parent: dict[tuple, tuple] = {}

    def find(self, x: tuple) -> tuple:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: tuple, b: tuple) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def axis_classes(groups: Iterable[Sequence[Ref]]) -> _Classes:
    """Tensor axes ("T", name, axis) joined through the index names they share within a group (the
    references of one statement: index names are local to it), and the axes of `x.grad` with x's."""
    uf = _Classes()
    for k, refs in enumerate(groups):
        for r in refs:
            if r.name == DELTA:  # delta's axes take their sizes, they give none
                continue
            like = sized_like(r.name)
            for axis, i in enumerate(r.indices):
                if isinstance(i, Affine) and i.plain is not None:
                    uf.union(("T", r.name, axis), ("I", k, i.plain))
                if like is not None:
                    uf.union(("T", r.name, axis), ("T", like, axis))
    return uf


class Listed(argparse.Action):
    """A comma-separated flag (--dims, --wrt) given more than once lists the entries of every
    occurrence, instead of keeping only the last."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        before = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, values if before is None else f"{before},{values}")


def parse_dims(text: str | None) -> dict[str, int]:
    """`b=4,i=3` as a dict; a malformed entry, or a name given twice, is a user error."""
    out: dict[str, int] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            raise IndexgradError(f"--dims entry '{part}' is not of the form name=size (e.g. b=4)")
        if name in out:
            raise IndexgradError(f"--dims gives '{name}' twice; give each index one size")
        try:
            size = int(value)
        except ValueError:
            raise IndexgradError(
                f"--dims size for '{name}' must be a whole number, got '{value.strip()}'"
            ) from None
        if size < 1 or size > 1_000_000:
            raise IndexgradError(f"--dims size for '{name}' must be between 1 and 1000000, got {size}")
        out[name] = size
    return out


def not_a_size(name: str, size: Any) -> str | None:
    """Why `size`, given for index `name` from Python, is no extent (None when it is one)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        return f"the size of index '{name}' must be a whole number of at least 1, got {size!r}"
    return None


def tensor_name(text: str) -> str:
    """An argparse type for a flag that names one tensor (--loss): refuses an empty name, which
    would otherwise read as the flag left out."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a tensor name, got ''")
    return text.strip()


def parse_names(text: str | None) -> list[str] | None:
    """`W1,B1` (the --wrt flag) as a list; None when the flag is absent."""
    if text is None:
        return None
    out = [n.strip() for n in text.split(",") if n.strip()]
    if not out:
        raise IndexgradError("--wrt needs at least one input name")
    return out


def infer_shapes(program: Program, dims: dict[str, int], default: int = 3) -> dict[str, tuple[int, ...]]:
    """Shapes for every input (labels included), sized from dims by index name, else `default`.

    The program's own `dim` declarations come first; a --dims size for such an index must agree."""
    fixed = program.dims()
    for n, v in dims.items():
        if n in fixed and fixed[n] != v:
            raise IndexgradError(f"--dims gives {n}={v}, but the program declares dim {n}={fixed[n]}")
    dims = {**dims, **fixed}
    uf = _Classes()
    names_of: dict[tuple, set[str]] = {}
    refs: list[tuple[int, Ref]] = []
    for k, s in enumerate(program.statements):
        refs.append((k, s.target))
        refs.extend((k, r) for r in refs_in(s.expr) if r.name != DELTA)
        refs.extend((k, i.ref) for i in s.target.indices if isinstance(i, Gather))
    for d in program.tensor_decls():  # last, so a reference with index arithmetic sizes the input
        refs.append((-1 - len(refs), d.ref))
    for k, r in refs:
        for axis, i in enumerate(r.indices):
            if isinstance(i, Affine) and i.plain is not None:
                uf.union(("T", r.name, axis), ("I", k, i.plain))
                names_of.setdefault(("I", k, i.plain), set()).add(i.plain)
    size: dict[tuple, int] = {}
    for key, ns in names_of.items():
        root = uf.find(key)
        for n in ns:
            if n in dims:
                size.setdefault(root, dims[n])
    for k, r in refs:  # a name only index arithmetic reads still takes its --dims or dim size
        for i in r.indices:
            for n in i.names() if isinstance(i, Affine) else ():
                if n in dims:
                    size.setdefault(uf.find(("I", k, n)), dims[n])

    # an input's axis read both plainly and through index arithmetic (x[b,c,n] and x[b,4*g+j,n]) is
    # as long as the arithmetic reaches with default sizes, so that its valid extents are not empty
    given, plain, inputs = set(size), {uf.find(key) for key in names_of}, set(program.inputs())
    for _, r in refs:
        for axis, i in enumerate(r.indices):
            root = uf.find(("T", r.name, axis))
            if r.name not in inputs or root not in plain - given:
                continue
            if isinstance(i, Affine) and i.plain is None and i.mode is None:
                reach = written_extent(i, {n: dims.get(n, default) for n in i.names()}) or 1
                size[root] = max(size.get(root, default), reach)

    targets = {
        k: {n for i in s.target.indices if isinstance(i, Affine) for n in i.names()}
        for k, s in enumerate(program.statements)
    }
    _solve_affine(uf, size, refs, targets, default)

    def index_size(k: int, n: str) -> int:
        return size.get(uf.find(("I", k, n)), dims.get(n, default))

    # a tensor '+=' defines through index arithmetic (y[t+k] += ...) is as long as its writes
    # reach, and so are the inputs a later plain read of it meets (w in y[s] w[s])
    reach: dict[tuple, int] = {}
    made = {s.target.name for s in program.statements if s.op == "="}
    for k, s in enumerate(program.statements):
        if s.op == "+=" and s.target.name not in made and sized_like(s.target.name) is None:
            for axis, i in enumerate(s.target.indices):
                root = uf.find(("T", s.target.name, axis))
                if isinstance(i, Affine) and i.plain is None and i.mode is None and root not in given:
                    far = written_extent(i, {n: index_size(k, n) for n in i.names()}) or 1
                    reach[root] = max(reach.get(root, 1), far)
    if reach:
        size.update(reach)
        _solve_affine(uf, size, refs, targets, default)

    shapes: dict[str, tuple[int, ...]] = {}
    reached: dict[str, dict[int, int]] = {}  # axes that only index arithmetic sizes: the farthest read
    wanted = set(program.inputs())
    gathers = [any(isinstance(i, Gather) for i in r.indices) for _, r in refs]
    plain_first = [kr for kr, g in zip(refs, gathers) if not g] + [kr for kr, g in zip(refs, gathers) if g]
    for k, r in plain_first:  # a gathered axis takes its size from a plain read of it, if any
        name = r.name
        if name not in wanted and any(isinstance(i, Affine) and i.plain is None for i in r.indices):
            name = sized_like(name) or name  # `x.grad[j+k] += ...` reaches as far into x as x[j+k]
        if name not in wanted:
            continue
        if name in shapes:  # x[b,0,i] and x[b,1,i]: an axis only arithmetic sizes reaches the farthest
            far = reached.get(name, {})
            for axis, i in enumerate(r.indices):
                if axis in far and isinstance(i, Affine) and i.mode is None:
                    reach = written_extent(i, {n: index_size(k, n) for n in i.names()}) or 1
                    far[axis] = max(far[axis], reach)
            shapes[name] = tuple(far.get(a, e) for a, e in enumerate(shapes[name]))
            continue
        shape = []
        for axis, i in enumerate(r.indices):
            root = uf.find(("T", r.name, axis))
            if isinstance(i, Affine) and i.plain is None:
                sizes = {n: index_size(k, n) for n in i.names()}
                if i.mode is not None:  # the axis whose "same" extent the position has
                    ext = max((c * sizes[n] for c, n in i.terms if c > 0), default=1)
                else:
                    ext = written_extent(i, sizes) or 1  # x[-1] is refused when it runs
                    if root not in size:
                        reached.setdefault(name, {})[axis] = max(ext, 1)
                shape.append(size.get(root, max(ext, 1)))
            elif isinstance(i, Gather):
                shape.append(size.get(root, dims.get(f"{r.name}{axis}", default + 1)))
            else:
                shape.append(size.get(root, dims.get(i.plain or "", default)))
        shapes[name] = tuple(shape)
    for d in program.tensor_decls():  # declared but unread
        if d.ref.name not in shapes:
            shapes[d.ref.name] = tuple(dims.get(i.plain or "", default) for i in d.ref.indices)  # type: ignore[union-attr]
    return shapes


class _Named(Mapping[str, int]):
    """The sizes found so far of statement k's index names, looked up by name (for positions'
    rules, which ask `n in sizes` and `sizes[n]`)."""

    def __init__(self, uf: _Classes, size: dict[tuple, int], k: int) -> None:
        self.uf, self.size, self.k = uf, size, k

    def __getitem__(self, n: str) -> int:
        return self.size[self.uf.find(("I", self.k, n))]

    def __contains__(self, n: object) -> bool:
        return self.uf.find(("I", self.k, n)) in self.size

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(())

    def __len__(self) -> int:
        return 0


def _solve_affine(
    uf: _Classes,
    size: dict[tuple, int],
    refs: list[tuple[int, Ref]],
    targets: dict[int, set[str]],
    default: int,
) -> None:
    """Sizes that index arithmetic implies (positions' valid and same extents), until nothing
    more follows.

    A sized position with several unsized names (x[r+u] with only x's size given) gives the
    names its statement sums over (u) the default size, so that the one on the left side (r)
    gets the valid size, as it would from arrays."""
    while True:
        changed = False
        stuck: list[tuple[int, str]] = []
        for k, r in refs:
            named = _Named(uf, size, k)
            for axis, i in enumerate(r.indices):
                extent = size.get(uf.find(("T", r.name, axis)))
                if not isinstance(i, Affine) or i.plain is not None or extent is None:
                    continue
                rule = same_extent if i.mode is not None else valid_extent
                found = rule(i, extent, named)
                if found is not None and found[1] is not None and found[1] >= 1:
                    size[uf.find(("I", k, found[0]))] = found[1]
                    changed = True
                elif found is None:
                    unknown = [n for n in i.names() if n not in named]
                    stuck += [(k, n) for n in unknown if len(unknown) > 1 and n not in targets.get(k, ())]
        if not changed:
            if not stuck:
                return
            for k, n in stuck:
                size.setdefault(uf.find(("I", k, n)), default)


def _positive_names(program: Program) -> set[str]:
    """Inputs read directly inside a function whose domain is positive (log, sqrt)."""
    out: set[str] = set()

    def visit(e: Expr) -> None:
        f = FUNCTIONS.get(e.func) if isinstance(e, Call) else None  # fix and solve are not functions
        if f is not None and f.positive_domain:
            out.update(r.name for r in refs_in(e))
        for c in children(e):
            visit(c)

    for s in program.statements:
        visit(s.expr)
    return out


def random_inputs(
    program: Program, dims: dict[str, int], rng: np.random.Generator, positive: bool = False
) -> dict[str, np.ndarray]:
    """Random float64 inputs (positive where a log or sqrt reads them) and in-range integer labels."""
    shapes = infer_shapes(program, dims)
    labels = set(program.integer_inputs())
    pos = _positive_names(program)
    limits: dict[str, int] = {}
    for s in program.statements:
        for r in [s.target, *refs_in(s.expr)]:
            for axis, i in enumerate(r.indices):
                if isinstance(i, Gather) and r.name in shapes:
                    limits[i.ref.name] = min(limits.get(i.ref.name, 10**9), shapes[r.name][axis])
    out: dict[str, np.ndarray] = {}
    if shapes:  # all of them together, before any is drawn: each may fit while all do not
        name, shape = max(shapes.items(), key=lambda kv: math.prod(kv[1]))
        reads = (r for st in program.statements for r in refs_in(st.expr))
        place = next((r.span for r in reads if r.name == name), None)
        what = f"the random inputs (the largest, '{name}', of shape {shape})"
        need = sum(8 * math.prod(s) for s in shapes.values())
        check_fits(need, what, place, program.filename, program.source, smaller="--dims")
    for name, shape in shapes.items():
        if name in labels:
            out[name] = rng.integers(0, max(limits.get(name, 2), 1), size=shape)
        elif positive or name in pos:
            out[name] = rng.uniform(0.5, 1.5, size=shape)
        else:
            out[name] = rng.standard_normal(shape)
    return out
