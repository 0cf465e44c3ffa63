"""Syntax tree of the .idx language: frozen dataclasses named after the notation, each with a Span."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any, Union


@dataclass(frozen=True)
class Span:
    """A place in a source text: 1-based line and column of the start and end; `via` is the place
    of the use that inlined it, when it lies in a definition's body (as MLIR's call-site locations)."""

    line: int = 0
    column: int = 0
    end_line: int = 0
    end_column: int = 0
    via: Span | None = None

    def uses(self) -> list[Span]:
        """The places of the uses this place was inlined through, innermost first."""
        out, at = [], self.via
        while at is not None:
            out.append(at)
            at = at.via
        return out


NOSPAN = Span()


def _span() -> Span:
    return field(default=NOSPAN, compare=False, repr=False)  # type: ignore[return-value]


# ---- index positions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Floor:
    """`(a) // k` or `(a) % k` inside an index position: an affine position divided by a positive
    integer k, rounded down, or its remainder."""

    inner: Affine
    op: str  # "//" or "%"
    divisor: int

    def names(self) -> tuple[str, ...]:
        return self.inner.names()


MODES = ("pad", "clamp", "wrap")  # boundary modes of an index position: read 0, the edge, or around


@dataclass(frozen=True)
class Affine:
    """An index position: a sum of integer multiples of index names, of `//` and `%` parts, and a
    constant (`j`, `2*j+k`, `r//2`, `4*g+j%4`), read through a boundary mode (`pad(r+u-1)`) or not.

    `shifted` marks a one-name position written with a constant of 0 (`r+0`): a read through
    index arithmetic, which does not fix r's size (derived programs write one for a plain read of
    an index that a shifted read of the same statement shortens).
    """

    terms: tuple[tuple[int, str], ...]
    const: int = 0
    span: Span = _span()
    mode: str | None = None
    parts: tuple[tuple[int, Floor], ...] = ()
    shifted: bool = False
    plain: str | None = field(init=False, compare=False, repr=False)  # the name when just one name

    def __post_init__(self) -> None:
        one = (
            self.const == 0
            and len(self.terms) == 1
            and self.terms[0][0] == 1
            and self.mode is None
            and not self.parts
            and not self.shifted
        )
        object.__setattr__(self, "plain", self.terms[0][1] if one else None)

    def names(self) -> tuple[str, ...]:
        if self.plain is not None:  # most positions: one name
            return (self.plain,)
        out = tuple(n for _, n in self.terms)
        for _, f in self.parts:
            out += tuple(n for n in f.names() if n not in out)
        return out

    def linear(self) -> bool:
        """A plain affine position: no boundary mode and no `//` or `%`."""
        return self.mode is None and not self.parts

    def renamed(self, name: Callable[[str], str]) -> Affine:
        """This position with each index name n written name(n); its mode, parts and shift kept."""
        terms = tuple((c, name(n)) for c, n in self.terms)
        parts = tuple((c, Floor(f.inner.renamed(name), f.op, f.divisor)) for c, f in self.parts)
        return replace(self, terms=terms, parts=parts)


@dataclass(frozen=True)
class Gather:
    """An index position holding an integer tensor reference (`P[b, y[b]]`)."""

    ref: Ref
    span: Span = _span()

    def names(self) -> tuple[str, ...]:
        return ref_index_names(self.ref)


Index = Union[Affine, Gather]


@lru_cache(maxsize=4096)
def idx(name: str) -> Affine:
    """A plain index position (one per name: positions are immutable, and derivations make many)."""
    return Affine(((1, name),))


# ---- expressions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A tensor reference `x[b,j]`; a scalar has no indices."""

    name: str
    indices: tuple[Index, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Num:
    """A numeric literal."""

    value: float
    span: Span = _span()


@dataclass(frozen=True)
class SizeOf:
    """`size[k]`: the extent of index k, a number."""

    index: str
    span: Span = _span()


@dataclass(frozen=True)
class Neg:
    """Unary minus."""

    arg: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Product:
    """A chain of factors joined by juxtaposition, `*` and `/`; `summed` lists the indices it sums."""

    factors: tuple[Expr, ...]
    divide: tuple[bool, ...]
    summed: tuple[str, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Sum:
    """Terms joined by `+` and `-` (sign +1 or -1 per term)."""

    terms: tuple[Expr, ...]
    signs: tuple[int, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Power:
    """`base ^ exponent` with a numeric exponent."""

    base: Expr
    exponent: float
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    """An elementwise function call `relu(e)` or `max(a, b)`."""

    func: str
    args: tuple[Expr, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Reduce:
    """An explicit reduction `sum[k](e)`, `mean[b,c](e)`, `max[k](e)`, `min[k](e)`, `logsumexp[k](e)`."""

    op: str
    indices: tuple[str, ...]
    body: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Compare:
    """A comparison `a < b` (`<= > >= == !=`): 1 where it holds, else 0, with no gradient."""

    op: str
    left: Expr
    right: Expr
    span: Span = _span()


Expr = Union[Ref, Num, SizeOf, Neg, Product, Sum, Power, Call, Reduce, Compare]

DELTA = "delta"  # the identity `delta[i,j]`: a tensor that needs no array


# ---- statements and programs -----------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """`target = expr` or `target += expr`; `summed` lists indices the whole right side sums."""

    target: Ref
    op: str
    expr: Expr
    summed: tuple[str, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Decl:
    """A `param` or `input` declaration of one tensor, or a `dim` declaration of one index name's
    extent (`dim u=2`: role "dim", ref `u`, size 2)."""

    role: str
    ref: Ref
    span: Span = _span()
    size: int = 0


@dataclass(frozen=True)
class Use:
    """`h1[b,h] = dense(x[b,d])`: a definition applied to tensors, its outputs bound to `targets`."""

    targets: tuple[Ref, ...]
    name: str
    args: tuple[Ref, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Def:
    """`def NAME(args) -> outputs:` and its indented body of declarations, statements and uses."""

    name: str
    args: tuple[Ref, ...]
    outputs: tuple[Ref, ...]
    body: tuple[Decl | Statement | Use, ...]
    span: Span = _span()


Item = Union[Decl, Statement, Use, Def]


@dataclass(frozen=True)
class Warning_:
    """A diagnostic that does not stop the program."""

    message: str
    span: Span


@dataclass(frozen=True)
class Program:
    """A sequence of declarations and statements.

    A program with definitions also keeps itself as written in `written` (declarations,
    definitions, statements and uses in their order), which is what it prints as; `decls` and
    `statements` are then what runs, every use inlined (indexgrad/inline.py).
    """

    decls: tuple[Decl, ...] = ()
    statements: tuple[Statement, ...] = ()
    filename: str = field(default="<string>", compare=False)
    source: str = field(default="", compare=False, repr=False)
    warnings: tuple[Warning_, ...] = field(default=(), compare=False, repr=False)
    written: tuple[Item, ...] = ()

    def __str__(self) -> str:
        from .printer import format_program

        return format_program(self)

    def _repr_latex_(self) -> str:
        """The program as aligned equations, for Jupyter."""
        from .latex import program_latex

        return "$$" + program_latex([], self.statements) + "$$"

    def _repr_markdown_(self) -> str:
        """The equations, then the canonical text, for Jupyter's Markdown renderer."""
        return self._repr_latex_() + "\n\n```\n" + str(self) + "```\n"

    def to_python(
        self,
        lib: str = "numpy",
        mode: str = "grad",
        dims: dict[str, int] | None = None,
        loss: str | None = None,
        wrt: list[str] | str | None = None,
    ) -> str:
        """A standalone module of `lib` calls (numpy, torch or jax): forward() and backward(), or
        jvp() for mode "jvp", planned for the input shapes `dims` gives (indexgrad/codegen.py)."""
        from .codegen import to_python

        return to_python(self, lib, mode, dims, loss, wrt)

    def params(self) -> tuple[str, ...]:
        return tuple(d.ref.name for d in self.decls if d.role == "param")

    def defs(self) -> tuple[Def, ...]:
        """The definitions, in their order."""
        return tuple(d for d in self.written if isinstance(d, Def))

    def dims(self) -> dict[str, int]:
        """The extents `dim` declarations fix, by index name."""
        return {d.ref.name: d.size for d in self.decls if d.role == "dim"}

    def tensor_decls(self) -> tuple[Decl, ...]:
        """The `param` and `input` declarations."""
        return tuple(d for d in self.decls if d.role != "dim")

    def defined(self) -> tuple[str, ...]:
        """Names defined by statements, in order of first definition."""
        return self._names[0]

    def inputs(self) -> tuple[str, ...]:
        """Names read (or declared) but never defined, in order of first appearance."""
        return self._names[1]

    def integer_inputs(self) -> tuple[str, ...]:
        """Names used inside index positions (gather labels)."""
        return self._names[2]

    @cached_property
    def _names(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        defined: dict[str, None] = {}
        for s in self.statements:
            defined.setdefault(s.target.name, None)
        inputs: dict[str, None] = {}
        for d in self.tensor_decls():
            if d.ref.name not in defined:
                inputs.setdefault(d.ref.name, None)
        labels: dict[str, None] = {}
        for s in self.statements:
            for r in refs_in_statement(s):
                if r.name not in defined and r.name != DELTA:
                    inputs.setdefault(r.name, None)
            for r in [s.target, *refs_in(s.expr)]:
                for i in r.indices:
                    if isinstance(i, Gather):
                        labels.setdefault(i.ref.name, None)
        return tuple(defined), tuple(inputs), tuple(labels)


# ---- traversal helpers -----------------------------------------------------------------------


_KIDS: dict[type, Callable[[Any], tuple[Expr, ...]]] = {
    Neg: lambda e: (e.arg,),
    Product: lambda e: e.factors,
    Sum: lambda e: e.terms,
    Power: lambda e: (e.base,),
    Call: lambda e: e.args,
    Reduce: lambda e: (e.body,),
    Compare: lambda e: (e.left, e.right),
}


def children(e: Expr) -> tuple[Expr, ...]:
    """The subexpressions of e, in order."""
    get = _KIDS.get(type(e))
    return get(e) if get is not None else ()


def refs_in(e: Expr) -> list[Ref]:
    """Every tensor reference in e, including integer tensors inside index positions."""
    out: list[Ref] = []
    _collect_refs(e, out)
    return out


def _collect_refs(e: Expr, out: list[Ref]) -> None:
    if type(e) is Ref:
        out.append(e)
        for i in e.indices:
            if type(i) is Gather:
                _collect_refs(i.ref, out)
        return
    get = _KIDS.get(type(e))
    if get is not None:
        for c in get(e):
            _collect_refs(c, out)


def holds_ref(e: Expr) -> bool:
    """Whether e reads a tensor: `bool(refs_in(e))`, stopping at the first reference."""
    if type(e) is Ref:
        return True
    get = _KIDS.get(type(e))
    return get is not None and any(holds_ref(c) for c in get(e))


def refs_in_statement(s: Statement) -> list[Ref]:
    """References read by s: the right side and integer tensors in the target's index positions."""
    out = refs_in(s.expr)
    for i in s.target.indices:
        if isinstance(i, Gather):
            out.extend(refs_in(i.ref))
    return out


def ref_index_names(r: Ref) -> tuple[str, ...]:
    """Index names a reference mentions, in order, without repeats (kept on the node once known)."""
    try:
        return r.__dict__["_index_names"]
    except KeyError:
        pass
    names = plain_names(r)  # most references: one plain name per position
    if names is None:
        seen: dict[str, None] = {}
        for i in r.indices:
            for n in i.names():
                seen.setdefault(n, None)
        names = tuple(seen)
    object.__setattr__(r, "_index_names", names)  # not a field: equality and hashing ignore it
    return names


def plain_names(r: Ref) -> tuple[str, ...] | None:
    """The index names when every position of r is one plain name and none repeats (`x[b,i]`,
    not `x[i,i]`, `x[i+1]` or `P[b,l[b]]`), else None; kept on the node once known."""
    try:
        return r.__dict__["_plain_names"]
    except KeyError:
        pass
    seen: list[str] = []
    names: tuple[str, ...] | None = None
    for i in r.indices:
        n = i.plain if isinstance(i, Affine) else None
        if n is None or n in seen:
            break
        seen.append(n)
    else:  # every position one name, none repeated
        names = tuple(seen)
    object.__setattr__(r, "_plain_names", names)  # not a field: equality and hashing ignore it
    return names


def is_plain(r: Ref) -> bool:
    """Every position of r one plain index name, none repeated."""
    return plain_names(r) is not None


def map_expr(e: Expr, f) -> Expr:  # type: ignore[no-untyped-def]
    """Rebuild e bottom-up, applying f to every node after its children."""
    t = type(e)
    if t is Neg:
        e = Neg(map_expr(e.arg, f), e.span)
    elif t is Product:
        e = Product(tuple(map_expr(c, f) for c in e.factors), e.divide, e.summed, e.span)
    elif t is Sum:
        e = Sum(tuple(map_expr(c, f) for c in e.terms), e.signs, e.span)
    elif t is Power:
        e = Power(map_expr(e.base, f), e.exponent, e.span)
    elif t is Call:
        e = Call(e.func, tuple(map_expr(c, f) for c in e.args), e.span)
    elif t is Reduce:
        e = Reduce(e.op, e.indices, map_expr(e.body, f), e.span)
    elif t is Compare:
        e = Compare(e.op, map_expr(e.left, f), map_expr(e.right, f), e.span)
    return f(e)
