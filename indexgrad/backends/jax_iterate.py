"""fix and solve in jax: Anderson acceleration and Newton's method as `jax.lax.while_loop`s, so that
a plan holding them is one jitted computation (and batches under `jax.vmap`).

The functions read nothing but jax: code generation prints them, as they are, into the jax modules
it writes (indexgrad/codegen.py), so the backend and the printed module iterate alike. Neither can
raise under a trace: where the iteration does not converge the point is NaN, and the residual and
the evaluations used come back beside it for the caller that can see the values to report.
"""

import jax
import jax.numpy as jnp


def fixed_point(f, z, tol, max_iter, m):
    """The fixed point of f from z by Anderson acceleration (type II, Walker and Ni 2011) with the
    last m iterates in a buffer of fixed size; when the extrapolation diverges or finds no better
    point in 4m evaluations, plain iteration from the best point. Stops when max |f(x) - x| is at
    most tol relative to 1 + max |f(x)|. Returns (the point, NaN if none was found; its residual;
    the evaluations of f)."""
    shape, n = z.shape, z.size

    def g(x):
        return f(x.reshape(shape)).reshape(n)

    def residual(x, fx):
        return jnp.max(jnp.abs(fx - x), initial=0) / (1 + jnp.max(jnp.abs(fx), initial=0))

    x = z.reshape(n)
    fx = g(x)
    X = jnp.zeros((m, n), x.dtype).at[0].set(x)
    F = jnp.zeros((m, n), x.dtype).at[0].set(fx)
    border = jnp.zeros(m + 1, x.dtype).at[0].set(1)

    def extrapolated(k, X, F):
        """The combination of the last min(k, m) values whose residuals' combination is least
        (weights summing to 1): a bordered m x m system, unused slots weighted 0."""
        used = jnp.arange(m) < k
        G = jnp.where(used[:, None], F - X, 0)
        gram = G @ G.T
        scale = jnp.trace(gram) / jnp.minimum(k, m)
        ridge = 1e-10 * jnp.where(scale > 0, scale, 1)
        inner = gram + jnp.diag(jnp.where(used, ridge, 1))
        u = used.astype(x.dtype)
        H = jnp.block([[jnp.zeros((1, 1), x.dtype), u[None, :]], [u[:, None], inner]])
        alpha = jnp.linalg.solve(H, border)[1:]
        return alpha @ F

    def running(s):
        k, best = s[0], s[4]
        return (k < max_iter) & (best > tol)

    def step(s):
        k, X, F, fx, best, best_f, since, plain = s
        x = jnp.where(plain, fx, extrapolated(k, X, F))
        fx = g(x)
        r = residual(x, fx)
        X, F = X.at[k % m].set(x), F.at[k % m].set(fx)
        better = r < best
        best, best_f = jnp.where(better, r, best), jnp.where(better, fx, best_f)
        since = jnp.where(better, 0, since + 1)
        stalled = ~plain & ~((r <= 1e3 * best) & (since <= 4 * m))  # NaN: stalled
        fx = jnp.where(stalled, best_f, fx)  # plain iteration goes on from the best point
        return k + 1, X, F, fx, best, best_f, since, plain | stalled

    start = (1, X, F, fx, residual(x, fx), fx, 0, False)
    k, _, _, _, best, best_f, _, _ = jax.lax.while_loop(running, step, start)
    return jnp.where(best <= tol, best_f, jnp.nan).reshape(shape), best, k


def newton(g, slope, z, diagonal, tol, max_iter):
    """A root of g from z by Newton's method with a backtracking (Armijo) line search. g(x) gives
    (g's value, what slope reads); slope(saved, dx) is g's derivative along dx. The Jacobian is
    block diagonal along z's axes `diagonal` (formed one column of a block at a time, every block
    at once); each block is its own problem, with its own step length. Stops when max |g| is at
    most tol. Returns (the root, NaN if none was found; max |g| there; the Newton steps taken;
    whether a Jacobian was singular)."""
    front = tuple(range(len(diagonal)))
    laid = jnp.moveaxis(z, diagonal, front).shape
    blocks = 1
    for d in laid[: len(diagonal)]:
        blocks *= d
    width = z.size // max(blocks, 1)

    def rows(v):  # one row per diagonal block
        v = jnp.broadcast_to(v, z.shape)
        return jnp.moveaxis(v, diagonal, front).reshape(blocks, width)

    def unrows(r):
        return jnp.moveaxis(r.reshape(laid), front, diagonal)

    def jacobian(saved):
        eye = jnp.eye(width, dtype=z.dtype)
        columns = jnp.broadcast_to(eye[:, None, :], (width, blocks, width))
        J = jax.vmap(lambda e: rows(slope(saved, unrows(e))))(columns)  # [column, block, row]
        return J.transpose(1, 2, 0)

    def norms(gx):
        return jnp.sqrt(jnp.sum(rows(gx) ** 2, axis=1))

    def running(s):
        it, _, gx, _, singular = s
        res = jnp.max(jnp.abs(gx), initial=0)
        return (res > tol) & (it < max_iter) & jnp.isfinite(res) & ~singular

    def newton_step(s):
        it, x, gx, saved, _ = s
        d = jnp.linalg.solve(jacobian(saved), -rows(gx)[..., None])[..., 0]
        singular = ~jnp.all(jnp.isfinite(d))
        d = unrows(d)
        before = norms(gx)

        def moved(t):
            xn = x + unrows(jnp.broadcast_to(t[:, None], (blocks, width))) * d
            return (xn, *g(xn))

        def short(t, gn):  # too little decrease (or NaN): halve that block's step
            return ~(norms(gn) <= (1 - 1e-4 * t) * before)

        def searching(ls):
            t, _, gn, _ = ls
            return jnp.any(short(t, gn)) & (jnp.min(t) >= 1e-6)

        def halved(ls):
            t, _, gn, _ = ls
            t = jnp.where(short(t, gn), t / 2, t)
            return (t, *moved(t))

        t = jnp.ones(blocks, z.dtype)
        _, x, gx, saved = jax.lax.while_loop(searching, halved, (t, *moved(t)))
        return it + 1, x, gx, saved, singular

    gx, saved = g(z)
    it, x, gx, _, singular = jax.lax.while_loop(running, newton_step, (0, z, gx, saved, False))
    res = jnp.max(jnp.abs(gx), initial=0)
    return jnp.where(res <= tol, x, jnp.nan), res, it, singular
