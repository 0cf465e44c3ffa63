"""The benchmark workloads, each written up to seven ways, and the registry of them by key.

Peers: (numpy) by hand, EDF style: a forward pass that keeps what the backward pass needs, then the
swap-rule gradients written out, with the cheapest contraction order for the sizes; (torch)
PyTorch eager, gradients by autograd; (jax) `jax.jit(jax.value_and_grad(loss))`.
indexgrad: the `.idx` text compiled for each backend (`indexgrad` runs on the numpy backend,
`indexgrad-torch` and `indexgrad-jax` on the others, `indexgrad-auto` on the one `backend="auto"`
times fastest for the workload's shapes), and `indexgrad-before`, an earlier copy of
the package imported as `indexgrad_before` (run.py --baseline).

Every implementation is an `Impl` whose `step()` runs one forward + backward and whose
`unpack(step())` gives `(loss, {name: gradient})` as numpy arrays, so the harness can check it
against the hand-written step and time it without knowing which library it uses. One that cannot
run here (a library not installed, a backend indexgrad does not have yet) is left out of
`Workload.impls` and named in `Workload.skipped` with the reason.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

import indexgrad as ig

Array = np.ndarray
Result = tuple[float, dict[str, Array]]

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_JAX = importlib.util.find_spec("jax") is not None

PEERS = ("numpy", "torch", "jax")
# impl -> backend; "auto" takes numpy arrays and runs each plan on the backend it timed fastest
BACKENDS = {
    "indexgrad": "numpy", "indexgrad-torch": "torch", "indexgrad-jax": "jax", "indexgrad-auto": "auto",
}  # fmt: skip
BEFORE = "indexgrad-before"
IMPLS = (*BACKENDS, BEFORE, *PEERS)
LABELS = {
    "indexgrad": "indexgrad (numpy)",
    "indexgrad-torch": "indexgrad (torch)",
    "indexgrad-jax": "indexgrad (jax)",
    "indexgrad-auto": "indexgrad (auto)",
    BEFORE: "indexgrad (before)",
    "numpy": "hand numpy",
    "torch": "PyTorch eager",
    "jax": "JAX jit",
}

# Issue 24, timed blocked: the best indexgrad backend over the best peer, per workload; and the
# numpy backend over hand-written numpy, on every workload.
GOALS = {
    "mlp_large": 1.05,
    "mlp_small": 1.00,
    "chain_square": 1.00,
    "chain_bottleneck": 1.00,
    "conv_xwB": 1.20,
    "transformer": 1.00,
}
NUMPY_GOAL = 1.05
# Issue 6, timed interleaved: the numpy backend over hand-written numpy
INTERLEAVED_TARGETS = {"mlp_large": 1.00, "mlp_small": 1.10, "chain_square": 1.10, "chain_bottleneck": 1.15}


@dataclass
class Impl:
    name: str
    step: Callable[[], Any]
    unpack: Callable[[Any], Result]
    # indexgrad's: the compiled model, the arrays it is given, the gradients asked for (per_step.py)
    model: Any = None
    inputs: Mapping[str, Any] | None = None
    wrt: list[str] | None = None


@dataclass
class Workload:
    key: str
    title: str
    dtype: Any
    flops: int  # 2 x the multiply-adds of the step's products, as the hand-written step does them
    impls: dict[str, Impl] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # implementations that cannot run here: why
    reference: str = "numpy"  # the implementation the others are checked against


@dataclass
class Spec:
    """What a workload is made of: its `.idx` text, arrays, the order the peers take them in, the
    gradients asked for, and the step written in each library (None: not written for that one)."""

    text: str
    arrays: dict[str, Array]
    order: list[str]
    wrt: list[str]
    hand: Callable[..., Result]
    torch_loss: Callable | None = None
    jax_loss: Callable | None = None


class Unavailable(Exception):
    """An implementation that cannot run on this machine or with this indexgrad."""


# ---------------------------------------------------------------------------------------------
# the implementations


def _identity(out: Any) -> Result:
    loss, grads = out
    return float(loss), {k: np.asarray(v) for k, v in grads.items()}


def _jax() -> ModuleType:
    import jax

    jax.config.update("jax_enable_x64", True)  # keep float64 workloads float64 (float32 stays float32)
    return jax


def _on(backend: str, a: Array) -> Any:
    """An input as a user of that backend passes it: a torch tensor, a jax array, a numpy array."""
    if backend == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a))
    if backend == "jax":
        return _jax().device_put(a)
    return a


def indexgrad_impl(
    text: str,
    arrays: Mapping[str, Array],
    wrt: list[str],
    name: str = "indexgrad",
    package: ModuleType = ig,
) -> Impl:
    """A step is `value_and_grad(arrays, loss="loss", wrt=...)` of the text compiled once (forward
    then backward in a copy of indexgrad that predates it), on the backend the name says, with the
    inputs as that backend's arrays; Unavailable when indexgrad refuses the backend (unknown, not
    built yet, its library not installed)."""
    backend = BACKENDS.get(name, "numpy")
    try:
        model = package.compile(text) if backend == "numpy" else package.compile(text, backend=backend)
    except package.IndexgradError as e:
        raise Unavailable(getattr(e, "message", str(e)).splitlines()[0]) from None
    given = {k: _on(backend, v) for k, v in arrays.items()}
    sync = _jax().block_until_ready if backend == "jax" else None  # jax returns before it is done
    joined = hasattr(model, "value_and_grad")

    def step() -> Any:
        if joined:
            vals, grads = model.value_and_grad(given, loss="loss", wrt=wrt)
        else:  # a copy from before value_and_grad
            vals = model.forward(**given)
            grads = model.backward(vals, loss="loss", wrt=wrt)
        out = vals["loss"], grads
        return out if sync is None else sync(out)

    return Impl(name, step, _identity, model, given, wrt)


def torch_impl(loss_fn: Callable, arrays: Mapping[str, Array], order: list[str], wrt: list[str]) -> Impl:
    """Eager PyTorch; the gradients by `torch.autograd.grad` (nothing accumulates across steps)."""
    import torch

    ts = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])).requires_grad_(k in wrt) for k in order}
    args = [ts[k] for k in order]
    wrt_t = [ts[k] for k in wrt]

    def step() -> Any:
        loss = loss_fn(*args)
        return loss, torch.autograd.grad(loss, wrt_t)

    def unpack(out: Any) -> Result:
        loss, grads = out
        return float(loss.detach()), {k: g.numpy() for k, g in zip(wrt, grads)}

    return Impl("torch", step, unpack)


def jax_impl(loss_fn: Callable, arrays: Mapping[str, Array], order: list[str], wrt: list[str]) -> Impl:
    """`jax.jit(jax.value_and_grad(loss))`, inputs already on the device, result blocked on."""
    jax = _jax()
    args = [jax.device_put(arrays[k]) for k in order]
    argnums = tuple(order.index(k) for k in wrt)
    f = jax.jit(jax.value_and_grad(loss_fn, argnums=argnums))

    def step() -> Any:
        return jax.block_until_ready(f(*args))

    def unpack(out: Any) -> Result:
        loss, grads = out
        return float(loss), {k: np.asarray(g) for k, g in zip(wrt, grads)}

    return Impl("jax", step, unpack)


def assemble(
    key: str, title: str, dtype: Any, flops: int, spec: Spec, use: set[str], before: ModuleType | None
) -> Workload:
    """The workload with the implementations in `use` that can run here (the hand-written
    reference always), each one that cannot named in `skipped`."""
    w = Workload(key, title, dtype, flops)
    a = spec.arrays
    w.impls["numpy"] = Impl("numpy", lambda: spec.hand(*(a[k] for k in spec.order)), _identity)
    for name in IMPLS:
        if name not in use or name == "numpy":
            continue
        try:
            if name in BACKENDS:
                w.impls[name] = indexgrad_impl(spec.text, a, spec.wrt, name)
            elif name == BEFORE:
                if before is None:
                    raise Unavailable("no --baseline package given")
                w.impls[name] = indexgrad_impl(spec.text, a, spec.wrt, name, before)
            elif name == "torch":
                if not HAVE_TORCH or spec.torch_loss is None:
                    raise Unavailable("torch is not installed" if not HAVE_TORCH else "not written")
                w.impls[name] = torch_impl(spec.torch_loss, a, spec.order, spec.wrt)
            elif name == "jax":
                if not HAVE_JAX or spec.jax_loss is None:
                    raise Unavailable("jax is not installed" if not HAVE_JAX else "not written")
                w.impls[name] = jax_impl(spec.jax_loss, a, spec.order, spec.wrt)
        except Unavailable as e:
            w.skipped[name] = str(e)
    return w


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


def mlp_workload(
    key: str, dims: tuple[int, ...], use: set[str], before: ModuleType | None = None
) -> Workload:
    b, d, h, h2, c = dims
    dtype = np.float32
    # forward: three products; backward: the three weight gradients and two activation gradients
    flops = 2 * b * (2 * d * h + 3 * h * h2 + 3 * h2 * c)
    spec = Spec(
        MLP_IDX, mlp_arrays(b, d, h, h2, c, dtype), MLP_ORDER, MLP_PARAMS, mlp_hand,
        _mlp_torch_loss, _mlp_jax_loss,
    )  # fmt: skip
    return assemble(key, f"MLP B={b}, {d}-{h}-{h2}-{c}, float32", dtype, flops, spec, use, before)


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
    key: str, dims: tuple[int, ...], use: set[str], before: ModuleType | None = None
) -> Workload:
    b, j, k, l, i = dims  # noqa: E741
    if len({j, k, l, i}) == 1:  # square: ((x A) B) C, 9 products of b x j x j
        dtype, hand, flops = np.float64, chain_hand_left, 9 * 2 * b * j * j
        title = f"chain x A B C, all 4 grads, {b}x{j}^4, float64"
    else:  # a narrow k: (x A)(B C)
        dtype, hand = np.float32, chain_hand_split
        flops = 2 * (3 * b * j * k + 3 * k * l * i + 3 * b * k * i)
        title = f"chain x A B C, all 4 grads, b={b} j={j} k={k} l={l} i={i}, float32"
    arrays = chain_arrays(b, j, k, l, i, dtype)
    spec = Spec(CHAIN_IDX, arrays, CHAIN_ORDER, CHAIN_ORDER, hand, _chain_torch_loss, _chain_jax_loss)
    return assemble(key, title, dtype, flops, spec, use, before)


# ---------------------------------------------------------------------------------------------
# a 2048^3 float32 product: what the machine's BLAS reaches, per library

PEAK_KEY = "matmul2048"


def matmul_workload(
    key: str, dims: tuple[int, ...], use: set[str], before: ModuleType | None = None
) -> Workload:
    """C = A B on n x n float32 matrices, in numpy, torch and jax (no gradient: this is the yardstick
    the other workloads' flop rates are divided by)."""
    (n,) = dims
    rng = np.random.default_rng(5)
    A, B = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    w = Workload(key, f"C = A B, {n}^3, float32", np.float32, 2 * n**3)
    w.impls["numpy"] = Impl("numpy", lambda: (0.0, {"C": A @ B}), _identity)
    if "torch" in use and HAVE_TORCH:
        import torch

        ta, tb = torch.from_numpy(A), torch.from_numpy(B)
        w.impls["torch"] = Impl("torch", lambda: (0.0, {"C": torch.mm(ta, tb)}), _identity)
    if "jax" in use and HAVE_JAX:
        jax = _jax()
        ja, jb = jax.device_put(A), jax.device_put(B)
        mm = jax.jit(jax.numpy.matmul)
        w.impls["jax"] = Impl("jax", lambda: (0.0, {"C": mm(ja, jb).block_until_ready()}), _identity)
    return w


# ---------------------------------------------------------------------------------------------
# the registry: key -> (builder, full sizes, tiny sizes for tests/test_benchmarks.py)


def _conv(key: str, dims: tuple[int, ...], use: set[str], before: ModuleType | None = None) -> Workload:
    from conv import conv_workload  # conv.py and transformer.py import this module

    return conv_workload(key, dims, use, before)


def _transformer(
    key: str, dims: tuple[int, ...], use: set[str], before: ModuleType | None = None
) -> Workload:
    from transformer import transformer_workload

    return transformer_workload(key, dims, use, before)


REGISTRY: dict[str, tuple[Callable[..., Workload], tuple[int, ...], tuple[int, ...]]] = {
    "mlp_large": (mlp_workload, (512, 784, 1024, 1024, 10), (4, 8, 6, 5, 3)),
    "mlp_small": (mlp_workload, (64, 784, 256, 256, 10), (3, 5, 4, 4, 3)),
    "chain_square": (chain_workload, (256, 512, 512, 512, 512), (3, 4, 4, 4, 4)),
    "chain_bottleneck": (chain_workload, (256, 1024, 16, 1024, 1024), (3, 6, 2, 5, 4)),
    "conv_xwB": (_conv, (16, 8, 16, 28, 3), (2, 2, 3, 6, 3)),
    "transformer": (_transformer, (8, 64, 128, 4, 512), (2, 5, 8, 2, 12)),
    "conv_wB": (_conv, (16, 8, 16, 28, 3), (2, 2, 3, 6, 3)),
    PEAK_KEY: (matmul_workload, (2048,), (8,)),
}
MAIN_KEYS = ["mlp_large", "mlp_small", "chain_square", "chain_bottleneck", "conv_xwB", "transformer"]
OTHER_KEYS = ["conv_wB"]  # by --only


def build(
    key: str, use: set[str] | None = None, tiny: bool = False, before: ModuleType | None = None
) -> Workload:
    """The workload `key` with the implementations in `use` (default: every one), at its real
    sizes or, `tiny`, at sizes that check every implementation in well under a second."""
    builder, full, small = REGISTRY[key]
    return builder(key, small if tiny else full, set(IMPLS) if use is None else use, before)


# ---------------------------------------------------------------------------------------------
# the per-primitive floor and the planning cost of a long program

MICRO_IDX = "y[i,k] = a[i,j] b[j,k]\n"


def micro_calls(package: ModuleType = ig, n: int = 4, seed: int = 2) -> dict[str, Callable[[], Any]]:
    """One primitive statement on n×n float64 arrays run by `package` (indexgrad or an earlier
    copy of it), and what numpy does with the same product."""
    import opt_einsum

    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    model = package.compile(MICRO_IDX)
    ref = a @ b
    got = model.forward(a=a, b=b)["y"]
    if not np.allclose(got, ref, rtol=1e-12, atol=1e-12):
        raise AssertionError(f"micro: {package.__name__}'s y differs from a @ b")
    expr = opt_einsum.contract_expression("ij,jk->ik", a.shape, b.shape)
    return {
        f"{package.__name__} forward": lambda: model.forward(a=a, b=b),
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
