"""Index names in expressions: which are free, how many references mention each, where sums attach."""

from __future__ import annotations

from .nodes import (
    Call,
    Compare,
    Expr,
    Neg,
    Num,
    Power,
    Product,
    Reduce,
    Ref,
    SizeOf,
    Sum,
    children,
    ref_index_names,
)


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


def occurrences(e: Expr, bound: frozenset[str] = frozenset()) -> dict[str, int]:
    """How many references mention each free index name (a diagonal `A[i,i]` counts once)."""
    if isinstance(e, Ref):
        return {n: 1 for n in ref_index_names(e) if n not in bound}
    if isinstance(e, Reduce):
        return occurrences(e.body, bound | frozenset(e.indices))
    out: dict[str, int] = {}
    for c in children(e):
        for n, k in occurrences(c, bound).items():
            out[n] = out.get(n, 0) + k
    return out


def attach_sums(e: Expr, keep: frozenset[str]) -> tuple[Expr, set[str]]:
    """Attach each summed index (not in `keep`) to the innermost product whose factors hold all
    its occurrences; returns e so scoped and the index names it is then free in (one walk, as
    the free names come out of attaching)."""
    expr, _, free = _attach(e, occurrences(e), keep)
    return expr, free


def _attach(e: Expr, total: dict[str, int], keep: frozenset[str]) -> tuple[Expr, dict[str, int], set[str]]:
    """attach_sums, also returning `occurrences(e)`, which attaching sums leaves as it is, and
    `free_indices` of the result."""
    t = type(e)
    if t is Ref:
        names = ref_index_names(e)  # type: ignore[arg-type]
        return e, {n: 1 for n in names}, set(names)
    if t is Reduce:
        inner = occurrences(e.body)
        # the reduction's own names count in its body; any other name also occurs outside it
        body_total = total | {n: inner[n] for n in e.indices if n in inner}
        body, _, free = _attach(e.body, body_total, keep | frozenset(e.indices))
        occ = {n: k for n, k in inner.items() if n not in e.indices}
        return Reduce(e.op, e.indices, body, e.span), occ, free - set(e.indices)
    if t is Product:
        factors = []
        here: dict[str, int] = {}
        holders: dict[str, int] = {}
        free: set[str] = set()
        for f in e.factors:
            f2, occ, f_free = _attach(f, total, keep)
            factors.append(f2)
            free |= f_free
            for n, k in occ.items():
                here[n] = here.get(n, 0) + k
                holders[n] = holders.get(n, 0) + 1
        summed = tuple(
            sorted(n for n, k in here.items() if n not in keep and k == total.get(n, 0) and holders[n] >= 2)
        )
        return Product(tuple(factors), e.divide, summed, e.span), here, free - set(summed)
    kids = children(e)
    if not kids:
        return e, {}, set()
    occ: dict[str, int] = {}
    free: set[str] = set()
    new = []
    for c in kids:
        c2, o, c_free = _attach(c, total, keep)
        new.append(c2)
        free |= c_free
        for n, k in o.items():
            occ[n] = occ.get(n, 0) + k
    if t is Neg:
        return Neg(new[0], e.span), occ, free
    if t is Sum:
        return Sum(tuple(new), e.signs, e.span), occ, free
    if t is Power:
        return Power(new[0], e.exponent, e.span), occ, free
    if t is Compare:
        return Compare(e.op, new[0], new[1], e.span), occ, free
    assert t is Call
    return Call(e.func, tuple(new), e.span), occ, free
