"""Program checks: the scoping rule made explicit in the tree, definition order, ranks, names and arities."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache

from .errors import IndexgradError
from .functions import CALLS, FUNCTIONS, IMPLICIT, REDUCTIONS, RESERVED, reserved_kind
from .indices import attach_sums, free_indices, occurrences
from .nodes import (
    DELTA,
    MODES,
    Affine,
    Call,
    Compare,
    Decl,
    Expr,
    Gather,
    Neg,
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
    holds_ref,
    plain_names,
    ref_index_names,
    refs_in,
    refs_in_statement,
)
from .positions import axes_of, solve, value_range
from .printer import format_index, format_ref

_DERIVED = re.compile(r"^(.+)\.(grad|tan)\d*$")


@lru_cache(maxsize=1 << 16)  # asked of every statement's target by each sizing pass: one match per name
def sized_like(name: str) -> str | None:
    """For a derived name (`x.grad`, `x.tan`, `x.grad2`), the tensor whose shape it has."""
    m = _DERIVED.match(name)
    return m.group(1) if m else None


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
        self.dims: dict[str, tuple[int, Span]] = {}
        self.current, self.own_read = "", ""  # the statement being checked; why it may not read itself
        later = {}
        for s in program.statements:
            later.setdefault(s.target.name, s.span)
        self.first_def = later

    def name(self, r: Ref, reading: bool = False) -> None:
        if r.name == DELTA and reading:
            self.delta(r)
            return
        refuse_reserved(r)
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
                    if isinstance(j, Gather):
                        raise _err(
                            f"the label tensor '{g.name}' is indexed by index names or their arithmetic, "
                            "not by other labels",
                            j.span or g.span,
                        )
                    if j.mode == "pad":
                        raise _err(
                            "pad(...) reads 0 outside the labels; write clamp(...) or wrap(...) in a "
                            "label's position (0 is a label)",
                            j.span or g.span,
                        )
                    self.position(j, g)
                if g.name in self.defined_at or g.name in self.first_def:
                    raise _err(
                        f"'{g.name}' is used as integer labels, so it must be an input, "
                        "not defined by the program",
                        g.span,
                    )
                if self.role.get(g.name, ("",))[0] == "param":
                    raise _err(f"'{g.name}' holds integer labels and cannot be a param", g.span)
            else:
                self.position(i, r)

    def position(self, i: Affine, r: Ref) -> None:
        """A boundary mode is one of MODES; a position without one never reads below 0."""
        if i.plain is not None:  # one name alone: no mode, and it counts from 0
            return
        place = i.span if i.span.line else r.span
        if i.mode is not None and i.mode not in MODES:
            raise _err(
                f"'{i.mode}(...)' is no boundary mode; an index position reads through "
                "pad(...) (0 outside), clamp(...) (the nearest edge) or wrap(...) (around)",
                place,
            )
        if i.mode is None and _below_zero(i):
            text = format_index(i)
            raise _err(
                f"{format_ref(r)} reads below position 0, for index names count from 0; shift the "
                f"other reads instead (x[r+1] - x[r], not x[r] - x[r-1]), or read through "
                f"pad({text}), clamp({text}) or wrap({text})",
                place,
            )

    def delta(self, r: Ref) -> None:
        """`delta[i,j]`: the identity, read with two positions that hold index arithmetic."""
        if len(r.indices) != 2:
            raise _err(f"delta takes two indices, delta[i,j], got {len(r.indices)}", r.span)
        for i in r.indices:
            if not isinstance(i, Affine) or i.mode is not None:
                # a one-hot product delta[c, y[b]] W[c,d] is the gather W[y[b], d]
                other = r.indices[1 - r.indices.index(i)]
                hint = (
                    f"; to pick entries at the labels, index the tensor by them instead: "
                    f"W[{format_index(i)}, ...] rather than delta[{format_index(other)}, "
                    f"{format_index(i)}] W[{format_index(other)}, ...]"
                    if isinstance(i, Gather)
                    else ""
                )
                raise _err(
                    "delta[i,j] compares index names or their arithmetic; labels and boundary modes "
                    f"do not stand in it{hint}",
                    (i.span if i.span.line else None) or r.span,
                )

    def decls(self) -> None:
        for d in self.p.decls:
            if d.role == "dim":
                self.dim(d)
                continue
            if d.ref.name == DELTA:
                raise _err("'delta' is the identity, delta[i,j], and needs no declaration", d.ref.span)
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

    def dim(self, d: Decl) -> None:
        name = d.ref.name
        if "." in name:
            raise _err(f"'{name}' is no index name: an index name has no dots", d.ref.span)
        old = self.dims.get(name)
        if old is not None and old[0] != d.size:
            raise _err(
                f"'{name}' is declared dim {name}={d.size} here but {name}={old[0]} at "
                f"{old[1].line}:{old[1].column}",
                d.span,
            )
        self.dims[name] = (d.size, d.span)

    def expr(self, e: Expr, lhs: set[str], bound: frozenset[str]) -> None:
        if isinstance(e, Ref):
            self.name(e, reading=True)
            if e.name != DELTA:
                self.read(e)
            return
        if isinstance(e, Call):
            f = FUNCTIONS.get(e.func) if e.func in CALLS else None
            if e.func in IMPLICIT:
                raise _err(
                    f"{e.func}(...) must be the whole right side of a statement, as in "
                    f"z[b,i] = {e.func}(...); give its value a name of its own",
                    e.span,
                )
            if f is None:
                if e.func in RESERVED:
                    raise _err(f"'{e.func}' is not called like this; {_usage(e.func)}", e.span)
                known = ", ".join(CALLS)
                spelled = SPELLED.get(e.func.lower())
                raise _err(
                    f"unknown function '{e.func}'; "
                    + (f"write it out: {spelled}. Known functions: " if spelled else "known functions: ")
                    + f"{known}. To multiply '{e.func}' by a group, write {e.func} * (...)",
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
            _, body_free = attach_sums(e.body, frozenset())
            body_free |= set(occurrences(e.body))
            for k in e.indices:
                if k in lhs:
                    raise _err(
                        f"{e.op}[{k}] reduces over '{k}', which is on the left side; rename the inner index",
                        e.span,
                    )
                if k in bound:
                    raise _err(f"'{k}' is already reduced by an enclosing reduction", e.span)
                if k not in body_free and _binder(e.body, k) is not None:
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
        if n == self.current and n not in self.defined_at:
            raise _err(self.own_read, r.span)
        if n in self.first_def and n not in self.defined_at:
            sp = self.first_def[n]
            raise _err(f"'{n}' is read here before its definition at {sp.line}:{sp.column}", r.span)
        self.read_at.setdefault(n, r.span)

    def statement(self, s: Statement) -> Statement:
        t = s.target
        self.name(t)
        name = t.name
        self.current = name
        self.own_read = (
            f"'{name}' is read on its own right side; a tensor defined through itself is an implicit "
            f"layer: write {name}[...] = fix(f) (f's fixed point) or {name}[...] = solve(g, start) (g's root)"
        )
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
        if isinstance(s.expr, Call) and s.expr.func in IMPLICIT:
            return self.implicit(s, s.expr, lhs_set)
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
        self.warn_inside_calls(expr, summed, s.span)
        used = lhs_set | {n for r in refs_in(expr) for n in ref_index_names(r)}
        for sz in sizeofs(expr):
            if sz.index not in used and sz.index not in self.dims:  # `dim` sizes k in every statement
                raise _err(
                    f"size[{sz.index}] names an index this statement does not use; use '{sz.index}' "
                    f"in it, or give '{sz.index}' one extent in the whole program with `dim {sz.index}=...`",
                    sz.span,
                )
        self.warn_bare_index_names(expr, used, s.span)
        _place_numbers(expr, set(self.dims), lhs_set)
        self.sizes(s, expr)
        return Statement(s.target, s.op, expr, summed, s.span)

    def warn_inside_calls(self, expr: Expr, summed: tuple[str, ...], span: Span) -> None:
        """SPEC 9: a whole-right-side sum over an index that occurs only inside a call sums the
        call's value (`log(exp(x[b,k]))` is the sum over k of log(exp(x[b,k])))."""
        for k in summed:
            call = _only_inside_call(expr, k)
            if call is not None and call is not _NO_K and not any(w.span == call.span for w in self.warnings):
                f = call.func
                self.warnings.append(
                    Warning_(
                        f"'{k}' occurs only inside {f}(...), and is summed over the whole right side: "
                        f"this adds {f}(...) once per value of '{k}'; to sum inside the call write "
                        f"{f}(sum[{k}](…)), or write sum[{k}]({f}(…)) to keep this meaning",
                        call.span if call.span.line else span,
                    )
                )

    def warn_bare_index_names(self, expr: Expr, used: set[str], span: Span) -> None:
        """A bare name that is also an index of its statement reads a scalar tensor, not the index
        (`eq(n, m)` compares two scalar inputs n and m); unless it is declared, say so. Likewise
        for a constant's name (`-inf` in a mask reads an input called inf), and a reduction the
        language does not have (`prod[k](x[k])` multiplies x[k] by an input called prod)."""
        for r in refs_in(expr):
            known = r.name in self.role or r.name in self.defined_before_this
            if r.indices and r.name in OTHER_REDUCTIONS and not known:
                self.warnings.append(
                    Warning_(
                        f"'{r.name}[...]' reads an input tensor named {r.name}, not a reduction (the "
                        f"language reduces with {', '.join(REDUCTIONS)}): write {OTHER_REDUCTIONS[r.name]}, "
                        f"or declare it (input {r.name})",
                        r.span if r.span.line else span,
                    )
                )
            if not r.indices and r.name in CONSTANTS and not known:
                self.warnings.append(
                    Warning_(
                        f"'{r.name}' reads a scalar input named {r.name}, not a number (the language has "
                        f"none by that name): write {CONSTANTS[r.name]}, or declare it (input {r.name})",
                        r.span if r.span.line else span,
                    )
                )
            if not r.indices and r.name in used and r.name not in self.role:
                self.warnings.append(
                    Warning_(
                        f"'{r.name}' is an index name of this statement, but '{r.name}' alone reads a "
                        f"scalar tensor named {r.name}, not the index; for 1 where {r.name} equals "
                        f"another index write delta[{r.name},...], for its extent size[{r.name}]; to "
                        f"mean the scalar, declare it (input {r.name}) or give it another name",
                        r.span if r.span.line else span,
                    )
                )

    def sizes(self, s: Statement, expr: Expr) -> None:
        """SPEC 9: every index of the statement gets a size from what it reads, a `dim`, or index
        arithmetic (the rules of positions.solve), so that nothing is found unsized at run time."""
        t = s.target
        # the target has extents when a '+=' adds into it, or it is a gradient or tangent (N's shape)
        known = (s.op == "+=" and t.name in self.defined_before_this) or sized_like(t.name) is not None
        axes = []
        for r in [*refs_in(expr), *(i.ref for i in t.indices if isinstance(i, Gather))]:
            axes += axes_of(r, None if r.name == DELTA else [None] * len(r.indices), s.span)
        if known:
            axes += axes_of(t, [None] * len(t.indices), s.span, written=True)
        self.solved.append((s, expr, axes))
        unsized = self.unsized_names(s, expr, axes, set())
        if unsized:
            plain = {i.plain for i in t.indices if isinstance(i, Affine)}
            if s.op == "=" and set(unsized) <= plain:  # a later statement that reads t may size them
                self.pending.append(len(self.solved) - 1)
            else:
                raise self.unsized(unsized[0], s, expr)
        if s.op == "+=" and not known:  # it defines t: each axis as far as it writes
            for i in t.indices:
                if isinstance(i, Gather) or i.mode is not None:
                    what = "labels" if isinstance(i, Gather) else f"{i.mode}(...)"
                    raise _err(
                        f"this '+=' defines '{t.name}', whose extent along a position written through "
                        f"{what} is not known; define '{t.name}' first, or write a product with "
                        "delta[c, ...] over an index c that `dim` sizes",
                        i.span or t.span,
                    )

    def unsized_names(self, s: Statement, expr: Expr, axes: list, given: set[str]) -> list[str]:
        """The index names of s that its axes, `dim` and `given` leave unsized: the names only the
        right side has first (they are the ones to declare), then the left side's."""
        size: dict[str, int | None] = {n: None for n in [*self.dims, *given]}
        solve(axes, size, set(self.dims), lambda n, extent, ax: size.setdefault(n, None))
        lhs = [n for i in s.target.indices for n in i.names()]
        wanted: dict[str, None] = {}
        for r in refs_in(expr):
            for n in ref_index_names(r):
                wanted.setdefault(n, None)
        for n in _reduced(expr):
            wanted.setdefault(n, None)
        return [n for n in [*(n for n in wanted if n not in lhs), *lhs] if n not in size]

    def sized_by_later_reads(self) -> None:
        """The language's one reach across statements: an index of a tensor's definition that the
        definition leaves unsized (`t[j,k] = tanh(x[j+k])`) takes its size from a later statement
        that reads t with a plain name there which another of its arrays, or a `dim`, sizes
        (`y[j] = t[j,k] w[k]`); the executor finds it the same way."""
        for k in self.pending:
            s, expr, axes = self.solved[k]
            t = s.target
            given: set[str] = set()
            for _, later, _ in self.solved[k + 1 :]:
                reads = refs_in(later)
                others = [x for x in reads if x.name not in (t.name, DELTA)]
                sized = set(self.dims) | {i.plain for x in others for i in x.indices if isinstance(i, Affine)}
                for r in reads:
                    for axis, i in enumerate(r.indices if r.name == t.name else ()):
                        if isinstance(i, Affine) and i.plain in sized:
                            given.add(t.indices[axis].plain)  # type: ignore[union-attr, arg-type]
            unsized = self.unsized_names(s, expr, axes, given)
            if unsized:
                raise self.unsized(unsized[0], s, expr)

    def unsized(self, n: str, s: Statement, expr: Expr) -> IndexgradError:
        """Why index n of statement s gets no size, and what to write."""
        t = s.target
        reads = [r for r in refs_in(expr) if n in ref_index_names(r)]
        hint = f"declare its extent with `dim {n}=...`"
        if not reads:
            where = next((i for i in t.indices if n in i.names()), None)
            bare = any(r.name == n and not r.indices for r in refs_in(expr))
            note = f" (a bare '{n}' there reads a scalar tensor named {n}, not the index)" if bare else ""
            return _err(
                f"index '{n}' of '{t.name}' gets no size: it does not appear on the right side{note}; "
                f"use it there, or {hint}",
                (where.span if where is not None and where.span.line else None) or t.span,
            )
        r = reads[0]
        if all(x.name == DELTA for x in reads):
            return _err(
                f"index '{n}' gets no size: delta[i,j] compares indices but does not size them; "
                f"read a tensor indexed by '{n}', or {hint}",
                r.span,
            )
        for x in reads:
            for i in x.indices:
                if isinstance(i, Affine) and n in i.names() and i.plain is None:
                    text = format_ref(x)
                    if i.mode is not None:
                        why = (
                            f"{i.mode}(...) gives its axis's extent to one unknown index, "
                            "a term with a positive coefficient"
                        )
                    elif n not in {m for _, m in i.terms}:
                        why = f"'{n}' is inside '//' or '%', which read in range for many values of '{n}'"
                    elif any(n in f.names() for _, f in i.parts):
                        why = f"'{n}' is both a term and inside '//' or '%', which sizes it nowhere"
                    elif i.names() == (n,):
                        why = f"a position gives its index a size only where '{n}' has a positive coefficient"
                    else:
                        others = [m for m in i.names() if m != n]
                        why = (
                            "index arithmetic sizes one unknown index of a position at a time, and here "
                            + " and ".join(f"'{m}'" for m in [n, *others])
                            + " have no other size"
                        )
                    return _err(f"index '{n}' gets no size: in {text}, {why}; {hint}", x.span)
        return _err(f"index '{n}' gets no size; {hint}", r.span)

    def implicit(self, s: Statement, call: Call, lhs: set[str]) -> Statement:
        """`z[I] = fix(f)`, `fix(f, start)` or `solve(g, start)` (SPEC 11): f is read as the right
        side of `z[I] = f`, in which z may occur (with plain index names); start only uses I."""
        name = s.target.name
        fix = call.func == "fix"
        want = "1 or 2 arguments: fix(f) or fix(f, start)" if fix else "2 arguments: solve(g, start)"
        if len(call.args) not in ((1, 2) if fix else (2,)):
            raise _err(f"{call.func} takes {want}", call.span)
        if s.op != "=":
            raise _err(f"{call.func}(...) defines its tensor: write {name}[...] = {call.func}(...)", s.span)
        start = None
        if len(call.args) == 2:
            self.own_read = f"the start of {call.func}(...) cannot read '{name}', the tensor it starts"
            self.expr(call.args[1], lhs, frozenset())
            start, _, summed = _scope(call.args[1], lhs)
            if summed:
                raise _err(
                    f"the start of {call.func}(...) is '{name}''s first value, so it uses only the left "
                    f"side's indices ({', '.join(ref_index_names(s.target)) or 'none'}); "
                    f"it also uses {', '.join(summed)}",
                    call.args[1].span if call.args[1].span.line else call.span,
                )
        self.defined_at[name] = s.span  # the body reads the iterate
        self.expr(call.args[0], lhs, frozenset())
        for r in refs_in(call.args[0]):
            if r.name == name and plain_names(r) is None:
                raise _err(
                    f"inside {call.func}(...), '{name}' is read with distinct plain index names "
                    f"(like {name}[{','.join(f'i{k}' for k in range(len(r.indices)))}])",
                    r.span,
                )
        self.read_at.pop(name, None)
        body, free, summed = _scope(call.args[0], lhs)
        _place_numbers(body, set(self.dims), lhs)
        for i in s.target.indices:
            for n in i.names():
                if n not in free | set(summed):
                    raise _err(
                        f"index '{n}' of '{name}' gets no size: it does not appear in {call.func}(...)",
                        i.span or s.target.span,
                    )
        self.sized_without(s.target, call)
        args = (body,) if start is None else (body, start)
        out = Statement(s.target, s.op, Call(call.func, args, call.span), summed, s.span)
        self.sizes(out, out.expr)  # every index sized by what f and the start read
        return out

    def sized_without(self, z: Ref, call: Call) -> None:
        """Each index of z must get its size from a tensor other than z that f or the start reads
        (or a `dim`), directly or through a reference to z that ties it to such an index."""
        lhs = ref_index_names(z)
        refs = [r for a in call.args for r in refs_in(a)]
        sized = set(self.dims) | {n for r in refs if r.name != z.name for n in ref_index_names(r)}
        ties = [plain_names(r) or () for r in refs if r.name == z.name]
        grew = True
        while grew:
            grew = False
            for names in ties:
                for own, n in zip(lhs, names):
                    if (own in sized) != (n in sized):
                        sized |= {own, n}
                        grew = True
        for i, n in zip(z.indices, lhs):
            if n not in sized:
                raise _err(
                    f"index '{n}' of '{z.name}' gets its size only from '{z.name}' itself; "
                    f"{call.func}(...) or its start must read a tensor indexed by '{n}'",
                    i.span or z.span,
                )

    def run(self) -> Program:
        self.decls()
        out = []
        self.defined_before_this: set[str] = set()
        self.solved: list[tuple[Statement, Expr, list]] = []
        self.pending: list[int] = []
        for s in self.p.statements:
            out.append(self.statement(s))
            self.defined_before_this.add(s.target.name)
        self.sized_by_later_reads()
        return replace(self.p, statements=tuple(out), warnings=tuple(self.warnings))


def _count(n: int) -> str:
    return f"{n} index" if n == 1 else f"{n} indices"


# names a user may read as numbers, and what to write instead
CONSTANTS = {
    "inf": "a large number (-1e30 as a mask's -infinity) or pass an additive mask array holding -inf",
    "pi": "3.141592653589793",
}

# reductions other notations have (Tullio's (*), (&), (|); numpy's prod, any, all), written here
OTHER_REDUCTIONS = {
    "prod": "exp(sum[k](log(x[k]))) for a product of positive x[k]",
    "any": "max[k](x[k] > 0) for 1 where some x[k] > 0",
    "all": "min[k](x[k] > 0) for 1 where every x[k] > 0",
}

# layers people call by name, and how the language writes them (for x[i] and a softmax over c)
SPELLED = {
    "softmax": "exp(z[b,c] - logsumexp[k](z[b,k])) is a softmax over c",
    "log_softmax": "z[b,c] - logsumexp[k](z[b,k]) is a log-softmax over c",
    "logsoftmax": "z[b,c] - logsumexp[k](z[b,k]) is a log-softmax over c",
    "gelu": "0.5 x[i] (1 + erf(x[i] / sqrt(2)))",
    "silu": "x[i] sigmoid(x[i])",
    "swish": "x[i] sigmoid(x[i])",
    "elu": "where(x[i] > 0, x[i], exp(x[i]) - 1)",
    "leaky_relu": "max(x[i], 0.01 x[i])",
    "logsigmoid": "-softplus(-x[i])",
    "log1p": "log(1 + x[i])",
    "pow": "x[i]^2 (a numeric exponent)",
    "square": "x[i]^2",
    "rsqrt": "x[i]^-0.5",
    "erfc": "1 - erf(x[i])",
    "mish": "x[i] tanh(softplus(x[i]))",
    "relu6": "min(relu(x[i]), 6)",
    "hardtanh": "max(-1, min(1, x[i]))",
    "hardsigmoid": "max(0, min(1, x[i] / 6 + 0.5))",
    "hardswish": "x[i] max(0, min(6, x[i] + 3)) / 6",
    "softsign": "x[i]/(1 + abs(x[i]))",
    "expm1": "exp(x[i]) - 1",
    "clip": "max(-1, min(1, x[i])) (x clipped to [-1, 1])",
    # Julia's (Tullio.jl) and Tensor Comprehensions' spellings
    "abs2": "x[i]^2",
    "cbrt": "sign(x[i]) abs(x[i])^0.3333333333333333",
    "fmax": "max(x[i], 0) (the larger of two values)",
    "fmin": "min(x[i], 0) (the smaller of two values)",
    "ifelse": "where(x[i] > 0, x[i], 0)",
}


def refuse_reserved(r: Ref) -> None:
    """A tensor may not take the name of a function, a reduction, a boundary mode or `delta`."""
    base = r.name.split(".")[0]
    if r.name in RESERVED or base in RESERVED:
        kind = reserved_kind(base)
        raise _err(f"'{base}' is a {kind} name and cannot name a tensor; {_usage(base)}", r.span)


def _usage(name: str) -> str:
    """How a reserved name is written."""
    if name == "size":
        return "write size[k] for the extent of index k"
    if name in ("max", "min"):
        return f"write {name}(a, b) for the elementwise {name}, or {name}[k](...) to reduce over k"
    if name in REDUCTIONS:
        return f"write {name}[k](...) to reduce over index k"
    if name in MODES:
        values = "; to clamp values write max(-1, min(1, x[i]))" if name == "clamp" else ""
        return f"{name}(...) is a boundary mode of an index position, as in x[{name}(r+u-1)]{values}"
    if name == DELTA:
        return "delta[i,j] is the identity: 1 where i equals j, else 0"
    if name in ("fix", "solve"):
        return f"write z[...] = {name}(...) for an implicit layer"
    return f"call it as {name}(...)"


def _binder(e: Expr, k: str) -> Reduce | None:
    """The first reduction in e that binds k."""
    if isinstance(e, Reduce) and k in e.indices:
        return e
    return next((r for c in children(e) if (r := _binder(c, k)) is not None), None)


def sizeofs(e: Expr) -> list[SizeOf]:
    if isinstance(e, SizeOf):
        return [e]
    return [s for c in children(e) for s in sizeofs(c)]


def _is_number(e: Expr) -> bool:
    """e holds no tensor: numbers and sizes, combined by arithmetic and functions."""
    return not holds_ref(e)


def _reduced(e: Expr) -> list[str]:
    if isinstance(e, Reduce):
        return list(e.indices) + _reduced(e.body)
    return [n for c in children(e) for n in _reduced(c)]


def _place_numbers(
    e: Expr,
    fixed: set[str],
    lhs: set[str],
    top: bool = True,
    outer: frozenset[str] = frozenset(),
    whole: Expr | None = None,
) -> None:
    """size[k] stands wherever a number can, as long as the primitive statement it lands in sizes
    k: each part of e that holds no tensor (`sqrt(size[e])`) must stand next to something indexed
    by k (a factor of its product, a term of its sum, an argument of its call), or k is `dim`-sized,
    or it stands in the whole right side's product (or is all of it) and k is on the left side."""
    whole = e if whole is None else whole  # the right side, whose reductions the message names
    kids = children(e)
    if top and _is_number(e):
        missing = {sz.index for sz in sizeofs(e)} - fixed - lhs
        if missing:
            raise _misplaced(next(sz for sz in sizeofs(e) if sz.index in missing), whole)
        return
    if isinstance(e, (Product, Sum, Call, Compare)):
        numbers = [_is_number(c) for c in kids]
        if not any(numbers) and not any(_sizes_inside(c) for c in kids):
            return
        free = [set() if number else free_indices(c) for c, number in zip(kids, numbers)]
        counts: dict[str, int] = {}
        for f in free:
            for n in f:
                counts[n] = counts.get(n, 0) + 1
        around = set(e.summed) | (lhs if top else set()) if isinstance(e, Product) else set()
        if isinstance(e, Sum):  # a sum's terms join the sum around it (lowering's _terms_of)
            around = outer | (lhs if top else set())
        for c, number, mine in zip(kids, numbers, free):
            have = {n for n, k in counts.items() if k > (n in mine)} | around  # the other kids'
            if not number:
                inner = c.arg if isinstance(c, Neg) else c
                into = frozenset(have) if isinstance(e, Sum) and isinstance(inner, Sum) else frozenset()
                _place_numbers(c, fixed, lhs, False, into, whole)
                continue
            missing = {sz.index for sz in sizeofs(c)} - fixed - have
            if missing:
                raise _misplaced(next(sz for sz in sizeofs(c) if sz.index in missing), whole)
        return
    neg = isinstance(e, Neg)
    for c in kids:
        _place_numbers(c, fixed, lhs, top and neg, outer if neg else frozenset(), whole)


def _sizes_inside(e: Expr) -> bool:
    return isinstance(e, SizeOf) or any(_sizes_inside(c) for c in children(e))


def _misplaced(sz: SizeOf, whole: Expr) -> IndexgradError:
    k = sz.index
    binder = _binder(whole, k)
    if binder is not None:  # two reductions may bind k to two extents, so outside them k has none
        over = ",".join(binder.indices)
        return _err(
            f"size[{k}] stands outside {binder.op}[{over}](...), the reduction that binds '{k}', so "
            f"'{k}' has no extent here; write it inside: {binder.op}[{over}](... / size[{k}])"
            + (f", or mean[{over}](...) for a mean" if binder.op == "sum" else "")
            + f", or give '{k}' one extent in the whole program with `dim {k}=...`",
            sz.span,
        )
    return _err(
        f"size[{k}] must stand next to something indexed by '{k}' (like x[{k}] / sqrt(size[{k}]), "
        f"or inside sum[{k}](...) when '{k}' is summed there), or '{k}' must be sized by `dim {k}=...`",
        sz.span,
    )


def _only_inside_call(e: Expr, k: str) -> Call | None:
    """The outermost call holding every occurrence of k in e, when no occurrence is outside calls."""
    if isinstance(e, Call):
        return e if any(k in ref_index_names(r) for r in refs_in(e)) else _NO_K
    if isinstance(e, Ref):
        return None if k in ref_index_names(e) else _NO_K
    if isinstance(e, Reduce) and k in e.indices:
        return _NO_K
    found: Call | None = _NO_K
    for c in children(e):
        inner = _only_inside_call(c, k)
        if inner is None:
            return None
        if inner is not _NO_K:
            if found is not _NO_K:
                return found  # in two calls: the first one shows the point
            found = inner
    return found


_NO_K = Call("", ())  # marks a subexpression without k


def _below_zero(i: Affine) -> bool:
    """A position without a boundary mode whose value is below 0 where all its names are 0: it
    reads outside its array whatever the sizes (negative coefficients are checked with sizes)."""
    return value_range(i, {n: 1 for n in i.names()})[0] < 0


def _scope(e: Expr, lhs: set[str]) -> tuple[Expr, set[str], tuple[str, ...]]:
    """The scoping rule: e with its sums attached, its free indices, and what the statement sums."""
    expr, free = attach_sums(e, frozenset(lhs))
    return expr, free, tuple(sorted(free - lhs))


def scoped(program: Program) -> Program:
    """The program with the scoping rule applied and nothing else checked: for statements made
    by a derivation, which `check` accepts (the tests hold derivations to that)."""
    out = []
    for s in program.statements:
        lhs = set(ref_index_names(s.target))
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
