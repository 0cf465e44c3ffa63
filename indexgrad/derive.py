"""Derivation: the swap rule (reverse mode), the tangent rule (forward mode) and the implicit function
theorem for fix and solve, program to program."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .check import check, scoped, sized_like, sizeofs
from .errors import IndexgradError
from .functions import FUNCTIONS
from .gcpause import gc_paused
from .indices import attach_sums
from .lower import (
    Contract,
    Elementwise,
    Implicit,
    Prim,
    Reduction,
    Terms,
    lower,
    num,
    powered,
    prim_refs,
    prim_statement,
    product,
    sum_of,
)
from .nodes import (
    Affine,
    Call,
    Decl,
    Expr,
    Gather,
    Index,
    Num,
    Power,
    Product,
    Program,
    Reduce,
    Ref,
    SizeOf,
    Statement,
    Sum,
    idx,
    map_expr,
    plain_names,
    ref_index_names,
    refs_in,
    refs_in_statement,
)
from .shapes import axis_classes
from .syntax import as_program


def derived_names(program: Program, suffix: str) -> dict[str, str]:
    """`x` -> `x.grad` (or `x.grad2`, ... when the program already uses that name)."""
    taken = set(program.inputs()) | set(program.defined())
    out: dict[str, str] = {}
    for n in [*program.inputs(), *program.defined()]:
        cand, k = n + suffix, 2
        while cand in taken:
            cand, k = f"{n}{suffix}{k}", k + 1
        taken.add(cand)
        out[n] = cand
    return out


def grad_name(program: Program, name: str) -> str:
    return derived_names(program, ".grad").get(name, name + ".grad")


def tan_name(program: Program, name: str) -> str:
    return derived_names(program, ".tan").get(name, name + ".tan")


def _renamed(r: Ref, names: dict[str, str]) -> Ref:
    return Ref(names[r.name], r.indices, r.span)


def _tan(names: dict[str, str], r: Ref) -> Ref:
    return Ref(names[r.name], r.indices, r.span)


def _fresh_index(k: str, used: set[str]) -> str:
    n = 2
    while f"{k}{n}" in used:
        n += 1
    used.add(f"{k}{n}")
    return f"{k}{n}"


def _ties(p: Reduction, taken: set[str] | None) -> tuple[Expr, list[Statement]]:
    """How many entries share a max (min), and the statements that make it.

    With the tensor names `taken`, it is a statement of its own, `y.ties[r] = sum[u](eq(x[2*r+u],
    y[r]))`, whose indices are sized as in the max's own statement. Without (inside an implicit
    layer's body, whose adjoint is composed into one expression), it is a sum over fresh copies
    of the reduced indices, written in place: a copy of an index that `dim` sizes has no size of
    its own and takes the valid extent, which is wrong where the windows do not tile the axis."""
    inner, fresh = p.arg, []
    if taken is None:
        used = set(ref_index_names(p.arg)) | set(ref_index_names(p.out)) | {p.arg.name, p.out.name}
        for k in p.indices:
            fresh.append(_fresh_index(k, used))
            inner = _rename(inner, k, fresh[-1])
    count = Reduce("sum", tuple(fresh) or p.indices, Call("eq", (inner, p.out)))
    if taken is None:
        return count, []
    ties = Ref(_fresh(p.out.name + ".ties", taken), tuple(idx(n) for n in ref_index_names(p.out)))
    return ties, [Statement(ties, "=", count, (), p.span)]


def _rename(r: Ref, old: str, new: str) -> Ref:
    def fix(i):  # type: ignore[no-untyped-def]
        if isinstance(i, Affine):
            return i.renamed(lambda n: new if n == old else n)
        return replace(i, ref=_rename(i.ref, old, new))

    return replace(r, indices=tuple(fix(i) for i in r.indices))


def swap(p: Prim, wants: set[str], names: dict[str, str], taken: set[str] | None = None) -> list[Statement]:
    """The swap rule for one primitive: one `+=` statement per operand occurrence that needs a
    gradient, after the count of a max's ties as a tensor of its own when `taken` holds the
    tensor names it must not use (see `_ties`)."""
    if isinstance(p, Implicit):  # the implicit function theorem (below)
        return swap_implicit(p, wants, names)
    g = _renamed(p.out, names)
    out: list[Statement] = []

    def emit(a: Ref, expr: Expr) -> None:
        if isinstance(expr, Num) and expr.value == 0:
            return  # x^0 adds nothing to x's gradient (and `y.grad[b%2] += 0` could not be sized)
        out.append(Statement(_renamed(a, names), "+=", expr, (), p.span))

    if isinstance(p, Contract):
        for m, (a, k) in enumerate(p.factors):
            if not isinstance(a, Ref) or a.name not in wants:
                continue
            rest = [powered(f, e) for n, (f, e) in enumerate(p.factors) if n != m]
            mine, power = ([powered(a, k - 1)], [Num(k)]) if k != 1 else ([], [])
            emit(a, product([g, *mine, *rest, *power], p.coef))
    elif isinstance(p, Terms):
        for c, a in p.terms:
            if isinstance(a, Ref) and a.name in wants:
                emit(a, product([g], c))
    elif isinstance(p, Elementwise):
        f = FUNCTIONS[p.func]
        derivs = f.derivative(*p.args, p.out)
        for a, d in zip(p.args, derivs):
            if isinstance(a, Ref) and a.name in wants and d is not None:
                emit(a, product([g, d]))
    elif isinstance(p, Reduction):
        a = p.arg
        if a.name in wants:
            if p.reducer == "mean":
                emit(a, product([g, *(Power(SizeOf(k), -1) for k in p.indices)]))
            elif p.reducer == "logsumexp":
                emit(a, product([g, Call("exp", (Sum((a, p.out), (1, -1)),))]))
            else:  # max and min route to the arg-max, ties share equally
                count, made = _ties(p, taken)
                out.extend(made)
                emit(a, product([g, Call("eq", (a, p.out)), Power(count, -1)]))
    return out


# the statements `derivative_reads` swapped, by id of the primitive (each entry holds its primitive,
# so that no other object can take the id)
Swaps = dict[int, tuple[Prim, list[Statement]]]


def _swapped(
    p: Prim, wants: set[str], names: dict[str, str], taken: set[str], swaps: Swaps
) -> list[Statement]:
    """swap(p, wants, names, taken), taken from what `derivative_reads` swapped for every operand
    when that is the same: the statements of the operands wanted, all named `x.grad`, and no
    implicit layer, max or min (whose statements depend on `wants` or `taken`)."""
    hit = swaps.get(id(p))
    if (
        hit is None
        or hit[0] is not p
        or isinstance(p, Implicit)
        or (isinstance(p, Reduction) and p.reducer in ("max", "min"))
        or any(names.get(r.name) != r.name + ".grad" for r in (p.out, *prim_refs(p)))
    ):
        return swap(p, wants, names, taken)
    return [st for st in hit[1] if st.target.name[: -len(".grad")] in wants]


def relevant_names(prims: list[Prim], loss: str, sources: set[str]) -> set[str]:
    """Names on a path from one of `sources` to `loss`: those that need a gradient."""
    reaches_loss = {loss}
    for p in reversed(prims):
        if p.out.name in reaches_loss:
            reaches_loss.update(r.name for r in prim_refs(p))
    from_sources = set(sources)
    for p in prims:
        if any(r.name in from_sources for r in prim_refs(p)):
            from_sources.add(p.out.name)
    return reaches_loss & from_sources


def default_loss(program: Program) -> str:
    names = program.defined()
    if not names:
        raise IndexgradError(
            "the program defines nothing, so there is no loss to differentiate", filename=program.filename
        )
    return program.statements[-1].target.name


def defined_loss(program: Program, loss: str | None) -> str:
    """`loss`, which must be a tensor the program defines; the last one defined when None."""
    if loss is None:
        return default_loss(program)
    if loss not in program.defined():
        raise IndexgradError(
            f"loss '{loss}' is not defined by the program; defined tensors: "
            + (", ".join(program.defined()) or "none")
        )
    return loss


def wrt_names(wrt: str | list[str] | tuple[str, ...] | None, what: str = "wrt") -> list[str] | None:
    """`wrt` (or another argument `what` naming tensors) as a list of names: one name, or several
    separated by commas, may come as a string."""
    if isinstance(wrt, str):
        return [w.strip() for w in wrt.split(",") if w.strip()]
    if wrt is None:
        return None
    if not isinstance(wrt, (list, tuple)):
        raise IndexgradError(f"{what} must be a name or a list of names, not {type(wrt).__name__}")
    for w in wrt:
        if not isinstance(w, str):
            raise IndexgradError(f"{what} must list names as strings, not {type(w).__name__}")
    return list(wrt)


def derive(program: Program, loss: str | None = None, wrt: list[str] | None = None) -> Program:
    """The reverse-mode program: gradient statements by the swap rule, in reverse order (SPEC 2.2)."""
    return derive_for(as_program(program, "derive"), [loss] if loss else [], wrt_names(wrt))


def derive_for(
    program: Program,
    losses: list[str],
    wrt: list[str] | None,
    prims: list[Prim] | None = None,
    validate: bool = True,
    swaps: Swaps | None = None,
) -> Program:
    """The vector-Jacobian program for seeds on `losses` (the last defined tensor when empty).

    `prims`, when given, are `lower(program)` already made, and `swaps` what `derivative_reads`
    swapped of them. With `validate`, the derived program passes the whole check (a failure is
    an internal error); without, only its sums are attached.
    """
    with gc_paused():
        prims = lower(program) if prims is None else prims
        derived = _derive_for(program, losses, wrt, prims, swaps or {})
        return _recheck(derived, program) if validate else scoped(derived)


def _derive_for(
    program: Program, losses: list[str], wrt: list[str] | None, prims: list[Prim], swaps: Swaps
) -> Program:
    losses, sources = _loss_and_sources(program, losses, wrt)
    names = derived_names(program, ".grad")
    _name_temporaries(names, prims, program, ".grad")
    wants: set[str] = set()
    for loss in losses:
        wants |= relevant_names(prims, loss, sources)
    stmts: list[Statement] = []
    written = set(losses)  # gradients that some statement writes (or the caller seeds)
    back_name = {v: k for k, v in names.items()}
    taken = set(names) | set(back_name)
    for p in reversed(prims):
        if p.out.name in wants and p.out.name in written:
            for st in _swapped(p, wants, names, taken, swaps):
                stmts.append(st)
                if st.target.name in back_name:  # not an implicit layer's adjoint or values
                    written.add(back_name[st.target.name])
    temps = {names[p.out.name] for p in prims} - {names[n] for n in program.defined()}
    stmts = _forward_copies(stmts, temps)
    return Program(
        dim_decls(program) + _shape_inputs(stmts, back_name, program),
        tuple(stmts),
        filename=program.filename,
        source=program.source,
    )


def _shape_inputs(stmts: list[Statement], back_name: dict[str, str], program: Program) -> tuple[Decl, ...]:
    """`input x[...]` (or `param x[...]`, as the program declares x) for each tensor whose gradient
    needs x's shape but never reads x.

    That happens when a gradient broadcasts (`x.grad[i] += loss.grad / size[i]`) or scatters:
    the derived program then names the forward input x so that it runs on its own. (A tensor
    the forward program defines is not declared, so the forward program and the derived one
    still read as one program; pass it to the derived program's Model to give the shape.)
    """
    read = {r.name for st in stmts for r in refs_in_statement(st)}
    inputs = set(program.inputs())
    named: dict[str, tuple[str, ...]] | None = None  # made when first needed, once
    roles: dict[str, str] | None = None
    out: dict[str, Decl] = {}
    for st in stmts:
        t = st.target
        base = back_name.get(t.name)
        if base is None or base in read or base in out or base not in inputs:
            continue
        rhs = {n for r in refs_in(st.expr) for n in ref_index_names(r)}
        plain = plain_names(t)
        if plain is not None and set(plain) <= rhs:
            continue
        named = _index_names(program) if named is None else named
        names = named[base] if base in named else tuple(f"i{k}" for k in range(len(t.indices)))
        roles = {d.ref.name: d.role for d in reversed(program.tensor_decls())} if roles is None else roles
        out[base] = Decl(roles.get(base, "input"), Ref(base, tuple(idx(n) for n in names)))
    return tuple(out.values())


def dim_decls(program: Program) -> tuple[Decl, ...]:
    """The program's `dim` declarations, which a derived program keeps (its index names are the
    forward statements' own)."""
    return tuple(d for d in program.decls if d.role == "dim")


def _index_names(program: Program) -> dict[str, tuple[str, ...]]:
    """Per tensor, the index names the forward program first gives it plainly (in a declaration,
    else in a statement); one pass, so that declaring many inputs stays linear."""
    refs = [d.ref for d in program.tensor_decls()] + [
        r for st in program.statements for r in [st.target, *refs_in_statement(st)]
    ]
    out: dict[str, tuple[str, ...]] = {}
    for r in refs:
        plain = plain_names(r)
        if plain is not None:
            out.setdefault(r.name, plain)
    return out


def _forward_copies(stmts: list[Statement], temps: set[str]) -> list[Statement]:
    """Drop `t.grad[I] += g[I]` for a temporary's gradient and read g wherever t.grad is read."""
    count: dict[str, int] = {}
    for s in stmts:
        count[s.target.name] = count.get(s.target.name, 0) + 1
    alias: dict[str, Ref] = {}
    out: list[Statement] = []
    for s in stmts:
        s = _substitute(s, alias)
        t, e = s.target, s.expr
        if (
            t.name in temps
            and count[t.name] == 1
            and isinstance(e, Ref)
            and e.indices == t.indices
            and plain_names(t) is not None
        ):
            alias[t.name] = e
            continue
        out.append(s)
    return out


def _substitute(s: Statement, alias: dict[str, Ref]) -> Statement:
    if not alias or not any(r.name in alias for r in refs_in(s.expr)):
        return s

    def fix(e: Expr) -> Expr:
        if isinstance(e, Ref) and e.name in alias:
            return Ref(alias[e.name].name, e.indices, e.span)
        return e

    return replace(s, expr=map_expr(s.expr, fix))


def _name_temporaries(names: dict[str, str], prims: list[Prim], program: Program, suffix: str) -> None:
    """Derived names for the temporaries lowering introduced, clashing with nothing."""
    taken = set(names.values()) | set(program.inputs()) | set(program.defined())
    for p in prims:
        if p.out.name in names:
            continue
        base = cand = p.out.name + suffix
        k = 2
        while cand in taken:
            cand, k = f"{base}{k}", k + 1
        taken.add(cand)
        names[p.out.name] = cand


def _loss_and_sources(
    program: Program, losses: list[str], wrt: list[str] | None
) -> tuple[list[str], set[str]]:
    losses = [defined_loss(program, loss) for loss in losses] or [default_loss(program)]
    inputs = float_inputs(program, wrt)
    return losses, set(inputs if wrt is None else wrt)


def float_inputs(program: Program, wrt: list[str] | None) -> list[str]:
    """The program's inputs but its integer labels; a name in `wrt` must be one of them."""
    labels = set(program.integer_inputs())
    inputs = [n for n in program.inputs() if n not in labels]
    known = set(inputs)  # (a list's `in` made this quadratic in the number of inputs)
    for w in wrt or []:
        if w not in known:
            raise IndexgradError(not_an_input("wrt", w, inputs))
    return inputs


def not_an_input(what: str, name: str, inputs: list[str]) -> str:
    """The message for a name given as an input's that is not one."""
    return f"{what} names '{name}', which is not an input of the program; inputs: " + ", ".join(inputs)


def _recheck(derived: Program, source: Program) -> Program:
    try:
        return check(derived)
    except IndexgradError as e:  # a derivation bug, but say where it came from
        raise IndexgradError(f"internal error in a derived statement: {e.message}", e.span) from e


def tangent(
    p: Prim, has_tan: set[str], names: dict[str, str], taken: set[str] | None = None
) -> list[Statement]:
    """The tangent rule: the output's tangent is each input's tangent swapped into its place
    (one statement, or one per term when a term must stand as a whole right side); `taken` as
    for `swap`."""
    if isinstance(p, Implicit):
        return tangent_implicit(p, has_tan, names)
    terms: list[Expr] = []
    before: list[Statement] = []  # a max's count of ties
    if isinstance(p, Contract):
        for m, (a, k) in enumerate(p.factors):
            if isinstance(a, Ref) and a.name in has_tan:
                mine = [_tan(names, a)] + ([powered(a, k - 1)] if k != 1 else [])
                factors: list[Expr] = []
                for n, (f, e) in enumerate(p.factors):  # the tangent in its factor's place
                    factors.extend(mine if n == m else [powered(f, e)])
                terms.append(product([*factors, Num(k)], p.coef))
    elif isinstance(p, Terms):
        for c, a in p.terms:
            if isinstance(a, Ref) and a.name in has_tan:
                terms.append(product([_tan(names, a)], c))
    elif isinstance(p, Elementwise):
        derivs = FUNCTIONS[p.func].derivative(*p.args, p.out)
        for a, d in zip(p.args, derivs):
            if isinstance(a, Ref) and a.name in has_tan and d is not None:
                terms.append(product([_tan(names, a), d]))
    elif isinstance(p, Reduction) and p.arg.name in has_tan:
        a, t = p.arg, _tan(names, p.arg)
        if p.reducer == "mean":
            body: Expr = t
        elif p.reducer == "logsumexp":
            body = product([t, Call("exp", (Sum((a, p.out), (1, -1)),))])
        else:
            count, made = _ties(p, taken)
            before.extend(made)
            body = product([t, Call("eq", (a, p.out)), Power(count, -1)])
        red = "mean" if p.reducer == "mean" else "sum"
        terms.append(Reduce(red, p.indices, body))
    if not terms:
        return []
    target = _tan(names, p.out)
    lhs = set(ref_index_names(p.out)) | {n for i in p.out.indices for n in i.names()}
    if len(terms) > 1 and any(_sizes_only_the_left(t, lhs) for t in terms):
        # `x.grad.tan[j+k] += a[j] / size[k] + b[j] / size[k]`: size[k] would land in a term that
        # becomes a temporary without k; as one statement per term, each is the whole right side
        ops = [p.op] + ["+="] * (len(terms) - 1)
        return before + [Statement(target, op, t, (), p.span) for op, t in zip(ops, terms)]
    return [*before, Statement(target, p.op, sum_of(terms), (), p.span)]


def _sizes_only_the_left(e: Expr, lhs: set[str]) -> bool:
    """Whether e holds size[k] for some k of the left side that no tensor in e is indexed by."""
    read = {n for r in refs_in(e) for i in r.indices for n in i.names()}
    return any(sz.index in lhs and sz.index not in read for sz in sizeofs(e))


def derive_jvp(program: Program, wrt: list[str] | None = None) -> Program:
    """The forward-mode program: one tangent statement per primitive that depends on `wrt` (SPEC 2.3)."""
    program = as_program(program, "derive_jvp")
    prims = lower(program)
    wrt = wrt_names(wrt)
    inputs = float_inputs(program, wrt)
    has_tan = set(wrt if wrt is not None else inputs)
    names = derived_names(program, ".tan")
    _name_temporaries(names, prims, program, ".tan")
    stmts: list[Statement] = []
    taken = set(names) | set(names.values())
    for p in prims:
        made = tangent(p, has_tan, names, taken)
        if made:
            stmts.extend(made)
            has_tan.add(p.out.name)
    derived = Program(dim_decls(program), tuple(stmts), filename=program.filename, source=program.source)
    return _recheck(derived, program)


def forward_statements(program: Program, reader: Program | None = None) -> list[Statement]:
    """The lowered forward statements printed before a derived program: without `reader`, those
    that define temporaries.

    With `reader`, every lowered statement that defines what it reads (the program's own tensors
    too, so that the printout runs given the forward inputs and the seeds; SPEC 9), directly or
    through other forward statements, and those whose gradient it writes along an index nothing
    it reads has (`y.sum.grad[b,k] += y.grad[b]` takes its shape from y.sum).
    """
    from .lower import prim_statement

    user = set(program.defined())
    every = [prim_statement(p) for p in lower(program)]
    if reader is None:
        return [s for s in every if s.target.name not in user]
    reads = {r.name for s in reader.statements for r in refs_in_statement(s)}
    reads |= _shapeless_gradients(reader, reads)
    kept: list[Statement] = []
    for s in reversed(every):
        if s.target.name in reads:
            kept.append(s)
            reads.update(r.name for r in refs_in_statement(s))
    return kept[::-1]


def _shapeless_gradients(reader: Program, reads: set[str]) -> set[str]:
    """The tensors whose shape a gradient of `reader` needs and cannot get from the arrays reader is
    given (nor from the temporaries in `reads`, defined before it):
    in `y.sum.grad[b,k] += y.grad[b]`, k meets no array (its other uses write gradients only), so
    the printout must define y.sum. Axes are joined through index names within each statement."""
    uf = axis_classes([s.target, *refs_in_statement(s)] for s in reader.statements)
    given = set(reader.inputs())  # arrays the printout is run on; everything else it computes
    sized = {uf.find(key) for key in list(uf.parent) if key[0] == "T" and key[1] in given}
    out: set[str] = set()
    for s in reader.statements:
        base = sized_like(s.target.name)
        if base is not None and base not in reads and base not in given:
            if any(uf.find(("T", s.target.name, axis)) not in sized for axis in range(len(s.target.indices))):
                out.add(base)
    return out


def gather_form(s: Statement, program: Program | None = None) -> Statement | None:
    """A scatter-add such as `x.grad[j+k] += y.grad[j] w[k]` read as a gather over a new index,
    `x.grad[i] += y.grad[j] w[i-j]` (the sum over j keeping the positions in range); else None.

    For reading only: the executor runs the scatter form, whose every position is in range.
    """
    t = s.target
    used = {n for r in refs_in_statement(s) for n in ref_index_names(r)}
    declared = {}
    if program is not None:
        base = t.name.rsplit(".", 1)[0]
        for d in program.tensor_decls():
            if d.ref.name == base:
                declared = {a: i.plain for a, i in enumerate(d.ref.indices) if isinstance(i, Affine)}
    subst: dict[str, Affine] = {}
    positions: list[Index] = []
    for axis, pos in enumerate(t.indices):
        if isinstance(pos, Affine) and not pos.linear():
            return None  # a boundary mode or `//`: the scatter form is the one to read
        if not isinstance(pos, Affine) or pos.plain is not None or pos.shifted:
            positions.append(pos)
            continue
        ones = [n for c, n in pos.terms if c == 1 and n not in subst]
        if not ones:
            return None
        k = ones[-1]
        new = declared.get(axis)
        if not new or new in used:
            new = next(f"{k}{n}" for n in range(2, 100) if f"{k}{n}" not in used)
        used.add(new)
        rest = tuple((-c, n) for c, n in pos.terms if n != k)
        subst[k] = Affine(((1, new), *rest), -pos.const)
        positions.append(idx(new))
    if not subst:
        return None
    if any(n in subst for i in positions if isinstance(i, Affine) for n in i.names()):
        return None
    if any(sz.index in subst for sz in sizeofs(s.expr)):
        return None  # size[k] of an index the gather renames away has no name to print
    reads = [i for r in refs_in_statement(s) for i in r.indices if isinstance(i, Affine)]
    if any(not i.linear() and set(i.names()) & set(subst) for i in reads):
        return None  # a boundary mode or `//` of a renamed index: the scatter form is the one to read

    def at(i: Index) -> Index:
        if not isinstance(i, Affine) or not any(n in subst for n in i.names()):
            return i
        coef: dict[str, int] = {}
        const = i.const
        for c, n in sorted(i.terms, key=lambda t: t[1] not in subst):  # the new name first
            if n in subst:
                const += c * subst[n].const
                for c2, n2 in subst[n].terms:
                    coef[n2] = coef.get(n2, 0) + c * c2
            else:
                coef[n] = coef.get(n, 0) + c
        return Affine(tuple((c, n) for n, c in coef.items() if c), const)

    def walk(e: Expr) -> Expr:
        return replace(e, indices=tuple(at(i) for i in e.indices)) if isinstance(e, Ref) else e

    return Statement(replace(t, indices=tuple(positions)), s.op, map_expr(s.expr, walk), s.summed, s.span)


# ---- implicit layers: the implicit function theorem (SPEC 11) --------------------------------
# `z[I] = fix(f)` holds z = f(x, z); `z[I] = solve(g, start)` holds g(x, z) = 0. With a = z.adj:
# reverse: a = z.grad + vjp_{f,z}(a) (a linear fix), or a solves vjp_{g,z}(a) + z.grad = 0 (a
# linear solve); then x.grad += vjp_{f,x}(a), the swap rule on f seeded by a. Forward: z.tan =
# fix(jvp_{f,z}(z.tan) + jvp_{f,x}(x.tan)), or z.tan = solve(jvp_g(...), 0). Each derivative of f
# is the swap (or tangent) rule on f's primitive statements, composed into one expression, so the
# derived program is a program of the language again; nothing is differentiated through the
# iterations.


def _fresh(base: str, taken: set[str]) -> str:
    cand, k = base, 2
    while cand in taken:
        cand, k = f"{base}{k}", k + 1
    taken.add(cand)
    return cand


def _expr_index_names(e: Expr) -> list[str]:
    """Every index name e mentions (references, reductions, sizes), in order."""
    out: dict[str, None] = {}

    def visit(node: Expr) -> Expr:
        if isinstance(node, Ref):
            for r in [node, *(i.ref for i in node.indices if isinstance(i, Gather))]:
                out.update(dict.fromkeys(ref_index_names(r)))
        elif isinstance(node, Reduce):
            out.update(dict.fromkeys(node.indices))
        elif isinstance(node, SizeOf):
            out[node.index] = None
        return node

    map_expr(e, visit)
    return list(out)


def _rename_indices(e: Expr, to: dict[str, str]) -> Expr:
    """e with index names replaced at once by `to` (names not in it stay)."""

    def ref(r: Ref) -> Ref:
        def pos(i: Any) -> Any:
            if isinstance(i, Affine):
                return i.renamed(lambda n: to.get(n, n))  # its boundary mode, // and % kept
            return Gather(ref(i.ref), i.span)

        return Ref(r.name, tuple(pos(i) for i in r.indices), r.span)

    def visit(node: Expr) -> Expr:
        if isinstance(node, Ref):
            return ref(node)
        if isinstance(node, Reduce):
            return Reduce(node.op, tuple(to.get(n, n) for n in node.indices), node.body, node.span)
        if isinstance(node, SizeOf):
            return SizeOf(to.get(node.index, node.index), node.span)
        if isinstance(node, Product):
            return Product(node.factors, node.divide, tuple(to.get(n, n) for n in node.summed), node.span)
        return node

    return map_expr(e, visit)


def _compose(
    stmts: list[Statement], at: tuple[str, ...], defs: dict[str, list[Statement]], taken: set[str]
) -> Expr:
    """The sum of the right sides of `stmts` (which all write one tensor), read at index names
    `at`, with every tensor of `defs` replaced by its own definition: one expression.

    Each statement's other index names are kept when no other part of the expression uses
    them (else renamed), and an index its right side sums as a whole is summed by sum[..](..)
    around it, so that the composed expression means the same under the scoping rule."""
    terms: list[Expr] = []
    for st in stmts:
        own = plain_names(st.target)
        assert own is not None
        to = dict(zip(own, at))
        for n in _expr_index_names(st.expr):
            if n not in to:
                to[n] = _fresh(n, taken) if n in taken else n
                taken.add(to[n])
        e = _rename_indices(st.expr, to)

        def inline(node: Expr) -> Expr:
            if isinstance(node, Ref) and node.name in defs:
                names = plain_names(node)
                assert names is not None
                return _compose(defs[node.name], names, defs, taken)
            return node

        e = _flat(map_expr(e, inline))
        e, free = attach_sums(e, frozenset(at))
        whole = tuple(sorted(free - set(at)))
        terms.append(Reduce("sum", whole, e) if whole else e)
    return sum_of(terms)


def _flat(e: Expr) -> Expr:
    """Products inside products (a definition put in its reader's place) as one product, and sums
    inside sums as one sum; a product's own sums come along when no other factor uses their
    indices (the composed names are fresh, so the sum means the same over the larger product)."""

    def visit(node: Expr) -> Expr:
        if isinstance(node, Sum):
            terms: list[Expr] = []
            signs: list[int] = []
            for t, sign in zip(node.terms, node.signs):
                if isinstance(t, Sum):
                    terms.extend(t.terms)
                    signs.extend(sign * s for s in t.signs)
                else:
                    terms.append(t)
                    signs.append(sign)
            return Sum(tuple(terms), tuple(signs), node.span)
        if not isinstance(node, Product):
            return node
        factors: list[Expr] = []
        divide: list[bool] = []
        for k, (f, d) in enumerate(zip(node.factors, node.divide)):
            others = {n for j, g in enumerate(node.factors) if j != k for n in _expr_index_names(g)}
            if isinstance(f, Product) and not d and not set(f.summed) & others:
                factors.extend(f.factors)
                divide.extend(f.divide)
            else:
                factors.append(f)
                divide.append(d)
        return Product(tuple(factors), tuple(divide), node.summed, node.span)

    return map_expr(e, visit)


def _renamed_refs(e: Expr, names: dict[str, str]) -> Expr:
    return map_expr(
        e, lambda n: Ref(names[n.name], n.indices, n.span) if isinstance(n, Ref) and n.name in names else n
    )


def _forward_values(p: Implicit, stmts: list[Statement]) -> list[Statement]:
    """The body's statements whose values (at the fixed point or root) `stmts` read, in order;
    for fix, f's own value is z there, so its statement is not among them."""
    reads = {r.name for s in stmts for r in refs_in_statement(s)}
    out: list[Statement] = []
    for q in reversed(p.body):
        if q.out.name in reads and not (p.method == "fix" and q.out.name == p.result.name):
            st = prim_statement(q)
            out.append(st)
            reads.update(r.name for r in refs_in_statement(st))
    return out[::-1]


def _at_solution(p: Implicit, stmts: list[Statement]) -> list[Statement]:
    """For fix, f's value read as z (f(z*) = z*)."""
    if p.method != "fix":
        return stmts
    to = {p.result.name: p.out.name}
    return [replace(s, expr=_renamed_refs(s.expr, to)) for s in stmts]


def _implicit_statement(p: Implicit, target: Ref, body: Expr) -> Statement:
    args = (body,) if p.method == "fix" else (body, Num(0))
    return Statement(target, "=", Call(p.method, args), (), p.span)


def _own_names(p: Implicit) -> tuple[str, ...]:
    """The index names the derivative of z is written with: those of z's one reference in the
    body when there is one (the adjoint reads best so), else z's own."""
    refs = [r for r in refs_in(p.expr.args[0]) if r.name == p.out.name]
    names = plain_names(refs[0]) if len(refs) == 1 else None
    return names if names is not None else ref_index_names(p.out)


def swap_implicit(p: Implicit, wants: set[str], names: dict[str, str]) -> list[Statement]:
    """The reverse-mode statements of a fix or solve: the adjoint's linear fix or solve, then the
    swap rule on the body seeded by the adjoint for the other tensors it reads."""
    z, r = p.out.name, p.result.name
    made = [q.out.name for q in p.body]
    taken = set(names) | set(names.values()) | set(made)
    adj = _fresh(z + ".adj", taken)
    inner = _fresh(z + ".adj.in", taken)  # z's gradient inside the body: composed away, never printed
    outer = [x.name for x in prim_refs(p) if x.name in wants and x is not p.start]
    body_names = {n: _fresh(n + ".grad", taken) for n in made}
    temp_grads = set(body_names.values())
    body_names.update({n: names[n] for n in outer})
    body_names[r], body_names[z] = adj, inner
    need = relevant_names(list(p.body), r, {z, *outer})
    stmts: list[Statement] = []
    for q in reversed(p.body):
        if q.out.name in need:
            stmts.extend(swap(q, need, body_names))
    defs: dict[str, list[Statement]] = {}
    for st in stmts:
        if st.target.name != inner:
            defs.setdefault(st.target.name, []).append(st)
    at = _own_names(p)
    taken_idx = set(at)
    zgrad = Ref(names[z], tuple(idx(n) for n in at))
    parts = [zgrad]
    into_z = [st for st in stmts if st.target.name == inner]
    if into_z:
        parts.append(_compose(into_z, at, {k: v for k, v in defs.items() if k in temp_grads}, taken_idx))
    linear = _flat(sum_of(parts))  # z.grad + vjp_{f,z}(z.adj)
    (adjoint,) = _at_solution(p, [_implicit_statement(p, Ref(adj, zgrad.indices), linear)])
    wanted = {names[n] for n in outer}
    kept: list[Statement] = []
    for st in reversed(stmts):  # what the other gradients read, seeded by the adjoint
        if st.target.name in wanted:
            kept.append(st)
            wanted.update(x.name for x in refs_in(st.expr) if x.name in defs)
    rest = _at_solution(p, _forward_copies(kept[::-1], temp_grads))
    return [*_forward_values(p, [adjoint, *rest]), adjoint, *rest]


def tangent_implicit(p: Implicit, has_tan: set[str], names: dict[str, str]) -> list[Statement]:
    """The forward-mode statement of a fix or solve: z.tan = fix(jvp_{f,z}(z.tan) + jvp_{f,x}(x.tan)),
    or the solve of the tangent of g; nothing when no tensor the body reads has a tangent."""
    z, r = p.out.name, p.result.name
    outer = [x.name for x in prim_refs(p) if x.name in has_tan and x is not p.start]
    if not outer:
        return []
    made = [q.out.name for q in p.body]
    taken = set(names) | set(names.values()) | set(made)
    body_names = {n: _fresh(n + ".tan", taken) for n in made}
    body_names.update({n: names[n] for n in outer})
    body_names[z] = names[z]
    has = {z, *outer}
    stmts: list[Statement] = []
    for q in p.body:
        made_here = tangent(q, has, body_names)
        if made_here:
            stmts.extend(made_here)
            has.add(q.out.name)
    defs: dict[str, list[Statement]] = {}
    for st in stmts:
        defs.setdefault(st.target.name, []).append(st)
    final = defs.pop(body_names[r], [])
    at = ref_index_names(p.out)
    expr = _compose(final, at, defs, set(at)) if final else Num(0)
    target = Ref(names[z], p.out.indices)
    (st,) = _at_solution(p, [_implicit_statement(p, target, expr)])
    return [*_forward_values(p, [st]), st]


__all__ = ["derive", "derive_jvp", "forward_statements", "gather_form", "num", "Num"]


def derivative_reads(prims: list[Prim], swaps: Swaps | None = None) -> set[str]:
    """Every forward tensor a reverse- or forward-mode program of these primitives may read.

    A primitive's tangent reads the same forward tensors as its swapped statements (both put
    the derivative of each operand next to the other operands), so the swap alone tells. The
    statements are left in `swaps`, when given, for `derive_for` to take rather than swap again.
    """
    every = {p.out.name for p in prims} | {r.name for p in prims for r in prim_refs(p)}
    names = {n: n + ".grad" for n in every}
    out: set[str] = set()
    for p in prims:
        made = swap(p, every, names)
        if swaps is not None:
            swaps[id(p)] = (p, made)
        for st in made:
            reads = refs_in_statement(st)
            out.update(r.name for r in reads)
            out.update(shape_source(st, reads))
    return out & every


def shape_source(st: Statement, reads: list[Ref] | None = None) -> set[str]:
    """The forward tensor whose shape a swapped statement's gradient takes, as a set of none or
    one name: x for x.grad when the gradient broadcasts or scatters. `reads`: the statement's
    references, when already found (a target with labels in its positions is not plain, so their
    names in `reads` change nothing here)."""
    reads = refs_in_statement(st) if reads is None else reads
    rhs = {n for r in reads for n in ref_index_names(r)}
    plain = [i.plain if isinstance(i, Affine) else None for i in st.target.indices]
    if None in plain or not set(plain) <= rhs:
        return {st.target.name[: -len(".grad")]}
    return set()
