"""The benchmark workloads, each written four ways.

(a) an `.idx` program run by indexgrad (forward, then backward wrt the parameters);
(b) by hand in numpy, EDF style: a forward pass that keeps what the backward pass needs, then the
    swap-rule gradients written out, with the cheapest contraction order for the sizes;
(c) PyTorch eager and (d) JAX jit, each only when importable.

Every implementation is an `Impl` whose `step()` runs one forward + backward and whose
`unpack(step())` gives `(loss, {name: gradient})` as numpy arrays, so the harness in run.py can
check it against (b) and time it without knowing which library it uses.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import indexgrad as ig

Array = np.ndarray
Result = tuple[float, dict[str, Array]]

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_JAX = importlib.util.find_spec("jax") is not None


@dataclass
class Impl:
    name: str
    step: Callable[[], Any]
    unpack: Callable[[Any], Result]
    model: Any = None  # indexgrad's compiled model, for per_kernel.py


@dataclass
class Workload:
    key: str
    title: str
    dtype: Any
    target: float | None  # issue 6's bound on indexgrad's median ratio to hand-written numpy
    impls: dict[str, Impl] = field(default_factory=dict)
    reference: str = "numpy"  # the implementation the others are checked against and divided by
    note: str = ""


# ---------------------------------------------------------------------------------------------
# helpers shared by the implementations


def _identity(out: Any) -> Result:
    loss, grads = out
    return float(loss), {k: np.asarray(v) for k, v in grads.items()}


def indexgrad_impl(text: str, arrays: Mapping[str, Array], wrt: list[str]) -> Impl:
    """(a): compile once; a step is `forward` then `backward(loss="loss", wrt=...)`."""
    model = ig.compile(text)

    def step() -> Result:
        vals = model.forward(**arrays)
        return vals["loss"], model.backward(vals, loss="loss", wrt=wrt)

    return Impl("indexgrad", step, _identity, model)


def torch_impl(loss_fn: Callable, arrays: Mapping[str, Array], order: list[str], wrt: list[str]) -> Impl:
    """(c): eager PyTorch; the gradients by `torch.autograd.grad` (nothing accumulates across steps)."""
    import torch

    ts = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])).requires_grad_(k in wrt) for k in order}
    args = [ts[k] for k in order]
    wrt_t = [ts[k] for k in wrt]

    def step():
        loss = loss_fn(*args)
        return loss, torch.autograd.grad(loss, wrt_t)

    def unpack(out) -> Result:
        loss, grads = out
        return float(loss.detach()), {k: g.numpy() for k, g in zip(wrt, grads)}

    return Impl("torch", step, unpack)


def jax_impl(loss_fn: Callable, arrays: Mapping[str, Array], order: list[str], wrt: list[str]) -> Impl:
    """(d): `jax.jit(jax.value_and_grad(loss))`, inputs already on the device, result blocked on."""
    import jax

    jax.config.update("jax_enable_x64", True)  # keep float64 workloads float64 (float32 stays float32)
    args = [jax.device_put(arrays[k]) for k in order]
    argnums = tuple(order.index(k) for k in wrt)
    f = jax.jit(jax.value_and_grad(loss_fn, argnums=argnums))

    def step():
        return jax.block_until_ready(f(*args))

    def unpack(out) -> Result:
        loss, grads = out
        return float(loss), {k: np.asarray(g) for k, g in zip(wrt, grads)}

    return Impl("jax", step, unpack)


def tolerances(dtype: Any) -> tuple[float, float]:
    """(rtol, atol relative to the reference's largest magnitude) for np.allclose."""
    return (2e-3, 2e-4) if np.dtype(dtype) == np.float32 else (1e-8, 1e-10)


def assert_close(got: Result, ref: Result, dtype: Any, what: str) -> None:
    rtol, atol = tolerances(dtype)
    (gl, gg), (rl, rg) = got, ref
    if not np.isclose(gl, rl, rtol=rtol, atol=atol * max(abs(rl), 1.0)):
        raise AssertionError(f"{what}: loss {gl!r} differs from the reference {rl!r}")
    if set(gg) != set(rg):
        raise AssertionError(f"{what}: gradients for {sorted(gg)}, the reference has {sorted(rg)}")
    for k, r in rg.items():
        g = np.asarray(gg[k])
        if g.shape != r.shape:
            raise AssertionError(f"{what}: gradient of {k} has shape {g.shape}, expected {r.shape}")
        if g.dtype != r.dtype:
            raise AssertionError(f"{what}: gradient of {k} has dtype {g.dtype}, expected {r.dtype}")
        scale = float(np.max(np.abs(r))) if r.size else 1.0
        if not np.allclose(g, r, rtol=rtol, atol=atol * scale):
            err = float(np.max(np.abs(g - r)))
            raise AssertionError(f"{what}: gradient of {k} is off by up to {err:.3g} (scale {scale:.3g})")


# ---------------------------------------------------------------------------------------------
# the MLP train step: two ReLU hidden layers, softmax cross-entropy against one-hot labels

MLP_IDX = """\
param W1[d,h], B1[h], W2[h,h2], B2[h2], W3[h2,c], B3[c]
input x[b,d], Y[b,c]
h1[b,h] = relu(x[b,d] W1[d,h] + B1[h])
h2[b,k] = relu(h1[b,h] W2[h,k] + B2[k])
z[b,c] = h2[b,k] W3[k,c] + B3[c]
loss = mean[b](logsumexp[c](z[b,c]) - sum[c](Y[b,c] z[b,c]))
"""
MLP_PARAMS = ["W1", "B1", "W2", "B2", "W3", "B3"]
MLP_ORDER = ["x", "Y", *MLP_PARAMS]


def mlp_arrays(b: int, d: int, h: int, h2: int, c: int, dtype: Any, seed: int = 0) -> dict[str, Array]:
    rng = np.random.default_rng(seed)

    def init(*shape: int) -> Array:  # He initialisation keeps ReLU activations of order one
        return (rng.standard_normal(shape) * np.sqrt(2.0 / shape[0])).astype(dtype)

    return {
        "x": rng.standard_normal((b, d)).astype(dtype),
        "Y": np.eye(c, dtype=dtype)[rng.integers(0, c, b)],
        "W1": init(d, h),
        "B1": (0.1 * rng.standard_normal(h)).astype(dtype),
        "W2": init(h, h2),
        "B2": (0.1 * rng.standard_normal(h2)).astype(dtype),
        "W3": init(h2, c),
        "B3": (0.1 * rng.standard_normal(c)).astype(dtype),
    }


def mlp_hand(x, Y, W1, B1, W2, B2, W3, B3) -> Result:
    """(b) EDF style: forward keeps h1, h2 and the softmax; backward by the swap rule."""
    n = x.shape[0]
    # forward: h1[b,h] = relu(x[b,d] W1[d,h] + B1[h]) ... z[b,c] = h2[b,k] W3[k,c] + B3[c]
    h1 = x @ W1
    h1 += B1
    np.maximum(h1, 0, out=h1)
    h2 = h1 @ W2
    h2 += B2
    np.maximum(h2, 0, out=h2)
    z = h2 @ W3
    z += B3
    # loss = mean[b](logsumexp[c](z[b,c]) - sum[c](Y[b,c] z[b,c])), stably
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    s = e.sum(axis=1, keepdims=True)
    loss = np.mean(zmax[:, 0] + np.log(s[:, 0]) - np.einsum("bc,bc->b", Y, z))
    # backward: z.grad = (softmax(z) - Y) / n
    e /= s
    e -= Y
    e /= n
    dz = e
    dW3 = h2.T @ dz  # W3.grad[k,c] += h2[b,k] z.grad[b,c]
    dB3 = dz.sum(axis=0)  # B3.grad[c] += z.grad[b,c]
    dh2 = dz @ W3.T  # h2.grad[b,k] += z.grad[b,c] W3[k,c]
    dh2 *= h2 > 0  # relu' = step(pre-activation) = step(h2)
    dW2 = h1.T @ dh2
    dB2 = dh2.sum(axis=0)
    dh1 = dh2 @ W2.T
    dh1 *= h1 > 0
    dW1 = x.T @ dh1  # the data input's gradient x.grad is never computed
    dB1 = dh1.sum(axis=0)
    return loss, {"W1": dW1, "B1": dB1, "W2": dW2, "B2": dB2, "W3": dW3, "B3": dB3}


def _mlp_torch_loss(x, Y, W1, B1, W2, B2, W3, B3):
    import torch

    h1 = torch.relu(x @ W1 + B1)
    h2 = torch.relu(h1 @ W2 + B2)
    z = h2 @ W3 + B3
    return (torch.logsumexp(z, dim=1) - (Y * z).sum(dim=1)).mean()


def _mlp_jax_loss(x, Y, W1, B1, W2, B2, W3, B3):
    import jax

    h1 = jax.nn.relu(x @ W1 + B1)
    h2 = jax.nn.relu(h1 @ W2 + B2)
    z = h2 @ W3 + B3
    return (jax.nn.logsumexp(z, axis=1) - (Y * z).sum(axis=1)).mean()


def mlp_workload(key: str, b: int, d: int, h: int, h2: int, c: int, target: float, use: set[str]) -> Workload:
    dtype = np.float32
    arrays = mlp_arrays(b, d, h, h2, c, dtype)
    w = Workload(key, f"MLP train step, B={b}, {d}-{h}-{h2}-{c}, float32", dtype, target)
    w.impls["numpy"] = Impl("numpy", lambda: mlp_hand(*(arrays[k] for k in MLP_ORDER)), _identity)
    if "indexgrad" in use:
        w.impls["indexgrad"] = indexgrad_impl(MLP_IDX, arrays, MLP_PARAMS)
    if "torch" in use and HAVE_TORCH:
        w.impls["torch"] = torch_impl(_mlp_torch_loss, arrays, MLP_ORDER, MLP_PARAMS)
    if "jax" in use and HAVE_JAX:
        w.impls["jax"] = jax_impl(_mlp_jax_loss, arrays, MLP_ORDER, MLP_PARAMS)
    return w


# ---------------------------------------------------------------------------------------------
# the matrix chain y = x A B C, loss = Σ y² / 2, gradients for all four factors

CHAIN_IDX = """\
param A[j,k], B[k,l], C[l,i]
input x[b,j]
y[b,i] = x[b,j] A[j,k] B[k,l] C[l,i]
loss = 0.5 sum[b,i](y[b,i]^2)
"""
CHAIN_ORDER = ["x", "A", "B", "C"]


def chain_arrays(b: int, j: int, k: int, l: int, i: int, dtype: Any, seed: int = 1) -> dict[str, Array]:  # noqa: E741
    rng = np.random.default_rng(seed)

    def init(*shape: int) -> Array:  # unit-variance rows through every factor
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(dtype)

    return {"x": rng.standard_normal((b, j)).astype(dtype), "A": init(j, k), "B": init(k, l), "C": init(l, i)}


def chain_hand_left(x, A, B, C) -> Result:
    """(b) for square factors: ((x A) B) C, then the six pairwise gradients (9 matmuls in all)."""
    t1 = x @ A
    t2 = t1 @ B
    y = t2 @ C
    loss = 0.5 * np.vdot(y, y)
    g = y  # y.grad[b,i] = y[b,i]
    dC = t2.T @ g
    dt2 = g @ C.T
    dB = t1.T @ dt2
    dt1 = dt2 @ B.T
    dA = x.T @ dt1
    dx = dt1 @ A.T
    return loss, {"x": dx, "A": dA, "B": dB, "C": dC}


def chain_hand_split(x, A, B, C) -> Result:
    """(b) for a narrow k: (x A)(B C), both partial products shared by the four gradients.

    With b=256, j=1024, k=16, l=i=1024 this costs 3 × 4M + 2 × 16M + 1 × 4M multiply-adds... against
    268M for the C-side product alone in left-to-right order.
    """
    t1 = x @ A  # [b,k]
    t2 = B @ C  # [k,i]
    y = t1 @ t2
    loss = 0.5 * np.vdot(y, y)
    g = y
    dt1 = g @ t2.T
    dt2 = t1.T @ g
    dx = dt1 @ A.T
    dA = x.T @ dt1
    dB = dt2 @ C.T
    dC = B.T @ dt2
    return loss, {"x": dx, "A": dA, "B": dB, "C": dC}


def _chain_torch_loss(x, A, B, C):
    import torch

    y = torch.einsum("bj,jk,kl,li->bi", x, A, B, C)  # torch.einsum orders the chain with opt_einsum
    return 0.5 * (y * y).sum()


def _chain_jax_loss(x, A, B, C):
    import jax.numpy as jnp

    y = jnp.einsum("bj,jk,kl,li->bi", x, A, B, C)  # jnp.einsum orders the chain with opt_einsum
    return 0.5 * (y * y).sum()


def chain_workload(
    key: str, dims: tuple[int, int, int, int, int], dtype: Any, hand: Callable, target: float, use: set[str]
) -> Workload:
    b, j, k, l, i = dims  # noqa: E741
    arrays = chain_arrays(b, j, k, l, i, dtype)
    name = np.dtype(dtype).name
    title = (
        f"chain x A B C, all 4 grads, {b}x{j}^4, {name}"
        if len({j, k, l, i}) == 1
        else f"chain x A B C, all 4 grads, b={b} j={j} k={k} l={l} i={i}, {name}"
    )
    w = Workload(key, title, dtype, target)
    w.impls["numpy"] = Impl("numpy", lambda: hand(*(arrays[n] for n in CHAIN_ORDER)), _identity)
    if "indexgrad" in use:
        w.impls["indexgrad"] = indexgrad_impl(CHAIN_IDX, arrays, CHAIN_ORDER)
    if "torch" in use and HAVE_TORCH:
        w.impls["torch"] = torch_impl(_chain_torch_loss, arrays, CHAIN_ORDER, CHAIN_ORDER)
    if "jax" in use and HAVE_JAX:
        w.impls["jax"] = jax_impl(_chain_jax_loss, arrays, CHAIN_ORDER, CHAIN_ORDER)
    return w


def main_workloads(use: set[str]) -> list[Callable[[], Workload]]:
    """Issue 6's four workloads, as builders (so arrays for one are freed before the next is built)."""
    return [
        lambda: mlp_workload("mlp_large", 512, 784, 1024, 1024, 10, 1.00, use),
        lambda: mlp_workload("mlp_small", 64, 784, 256, 256, 10, 1.10, use),
        lambda: chain_workload(
            "chain_square", (256, 512, 512, 512, 512), np.float64, chain_hand_left, 1.10, use
        ),
        lambda: chain_workload(
            "chain_bottleneck", (256, 1024, 16, 1024, 1024), np.float32, chain_hand_split, 1.15, use
        ),
    ]


WORKLOAD_KEYS = ["mlp_large", "mlp_small", "chain_square", "chain_bottleneck"]


# ---------------------------------------------------------------------------------------------
# the per-primitive floor and the planning cost of a long program

MICRO_IDX = "y[i,k] = a[i,j] b[j,k]\n"


def micro_calls(n: int = 4, seed: int = 2) -> dict[str, Callable[[], Any]]:
    """One primitive statement on n×n float64 arrays, and what numpy does with the same product."""
    import opt_einsum

    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    model = ig.compile(MICRO_IDX)
    ref = a @ b
    got = model.forward(a=a, b=b)["y"]
    if not np.allclose(got, ref, rtol=1e-12, atol=1e-12):
        raise AssertionError("micro: indexgrad's y differs from a @ b")
    expr = opt_einsum.contract_expression("ij,jk->ik", a.shape, b.shape)
    return {
        "indexgrad forward": lambda: model.forward(a=a, b=b),
        "np.matmul": lambda: np.matmul(a, b),
        "np.einsum": lambda: np.einsum("ij,jk->ik", a, b),
        "opt_einsum expression": lambda: expr(a, b),
    }


def long_program(n_statements: int = 200) -> tuple[str, list[str]]:
    """A tanh network of n_statements - 1 layers and a loss: n_statements statements in all."""
    lines, params = [], []
    layers = n_statements - 1
    for t in range(1, layers + 1):
        lines.append(f"h{t}[b,i] = tanh(h{t - 1}[b,j] W{t}[j,i] + B{t}[i])")
        params += [f"W{t}", f"B{t}"]
    lines.append(f"loss = 0.5 sum[b,i](h{layers}[b,i]^2)")
    decl = "param " + ", ".join(f"W{t}[j,i], B{t}[i]" for t in range(1, layers + 1))
    return decl + "\ninput h0[b,j]\n" + "\n".join(lines) + "\n", params


def long_program_arrays(
    n_statements: int = 200, b: int = 2, width: int = 3, seed: int = 3
) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    arrays = {"h0": rng.standard_normal((b, width))}
    for t in range(1, n_statements):
        arrays[f"W{t}"] = rng.standard_normal((width, width)) / np.sqrt(width)
        arrays[f"B{t}"] = 0.1 * rng.standard_normal(width)
    return arrays
