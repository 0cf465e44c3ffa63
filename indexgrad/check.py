"""Program checks: the scoping rule made explicit in the tree, definition order, ranks, names and arities."""

from __future__ import annotations

import re
from dataclasses import replace

from .errors import IndexgradError
from .functions import FUNCTIONS, REDUCTIONS, RESERVED, reserved_kind
from .nodes import (
    Affine,
    Call,
    Expr,
    Gather,
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
    Warning_,
    children,
    ref_index_names,
    refs_in,
    refs_in_statement,
)

_DERIVED = re.compile(r"^(.+)\.(grad|tan)\d*$")


def sized_like(name: str) -> str | None:
    """For a derived name (`x.grad`, `x.tan`, `x.grad2`), the tensor whose shape it has."""
    m = _DERIVED.match(name)
    return m.group(1) if m else None


def free_indices(e: Expr) -> set[str]:
    """Index names e depends on, after the sums attached inside it."""
    if isinstance(e, Ref):
        return set(ref_index_names(e))
    if isinstance(e, (Num, SizeOf)):
        return set()
    if isinstance(e, Product):
        out = set().union(*(free_indices(f) for f in e.factors))
        return out - set(e.summed)
    if isinstance(e, Reduce):
        return free_indices(e.body) - set(e.indices)
    return set().union(*(free_indices(c) for c in children(e))) if children(e) else set()


def _occurrences(e: Expr, bound: frozenset[str] = frozenset()) -> dict[str, int]:
    """How many references mention each free index name (a diagonal `A[i,i]` counts once)."""
    if isinstance(e, Ref):
        return {n: 1 for n in ref_index_names(e) if n not in bound}
    if isinstance(e, Reduce):
        return _occurrences(e.body, bound | frozenset(e.indices))
    out: dict[str, int] = {}
    for c in children(e):
        for n, k in _occurrences(c, bound).items():
            out[n] = out.get(n, 0) + k
    return out


def attach_sums(e: Expr, total: dict[str, int], keep: frozenset[str]) -> Expr:
    """Attach each summed index to the innermost product whose factors hold all its occurrences."""
    return _attach(e, total, keep)[0]


def _attach(e: Expr, total: dict[str, int], keep: frozenset[str]) -> tuple[Expr, dict[str, int]]:
    """attach_sums, also returning `_occurrences(e)`, which attaching sums leaves as it is."""
    t = type(e)
    if t is Ref:
        return e, {n: 1 for n in ref_index_names(e)}  # type: ignore[arg-type]
    if t is Reduce:
        inner = _occurrences(e.body)
        body, _ = _attach(e.body, inner, keep | frozenset(e.indices))
        return Reduce(e.op, e.indices, body, e.span), {n: k for n, k in inner.items() if n not in e.indices}
    if t is Product:
        factors = []
        here: dict[str, int] = {}
        holders: dict[str, int] = {}
        for f in e.factors:
            f2, occ = _attach(f, total, keep)
            factors.append(f2)
            for n, k in occ.items():
                here[n] = here.get(n, 0) + k
                holders[n] = holders.get(n, 0) + 1
        summed = tuple(
            sorted(n for n, k in here.items() if n not in keep and k == total.get(n, 0) and holders[n] >= 2)
        )
        return Product(tuple(factors), e.divide, summed, e.span), here
    kids = children(e)
    if not kids:
        return e, {}
    occ: dict[str, int] = {}
    new = []
    for c in kids:
        c2, o = _attach(c, total, keep)
        new.append(c2)
        for n, k in o.items():
            occ[n] = occ.get(n, 0) + k
    if t is Neg:
        return Neg(new[0], e.span), occ
    if t is Sum:
        return Sum(tuple(new), e.signs, e.span), occ
    if t is Power:
        return Power(new[0], e.exponent, e.span), occ
    assert t is Call
    return Call(e.func, tuple(new), e.span), occ


def _err(msg: str, span: Span) -> IndexgradError:
    return IndexgradError(msg, span)


def _lacking_terms(e: Expr, k: str) -> list[Expr]:
    """Terms added once per value of k although they do not use k (SPEC 1.4's warning)."""
    if isinstance(e, Sum):
        out: list[Expr] = []
        for t in e.terms:
            if k in free_indices(t):
                out.extend(_lacking_terms(t, k))
            else:
                out.append(t)
        return out
    if isinstance(e, Neg):
        return _lacking_terms(e.arg, k)
    if isinstance(e, Product):
        with_k = [f for f in e.factors if k in free_indices(f)]
        return _lacking_terms(with_k[0], k) if len(with_k) == 1 else []
    return []


class _Checker:
    def __init__(self, program: Program) -> None:
        self.p = program
        self.rank: dict[str, tuple[int, Span]] = {}
        self.defined_at: dict[str, Span] = {}
        self.read_at: dict[str, Span] = {}
        self.role: dict[str, tuple[str, Span]] = {}
        self.warnings: list[Warning_] = []
        later = {}
        for s in program.statements:
            later.setdefault(s.target.name, s.span)
        self.first_def = later

    def name(self, r: Ref) -> None:
        base = r.name.split(".")[0]
        if r.name in RESERVED or base in RESERVED:
            kind = reserved_kind(base)
            raise _err(f"'{base}' is a {kind} name and cannot name a tensor; {_usage(base)}", r.span)
        seen = self.rank.get(r.name)
        if seen is None:
            self.rank[r.name] = (len(r.indices), r.span)
        elif seen[0] != len(r.indices):
            raise _err(
                f"'{r.name}' has {_count(len(r.indices))} here but {seen[0]} at "
                f"{seen[1].line}:{seen[1].column}",
                r.span,
            )
        for i in r.indices:
            if isinstance(i, Gather):
                g = i.ref
                self.name(g)
                for j in g.indices:
                    if not (isinstance(j, Affine) and j.plain):
                        raise _err(
                            f"the label tensor '{g.name}' must be indexed by plain index names",
                            j.span or g.span,
                        )
                if g.name in self.defined_at or g.name in self.first_def:
                    raise _err(
                        f"'{g.name}' is used as integer labels, so it must be an input, "
                        "not defined by the program",
                        g.span,
                    )
                if self.role.get(g.name, ("",))[0] == "param":
                    raise _err(f"'{g.name}' holds integer labels and cannot be a param", g.span)

    def decls(self) -> None:
        for d in self.p.decls:
            self.name(d.ref)
            for i in d.ref.indices:
                if not (isinstance(i, Affine) and i.plain):
                    raise _err("a declaration lists plain index names", i.span or d.span)
            old = self.role.get(d.ref.name)
            if old and old[0] != d.role:
                raise _err(
                    f"'{d.ref.name}' is declared {d.role} here but {old[0]} at {old[1].line}:{old[1].column}",
                    d.span,
                )
            self.role[d.ref.name] = (d.role, d.span)

    def expr(self, e: Expr, lhs: set[str], bound: frozenset[str]) -> None:
        if isinstance(e, Ref):
            self.name(e)
            self.read(e)
            return
        if isinstance(e, Call):
            f = FUNCTIONS.get(e.func)
            if f is None:
                if e.func in RESERVED:
                    raise _err(f"'{e.func}' is not called like this; {_usage(e.func)}", e.span)
                known = ", ".join(sorted(FUNCTIONS))
                raise _err(
                    f"unknown function '{e.func}'; known functions: {known}. "
                    f"To multiply '{e.func}' by a group, write {e.func} * (...)",
                    e.span,
                )
            if len(e.args) != f.arity:
                raise _err(
                    f"{e.func} takes {f.arity} argument{'s' if f.arity > 1 else ''}, got {len(e.args)}",
                    e.span,
                )
        if isinstance(e, Reduce):
            if e.op not in REDUCTIONS:
                raise _err(f"unknown reduction '{e.op}'", e.span)
            if len(set(e.indices)) != len(e.indices):
                raise _err(f"{e.op}[...] lists an index twice", e.span)
            body_free = free_indices(attach_sums(e.body, _occurrences(e.body), frozenset()))
            body_free |= set(_occurrences(e.body))
            for k in e.indices:
                if k in lhs:
                    raise _err(
                        f"{e.op}[{k}] reduces over '{k}', which is on the left side; rename the inner index",
                        e.span,
                    )
                if k in bound:
                    raise _err(f"'{k}' is already reduced by an enclosing reduction", e.span)
                if k not in body_free and _reduces(e.body, k):
                    raise _err(
                        f"'{k}' is already reduced inside this {e.op}[{k}](...); "
                        "rename one of the two indices",
                        e.span,
                    )
                if k not in body_free:
                    raise _err(f"{e.op}[{k}] reduces over '{k}', which its body does not use", e.span)
            bound = bound | frozenset(e.indices)
        for c in children(e):
            self.expr(c, lhs, bound)

    def read(self, r: Ref) -> None:
        n = r.name
        if n in self.first_def and n not in self.defined_at:
            sp = self.first_def[n]
            raise _err(f"'{n}' is read here before its definition at {sp.line}:{sp.column}", r.span)
        self.read_at.setdefault(n, r.span)

    def statement(self, s: Statement) -> Statement:
        t = s.target
        self.name(t)
        name = t.name
        if self.role.get(name, ("",))[0] in ("param", "input"):
            role, sp = self.role[name]
            raise _err(
                f"'{name}' is declared {role} at {sp.line}:{sp.column} and cannot be assigned",
                t.span,
            )
        if s.op == "=":
            if name in self.defined_at:
                sp = self.defined_at[name]
                raise _err(
                    f"'{name}' is already defined at {sp.line}:{sp.column}; "
                    f"use '+=' to add to it or choose a new name",
                    t.span,
                )
        if name in self.read_at:
            sp = self.read_at[name]
            raise _err(
                f"'{name}' is assigned after it was read at {sp.line}:{sp.column}; "
                "all '=' and '+=' into a tensor come before its first read",
                t.span,
            )
        lhs: list[str] = []
        for i in t.indices:
            plain = i.plain if isinstance(i, Affine) else None
            if plain is None and s.op == "=":
                raise _err(
                    "the left side of '=' takes plain index names; write index arithmetic on the right side",
                    i.span or t.span,
                )
            if plain is not None and plain in lhs and s.op == "=":
                raise _err(f"index '{plain}' appears twice on the left side", i.span or t.span)
            lhs.extend(i.names() if isinstance(i, Affine) else i.names())
        lhs_set = set(lhs)
        self.expr(s.expr, lhs_set, frozenset())
        if name in self.read_at:
            raise _err(
                f"'{name}' is read on the right side of its own '{s.op}'; all '=' and '+=' into a "
                "tensor come before its first read, so give the new value a new name",
                self.read_at[name],
            )
        for i in t.indices:
            if isinstance(i, Gather):
                self.read(i.ref)
        self.defined_at.setdefault(name, s.span)
        self.read_at.pop(name, None)
        expr, free, summed = _scope(s.expr, lhs_set)
        for k in summed:
            for term in _lacking_terms(expr, k):
                self.warnings.append(
                    Warning_(
                        f"'{k}' is summed over the whole right side, so a term that does not "
                        f"use '{k}' is added once per value of '{k}'; if that is not meant, "
                        f"write sum[{k}](...) around the part to sum",
                        getattr(term, "span", s.span) if getattr(term, "span", None) else s.span,
                    )
                )
                break
        rhs_names = free | set(summed)
        used = lhs_set | {n for r in refs_in(expr) for n in ref_index_names(r)}
        for sz in sizeofs(expr):
            if sz.index not in used:
                raise _err(f"size[{sz.index}] names an index this statement does not use", sz.span)
        _place_sizeofs(expr, lhs_set, top="whole")
        if s.op == "=" or name not in self.defined_before_this:
            for i in t.indices:
                for n in i.names():
                    if n not in rhs_names and sized_like(name) is None and not isinstance(i, Gather):
                        raise _err(
                            f"index '{n}' of '{name}' gets no size: it does not appear on the right side",
                            i.span or t.span,
                        )
        return Statement(s.target, s.op, expr, summed, s.span)

    def run(self) -> Program:
        self.decls()
        out = []
        self.defined_before_this: set[str] = set()
        for s in self.p.statements:
            out.append(self.statement(s))
            self.defined_before_this.add(s.target.name)
        return replace(self.p, statements=tuple(out), warnings=tuple(self.warnings))


def _count(n: int) -> str:
    return f"{n} index" if n == 1 else f"{n} indices"


def _usage(name: str) -> str:
    """How a reserved name is written."""
    if name == "size":
        return "write size[k] for the extent of index k"
    if name in ("max", "min"):
        return f"write {name}(a, b) for the elementwise {name}, or {name}[k](...) to reduce over k"
    if name in REDUCTIONS:
        return f"write {name}[k](...) to reduce over index k"
    return f"call it as {name}(...)"


def _reduces(e: Expr, k: str) -> bool:
    """True when some reduction inside e binds k."""
    if isinstance(e, Reduce) and k in e.indices:
        return True
    return any(_reduces(c, k) for c in children(e))


def sizeofs(e: Expr) -> list[SizeOf]:
    if isinstance(e, SizeOf):
        return [e]
    return [s for c in children(e) for s in sizeofs(c)]


def _place_sizeofs(e: Expr, lhs: set[str], top: str) -> None:
    """size[k] stands where its statement's arrays size k: as a factor next to a tensor indexed by
    k, or, for k on the left side, in the right side itself, in one of its terms, or in a product
    that is the whole right side (`top` is "whole", "term" or "" for deeper)."""

    def refuse(sz: SizeOf) -> IndexgradError:
        return _err(
            f"size[{sz.index}] must be a factor next to a tensor indexed by '{sz.index}' "
            f"(like x[{sz.index}] / size[{sz.index}]), or a term of the right side when "
            f"'{sz.index}' is on the left side",
            sz.span,
        )

    if isinstance(e, SizeOf):
        if not (top and e.index in lhs):
            raise refuse(e)
    elif isinstance(e, Neg):
        _place_sizeofs(e.arg, lhs, top)
    elif isinstance(e, Sum):
        for t in e.terms:
            _place_sizeofs(t, lhs, "term" if top else "")
    elif isinstance(e, Product):
        refs = []
        for f in e.factors:
            while isinstance(f, (Neg, Power)):  # `-x[k]^2 size[k]`: sign and power do not hide x
                f = f.arg if isinstance(f, Neg) else f.base
            if isinstance(f, Ref):
                refs.append(f)
        plain = {n for r in refs for i in r.indices if isinstance(i, Affine) for _, n in i.terms}
        # a term `2 size[k]` stays a term of the statement; any other product becomes a temporary
        others = [d for f, d in zip(e.factors, e.divide) if not isinstance(f, Num)]
        scaled = others == [False]
        by_lhs = top == "whole" or (top == "term" and scaled)
        for f in e.factors:
            base = f
            while isinstance(base, (Neg, Power)):  # `-size[k]^2 x[k]`: the sign and power keep its place
                base = base.arg if isinstance(base, Neg) else base.base
            if isinstance(base, SizeOf):
                if not (base.index in plain or (by_lhs and base.index in lhs)):
                    raise refuse(base)
            else:
                _place_sizeofs(f, lhs, "")
    else:
        for c in children(e):
            _place_sizeofs(c, lhs, "")


def _scope(e: Expr, lhs: set[str]) -> tuple[Expr, set[str], tuple[str, ...]]:
    """The scoping rule: e with its sums attached, its free indices, and what the statement sums."""
    expr = attach_sums(e, _occurrences(e), frozenset(lhs))
    free = free_indices(expr)
    return expr, free, tuple(sorted(free - lhs))


def scoped(program: Program) -> Program:
    """The program with the scoping rule applied and nothing else checked: for statements made
    by a derivation, which `check` accepts (the tests hold derivations to that)."""
    out = []
    for s in program.statements:
        lhs = {n for i in s.target.indices for n in i.names()}
        expr, _, summed = _scope(s.expr, lhs)
        out.append(Statement(s.target, s.op, expr, summed, s.span))
    return replace(program, statements=tuple(out))


def check(program: Program) -> Program:
    """Check a parsed program and return it with every sum attached (SPEC 1.2-1.5)."""
    try:
        return _Checker(program).run()
    except IndexgradError as e:
        raise e.located(program.filename, program.source) from None


def all_refs(program: Program) -> list[Ref]:
    """Every tensor reference of a program, declarations first, then statement by statement
    (labels read in a target's index positions included)."""
    out = [d.ref for d in program.decls]
    for s in program.statements:
        out += [s.target, *refs_in_statement(s)]
    return out
