"""Rewrites of primitive statements before planning, each a function from one list of them to the next."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .lower import Contract, Elementwise, Operand, Prim, Reduction, Terms, prim_refs, size_names
from .nodes import Affine, Gather, Num, Ref, SizeOf, idx, is_plain, ref_index_names


def split_products(prims: list[Prim], sized: Callable[[], dict[str, tuple[int, ...]]]) -> list[Prim]:
    """Contractions of three or more tensors as pairwise steps along opt_einsum's path.

    Returns `prims` itself when nothing is split. Only products of plain references are split;
    the steps' temporaries are named `OUT.part`, `OUT.part2`, ... `sized()` gives every name's
    shape, asked only when there is such a product.
    """
    import opt_einsum as oe

    taken: set[str] | None = None  # every name, gathered at the first split
    out: list[Prim] = []
    changed = False
    for p in prims:
        refs = [(f, k) for f, k in p.factors if isinstance(f, Ref)] if isinstance(p, Contract) else []
        shapes = sized() if len(refs) >= 3 else {}
        if len(refs) < 3 or not all(is_plain(r) and r.name in shapes for r, _ in refs) or not is_plain(p.out):
            out.append(p)
            continue
        assert isinstance(p, Contract)
        consts = [(f, k) for f, k in p.factors if not isinstance(f, Ref)]
        final = ref_index_names(p.out)
        if any(size_names(f) - set(final) for f, _ in consts):
            out.append(p)  # size[j] of a summed j stays with the tensors that size j
            continue
        if taken is None:
            taken = {q.out.name for q in prims} | {r.name for q in prims for r in prim_refs(q)}
        ops: list[tuple[Operand, float]] = list(refs)
        names = [ref_index_names(r) for r, _ in refs]  # type: ignore[arg-type]
        sym = {n: oe.get_symbol(i) for i, n in enumerate(dict.fromkeys([*final, *sum(names, ())]))}
        held = set().union(*names)  # an output name no factor holds is broadcast by the last step
        eq = ",".join("".join(sym[n] for n in nm) for nm in names) + "->"
        eq += "".join(sym[n] for n in final if n in held)
        path, _ = oe.contract_path(eq, *[shapes[r.name] for r, _ in refs], shapes=True)
        for step in path[:-1]:
            pick = sorted(step, reverse=True)
            chosen = [ops.pop(i) for i in pick][::-1]
            chosen_names = [names.pop(i) for i in pick][::-1]
            later = set(final).union(*names) if names else set(final)
            # the order a matrix product gives naturally: the first operand's free names first
            keep = [n for n in dict.fromkeys(sum(chosen_names, ())) if n in later]
            tmp_name, k = f"{p.out.name}.part", 2
            while tmp_name in taken:
                tmp_name, k = f"{p.out.name}.part{k}", k + 1
            taken.add(tmp_name)
            tmp = Ref(tmp_name, tuple(idx(n) for n in keep))
            out.append(Contract(tmp, "=", 1.0, tuple(chosen), p.span, p.dims))
            ops.append((tmp, 1.0))
            names.append(tuple(keep))
        out.append(Contract(p.out, p.op, p.coef, tuple(ops) + tuple(consts), p.span, p.dims))
        changed = True
    return out if changed else prims


def _uses(prims: list[Prim]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per name, the positions of the statements that write it, and of those that read it (-1
    for a read through a gather, which the rewrites below leave alone)."""
    writes: dict[str, list[int]] = {}
    reads: dict[str, list[int]] = {}
    for k, p in enumerate(prims):
        writes.setdefault(p.out.name, []).append(k)
        for r in prim_refs(p):
            reads.setdefault(r.name, []).append(k)
        for r in (p.out, *prim_refs(p)):
            if not is_plain(r):
                for i in r.indices:
                    if isinstance(i, Gather):
                        reads.setdefault(i.ref.name, []).append(-1)
    return writes, reads


def _one_value(p: Prim, keep: set[str]) -> bool:
    """p is `t[I] = c Π s` with every factor a scalar tensor, a number or a size of an index in I."""
    if not isinstance(p, Contract) or p.out.name in keep or not is_plain(p.out):
        return False
    for f, _ in p.factors:
        if isinstance(f, Ref) and f.indices:
            return False
        if isinstance(f, SizeOf) and f.index not in ref_index_names(p.out):
            return False
        if not isinstance(f, (Ref, Num, SizeOf)):
            return False  # a number expression is not renamed into the products that read it
    return True


def inline_broadcasts(prims: list[Prim], keep: set[str]) -> list[Prim]:
    """prims without the temporaries that hold one value (a scalar, or one value broadcast along
    their indices).

    `t[I] = c Π s` whose every factor is a scalar tensor, a number or the size of an index in I
    (the gradient of a mean, `loss.sum.grad[b] += loss.grad / size[b]`, is one) is not made:
    each product that reads t multiplies by c Π s itself. Only temporaries written once, not in
    `keep` (which must also hold every name given before the first statement), and read only as
    a plain factor of a product are inlined, and only while no statement between writes a
    scalar that t's value reads. A product in which an index would be left to no tensor (a sum
    over b of `t[b] u[b]` with both t and u inlined) keeps its temporaries.
    """
    candidates = {k for k, p in enumerate(prims) if _one_value(p, keep)}
    if not candidates:
        return prims
    writes, reads = _uses(prims)
    blocked: set[str] = set()
    while True:
        result, lost = _inline_once(prims, keep, candidates, writes, reads, blocked)
        if not lost:
            return result
        blocked |= lost


def _inline_once(
    prims: list[Prim],
    keep: set[str],
    candidates: set[int],
    writes: dict[str, list[int]],
    reads: dict[str, list[int]],
    blocked: set[str],
) -> tuple[list[Prim], set[str]]:
    """One pass of `inline_broadcasts` that inlines nothing in `blocked`; also returns the values
    whose inlining left an index of some product to no tensor."""

    def inlinable(k: int, p: Prim) -> bool:
        if p.out.name in blocked or writes[p.out.name] != [k] or not _one_value(p, keep):
            return False
        assert isinstance(p, Contract)
        readers = reads.get(p.out.name)
        if not readers or -1 in readers:
            return False
        for f, _ in p.factors:
            if isinstance(f, Ref) and any(k < w <= readers[-1] for w in writes.get(f.name, [])):
                return False
        for j in readers:
            q = prims[j]
            if not isinstance(q, Contract) or q.out.name == p.out.name:
                return False
            for f, power in q.factors:
                if isinstance(f, Ref) and f.name == p.out.name:
                    if power != 1 or not is_plain(f) or len(f.indices) != len(p.out.indices):
                        return False
        return True

    values: dict[str, Contract] = {}
    result: list[Prim] = []
    lost: set[str] = set()
    for k, p in enumerate(prims):
        reads_values = values and isinstance(p, Contract) and any(r.name in values for r in prim_refs(p))
        if reads_values:
            assert isinstance(p, Contract)
            coef, factors, used = p.coef, [], set()
            for f, power in p.factors:
                v = values.get(f.name) if isinstance(f, Ref) else None
                if v is None:
                    factors.append((f, power))
                    continue
                used.add(f.name)
                rename = dict(zip(ref_index_names(v.out), ref_index_names(f)))  # type: ignore[arg-type]
                coef *= v.coef
                for g, gp in v.factors:
                    factors.append((SizeOf(rename[g.index], g.span) if isinstance(g, SizeOf) else g, gp))
            q = Contract(p.out, p.op, coef, tuple(factors), p.span, p.dims)
            if _indexed(q) != _indexed(p):
                lost |= used
            p = q
        if (k in candidates or reads_values) and inlinable(k, p):  # a product of values is one
            values[p.out.name] = p  # type: ignore[assignment]
        else:
            result.append(p)
    return (result if values else prims), lost


def _indexed(p: Contract) -> tuple[set[str], set[str]]:
    """The index names a product's tensors and target carry, and those of them some tensor
    carries in a plain position, which sizes them: in `x.grad[10-j] += y.grad[j]`, j's size is
    y.grad's, and x.grad's axis alone cannot give it."""
    refs = (p.out, *prim_refs(p))
    plain = {i.plain for r in refs for i in r.indices if isinstance(i, Affine) and i.plain is not None}
    return set().union(*(ref_index_names(r) for r in refs)), plain


def absorb_scales(prims: list[Prim], keep: set[str]) -> list[Prim]:
    """prims with each `u = c t`, whose product t is made for it alone, computed as one product.

    `loss.sum = y[b,i]^2` then `loss = 0.5 loss.sum` (what `loss = 0.5 sum[b,i](y[b,i]^2)`
    lowers to) becomes `loss = 0.5 y[b,i]^2`: one pass and no temporary. t must be written
    once, by `=`, read by u's statement alone under the same index names, and not be in `keep`;
    nothing between the two statements may write what t's product reads.
    """
    products = {p.out.name for p in prims if isinstance(p, Contract) and p.op == "="}
    scales = [
        k
        for k, p in enumerate(prims)
        if isinstance(p, Contract)
        and len(p.factors) == 1
        and p.factors[0][1] == 1
        and isinstance(p.factors[0][0], Ref)
        and p.factors[0][0].name in products
        and p.factors[0][0].name not in keep
    ]
    if not scales:
        return prims
    writes, reads = _uses(prims)
    drop: set[int] = set()
    merged: dict[int, Contract] = {}
    for k in scales:
        p = prims[k]
        assert isinstance(p, Contract)
        t = p.factors[0][0]
        assert isinstance(t, Ref)
        if t.name not in writes:
            continue
        j = writes[t.name][0]
        q = prims[j]
        if (
            writes[t.name] != [j]
            or reads[t.name] != [k]
            or not isinstance(q, Contract)
            or q.op != "="
            or j in merged
            or not (is_plain(t) and is_plain(p.out) and is_plain(q.out))
            or not ref_index_names(t) == ref_index_names(q.out) == ref_index_names(p.out)
        ):
            continue
        read = {r.name for r in prim_refs(q)}
        if p.out.name in read or any(prims[m].out.name in read for m in range(j + 1, k)):
            continue
        drop.add(j)
        dims = tuple(dict(q.dims + p.dims).items())
        merged[k] = Contract(p.out, p.op, p.coef * q.coef, q.factors, q.span, dims)
    if not merged:
        return prims
    return [merged.get(k, p) for k, p in enumerate(prims) if k not in drop]


def relu_outputs(prims: list[Prim]) -> dict[str, str]:
    """`u -> y` for every `y = relu(u)` whose y is written once, with u's axes in y's order.

    step(u) = step(y) exactly (relu keeps the positive entries, NaN included: both give 0), so a
    derivative may read y in place of u, and forward need not keep u alive.
    """
    writes: dict[str, int] = {}
    for p in prims:
        writes[p.out.name] = writes.get(p.out.name, 0) + 1
    out: dict[str, str] = {}
    for p in prims:
        if (
            isinstance(p, Elementwise)
            and p.func == "relu"
            and p.op == "="
            and writes[p.out.name] == 1
            and isinstance(p.args[0], Ref)
            and is_plain(p.out)
            and is_plain(p.args[0])
            and ref_index_names(p.args[0]) == ref_index_names(p.out)
            and p.args[0].name != p.out.name
        ):
            out[p.args[0].name] = p.out.name
    return out


def read_steps_of_outputs(prims: list[Prim], relus: dict[str, str]) -> list[Prim]:
    """prims with each `step(u)` for a relu argument u in `relus` (u -> y) reading `step(y)` instead."""
    if not relus:
        return prims
    out: list[Prim] = []
    for p in prims:
        if isinstance(p, Elementwise) and p.func == "step" and isinstance(p.args[0], Ref):
            a = p.args[0]
            if a.name in relus:
                p = Elementwise(p.out, p.op, p.func, (Ref(relus[a.name], a.indices, a.span),), p.span, p.dims)
        out.append(p)
    return out


Alias = dict[str, tuple[str, tuple[int, ...]]]  # a derived name -> a forward name, and for each
# of the forward tensor's axes the derived tensor's axis holding the same positions


def _through(a: Ref, alias: Alias) -> Ref:
    """a, or the read of the forward tensor its name stands for, its positions in that order."""
    hit = alias.get(a.name)
    if hit is None:
        return a
    name, axes = hit
    return Ref(name, tuple(a.indices[k] for k in axes), a.span)


def _value_key(p: Prim, alias: Alias) -> tuple[tuple[Any, ...], tuple[int, ...]] | None:
    """What an elementwise statement `t[I] = f(...)` or `t[I] = s1 u1 + ...` computes, independent
    of its names and of the order of t's axes: the function or coefficients, and each tensor read
    (through `alias`) with its axes numbered in the order the operands first read them; and t's
    axes in that order. None for anything else, or when an axis of t is in no operand (then t's
    extent is not fixed by what it reads)."""
    if p.op != "=" or not is_plain(p.out) or not isinstance(p, (Elementwise, Terms)):
        return None
    operands = p.args if isinstance(p, Elementwise) else tuple(u for _, u in p.terms)
    reads = [_through(a, alias) if isinstance(a, Ref) else a for a in operands]
    if not all(isinstance(a, Num) or isinstance(a, Ref) and is_plain(a) for a in reads):
        return None
    order = list(dict.fromkeys(n for a in reads if isinstance(a, Ref) for n in ref_index_names(a)))
    out = ref_index_names(p.out)
    if sorted(order) != sorted(out):
        return None
    canon = {n: k for k, n in enumerate(order)}
    args = [
        ("number", a.value) if isinstance(a, Num) else (a.name, tuple(canon[n] for n in ref_index_names(a)))
        for a in reads
    ]
    if isinstance(p, Elementwise):
        parts: tuple[Any, ...] = ("f", p.func, *args)
    else:
        parts = ("terms", *zip((c for c, _ in p.terms), args))
    return parts, tuple(out.index(n) for n in order)


def reuse_forward(prims: list[Prim], forward: list[Prim], available: set[str]) -> list[Prim]:
    """A derived program's statements with those that recompute a value the forward program made
    and returns (`available`) reading that value instead, and the statements only they read
    dropped. The same function of the same tensors at the same axes is the same value, whatever
    order each statement gives its axes: the softmax `exp(a - logsumexp(a))` that logsumexp's
    derivative reads (the jvp's as `[b,k]`, whatever the forward's order) is the forward's `p`."""
    writes: dict[str, int] = {}
    for p in (*forward, *prims):
        writes[p.out.name] = writes.get(p.out.name, 0) + 1
    made: dict[tuple[Any, ...], tuple[str, tuple[int, ...]]] = {}
    for p in forward:
        key = _value_key(p, {})
        if key is not None and writes[p.out.name] == 1:
            made.setdefault(key[0], (p.out.name, key[1]))
    alias: Alias = {}
    for p in prims:
        key = _value_key(p, alias)
        if key is not None and key[0] in made and writes[p.out.name] == 1:
            name, axes = made[key[0]]
            mine = dict(zip(axes, key[1]))  # the forward's axis -> this statement's, the same positions
            alias[p.out.name] = (name, tuple(mine[j] for j in range(len(axes))))
    use = {n: f for n, f in alias.items() if f[0] in available}
    simple = (Contract, Elementwise, Terms, Reduction)
    implicit = {r.name for p in prims if not isinstance(p, simple) for r in prim_refs(p)}
    if not use or use.keys() & implicit:
        return prims  # an implicit layer reads it: left as derived
    out = [_reading(p, use) for p in prims if p.out.name not in use]
    while True:  # drop what only the replaced statements read
        read = {r.name for p in out for r in prim_refs(p)}
        dead = [p for p in out if p.out.name in alias and p.out.name not in read]
        if not dead:
            return out
        out = [p for p in out if p not in dead]


def _reading(p: Prim, names: Alias) -> Prim:
    """p reading, wherever it reads n of `names`, the forward tensor n stands for."""

    def ref(a: Any) -> Any:
        return _through(a, names) if isinstance(a, Ref) else a

    if isinstance(p, Elementwise):
        return replace(p, args=tuple(ref(a) for a in p.args))
    if isinstance(p, Terms):
        return replace(p, terms=tuple((c, ref(u)) for c, u in p.terms))
    if isinstance(p, Contract):
        return replace(p, factors=tuple((ref(f), k) for f, k in p.factors))
    if isinstance(p, Reduction):
        return replace(p, arg=ref(p.arg))
    return p


def square_means(prims: list[Prim], defined: set[str]) -> list[Prim]:
    """prims with each `m[I] = mean[j](t[I,j])` of a temporary `t[I,j] = c[I,j]^2` read only there
    made one product, `m[I] = c[I,j]^2 / size[j]`, which the planner runs as a dot product of c
    with itself per entry: no array of squares (a layer norm's variance, as a hand-written step
    computes it)."""
    if not any(isinstance(p, Reduction) and p.reducer == "mean" for p in prims):
        return prims
    writes, reads = _uses(prims)
    squares = {
        p.out.name: p
        for p in prims
        if isinstance(p, Contract)
        and p.op == "="
        and p.coef == 1
        and len(p.factors) == 1
        and p.factors[0][1] == 2
        and isinstance(p.factors[0][0], Ref)
        and is_plain(p.factors[0][0])
        and p.out.name not in defined
        and len(writes.get(p.out.name, [])) == 1
        and len(reads.get(p.out.name, [])) == 1
    }
    out: list[Prim] = []
    merged: set[str] = set()
    for p in prims:
        sq = squares.get(p.arg.name) if isinstance(p, Reduction) and p.reducer == "mean" else None
        if sq is None or p.arg.indices != sq.out.indices:  # type: ignore[union-attr]
            out.append(p)
            continue
        factors = (sq.factors[0], *((SizeOf(j), -1.0) for j in p.indices))  # type: ignore[union-attr]
        dims = tuple(dict.fromkeys((*sq.dims, *p.dims)))  # type: ignore[union-attr]
        out.append(Contract(p.out, p.op, 1.0, factors, p.span, dims))
        merged.add(sq.out.name)
    if not merged:
        return prims
    return [p for p in out if p.out.name not in merged]
