"""A transformer block, forward + backward, in indexgrad, by hand in numpy, in PyTorch and in JAX.

Pre-norm: layer norm, causal multi-head attention (the mask an input added to the scores), a
residual, layer norm, a ReLU MLP, a residual; the loss is half the squared distance to a target,
averaged over the batch. The gradients of every parameter and of the block's input x (a block
inside a network passes it down). Sizes b=8 t=64 d=128, 4 heads of 32, MLP 512, float32.

The `.idx` text is examples/transformer.idx's block written out (its `norm` inlined twice), so
that an indexgrad from before definitions existed runs it too (run.py --baseline).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from workloads import Result, Spec, Workload, assemble

EPS = 1e-5

TRANSFORMER_IDX = """\
param Q[d,h,e], K[d,h,e], V[d,h,e], O[h,e,d], W1[d,f], B1[f], W2[f,d], B2[d], G1[d], S1[d], G2[d], S2[d]
input x[b,t,d], M[t,s], T[b,t,d]
c1[b,t,d] = x[b,t,d] - mean[j](x[b,t,j])
n[b,t,d] = c1[b,t,d] G1[d] / sqrt(mean[j](c1[b,t,j]^2) + 1e-5) + S1[d]
q[b,t,h,e] = n[b,t,d] Q[d,h,e]
k[b,s,h,e] = n[b,s,d] K[d,h,e]
v[b,s,h,e] = n[b,s,d] V[d,h,e]
a[b,h,t,s] = q[b,t,h,e] k[b,s,h,e] / size[e]^0.5 + M[t,s]
p[b,h,t,s] = exp(a[b,h,t,s] - logsumexp[u](a[b,h,t,u]))
r[b,t,d] = x[b,t,d] + p[b,h,t,s] v[b,s,h,e] O[h,e,d]
c2[b,t,d] = r[b,t,d] - mean[j](r[b,t,j])
m[b,t,d] = c2[b,t,d] G2[d] / sqrt(mean[j](c2[b,t,j]^2) + 1e-5) + S2[d]
y[b,t,d] = r[b,t,d] + relu(m[b,t,c] W1[c,f] + B1[f]) W2[f,d] + B2[d]
loss = 0.5 mean[b](sum[t,d]((y[b,t,d] - T[b,t,d])^2))
"""
PARAMS = ["Q", "K", "V", "O", "W1", "B1", "W2", "B2", "G1", "S1", "G2", "S2"]
ORDER = ["x", "M", "T", *PARAMS]
WRT = ["x", *PARAMS]


def transformer_arrays(b: int, t: int, d: int, h: int, f: int, seed: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    e = d // h

    def normal(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return {
        "x": normal((b, t, d), 1.0),
        "M": np.triu(np.full((t, t), -1e9, np.float32), 1),  # 0 where s <= t, -1e9 after
        "T": normal((b, t, d), 1.0),
        "Q": normal((d, h, e), d**-0.5),
        "K": normal((d, h, e), d**-0.5),
        "V": normal((d, h, e), d**-0.5),
        "O": normal((h, e, d), (h * e) ** -0.5),
        "W1": normal((d, f), (2 / d) ** 0.5),
        "B1": normal((f,), 0.1),
        "W2": normal((f, d), f**-0.5),
        "B2": normal((d,), 0.1),
        "G1": 1 + normal((d,), 0.1),
        "S1": normal((d,), 0.1),
        "G2": 1 + normal((d,), 0.1),
        "S2": normal((d,), 0.1),
    }


# ---- by hand, EDF style: the forward keeps what the backward reads ---------------------------


def _norm(x: np.ndarray, G: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer norm over the last axis; also x̂ = (x - mean) / σ and 1/σ, which its gradient reads."""
    xh = x - x.mean(axis=-1, keepdims=True)
    rs = (np.vecdot(xh, xh)[..., None] / x.shape[-1] + EPS) ** -0.5
    xh *= rs
    n = xh * G
    n += S
    return n, xh, rs


def _norm_grad(
    dn: np.ndarray, xh: np.ndarray, rs: np.ndarray, G: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x.grad = (x̂.grad - mean(x̂.grad) - x̂ mean(x̂.grad x̂)) / σ with x̂.grad = n.grad G; G.grad, S.grad."""
    dG = (dn * xh).sum(axis=(0, 1))
    dS = dn.sum(axis=(0, 1))
    dxh = dn * G
    along = np.vecdot(dxh, xh)[..., None] / xh.shape[-1]
    dxh -= dxh.mean(axis=-1, keepdims=True)
    dxh -= xh * along
    dxh *= rs
    return dxh, dG, dS


def transformer_hand(x, M, T, Q, K, V, O, W1, B1, W2, B2, G1, S1, G2, S2) -> Result:  # noqa: E741
    b, t, d = x.shape
    _, h, e = Q.shape
    bt, he, scale = b * t, h * e, e**-0.5
    # forward
    n1, xh1, rs1 = _norm(x, G1, S1)
    n1f = n1.reshape(bt, d)
    Wqkv = np.concatenate([Q.reshape(d, he), K.reshape(d, he), V.reshape(d, he)], axis=1)
    qkv = (n1f @ Wqkv).reshape(b, t, 3, h, e).transpose(2, 0, 3, 1, 4)  # [3,b,h,t,e], a view
    q, k, v = qkv[0] * scale, qkv[1], qkv[2]
    a = q @ k.transpose(0, 1, 3, 2)  # a[b,h,t,s]
    a += M
    a -= a.max(axis=-1, keepdims=True)
    p = np.exp(a, out=a)
    p /= p.sum(axis=-1, keepdims=True)
    att = (p @ v).transpose(0, 2, 1, 3).reshape(bt, he)
    Of = O.reshape(he, d)
    r = (att @ Of).reshape(b, t, d)
    r += x
    n2, xh2, rs2 = _norm(r, G2, S2)
    n2f = n2.reshape(bt, d)
    g = n2f @ W1
    g += B1
    np.maximum(g, 0, out=g)
    y = (g @ W2).reshape(b, t, d)
    y += B2
    y += r
    y -= T
    loss = 0.5 * float(np.vdot(y, y)) / b
    # backward: y.grad = (y - T) / b
    gy = y
    gy *= 1 / b
    gyf = gy.reshape(bt, d)
    dB2 = gyf.sum(axis=0)
    dW2 = g.T @ gyf
    dg = gyf @ W2.T
    dg *= g > 0  # relu' from the output
    dW1 = n2f.T @ dg
    dB1 = dg.sum(axis=0)
    dr, dG2, dS2 = _norm_grad((dg @ W1.T).reshape(b, t, d), xh2, rs2, G2)
    dr += gy
    drf = dr.reshape(bt, d)
    dO = (att.T @ drf).reshape(h, e, d)
    datt = (drf @ Of.T).reshape(b, t, h, e).transpose(0, 2, 1, 3)
    dp = datt @ v.transpose(0, 1, 3, 2)
    dv = p.transpose(0, 1, 3, 2) @ datt
    dp *= p  # a.grad = p (p.grad - sum[s](p.grad p))
    dp -= p * dp.sum(axis=-1, keepdims=True)
    dq = dp @ k
    dq *= scale
    dk = dp.transpose(0, 1, 3, 2) @ q  # q carries the scale
    dqkv = np.empty((b, t, 3, h, e), x.dtype)
    for i, g_ in enumerate((dq, dk, dv)):
        dqkv[:, :, i] = g_.transpose(0, 2, 1, 3)
    dqkvf = dqkv.reshape(bt, 3 * he)
    dW = n1f.T @ dqkvf
    dx, dG1, dS1 = _norm_grad((dqkvf @ Wqkv.T).reshape(b, t, d), xh1, rs1, G1)
    dx += dr
    grads = {"x": dx, "O": dO, "W1": dW1, "B1": dB1, "W2": dW2, "B2": dB2}
    grads.update({n: dW[:, i * he : (i + 1) * he].reshape(d, h, e) for i, n in enumerate("QKV")})
    grads.update({"G1": dG1, "S1": dS1, "G2": dG2, "S2": dS2})
    return loss, grads


# ---- PyTorch eager and JAX, as their users write a block ------------------------------------


def _torch_loss(x, M, T, Q, K, V, O, W1, B1, W2, B2, G1, S1, G2, S2):  # noqa: E741
    import torch
    import torch.nn.functional as F

    b, t, d = x.shape
    _, h, e = Q.shape
    n = F.layer_norm(x, (d,), G1, S1, EPS)
    qkv = n @ torch.cat([Q.reshape(d, h * e), K.reshape(d, h * e), V.reshape(d, h * e)], 1)
    q, k, v = qkv.view(b, t, 3, h, e).permute(2, 0, 3, 1, 4)
    att = F.scaled_dot_product_attention(q, k, v, attn_mask=M)
    r = x + att.transpose(1, 2).reshape(b, t, h * e) @ O.reshape(h * e, d)
    m = F.layer_norm(r, (d,), G2, S2, EPS)
    y = r + F.relu(m @ W1 + B1) @ W2 + B2
    return 0.5 * ((y - T) ** 2).sum() / b


def _jax_loss(x, M, T, Q, K, V, O, W1, B1, W2, B2, G1, S1, G2, S2):  # noqa: E741
    import jax
    import jax.numpy as jnp

    b, t, d = x.shape
    _, h, e = Q.shape

    def norm(z: Any, G: Any, S: Any) -> Any:
        c = z - z.mean(axis=-1, keepdims=True)
        return c * jax.lax.rsqrt((c * c).mean(axis=-1, keepdims=True) + EPS) * G + S

    n = norm(x, G1, S1)
    qkv = n @ jnp.concatenate([Q.reshape(d, h * e), K.reshape(d, h * e), V.reshape(d, h * e)], 1)
    q, k, v = qkv.reshape(b, t, 3, h, e).transpose(2, 0, 3, 1, 4)
    p = jax.nn.softmax(q @ k.swapaxes(-1, -2) * e**-0.5 + M, axis=-1)
    r = x + (p @ v).transpose(0, 2, 1, 3).reshape(b, t, h * e) @ O.reshape(h * e, d)
    m = norm(r, G2, S2)
    y = r + jax.nn.relu(m @ W1 + B1) @ W2 + B2
    return 0.5 * ((y - T) ** 2).sum() / b


def transformer_workload(
    key: str, dims: tuple[int, ...], use: set[str], before: ModuleType | None = None
) -> Workload:
    b, t, d, h, f = dims
    bt = b * t
    # forward products: q,k,v; scores; p v; O; the MLP's two. Each has two gradients (x's included).
    forward = 2 * (bt * d * 3 * d + 2 * b * t * t * d + bt * d * d + 2 * bt * d * f)
    spec = Spec(
        TRANSFORMER_IDX, transformer_arrays(b, t, d, h, f), ORDER, WRT, transformer_hand,
        _torch_loss, _jax_loss,
    )  # fmt: skip
    title = f"transformer block b={b} t={t} d={d} {h} heads, MLP {f}, float32"
    return assemble(key, title, np.float32, 3 * forward, spec, use, before)
