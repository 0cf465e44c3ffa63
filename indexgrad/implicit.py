"""Implicit layers (SPEC 11): fix and solve derived by the implicit function theorem.

`z[I] = fix(f)` holds z = f(x, z); `z[I] = solve(g, start)` holds g(x, z) = 0. With a = z.adj:
- reverse: a = z.grad + vjp_{f,z}(a) (a linear fix), or a solves vjp_{g,z}(a) + z.grad = 0 (a
  linear solve); then x.grad += vjp_{f,x}(a), the swap rule on f seeded by a;
- forward: z.tan = fix(jvp_{f,z}(z.tan) + jvp_{f,x}(x.tan)), or z.tan = solve(jvp_g(...), 0).
Each derivative of f is the swap (or tangent) rule on f's primitive statements, composed into one
expression, so the derived program is a program of the language again. Nothing is differentiated
through the iterations.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .indices import attach_sums, free_indices, occurrences
from .lower import Implicit, prim_refs, prim_statement, sum_of
from .nodes import (
    Affine,
    Call,
    Expr,
    Gather,
    Num,
    Product,
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

# ---- derivation ------------------------------------------------------------------------------


def _fresh(base: str, taken: set[str]) -> str:
    cand, k = base, 2
    while cand in taken:
        cand, k = f"{base}{k}", k + 1
    taken.add(cand)
    return cand


def _index_names(e: Expr) -> list[str]:
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
        for n in _index_names(st.expr):
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
        e = attach_sums(e, occurrences(e), frozenset(at))
        whole = tuple(sorted(free_indices(e) - set(at)))
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
            others = {n for j, g in enumerate(node.factors) if j != k for n in _index_names(g)}
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
    from .derive import _forward_copies, relevant_names, swap

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
    from .derive import tangent

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


__all__ = [
    "swap_implicit",
    "tangent_implicit",
]
