"""Implicit layers (SPEC 11): fix and solve as one plan step, derived by the implicit function theorem.

`z[I] = fix(f)` holds z = f(x, z); `z[I] = solve(g, start)` holds g(x, z) = 0. With a = z.adj:
- reverse: a = z.grad + vjp_{f,z}(a) (a linear fix), or a solves vjp_{g,z}(a) + z.grad = 0 (a
  linear solve); then x.grad += vjp_{f,x}(a), the swap rule on f seeded by a;
- forward: z.tan = fix(jvp_{f,z}(z.tan) + jvp_{f,x}(x.tan)), or z.tan = solve(jvp_g(...), 0).
Each derivative of f is the swap (or tangent) rule on f's primitive statements, composed into one
expression, so the derived program is a program of the language again. Nothing is differentiated
through the iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import IndexgradError
from .indices import attach_sums, free_indices, occurrences
from .lower import Implicit, lower, prim_refs, prim_statement, sum_of
from .nodes import (
    Affine,
    Call,
    Expr,
    Gather,
    Num,
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

DEFAULT_TOL = {"float64": 1e-12, "float32": 1e-5}
DEFAULT_MAX_ITER = {"fix": 500, "solve": 50}
ANDERSON_M = 5  # the history Anderson starts with
ANDERSON_MOST = 32  # and the longest it grows to when extrapolation stalls


def iteration_settings(tol: Any = None, max_iter: Any = None) -> dict[str, Any]:
    """The tolerance and iteration limit of fix and solve, checked (None: the defaults)."""
    out: dict[str, Any] = {}
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
            raise IndexgradError(f"tol must be a positive number, got {tol!r}")
        out["tol"] = float(tol)
    if max_iter is not None:
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise IndexgradError(f"max_iter must be a positive integer, got {max_iter!r}")
        out["max_iter"] = int(max_iter)
    return out


# ---- planning --------------------------------------------------------------------------------


def _iterate_shape(p: Implicit, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """z's shape from the tensors its body reads: index names are the statement's, and each
    reference to z ties its index names to the left side's, axis by axis."""
    lhs = ref_index_names(p.out)
    z = p.out.name
    size: dict[str, int] = {}
    refs = refs_in(p.expr)
    for r in refs:
        shape = shapes.get(r.name)
        if r.name == z or shape is None:
            continue
        for axis, i in enumerate(r.indices):
            if isinstance(i, Affine) and i.plain is not None and axis < len(shape):
                size.setdefault(i.plain, shape[axis])
    changed = True
    while changed:
        changed = False
        for r in refs:
            if r.name != z:
                continue
            for own, n in zip(lhs, plain_names(r) or ()):
                if n in size and own not in size:
                    size[own], changed = size[n], True
                elif own in size and n not in size:
                    size[n], changed = size[own], True
    missing = [n for n in lhs if n not in size]
    if missing:
        raise IndexgradError(
            f"index '{missing[0]}' of '{z}' gets no size from the tensors {p.method}(...) reads", p.span
        )
    return tuple(size[n] for n in lhs)


def _diagonal(p: Implicit) -> tuple[int, ...]:
    """The axes of z along which g's entries depend only on z's entry at the same position (each
    reference to z in the body has the left side's name there): the Jacobian is block-diagonal."""
    lhs = ref_index_names(p.out)
    refs = [plain_names(r) for r in refs_in(p.expr.args[0]) if r.name == p.out.name]
    return tuple(a for a, n in enumerate(lhs) if all(names is not None and names[a] == n for names in refs))


def plan_implicit(planner: Any, p: Implicit) -> tuple[Any, dict[str, int]]:
    """The one Step that runs a fix or solve statement: its body as a nested Plan (and, for
    Newton, the plan of the body's tangent in z, from which the Jacobian is formed).

    The body's statements that do not read z (`x[b,d] U[d,h]` in a deep equilibrium layer, the
    seed and the derivative of f in its adjoint) form a `setup` plan, run once per call rather
    than once per iteration."""
    from .plan import Operand, Step, _result_dtype, make_plan, shapes_after
    from .printer import format_statement

    shapes, dtypes = planner.shapes, planner.dtypes
    z, r = p.out.name, p.result.name
    lhs = ref_index_names(p.out)
    zshape = _iterate_shape(p, shapes)
    outer = list(dict.fromkeys(x.name for x in prim_refs(p) if x is not p.start))
    dtype = _result_dtype([np.dtype(dtypes[n]) for n in outer] + [np.dtype(np.float64)] * (not outer))
    made = {q.out.name for q in p.body}
    nested = dict(backend=planner.backend, in_place=planner.in_place, iterations=planner.iterations)
    inputs = {z: zshape, **{n: shapes[n] for n in outer}}
    types = {z: dtype, **{n: dtypes[n] for n in outer}}
    every, kinds, sized = shapes_after(list(p.body), dict(inputs), dict(types), made)
    sizes = dict(zip(lhs, zshape))
    for known in sized:
        sizes.update(known)  # the body's index names are its statement's
    moving = {z}
    for q in p.body:
        if q.out.name == r or any(x.name in moving for x in prim_refs(q)):
            moving.add(q.out.name)
    inner = [q for q in p.body if q.out.name in moving]
    hoisted = [q for q in p.body if q.out.name not in moving]
    needed: set[str] = set()  # what the tangent in z reads of the body's values
    args: dict[str, Any] = {"iterate": z, "result": r, "start": None}
    if p.method == "solve":
        from .derive import derive_jvp, tan_name

        program = Program((), tuple(prim_statement(q) for q in p.body))
        tangent = derive_jvp(program, [z])
        direction, slope = tan_name(program, z), tan_name(program, r)
        if slope not in tangent.defined():
            raise IndexgradError(
                f"solve(...) does not depend on '{z}', so it has no root to find in '{z}'", p.span
            )
        tprims = lower(tangent)
        treads = {x.name for q in tprims for x in prim_refs(q)}
        needed = treads & (made | set(outer))  # the body's values, and inputs, the tangent reads
        tin = {z: zshape, direction: zshape, **{n: every[n] for n in outer if n in treads}}
        tin.update({n: every[n] for n in sorted(needed)})
        tnames = {q.out.name for q in tprims} - {slope}
        ttypes = {n: kinds[n] if n != direction else dtype for n in tin}
        tplan = make_plan(tprims, tin, ttypes, {slope}, mode="tangent", temporaries=tnames, **nested)
        args.update(tangent=tplan, direction=direction, slope=slope, diagonal=_diagonal(p))
    reads = {x.name for q in inner for x in prim_refs(q)} | needed
    setup = None
    if hoisted:
        keep = {q.out.name for q in hoisted} & reads
        mine = list(dict.fromkeys(x.name for q in hoisted for x in prim_refs(q) if x.name not in made))
        setup = make_plan(
            hoisted, {n: shapes[n] for n in mine}, {n: dtypes[n] for n in mine}, keep,
            mode="setup", temporaries=made, **nested,
        )  # fmt: skip
    body_in = {z: zshape, **{n: every[n] for n in every if n in reads and n not in moving}}
    body = make_plan(
        inner, body_in, {n: kinds[n] if n != z else dtype for n in body_in}, {r} | (needed & moving),
        mode=f"{p.method} body", temporaries=made, **nested,
    )  # fmt: skip
    args.update(body=body, setup=setup)
    step_inputs = [
        Operand(n, tuple(f"{n}{a}" for a in range(len(shapes[n]))), shapes[n], str(dtypes[n])) for n in outer
    ]
    if isinstance(p.start, Ref):
        names = ref_index_names(p.start)
        got = shapes[p.start.name]
        for n, extent in zip(names, got):
            if n not in sizes or sizes[n] != extent:
                want = f"size {sizes[n]}" if n in sizes else "no such index"
                raise IndexgradError(
                    f"the start '{p.start.name}' has size {extent} along '{n}', but '{z}' has {want} "
                    f"there ({z} has shape {zshape}); give a start of z's shape",
                    p.start.span if p.start.span.line else p.span,
                )
        args["start"] = (p.start.name, names)
        step_inputs.append(Operand(p.start.name, names, got, str(dtypes[p.start.name])))
    elif isinstance(p.start, Num):
        args["start"] = float(p.start.value)
    tol = planner.iterations.get("tol") or DEFAULT_TOL.get(str(dtype), 1e-10)
    max_iter = planner.iterations.get("max_iter") or DEFAULT_MAX_ITER[p.method]
    args.update(tol=float(tol), max_iter=int(max_iter))
    nbytes = math.prod(zshape) * dtype.itemsize
    scratch = body.peak_bytes + (setup.peak_bytes if setup is not None else 0)
    if p.method == "fix":
        args.update(m=ANDERSON_M, most=ANDERSON_MOST)
        scratch += 2 * ANDERSON_MOST * nbytes
    else:
        block = math.prod(d for a, d in enumerate(zshape) if a not in args["diagonal"])
        scratch += args["tangent"].peak_bytes + block * nbytes + 4 * nbytes
    args["scratch"] = scratch
    step = Step(
        p.method,
        "anderson" if p.method == "fix" else "newton",
        z,
        lhs,
        zshape,
        str(dtype),
        tuple(step_inputs),
        args,
        text=format_statement(prim_statement(p)),
        span=p.span,
    )
    return step, sizes


# ---- running -------------------------------------------------------------------------


def _not_converged(step: Any, residual: float, iterations: int, more: str = "") -> IndexgradError:
    a = step.args
    what = "fix(...) found no fixed point" if step.kind == "fix" else "solve(...) found no root"
    hint = (
        "f must be a contraction near its fixed point (scale its weights down), or raise max_iter or tol"
        if step.kind == "fix"
        else "start nearer a root, or raise max_iter or tol"
    )
    return IndexgradError(
        f"{what} for '{a['iterate']}': the residual is {residual:.3g} after {iterations} iterations, "
        f"over the tolerance {a['tol']:.3g}{more}; {hint}",
        step.span,
    )


def _start(step: Any, env: dict[str, Any], dtype: np.dtype, to_numpy: Any) -> np.ndarray:
    from .backends.numpy import aligner

    start = step.args["start"]
    if start is None:
        return np.zeros(step.shape, dtype)
    if isinstance(start, float):
        return np.full(step.shape, start, dtype)
    name, axes = start
    move = aligner(axes, step.axes, dict(zip(step.axes, step.shape)))
    value = to_numpy(env[name])
    return np.array(np.broadcast_to(value if move is None else move(value), step.shape), dtype=dtype)


def _body(step: Any, backend: Runtime) -> tuple[Any, Any]:
    """(prepare, f): prepare(env) runs the setup plan once and gathers what the body reads;
    f(fixed, z) runs the body's plan on the backend's executor, giving (its value as a numpy
    array, the body's env)."""
    a = step.args
    run = backend.executor(a["body"]).run
    setup = a["setup"]
    run_setup = backend.executor(setup).run if setup is not None else None
    z, r = a["iterate"], a["result"]
    reads = [n for n, _, _ in a["body"].inputs if n != z]

    def prepare(env: dict[str, Any]) -> dict[str, Any]:
        if run_setup is None:
            return {n: env[n] for n in reads}
        e = {n: env[n] for n, _, _ in setup.inputs}
        run_setup(e)
        return {n: e[n] if n in e else env[n] for n in reads}

    def f(fixed: dict[str, Any], x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        e = dict(fixed)
        e[z] = backend.asarray(x)
        run(e)
        return backend.to_numpy(e[r]), e

    return prepare, f


def _residual(x: np.ndarray, fx: np.ndarray) -> float:
    """max |f(z) - z| relative to the size of z (1 when z is small)."""
    return float(np.max(np.abs(fx - x), initial=0.0) / (1.0 + np.max(np.abs(fx), initial=0.0)))


def anderson(
    f: Any, x0: np.ndarray, tol: float, max_iter: int, m: int, most: int = 32
) -> tuple[np.ndarray | None, float, int]:
    """The fixed point of f from x0 by Anderson acceleration (type II, Walker and Ni 2011).

    Starts with a history of m; when the extrapolation diverges or stops improving for 4m
    iterations, restarts from the best iterate with twice the history (up to `most`, which for a
    linear f of n <= `most` entries is exact in n + 1 steps, as GMRES is), and past that falls
    back to plain iteration. Returns (the point or None, the best residual, f's evaluations).
    Memory: the last m iterates and values, whatever the number of iterations."""
    shape, n = x0.shape, x0.size
    used = 0

    def g(v: np.ndarray) -> np.ndarray:
        nonlocal used
        used += 1
        return np.asarray(f(v.reshape(shape))).ravel()

    x = x0.ravel()
    fx = g(x)
    best, best_x = _residual(x, fx), fx.copy()
    plain = False
    while used < max_iter and best > tol:
        if plain:
            x, fx = fx, g(fx)
            res = _residual(x, fx)
            if res < best:
                best, best_x = res, fx.copy()
            continue
        fx, res, stalled = _anderson_round(g, best_x, tol, max_iter - used, m, x0.dtype)
        if res < best:
            best, best_x = res, fx.copy()
        if stalled:
            plain = m >= min(most, n)
            m = min(2 * m, most)
            if plain:
                x, fx = best_x, g(best_x)
    return (best_x.reshape(shape) if best <= tol else None), best, used


def _anderson_round(
    g: Any, x0: np.ndarray, tol: float, budget: int, m: int, dtype: np.dtype
) -> tuple[np.ndarray, float, bool]:
    """One run of Anderson(m) from x0 within `budget` evaluations of g: its best f-value and
    residual, and whether it stopped because the extrapolation diverged or stalled."""
    n = x0.size
    X = np.zeros((m, n), dtype)
    F = np.zeros((m, n), dtype)
    X[0], F[0] = x0, g(x0)
    best, best_f, since = _residual(X[0], F[0]), F[0].copy(), 0
    H = np.zeros((m + 1, m + 1))
    H[0, 1:] = H[1:, 0] = 1
    y = np.zeros(m + 1)
    y[0] = 1
    for k in range(1, budget):
        if best <= tol:
            break
        h = min(k, m)
        G = (F[:h] - X[:h]).astype(np.float64)
        gram = G @ G.T
        scale = float(np.trace(gram)) / h
        H[1 : h + 1, 1 : h + 1] = gram + 1e-10 * (scale if scale > 0 else 1.0) * np.eye(h)
        try:
            alpha = np.linalg.solve(H[: h + 1, : h + 1], y[: h + 1])[1 : h + 1]
        except np.linalg.LinAlgError:
            return best_f, best, True
        x = (alpha @ F[:h]).astype(dtype)
        X[k % m], F[k % m] = x, g(x)
        res = _residual(X[k % m], F[k % m])
        if res < best:
            best, best_f, since = res, F[k % m].copy(), 0
        else:
            since += 1
        if not math.isfinite(res) or res > 1e3 * best or since > 4 * m:
            return best_f, best, True
    return best_f, best, False


@dataclass(frozen=True)
class Runtime:
    """What fix and solve need of a backend: its executor for the nested plans, and its arrays
    to and from numpy (the iterations' bookkeeping: Anderson's least squares, Newton's blocks)."""

    executor: Callable[[Any], Any]
    to_numpy: Callable[[Any], np.ndarray]
    asarray: Callable[[np.ndarray], Any]


def builders(backend: Runtime) -> dict[str, Callable[[Any], Any]]:
    """The builders of the `fix` and `solve` step kinds for a backend's registry."""
    return {"fix": lambda step: build_fix(step, backend), "solve": lambda step: build_solve(step, backend)}


def build_fix(step: Any, backend: Runtime) -> Any:
    """A fix step as a compute: env -> the fixed point."""
    a = step.args
    prepare, body = _body(step, backend)
    dtype = np.dtype(step.dtype)

    def compute(env: dict[str, Any]) -> np.ndarray:
        fixed = prepare(env)

        def f(x: np.ndarray) -> np.ndarray:
            return body(fixed, x)[0]

        with np.errstate(all="ignore"):
            x0 = _start(step, env, dtype, backend.to_numpy)
            z, res, used = anderson(f, x0, a["tol"], a["max_iter"], a["m"], a["most"])
        if z is None:
            raise _not_converged(step, res, used)
        return backend.asarray(z)

    return compute


def build_solve(step: Any, backend: Runtime) -> Any:
    """A solve step as a compute: Newton's method with a backtracking line search, the Jacobian
    formed block by block from the tangent plan (one tangent run per entry of a block)."""
    a = step.args
    prepare, body = _body(step, backend)
    tangent = backend.executor(a["tangent"]).run
    treads = [n for n, _, _ in a["tangent"].inputs if n != a["direction"]]
    dtype = np.dtype(step.dtype)
    shape, diagonal = step.shape, a["diagonal"]
    perm = tuple(diagonal) + tuple(k for k in range(len(shape)) if k not in diagonal)
    inverse = tuple(np.argsort(perm))
    nd = math.prod(shape[k] for k in diagonal)
    block = math.prod(shape) // max(nd, 1) if nd else 0

    def rows(v: np.ndarray) -> np.ndarray:
        return v.transpose(perm).reshape(nd, block)

    def jacobian(e: dict[str, Any]) -> np.ndarray:
        J = np.empty((nd, block, block), np.float64)
        base = {n: e[n] for n in treads}
        for col in range(block):
            direction = np.zeros((nd, block), dtype)
            direction[:, col] = 1
            t = dict(base)
            t[a["direction"]] = backend.asarray(
                direction.reshape([shape[k] for k in perm]).transpose(inverse)
            )
            tangent(t)
            J[:, :, col] = rows(np.broadcast_to(backend.to_numpy(t[a["slope"]]), shape))
        return J

    def blocks(t: np.ndarray) -> np.ndarray:
        """One value per diagonal block, spread over z's shape."""
        return np.broadcast_to(t[:, None], (nd, block)).reshape([shape[k] for k in perm]).transpose(inverse)

    def compute(env: dict[str, Any]) -> Any:
        x = _start(step, env, dtype, backend.to_numpy)
        fixed = prepare(env)
        with np.errstate(all="ignore"):
            gx, e = body(fixed, x)
            res = float(np.max(np.abs(gx), initial=0.0))
            for it in range(a["max_iter"] + 1):
                if res <= a["tol"]:
                    return backend.asarray(x)
                if it == a["max_iter"] or not math.isfinite(res):
                    break
                try:
                    d = np.linalg.solve(jacobian(e), -rows(gx)[..., None].astype(np.float64))[..., 0]
                except np.linalg.LinAlgError:
                    raise _not_converged(
                        step, res, it, f"; its Jacobian in '{a['iterate']}' is singular there"
                    ) from None
                d = d.reshape([shape[k] for k in perm]).transpose(inverse).astype(dtype)
                # backtracking (Armijo) per diagonal block, which are independent problems: each
                # block's step is halved until its residual shrinks enough
                norm = np.linalg.norm(rows(gx), axis=1)
                t = np.ones(nd)
                while True:
                    xn = x + blocks(t).astype(dtype) * d
                    gn, en = body(fixed, xn)
                    short = ~(np.linalg.norm(rows(gn), axis=1) <= (1 - 1e-4 * t) * norm)  # NaN: short
                    if not short.any() or t.min() < 1e-6:
                        break
                    t = np.where(short, t / 2, t)
                x, gx, e = xn, gn, en
                res = float(np.max(np.abs(gx), initial=0.0))
        raise _not_converged(step, res, it)

    return compute


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
    "Runtime",
    "anderson",
    "build_fix",
    "build_solve",
    "builders",
    "iteration_settings",
    "plan_implicit",
    "swap_implicit",
    "tangent_implicit",
]
