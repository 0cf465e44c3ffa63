"""Lowering: statements become primitive statements (contraction, elementwise, sum of terms, reduction)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Union

import numpy as np

from .check import sized_like
from .errors import IndexgradError
from .functions import COMPARISONS, FUNCTIONS, IMPLICIT
from .indices import free_indices
from .nodes import (
    DELTA,
    NOSPAN,
    Affine,
    Call,
    Compare,
    Expr,
    Gather,
    Index,
    Neg,
    Num,
    Power,
    Product,
    Program,
    Reduce,
    Ref,
    SizeOf,
    Span,
    Statement,
    Sum,
    children,
    holds_ref,
    idx,
    is_plain,
    ref_index_names,
    refs_in,
)
from .positions import shift_name

Operand = Union[Ref, Num, SizeOf]
LONG_PRODUCT = 16  # more factors than this are contracted in runs (see _Lowerer.chunked)


@dataclass(frozen=True)
class Contract:
    """`out[I] op= coef * Π factor^power`, summing every index not in I."""

    out: Ref
    op: str
    coef: float
    factors: tuple[tuple[Operand, float], ...]
    span: Span
    dims: tuple[tuple[str, int], ...] = ()  # extents `dim` fixes for its index names


@dataclass(frozen=True)
class Elementwise:
    """`out[I] op= f(args)`, the arguments broadcast by index name."""

    out: Ref
    op: str
    func: str
    args: tuple[Operand, ...]
    span: Span
    dims: tuple[tuple[str, int], ...] = ()  # extents `dim` fixes for its index names


@dataclass(frozen=True)
class Terms:
    """`out[I] op= s1 u1 + s2 u2 + ...`, each term broadcast to I."""

    out: Ref
    op: str
    terms: tuple[tuple[float, Operand], ...]
    span: Span
    dims: tuple[tuple[str, int], ...] = ()  # extents `dim` fixes for its index names


@dataclass(frozen=True)
class Reduction:
    """`out[I] op= reducer[k...](arg)` for mean, max, min and logsumexp."""

    out: Ref
    op: str
    reducer: str
    indices: tuple[str, ...]
    arg: Ref
    span: Span
    dims: tuple[tuple[str, int], ...] = ()  # extents `dim` fixes for its index names


@dataclass(frozen=True)
class Implicit:
    """`out[I] = fix(f)`, `fix(f, start)` or `solve(g, start)` (SPEC 11): `body` are the primitive
    statements of f (or g) reading `out` as their input and writing `result`; `expr` is the call
    as checked, which is how the statement prints; `start` is None for zeros."""

    out: Ref
    op: str
    method: str
    body: tuple[Prim, ...]
    result: Ref
    start: Operand | None
    expr: Call
    span: Span
    dims: tuple[tuple[str, int], ...] = ()  # as the other primitives' (the body's carry their own)


Prim = Union[Contract, Elementwise, Terms, Reduction, Implicit]


def ordered_free(e: Expr) -> tuple[str, ...]:
    """Free index names of e in order of first appearance."""
    free = free_indices(e)
    seen: dict[str, None] = {}
    for r in refs_in(e):
        for n in ref_index_names(r):
            if n in free:
                seen.setdefault(n, None)
    return tuple(seen)


# ---- building printable expressions ----------------------------------------------------------


def num(v: float) -> Expr:
    return Neg(Num(-v)) if v < 0 else Num(v)


def product(factors: list[Expr], coef: float = 1.0) -> Expr:
    """A product in canonical form: a leading coefficient, nested products flattened, -1 as Neg."""
    if coef == 1 and factors and all(type(f) is Ref for f in factors):  # already canonical
        return factors[0] if len(factors) == 1 else Product(tuple(factors), (False,) * len(factors))
    flat: list[Expr] = []
    divide: list[bool] = []
    work: list[tuple[Expr, bool]] = [(f, False) for f in reversed(factors)]  # a stack, next on top
    while work:
        f, d = work.pop()
        t = type(f)
        if t is Ref or d:
            flat.append(f)
            divide.append(d)
            continue
        if t is Neg:
            coef, f = -coef, f.arg
            t = type(f)
        if t is Num and math.isfinite(coef * f.value):
            coef *= f.value  # numbers whose product would overflow stay separate factors
            continue
        if t is Product and not f.summed:
            work.extend(reversed(list(zip(f.factors, f.divide))))
            continue
        if t is Power and f.exponent < 0:
            f, d = (f.base if f.exponent == -1 else Power(f.base, -f.exponent)), True
        flat.append(f)
        divide.append(d)
    if divide and not all(divide):  # divisors last: `g W / Z`
        order = sorted(range(len(flat)), key=lambda n: divide[n])
        flat, divide = [flat[n] for n in order], [divide[n] for n in order]
    if coef == 0:
        return Num(0)
    sign, mag = (-1 if coef < 0 else 1), abs(coef)
    if mag != 1 or not flat or divide[0]:
        flat.insert(0, Num(mag))
        divide.insert(0, False)
    if sign < 0:
        flat[0] = Neg(flat[0])
    return flat[0] if len(flat) == 1 else Product(tuple(flat), tuple(divide))


def split_sign(e: Expr) -> tuple[int, Expr]:
    """(-1, e') when e is a negated product as `product` builds it, else (1, e)."""
    if isinstance(e, Neg):
        return -1, e.arg
    if isinstance(e, Product) and isinstance(e.factors[0], Neg):
        first = e.factors[0].arg
        if isinstance(first, Num) and first.value == 1 and len(e.factors) > 1 and not e.divide[1]:
            rest = e.factors[1:]
            body = rest[0] if len(rest) == 1 else Product(rest, e.divide[1:], e.summed)
            return -1, body
        return -1, Product((first, *e.factors[1:]), e.divide, e.summed)
    return 1, e


def sum_of(terms: list[Expr]) -> Expr:
    """Terms joined by + and -, a leading minus kept on the first."""
    out: list[Expr] = []
    signs: list[int] = []
    for t in terms:
        sign, body = split_sign(t)
        if out and sign < 0:
            out.append(body)
            signs.append(-1)
        else:
            out.append(t)
            signs.append(1)
    return out[0] if len(out) == 1 else Sum(tuple(out), tuple(signs))


def powered(e: Operand, p: float) -> Expr:
    if p == 1:
        return e
    return Power(e, p)


def scaled(factors: list[Expr], coef: float) -> Expr:
    """product(factors, coef), but times 0 the tensors stay: the printed primitive reads what it
    read (`0 B[j]` keeps B an input and still sizes j)."""
    if coef != 0 or all(isinstance(f, Num) for f in factors):
        return product(factors, coef)
    return Product((Num(0), *factors), (False,) * (len(factors) + 1))


def prim_expr(p: Prim) -> Expr:
    """The right side of a primitive, as an expression of the language."""
    if isinstance(p, Contract):
        return scaled([powered(f, k) for f, k in p.factors], p.coef)
    if isinstance(p, Elementwise):
        if p.func in COMPARISONS:
            return Compare(p.func, *p.args)
        return Call(p.func, p.args)
    if isinstance(p, Reduction):
        return Reduce(p.reducer, p.indices, p.arg)
    if isinstance(p, Implicit):
        return p.expr
    return sum_of([scaled([u], c) for c, u in p.terms])


def prim_statement(p: Prim) -> Statement:
    return Statement(p.out, p.op, prim_expr(p), (), p.span)


# ---- lowering --------------------------------------------------------------------------------


class _Lowerer:
    def __init__(self, program: Program) -> None:
        self.taken: set[str] = set(program.inputs()) | set(program.defined())
        self.accumulated = {s.target.name for s in program.statements if s.op == "+="}
        self.out: list[Prim] = []
        self.span = Span()
        self.lhs: list[str] = []
        self.all_dims = program.dims()
        self.dims: tuple[tuple[str, int], ...] = ()
        self.shrunk: set[str] = set()
        self.counters: dict[str, int] = {}

    def fresh(self, base: str, kind: str) -> str:
        name = f"{base}.{kind}"
        n = self.counters.get(name, 2)  # where the last search for this name stopped: linear in all
        while name in self.taken:
            name = f"{base}.{kind}{n}"
            n += 1
        self.counters[f"{base}.{kind}"] = n
        self.taken.add(name)
        return name

    def operand(self, e: Expr, base: str) -> Operand:
        """e as an operand: itself when it is a reference or holds no tensor (`sqrt(size[e])`, a
        number the executor works out once it knows the sizes), else a new temporary."""
        if isinstance(e, Neg) and isinstance(e.arg, Num):
            return Num(-e.arg.value)
        if isinstance(e, Ref) or not holds_ref(e):
            return e
        free = ordered_free(e)
        first = [n for n in self.lhs if n in free]  # the statement's own order reads best
        names = first + [n for n in free if n not in first]
        target = Ref(self.fresh(base, _kind(e)), tuple(idx(n) for n in names), e_span(e))
        self.emit(target, "=", e, (), base)
        return target

    def add(self, p: Prim) -> None:
        """Emit p with the extents `dim` fixes for the statement's index names."""
        self.out.append(replace(p, dims=self.dims) if self.dims else p)

    def emit(self, target: Ref, op: str, e: Expr, summed: tuple[str, ...], base: str) -> None:
        span = self.span
        if isinstance(e, Neg) and isinstance(e.arg, Sum):  # -(a + b) is -a - b
            e = Sum(e.arg.terms, tuple(-sign for sign in e.arg.signs), e.arg.span)
        needs_temp = op == "+=" or target.name in self.accumulated
        if summed and isinstance(e, Sum) and _sums_each(e, summed):
            terms = _terms_of(e, 1)
            parts = tuple(Reduce("sum", summed, t, e_span(t)) for t, _ in terms)
            e, summed = Sum(parts, tuple(sign for _, sign in terms), e.span), ()
        into_positions = any(getattr(i, "plain", None) is None for i in target.indices)
        if op == "+=" and not summed and isinstance(e, Sum) and into_positions:
            # into positions (r+u, labels): each term scattered on its own, as the library's
            # transposed call (conv_transpose2d, index_add) takes a product, never their sum
            # materialised over the window's indices first
            for t, sign in _terms_of(e, 1):
                self.emit(target, op, t if sign > 0 else Neg(t, e_span(t)), (), base)
            return
        if summed and not _is_productish(e):
            e = self.operand(e, base)
        if _is_productish(e) or isinstance(e, (Ref, SizeOf)):
            coef, factors = self.factors(e, base)
            factors = self.chunked(target, factors, base)
            self.add(Contract(target, op, coef, tuple(factors), span))
            return
        if isinstance(e, Num):
            self.add(Terms(target, op, ((e.value, Num(1)),), span))
            return
        if isinstance(e, Sum):
            terms = []
            for t, sign in _terms_of(e, 1):
                c, u = self.scaled(t, base)
                terms.append((sign * c, u))
            self.add(Terms(target, op, tuple(terms), span))
            return
        if isinstance(e, Reduce) and e.op == "sum":
            self.emit(target, op, e.body, summed + e.indices, base)
            return
        if needs_temp:  # derivatives of these read their output, which '+=' would change
            tmp = self.operand(e, base)
            self.add(Contract(target, op, 1.0, ((tmp, 1.0),), span))
            return
        if isinstance(e, Call):
            args = tuple(self.operand(a, base) for a in e.args)
            self.add(Elementwise(target, op, e.func, args, span))
            return
        if isinstance(e, Compare):
            pair = (self.operand(e.left, base), self.operand(e.right, base))
            self.add(Elementwise(target, op, e.op, pair, span))
            return
        if isinstance(e, Reduce):
            arg = self.operand(e.body, base)
            if e.op == "sum":
                self.add(Contract(target, op, 1.0, ((arg, 1.0),), span))
            else:
                assert isinstance(arg, Ref)
                self.add(Reduction(target, op, e.op, e.indices, arg, span))
            return
        raise TypeError(f"cannot lower {e!r}")

    def chunked(
        self, target: Ref, factors: list[tuple[Operand, float]], base: str
    ) -> list[tuple[Operand, float]]:
        """A product of more than LONG_PRODUCT plain tensors as a chain: each run of factors
        becomes a temporary that keeps the indices the rest of the product or the target reads,
        and the last run is returned. The swap rule then writes each factor's gradient from a run
        of bounded length, so the derivative of an n-factor product has O(n) factors, not O(n^2)."""
        if len(factors) <= LONG_PRODUCT or not all(
            isinstance(f, Ref) and is_plain(f) for f, _ in factors
        ):
            return factors
        last = {n: k for k, (f, _) in enumerate(factors) for n in ref_index_names(f)}  # type: ignore[arg-type]
        last.update((n, len(factors)) for n in ref_index_names(target))
        run: list[tuple[Operand, float]] = []
        for k, factor in enumerate(factors):
            if len(run) == LONG_PRODUCT:
                names = dict.fromkeys(n for f, _ in run for n in ref_index_names(f))  # type: ignore[arg-type]
                kept = tuple(n for n in names if last[n] >= k)  # read again later, or by the target
                part = Ref(self.fresh(base, "prod"), tuple(idx(n) for n in kept))
                self.add(Contract(part, "=", 1.0, tuple(run), self.span))
                run = [(part, 1.0)]
            run.append(factor)
        return run

    def scaled(self, e: Expr, base: str) -> tuple[float, Operand]:
        """A term as coefficient × operand."""
        if isinstance(e, Neg):
            c, u = self.scaled(e.arg, base)
            return -c, u
        if isinstance(e, Num):
            return e.value, Num(1)
        if isinstance(e, Product) and not e.summed:
            pairs = list(zip(e.factors, e.divide))
            rest = [f for f, _ in pairs if not isinstance(f, Num)]
            if len(rest) == 1 and not any(d for f, d in pairs if f is rest[0]):
                c = 1.0
                for f, d in pairs:  # `2 x / 4`: the numbers, multiplied and divided, scale x
                    if isinstance(f, Num):
                        c = _fold(c, f, -1.0 if d else 1.0, self.span)
                c2, u = self.scaled(rest[0], base)
                return _fold(c, Num(c2, e.span), 1.0, self.span), u
        return 1.0, self.operand(e, base)

    def factors(self, e: Expr, base: str) -> tuple[float, list[tuple[Operand, float]]]:
        """A product-like expression as coefficient × Π operand^power."""
        out: list[tuple[Operand, float]] = []
        return self._factor(e, 1.0, base, 1.0, out), out

    def _factor(
        self, f: Expr, power: float, base: str, coef: float, out: list[tuple[Operand, float]]
    ) -> float:
        """Append f^power's operands to out, and return coef times its numbers. (A method, not a
        closure that calls itself: such a closure is a reference cycle left for the collector.)"""
        if isinstance(f, Num):
            return _fold(coef, f, power, self.span)
        if isinstance(f, Neg) and power == int(power):
            return self._factor(f.arg, power, base, coef * (-1.0) ** power, out)
        if isinstance(f, Product) and (power == 1 or not f.summed):
            for g, d in zip(f.factors, f.divide):
                coef = self._factor(g, -power if d else power, base, coef, out)
            return coef
        if isinstance(f, Power):
            return self._factor(f.base, power * f.exponent, base, coef, out)
        if isinstance(f, (Ref, SizeOf)):
            out.append((f, power))
        else:
            out.append((self.operand(f, base), power))
        return coef

    def statement(self, s: Statement) -> None:
        self.span = s.span
        self.lhs = list(ref_index_names(s.target))
        reads = refs_in(s.expr)
        self.shrunk = shrunk(reads, [s.target] if s.op == "+=" else [])
        self.dims = ()
        if self.all_dims:  # (walking the statement for its names costs as much as lowering it)
            used = {n for r in [s.target, *reads] for n in ref_index_names(r)}
            used |= _reduced_names(s.expr) | size_names(s.expr)
            self.dims = tuple((n, k) for n, k in self.all_dims.items() if n in used)
        start = len(self.out)
        if isinstance(s.expr, Call) and s.expr.func in IMPLICIT:
            self.implicit(s, s.expr)
            return
        self.emit(s.target, s.op, s.expr, s.summed, s.target.name)
        if self.shrunk:
            self.out[start:] = [_marked(p, self.shrunk) for p in self.out[start:]]

    def implicit(self, s: Statement, call: Call) -> None:
        """The body lowered on its own, as the right side of `z.f[I] = f` (`z.g` for solve)."""
        start = self.operand(call.args[1], s.target.name) if len(call.args) > 1 else None
        if isinstance(start, Num) and start.value == 0:
            start = None
        result = Ref(self.fresh(s.target.name, "f" if call.func == "fix" else "g"), s.target.indices)
        outer, self.out = self.out, []
        self.emit(result, "=", call.args[0], s.summed, result.name)
        body, self.out = tuple(self.out), outer
        if self.shrunk:
            body = tuple(_marked(q, self.shrunk) for q in body)
        self.out.append(Implicit(s.target, s.op, call.func, body, result, start, call, s.span))


def shrunk(reads: list[Ref], written: list[Ref]) -> set[str]:
    """The index names that these references (of one statement) read both plainly and through a
    one-name shift (`x[r,c]` and `x[r+1,c]`): each ranges where every read is in range, so its plain
    reads are read as shifts by 0 (`x[r+0,c]`), which bound it without fixing its size. A shifted
    write (`y[2*i] += z[i]`) shortens nothing: that would drop what it adds past the end."""
    if all(is_plain(r) for r in reads):  # (known per reference) no shifted read, so nothing shrinks
        return set()
    plain: set[str] = set()
    shifts: set[str] = set()
    for r in [*reads, *written]:
        if r.name == DELTA:  # delta has no extent to keep a read inside
            continue
        for i in [*r.indices, *(j for g in r.indices if isinstance(g, Gather) for j in g.ref.indices)]:
            if isinstance(i, Affine):
                if i.plain is not None:
                    plain.add(i.plain)
                elif (n := shift_name(i)) is not None and r not in written:
                    shifts.add(n)
    return plain & shifts


def _shifted(r: Ref, names: set[str]) -> Ref:
    """r with its plain positions of `names` read as shifts by 0, labels' positions too."""
    if not names or not any(n in names for n in ref_index_names(r)):
        return r

    def at(i: Index) -> Index:
        if isinstance(i, Gather):
            return Gather(_shifted(i.ref, names), i.span)
        if i.plain in names:
            return Affine(i.terms, 0, i.span, shifted=True)
        return i

    return Ref(r.name, tuple(at(i) for i in r.indices), r.span)


def _marked(p: Prim, shrunk: set[str]) -> Prim:
    """p with the plain reads of the shrunk names that two or more of its references (its target
    when it adds into it included) share read as shifts by 0: those reads may be longer than the
    statement's range, and must not fix it. A name one reference alone reads keeps that
    reference's extent, which is the one its statement's derivatives use too."""
    refs = [*prim_refs(p), *([p.out] if p.op == "+=" else [])]
    counts: dict[str, int] = {}
    for r in refs:
        if r.name != DELTA:
            for n in ref_index_names(r):
                counts[n] = counts.get(n, 0) + 1
    names = {n for n in shrunk if counts.get(n, 0) >= 2}
    if not names:
        return p

    def mark(o: Operand) -> Operand:
        return _shifted(o, names) if isinstance(o, Ref) and o.name != DELTA else o

    out = mark(p.out) if p.op == "+=" else p.out
    if isinstance(p, Contract):
        return replace(p, out=out, factors=tuple((mark(f), k) for f, k in p.factors))
    if isinstance(p, Elementwise):
        return replace(p, out=out, args=tuple(mark(a) for a in p.args))
    if isinstance(p, Terms):
        return replace(p, out=out, terms=tuple((c, mark(u)) for c, u in p.terms))
    return replace(p, out=out, arg=mark(p.arg))


def _reduced_names(e: Expr) -> set[str]:
    """The names reductions in e bind."""
    out = set(e.indices) if isinstance(e, Reduce) else set()
    for c in children(e):
        out |= _reduced_names(c)
    return out


def size_names(e: Expr) -> set[str]:
    """The index names whose sizes a number expression reads."""
    if isinstance(e, SizeOf):
        return {e.index}
    return {n for c in children(e) for n in size_names(c)}


def number_value(e: Expr, sizes: dict[str, int]) -> float:
    """The value of an expression without tensors (numbers and sizes) for these index sizes."""
    if isinstance(e, Num):
        return e.value
    if isinstance(e, SizeOf):
        return float(sizes[e.index])
    if isinstance(e, Neg):
        return -number_value(e.arg, sizes)
    if isinstance(e, Power):
        base = number_value(e.base, sizes)
        with np.errstate(all="ignore"):
            return float(np.power(np.float64(base), e.exponent))
    args = [np.float64(number_value(c, sizes)) for c in children(e)]
    with np.errstate(all="ignore"):
        if isinstance(e, Product):
            out = np.float64(1.0)
            for a, d in zip(args, e.divide):
                out = out / a if d else out * a
            return float(out)
        if isinstance(e, Sum):
            return float(sum(a * sign for a, sign in zip(args, e.signs)))
        if isinstance(e, Call):
            return float(FUNCTIONS[e.func].forward(*args))
        if isinstance(e, Compare):
            return float(FUNCTIONS[e.op].forward(*args))
    raise TypeError(f"not a number expression: {e!r}")


def _terms_of(e: Sum, sign: int) -> list[tuple[Expr, int]]:
    """The signed terms of a sum. A parenthesised sum among them stays one term (a temporary),
    unless it holds a `size[k]` term for a k none of its tensors has: that k is the statement's,
    so its terms join the statement's own."""
    out: list[tuple[Expr, int]] = []
    for t, s in zip(e.terms, e.signs):
        inner, s2 = (t.arg, -s) if isinstance(t, Neg) and isinstance(t.arg, Sum) else (t, s)
        if isinstance(inner, Sum) and not _size_terms(inner) <= set(ordered_free(inner)):
            out.extend(_terms_of(inner, sign * s2))
        else:
            out.append((t, sign * s))
    return out


def _sums_each(e: Sum, summed: tuple[str, ...]) -> bool:
    """Whether a sum summed over the names `summed` is better the sum of each term's own sum: the
    same values, without an array over the summed names, when every term has them all and one
    is a product that can sum them itself. (`x[b,j] W[j,i] + z[b,j] V[j,i]` summed over j is two
    matrix products added, not an array over [b,i,j] summed after; the tangent rule writes such
    a sum for every product.)"""
    terms = [t for t, _ in _terms_of(e, 1)]
    return any(map(_is_productish, terms)) and all(set(summed) <= set(ordered_free(t)) for t in terms)


def _size_terms(e: Expr) -> set[str]:
    """Indices of the `size[k]` standing as terms of e, through nested sums and signs."""
    if isinstance(e, SizeOf):
        return {e.index}
    if isinstance(e, Neg):
        return _size_terms(e.arg)
    if isinstance(e, Sum):
        return {k for t in e.terms for k in _size_terms(t)}
    return set()


def _fold(coef: float, f: Num, power: float, span: Span) -> float:
    """coef * f^power, refusing a division by zero or a product of numbers that overflows."""
    place = f.span if f.span.line else span
    if f.value == 0 and power < 0:
        raise IndexgradError("division by zero: this number is 0", place)
    try:
        out = coef * f.value**power
    except OverflowError:
        out = math.inf
    if isinstance(out, complex):
        raise IndexgradError("a negative number to a fractional power is not a real number", place)
    if not math.isfinite(out):
        raise IndexgradError(
            "the numbers in this product multiply to a value beyond floating point range", place
        )
    return out


def _is_productish(e: Expr) -> bool:
    if isinstance(e, (Product, Power)):
        return True
    return isinstance(e, Neg) and not isinstance(e.arg, Sum)


_COMPARE_KINDS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}


def _kind(e: Expr) -> str:
    if isinstance(e, Call):
        return e.func
    if isinstance(e, Compare):
        return _COMPARE_KINDS[e.op]
    if isinstance(e, Reduce):
        return e.op
    if isinstance(e, Sum):
        return "sum"
    if isinstance(e, Power):
        return "pow"
    return "prod"


def e_span(e: Expr) -> Span:
    return getattr(e, "span", NOSPAN)


def lower(program: Program) -> list[Prim]:
    """The primitive statements of a checked program, in order."""
    lw = _Lowerer(program)
    try:
        for s in program.statements:
            lw.statement(s)
    except IndexgradError as e:
        raise e.located(program.filename, program.source) from None
    return lw.out


def prim_refs(p: Prim) -> tuple[Ref, ...]:
    """Tensor operands a primitive reads (not integer labels); kept on the primitive once known."""
    try:
        return p.__dict__["_refs"]
    except KeyError:
        pass
    if isinstance(p, Contract):
        refs = tuple(f for f, _ in p.factors if isinstance(f, Ref))
    elif isinstance(p, Elementwise):
        refs = tuple(a for a in p.args if isinstance(a, Ref))
    elif isinstance(p, Terms):
        refs = tuple(u for _, u in p.terms if isinstance(u, Ref))
    elif isinstance(p, Implicit):
        refs = implicit_reads(p)
    else:
        refs = (p.arg,)
    object.__setattr__(p, "_refs", refs)  # not a field: equality and hashing ignore it
    return refs


def implicit_reads(p: Implicit) -> tuple[Ref, ...]:
    """The tensors an implicit statement reads from outside: its body's inputs but the iterate
    itself, then the start."""
    made = {q.out.name for q in p.body} | {p.out.name}
    refs = tuple(r for q in p.body for r in prim_refs(q) if r.name not in made)
    return refs + ((p.start,) if isinstance(p.start, Ref) else ())


def label_refs(p: Prim) -> list[Ref]:
    """Integer label tensors a primitive reads through gathers (its target's included)."""
    out: list[Ref] = []
    for r in [p.out, *prim_refs(p)]:
        for i in r.indices:
            if isinstance(i, Gather):
                out.append(i.ref)
    return out


__all__ = [
    "Affine",
    "Contract",
    "Elementwise",
    "Implicit",
    "Prim",
    "Reduction",
    "Terms",
    "children",
    "lower",
    "prim_expr",
    "prim_refs",
    "prim_statement",
    "sized_like",
]
