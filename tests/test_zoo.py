"""A zoo of real layers written in the language as the docs describe them, each checked against
its PyTorch reference (torch.nn.functional, float64): forward values and the gradient of every
float input (torch autograd as the oracle), on the numpy backend and, cheaply, on torch and jax."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings

import indexgrad as ig
from indexgrad.check import SPELLED

Arrays = dict[str, np.ndarray]
Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layer:
    """A program, its inputs (labels are integer arrays) and the torch function of the same inputs
    that gives the program's output `out`; `const` names float inputs torch does not differentiate
    (a loss's target or class weights), whose gradients are not compared."""

    name: str
    src: str
    inputs: Callable[[np.random.Generator], Arrays]
    torch: Callable[[Tensors], torch.Tensor]
    out: str = "y"
    rtol: float = 1e-10
    const: tuple[str, ...] = ()


def normal(**shapes: tuple[int, ...]) -> Callable[[np.random.Generator], Arrays]:
    return lambda rng: {k: rng.standard_normal(s) for k, s in shapes.items()}


def with_labels(make: Callable[[np.random.Generator], Arrays], **labels: tuple[int, tuple[int, ...]]):
    """`make`'s arrays and integer labels drawn below each given bound."""

    def inputs(rng: np.random.Generator) -> Arrays:
        return make(rng) | {k: rng.integers(0, n, s) for k, (n, s) in labels.items()}

    return inputs


def causal(t: int) -> np.ndarray:
    return np.tril(np.ones((t, t)))


B, T, D = 2, 4, 6
ZOO: list[Layer] = []


def layer(*args, **kwargs) -> None:
    ZOO.append(Layer(*args, **kwargs))


# ---- dense layers and activations ------------------------------------------------------------

layer(
    "linear",
    """
    param W[o,i], B[o]
    input x[b,i]
    y[b,o] = x[b,i] W[o,i] + B[o]
    """,
    normal(x=(B, 5), W=(3, 5), B=(3,)),
    lambda a: F.linear(a["x"], a["W"], a["B"]),
)
layer(
    "bilinear",
    """
    param W[o,i,j], B[o]
    y[b,o] = x1[b,i] W[o,i,j] x2[b,j] + B[o]
    """,
    normal(x1=(B, 4), x2=(B, 5), W=(3, 4, 5), B=(3,)),
    lambda a: F.bilinear(a["x1"], a["x2"], a["W"], a["B"]),
)
layer(
    "gelu_tanh",
    "y[b,i] = 0.5 x[b,i] (1 + tanh(sqrt(2 / 3.141592653589793) (x[b,i] + 0.044715 x[b,i]^3)))",
    normal(x=(B, 5)),
    lambda a: F.gelu(a["x"], approximate="tanh"),
)
layer(
    "gelu_erf",
    "y[b,i] = 0.5 x[b,i] (1 + erf(x[b,i] / sqrt(2)))",
    normal(x=(B, 5)),
    lambda a: F.gelu(a["x"]),
)
layer("silu", "y[b,i] = x[b,i] sigmoid(x[b,i])", normal(x=(B, 5)), lambda a: F.silu(a["x"]))
layer(
    "swiglu_mlp",
    """
    param W1[d,f], W3[d,f], W2[f,d]
    g[b,t,f] = x[b,t,d] W1[d,f]
    h[b,t,f] = g[b,t,f] sigmoid(g[b,t,f]) (x[b,t,d] W3[d,f])
    y[b,t,d] = h[b,t,f] W2[f,d]
    """,
    normal(x=(B, 3, 4), W1=(4, 6), W3=(4, 6), W2=(6, 4)),
    lambda a: (F.silu(a["x"] @ a["W1"]) * (a["x"] @ a["W3"])) @ a["W2"],
)
layer("softplus", "y[b,i] = softplus(x[b,i])", normal(x=(B, 5)), lambda a: F.softplus(a["x"]))
layer(
    "elu",
    "y[b,i] = where(x[b,i] > 0, x[b,i], exp(x[b,i]) - 1)",
    normal(x=(B, 5)),
    lambda a: F.elu(a["x"]),
)
layer(
    "leaky_relu_max",
    "y[b,i] = max(x[b,i], 0.01 x[b,i])",
    normal(x=(B, 5)),
    lambda a: F.leaky_relu(a["x"], 0.01),
)
layer(
    "leaky_relu_where",
    "y[b,i] = where(x[b,i] >= 0, x[b,i], 0.2 x[b,i])",
    normal(x=(B, 5)),
    lambda a: F.leaky_relu(a["x"], 0.2),
)

# ---- normalisations --------------------------------------------------------------------------

layer(
    "layer_norm",
    """
    param G[d], S[d]
    mu[b,t] = mean[d](x[b,t,d])
    var[b,t] = mean[d]((x[b,t,d] - mu[b,t])^2)
    y[b,t,d] = (x[b,t,d] - mu[b,t]) / sqrt(var[b,t] + 1e-5) G[d] + S[d]
    """,
    normal(x=(B, 3, D), G=(D,), S=(D,)),
    lambda a: F.layer_norm(a["x"], (D,), a["G"], a["S"], 1e-5),
)
layer(
    "rms_norm",
    """
    param G[d]
    y[b,t,d] = x[b,t,d] / sqrt(mean[e](x[b,t,e]^2) + 1e-6) G[d]
    """,
    normal(x=(B, 3, D), G=(D,)),
    lambda a: F.rms_norm(a["x"], (D,), a["G"], 1e-6),
)
layer(
    "batch_norm",
    """
    param G[c], S[c]
    mu[c] = mean[b,r,s](x[b,c,r,s])
    var[c] = mean[b,r,s]((x[b,c,r,s] - mu[c])^2)
    y[b,c,r,s] = (x[b,c,r,s] - mu[c]) / sqrt(var[c] + 1e-5) G[c] + S[c]
    """,
    normal(x=(3, 2, 3, 3), G=(2,), S=(2,)),
    lambda a: F.batch_norm(a["x"], None, None, a["G"], a["S"], training=True, eps=1e-5),
)
layer(
    "group_norm",
    """
    dim k=2
    param G[c], S[c]
    mu[b,g] = mean[k,n](x[b,2*g+k,n])
    var[b,g] = mean[k,n]((x[b,2*g+k,n] - mu[b,g])^2)
    y[b,c,n] = (x[b,c,n] - mu[b,c//2]) / sqrt(var[b,c//2] + 1e-5) G[c] + S[c]
    """,
    normal(x=(B, 6, 5), G=(6,), S=(6,)),
    lambda a: F.group_norm(a["x"], 3, a["G"], a["S"], 1e-5),
)
layer(
    "instance_norm",
    """
    mu[b,c] = mean[r,s](x[b,c,r,s])
    var[b,c] = mean[r,s]((x[b,c,r,s] - mu[b,c])^2)
    y[b,c,r,s] = (x[b,c,r,s] - mu[b,c]) / sqrt(var[b,c] + 1e-5)
    """,
    normal(x=(B, 3, 3, 4)),
    lambda a: F.instance_norm(a["x"], eps=1e-5),
)

# ---- probabilities and losses ----------------------------------------------------------------

layer(
    "softmax",
    "y[b,c] = exp(z[b,c] - logsumexp[k](z[b,k]))",
    normal(z=(B, 5)),
    lambda a: F.softmax(a["z"], dim=1),
)
layer(  # over the channels of an image, as a segmentation head does: not the last axis
    "softmax_channels",
    "y[b,c,r,s] = exp(z[b,c,r,s] - logsumexp[k](z[b,k,r,s]))",
    normal(z=(B, 4, 2, 3)),
    lambda a: F.softmax(a["z"], dim=1),
)
layer(
    "log_softmax",
    "y[b,c] = z[b,c] - logsumexp[k](z[b,k])",
    normal(z=(B, 5)),
    lambda a: F.log_softmax(a["z"], dim=1),
)
layer(
    "cross_entropy",
    "loss = mean[b](logsumexp[c](z[b,c]) - z[b,y[b]])",
    with_labels(normal(z=(3, 5)), y=(5, (3,))),
    lambda a: F.cross_entropy(a["z"], a["y"]),
    out="loss",
)
layer(
    "nll",
    "loss = -mean[b](lp[b,y[b]])",
    with_labels(normal(lp=(3, 5)), y=(5, (3,))),
    lambda a: F.nll_loss(a["lp"], a["y"]),
    out="loss",
)
layer(
    "kl_div",
    """
    lq[b,c] = z[b,c] - logsumexp[k](z[b,k])
    loss = sum[b,c](p[b,c] (log(p[b,c]) - lq[b,c]) / size[b])
    """,
    lambda rng: {"z": rng.standard_normal((3, 4)), "p": rng.dirichlet(np.ones(4), 3)},
    lambda a: F.kl_div(F.log_softmax(a["z"], 1), a["p"], reduction="batchmean"),
    out="loss",
)
layer(
    "cosine_similarity",
    "y[b] = sum[d](u[b,d] v[b,d]) / sqrt(max(sum[d](u[b,d]^2) sum[d](v[b,d]^2), 1e-16))",
    normal(u=(3, 5), v=(3, 5)),
    lambda a: F.cosine_similarity(a["u"], a["v"], dim=1),
)
layer(
    "pairwise_distance",
    "y[b] = sqrt(sum[d]((u[b,d] - v[b,d] + 1e-6)^2))",
    normal(u=(3, 5), v=(3, 5)),
    lambda a: F.pairwise_distance(a["u"], a["v"]),
)

# ---- convolutions and pooling ----------------------------------------------------------------

layer(
    "conv1d",
    """
    param w[o,i,k], B[o]
    y[b,o,t] = x[b,i,t+k] w[o,i,k] + B[o]
    """,
    normal(x=(B, 3, 7), w=(4, 3, 3), B=(4,)),
    lambda a: F.conv1d(a["x"], a["w"], a["B"]),
)
layer(
    "conv2d_stride2_pad1",
    """
    param w[o,i,u,v], B[o]
    y[b,o,r,c] = x[b,i,pad(2*r+u-1),pad(2*c+v-1)] w[o,i,u,v] + B[o]
    """,
    normal(x=(B, 2, 6, 5), w=(3, 2, 3, 3), B=(3,)),
    lambda a: F.conv2d(a["x"], a["w"], a["B"], stride=2, padding=1),
)
layer(
    "conv2d_dilation2_pad2",
    """
    param w[o,i,u,v]
    y[b,o,r,c] = x[b,i,pad(r+2*u-2),pad(c+2*v-2)] w[o,i,u,v]
    """,
    normal(x=(B, 2, 6, 5), w=(3, 2, 3, 3)),
    lambda a: F.conv2d(a["x"], a["w"], padding=2, dilation=2),
)
layer(
    "conv2d_stride2_dilation2",
    """
    param w[o,i,u,v]
    y[b,o,r,c] = x[b,i,2*r+2*u,2*c+2*v] w[o,i,u,v]
    """,
    normal(x=(B, 2, 9, 8), w=(3, 2, 3, 3)),
    lambda a: F.conv2d(a["x"], a["w"], stride=2, dilation=2),
)
layer(  # torch's output is 3x2 here; "same" (pad) would give ceil(7/2) x ceil(6/2), so dim says
    "conv2d_stride2_pad1_dilation2",
    """
    dim r=3, c=2
    param w[o,i,u,v]
    y[b,o,r,c] = x[b,i,pad(2*r+2*u-1),pad(2*c+2*v-1)] w[o,i,u,v]
    """,
    normal(x=(B, 2, 7, 6), w=(3, 2, 3, 3)),
    lambda a: F.conv2d(a["x"], a["w"], stride=2, padding=1, dilation=2),
)
layer(
    "conv2d_depthwise",
    """
    param w[c,u,v]
    y[b,c,r,s] = x[b,c,pad(r+u-1),pad(s+v-1)] w[c,u,v]
    """,
    normal(x=(B, 3, 5, 5), w=(3, 3, 3)),
    lambda a: F.conv2d(a["x"], a["w"][:, None], padding=1, groups=3),
)
layer(
    "conv2d_grouped",
    """
    param w[o,k,u,v]
    y[b,o,r,s] = x[b,2*(o//3)+k,r+u,s+v] w[o,k,u,v]
    """,
    normal(x=(B, 4, 5, 5), w=(6, 2, 3, 3)),
    lambda a: F.conv2d(a["x"], a["w"], groups=2),
)
layer(
    "conv_transpose2d",
    """
    param w[i,o,u,v]
    y[b,o,2*r+u,2*c+v] += x[b,i,r,c] w[i,o,u,v]
    """,
    normal(x=(B, 2, 3, 4), w=(2, 3, 3, 3)),
    lambda a: F.conv_transpose2d(a["x"], a["w"], stride=2),
)
layer(
    "max_pool2d",
    """
    dim u=2, v=2
    y[b,c,r,s] = max[u,v](x[b,c,2*r+u,2*s+v])
    """,
    normal(x=(B, 2, 4, 6)),
    lambda a: F.max_pool2d(a["x"], 2),
)
layer(  # 7 columns make 3 windows (the last column in none); relu's zeros tie in a window
    "relu_max_pool2d_odd",
    """
    dim u=2, v=2
    y[b,c,r,s] = max[u,v](relu(x[b,c,2*r+u,2*s+v]))
    """,
    normal(x=(B, 2, 5, 7)),
    lambda a: F.max_pool2d(F.relu(a["x"]), 2),
)
layer(  # clamp repeats the edge, which a max reads as torch's -inf padding does (pad would read 0)
    "max_pool2d_k3_s2_pad1",
    """
    dim u=3, v=3
    y[b,c,r,s] = max[u,v](x[b,c,clamp(2*r+u-1),clamp(2*s+v-1)])
    """,
    normal(x=(B, 2, 6, 5)),
    lambda a: F.max_pool2d(a["x"], 3, stride=2, padding=1),
)
layer(
    "avg_pool2d",
    """
    dim u=2, v=2
    y[b,c,r,s] = mean[u,v](x[b,c,2*r+u,2*s+v])
    """,
    normal(x=(B, 2, 4, 6)),
    lambda a: F.avg_pool2d(a["x"], 2),
)
layer(
    "adaptive_avg_pool",
    "y[b,c] = mean[r,s](x[b,c,r,s])",
    normal(x=(B, 3, 4, 5)),
    lambda a: F.adaptive_avg_pool2d(a["x"], 1)[:, :, 0, 0],
)
layer(
    "upsample_nearest",
    "y[b,c,r,s] = x[b,c,r//2,s//2]",
    normal(x=(B, 2, 3, 4)),
    lambda a: F.interpolate(a["x"], scale_factor=2, mode="nearest"),
)
layer(
    "pixel_shuffle",
    "y[b,c,h,w] = x[b,4*c+2*(h%2)+w%2,h//2,w//2]",
    normal(x=(B, 8, 3, 2)),
    lambda a: F.pixel_shuffle(a["x"], 2),
)

# ---- embeddings, attention, recurrent cells, residual ----------------------------------------

layer(
    "embedding",
    """
    param E[n,d]
    y[b,t,d] = E[ids[b,t],d]
    """,
    with_labels(normal(E=(7, 4)), ids=(7, (B, 3))),
    lambda a: F.embedding(a["ids"], a["E"]),
)


def mha(a: Tensors) -> torch.Tensor:
    h, e = 2, 3
    wq, wk, wv, wo = (a[k] for k in ("Wq", "Wk", "Wv", "Wo"))
    return F.multi_head_attention_forward(
        a["x"].transpose(0, 1), a["x"].transpose(0, 1), a["x"].transpose(0, 1), h * e, h,
        None, None, None, None, False, 0.0, wo.reshape(h * e, h * e), None, training=False,
        need_weights=False, attn_mask=a["M"] == 0, use_separate_proj_weight=True,
        q_proj_weight=wq.reshape(h * e, h * e), k_proj_weight=wk.reshape(h * e, h * e),
        v_proj_weight=wv.reshape(h * e, h * e),
    )[0].transpose(0, 1)


layer(
    "multi_head_attention",
    """
    param Wq[h,e,d], Wk[h,e,d], Wv[h,e,d], Wo[o,h,e]
    input x[b,t,d], M[t,s]
    q[b,h,t,e] = x[b,t,d] Wq[h,e,d]
    k[b,h,s,e] = x[b,s,d] Wk[h,e,d]
    v[b,h,s,e] = x[b,s,d] Wv[h,e,d]
    a[b,h,t,s] = where(M[t,s] > 0, q[b,h,t,e] k[b,h,s,e] / sqrt(size[e]), -1e9)
    p[b,h,t,s] = exp(a[b,h,t,s] - logsumexp[u](a[b,h,t,u]))
    y[b,t,o] = p[b,h,t,s] v[b,h,s,e] Wo[o,h,e]
    """,
    lambda rng: normal(x=(B, T, 6), Wq=(2, 3, 6), Wk=(2, 3, 6), Wv=(2, 3, 6), Wo=(6, 2, 3))(rng)
    | {"M": causal(T)},
    mha,
)
layer(
    "attention_additive_inf_mask",
    """
    a[b,t,s] = q[b,t,e] k[b,s,e] / sqrt(size[e]) + M[t,s]
    y[b,t,e] = exp(a[b,t,s] - logsumexp[u](a[b,t,u])) v[b,s,e]
    """,
    lambda rng: normal(q=(B, T, 3), k=(B, T, 3), v=(B, T, 3))(rng)
    | {"M": np.where(causal(T) > 0, 0.0, -np.inf)},
    lambda a: F.scaled_dot_product_attention(a["q"], a["k"], a["v"], attn_mask=a["M"]),
)
layer(
    "gru_cell",
    """
    param Wi[g,i,j], Wh[g,i,k], Bi[g,i], Bh[g,i]
    gi[b,g,i] = x[b,j] Wi[g,i,j] + Bi[g,i]
    gh[b,g,i] = h[b,k] Wh[g,i,k] + Bh[g,i]
    r[b,i] = sigmoid(gi[b,0,i] + gh[b,0,i])
    z[b,i] = sigmoid(gi[b,1,i] + gh[b,1,i])
    n[b,i] = tanh(gi[b,2,i] + r[b,i] gh[b,2,i])
    y[b,i] = (1 - z[b,i]) n[b,i] + z[b,i] h[b,i]
    """,
    normal(x=(B, 3), h=(B, 4), Wi=(3, 4, 3), Wh=(3, 4, 4), Bi=(3, 4), Bh=(3, 4)),
    lambda a: torch._VF.gru_cell(
        a["x"], a["h"], a["Wi"].reshape(12, 3), a["Wh"].reshape(12, 4), a["Bi"].flatten(), a["Bh"].flatten()
    ),
)
layer(
    "lstm_cell",
    """
    def lstm(x[b,j], h[b,k], c[b,i], W[g,i,j], U[g,i,k], B[g,i]) -> hn[b,i], cn[b,i]:
        s[b,g,i] = x[b,j] W[g,i,j] + h[b,k] U[g,i,k] + B[g,i]
        cn[b,i] = sigmoid(s[b,1,i]) c[b,i] + sigmoid(s[b,0,i]) tanh(s[b,2,i])
        hn[b,i] = sigmoid(s[b,3,i]) tanh(cn[b,i])

    param W[g,i,j], U[g,i,k], B[g,i]
    y[b,i], c1[b,i] = lstm(x[b,j], h[b,k], c[b,i], W[g,i,j], U[g,i,k], B[g,i])
    """,
    normal(x=(B, 3), h=(B, 4), c=(B, 4), W=(4, 4, 3), U=(4, 4, 4), B=(4, 4)),
    lambda a: torch._VF.lstm_cell(
        a["x"], (a["h"], a["c"]), a["W"].reshape(16, 3), a["U"].reshape(16, 4), a["B"].reshape(16), None
    )[0],
)
layer(
    "residual_block",
    """
    def conv(x[b,i,r,c], w[o,i,u,v], B[o]) -> y[b,o,r,c]:
        y[b,o,r,c] = x[b,i,pad(r+u-1),pad(c+v-1)] w[o,i,u,v] + B[o]

    param w1[o,i,u,v], B1[o], w2[o,i,u,v], B2[o]
    h1[b,o,r,c] = conv(x[b,i,r,c], w1[o,i,u,v], B1[o])
    a1[b,o,r,c] = relu(h1[b,o,r,c])
    h2[b,o,r,c] = conv(a1[b,i,r,c], w2[o,i,u,v], B2[o])
    y[b,o,r,c] = relu(x[b,o,r,c] + h2[b,o,r,c])
    """,
    normal(x=(B, 2, 4, 4), w1=(2, 2, 3, 3), B1=(2,), w2=(2, 2, 3, 3), B2=(2,)),
    lambda a: F.relu(
        a["x"]
        + F.conv2d(F.relu(F.conv2d(a["x"], a["w1"], a["B1"], padding=1)), a["w2"], a["B2"], padding=1)
    ),
)

# ---- more activations ------------------------------------------------------------------------

layer("mish", "y[b,i] = x[b,i] tanh(softplus(x[b,i]))", normal(x=(B, 5)), lambda a: F.mish(a["x"]))
layer("logsigmoid", "y[b,i] = -softplus(-x[b,i])", normal(x=(B, 5)), lambda a: F.logsigmoid(a["x"]))
layer(
    "hardtanh",
    "y[b,i] = max(-1, min(1, x[b,i]))",
    lambda rng: {"x": 2 * rng.standard_normal((B, 5))},
    lambda a: F.hardtanh(a["x"]),
)
layer(
    "relu6",
    "y[b,i] = min(relu(x[b,i]), 6)",
    lambda rng: {"x": 5 * rng.standard_normal((B, 5))},
    lambda a: F.relu6(a["x"]),
)
layer(  # torch's backward multiplies by 1/6 rounded to a float32 (relative 3e-8)
    "hardsigmoid",
    "y[b,i] = max(0, min(1, x[b,i] / 6 + 0.5))",
    lambda rng: {"x": 4 * rng.standard_normal((B, 5))},
    lambda a: F.hardsigmoid(a["x"]),
    rtol=1e-7,
)
layer(
    "hardswish",
    "y[b,i] = x[b,i] max(0, min(6, x[b,i] + 3)) / 6",
    lambda rng: {"x": 4 * rng.standard_normal((B, 5))},
    lambda a: F.hardswish(a["x"]),
)
layer(
    "selu",
    "y[b,i] = 1.0507009873554805 where(x[b,i] > 0, x[b,i], 1.6732632423543772 (exp(x[b,i]) - 1))",
    normal(x=(B, 5)),
    lambda a: F.selu(a["x"]),
)
layer(
    "celu",
    "y[b,i] = max(0, x[b,i]) + min(0, 0.5 (exp(x[b,i] / 0.5) - 1))",
    normal(x=(B, 5)),
    lambda a: F.celu(a["x"], 0.5),
)
layer("softsign", "y[b,i] = x[b,i] / (1 + abs(x[b,i]))", normal(x=(B, 5)), lambda a: F.softsign(a["x"]))
layer("tanhshrink", "y[b,i] = x[b,i] - tanh(x[b,i])", normal(x=(B, 5)), lambda a: F.tanhshrink(a["x"]))
layer(  # written so that a NaN stays NaN, as in torch (where(x > 0.5, ...) would make it 0)
    "softshrink",
    "y[b,i] = x[b,i] - max(-0.5, min(0.5, x[b,i]))",
    normal(x=(B, 5)),
    lambda a: F.softshrink(a["x"], 0.5),
)
layer(
    "hardshrink", "y[b,i] = x[b,i] (abs(x[b,i]) > 0.5)", normal(x=(B, 5)), lambda a: F.hardshrink(a["x"], 0.5)
)
layer(
    "threshold",
    "y[b,i] = where(x[b,i] <= 0.1, 20, x[b,i])",
    normal(x=(B, 5)),
    lambda a: F.threshold(a["x"], 0.1, 20.0),
)
layer(
    "prelu",
    """
    param A[c]
    y[b,c,n] = max(0, x[b,c,n]) + A[c] min(0, x[b,c,n])
    """,
    normal(x=(B, 3, 4), A=(3,)),
    lambda a: F.prelu(a["x"], a["A"]),
)
layer("glu", "y[b,i] = x[b,i] sigmoid(x[b,i+3])", normal(x=(B, 6)), lambda a: F.glu(a["x"], 1))
layer(
    "softmin",
    "y[b,c] = exp(-z[b,c] - logsumexp[k](-z[b,k]))",
    normal(z=(B, 5)),
    lambda a: F.softmin(a["z"], 1),
)
layer(
    "softplus_beta2", "y[b,i] = softplus(2 x[b,i]) / 2", normal(x=(B, 5)), lambda a: F.softplus(a["x"], 2)
)
layer(
    "normalize",
    "y[b,d] = x[b,d] / max(sqrt(sum[e](x[b,e]^2)), 1e-12)",
    normal(x=(3, 5)),
    lambda a: F.normalize(a["x"], dim=1),
)

# ---- more losses -----------------------------------------------------------------------------

layer(
    "mse",
    "loss = mean[b,i]((p[b,i] - t[b,i])^2)",
    normal(p=(3, 4), t=(3, 4)),
    lambda a: F.mse_loss(a["p"], a["t"]),
    out="loss",
)
layer(
    "l1",
    "loss = mean[b,i](abs(p[b,i] - t[b,i]))",
    normal(p=(3, 4), t=(3, 4)),
    lambda a: F.l1_loss(a["p"], a["t"]),
    out="loss",
)
layer(
    "huber",
    """
    r[b,i] = p[b,i] - t[b,i]
    loss = mean[b,i](where(abs(r[b,i]) <= 1.5, 0.5 r[b,i]^2, 1.5 (abs(r[b,i]) - 0.75)))
    """,
    lambda rng: {"p": 2 * rng.standard_normal((3, 4)), "t": rng.standard_normal((3, 4))},
    lambda a: F.huber_loss(a["p"], a["t"], delta=1.5),
    out="loss",
)
layer(
    "smooth_l1",
    """
    r[b,i] = abs(p[b,i] - t[b,i])
    loss = mean[b,i](where(r[b,i] < 0.5, 0.5 r[b,i]^2 / 0.5, r[b,i] - 0.25))
    """,
    lambda rng: {"p": 2 * rng.standard_normal((3, 4)), "t": rng.standard_normal((3, 4))},
    lambda a: F.smooth_l1_loss(a["p"], a["t"], beta=0.5),
    out="loss",
)
layer(
    "bce_with_logits",
    "loss = mean[b,i](softplus(z[b,i]) - t[b,i] z[b,i])",
    lambda rng: {"z": 3 * rng.standard_normal((3, 4)), "t": rng.random((3, 4))},
    lambda a: F.binary_cross_entropy_with_logits(a["z"], a["t"]),
    out="loss",
)
layer(
    "bce_with_logits_pos_weight",
    "loss = mean[b,i]((1 - t[b,i]) z[b,i] + (1 + (w[i] - 1) t[b,i]) softplus(-z[b,i]))",
    lambda rng: {"z": 3 * rng.standard_normal((3, 4)), "t": rng.random((3, 4)), "w": rng.random(4) + 0.5},
    lambda a: F.binary_cross_entropy_with_logits(a["z"], a["t"], pos_weight=a["w"]),
    out="loss",
    const=("w",),
)
layer(
    "triplet_margin",
    """
    dp[b] = sqrt(sum[d]((an[b,d] - po[b,d] + 1e-6)^2))
    dn[b] = sqrt(sum[d]((an[b,d] - ne[b,d] + 1e-6)^2))
    loss = mean[b](relu(dp[b] - dn[b] + 1))
    """,
    normal(an=(4, 5), po=(4, 5), ne=(4, 5)),
    lambda a: F.triplet_margin_loss(a["an"], a["po"], a["ne"]),
    out="loss",
)
layer(
    "margin_ranking",
    "loss = mean[b](max(0, -t[b] (x1[b] - x2[b]) + 0.3))",
    lambda rng: {"x1": rng.standard_normal(5), "x2": rng.standard_normal(5), "t": rng.choice([-1.0, 1.0], 5)},
    lambda a: F.margin_ranking_loss(a["x1"], a["x2"], a["t"], margin=0.3),
    out="loss",
)
layer(
    "soft_margin",
    "loss = mean[b,i](softplus(-t[b,i] x[b,i]))",
    lambda rng: {"x": rng.standard_normal((3, 4)), "t": rng.choice([-1.0, 1.0], (3, 4))},
    lambda a: F.soft_margin_loss(a["x"], a["t"]),
    out="loss",
    const=("t",),
)
layer(
    "cosine_embedding",
    """
    c[b] = sum[d](u[b,d] v[b,d]) / sqrt((sum[d](u[b,d]^2) + 1e-12) (sum[d](v[b,d]^2) + 1e-12))
    loss = mean[b](where(t[b] > 0, 1 - c[b], max(0, c[b] - 0.2)))
    """,
    lambda rng: normal(u=(6, 5), v=(6, 5))(rng) | {"t": np.array([1.0, -1, 1, -1, -1, 1])},
    lambda a: F.cosine_embedding_loss(a["u"], a["v"], a["t"], margin=0.2),
    out="loss",
)
layer(
    "poisson_nll",
    "loss = mean[b,i](exp(z[b,i]) - t[b,i] z[b,i])",
    lambda rng: {"z": rng.standard_normal((3, 4)), "t": rng.poisson(2.0, (3, 4)).astype(float)},
    lambda a: F.poisson_nll_loss(a["z"], a["t"]),
    out="loss",
)
layer(
    "gaussian_nll",
    "loss = mean[b,i](0.5 (log(max(v[b,i], 1e-6)) + (m[b,i] - t[b,i])^2 / max(v[b,i], 1e-6)))",
    lambda rng: normal(m=(3, 4), t=(3, 4))(rng) | {"v": rng.uniform(0.5, 2, (3, 4))},
    lambda a: F.gaussian_nll_loss(a["m"], a["t"], a["v"]),
    out="loss",
)
layer(
    "cross_entropy_label_smoothing",
    """
    lp[b,c] = z[b,c] - logsumexp[k](z[b,k])
    loss = -mean[b](0.9 lp[b,y[b]] + 0.1 mean[c](lp[b,c]))
    """,
    with_labels(normal(z=(3, 5)), y=(5, (3,))),
    lambda a: F.cross_entropy(a["z"], a["y"], label_smoothing=0.1),
    out="loss",
)
layer(
    "cross_entropy_class_weights",
    """
    lp[b,c] = z[b,c] - logsumexp[k](z[b,k])
    loss = -sum[b](w[y[b]] lp[b,y[b]]) / sum[b](w[y[b]])
    """,
    lambda rng: {"z": rng.standard_normal((3, 5)), "y": rng.integers(0, 5, 3), "w": rng.uniform(0.5, 2, 5)},
    lambda a: F.cross_entropy(a["z"], a["y"], weight=a["w"]),
    out="loss",
    const=("w",),
)
layer(
    "kl_div_log_target",
    "loss = sum[b,c](exp(lt[b,c]) (lt[b,c] - li[b,c]) / size[b])",
    normal(li=(3, 4), lt=(3, 4)),
    lambda a: F.kl_div(a["li"], a["lt"], reduction="batchmean", log_target=True),
    out="loss",
)

# ---- more convolutions, pooling and patches --------------------------------------------------

layer(
    "conv3d",
    """
    param w[o,i,u,v,z], B[o]
    y[b,o,p,q,r] = x[b,i,p+u,q+v,r+z] w[o,i,u,v,z] + B[o]
    """,
    normal(x=(B, 2, 4, 5, 4), w=(3, 2, 2, 3, 2), B=(3,)),
    lambda a: F.conv3d(a["x"], a["w"], a["B"]),
)
layer(
    "conv3d_stride2_pad1",
    """
    param w[o,i,u,v,z]
    y[b,o,p,q,r] = x[b,i,pad(2*p+u-1),pad(2*q+v-1),pad(2*r+z-1)] w[o,i,u,v,z]
    """,
    normal(x=(B, 2, 4, 5, 4), w=(3, 2, 3, 3, 3)),
    lambda a: F.conv3d(a["x"], a["w"], stride=2, padding=1),
)
layer(
    "conv1d_same_dilation2",
    """
    param w[o,i,k]
    y[b,o,t] = x[b,i,pad(t+2*k-2)] w[o,i,k]
    """,
    normal(x=(B, 3, 7), w=(4, 3, 3)),
    lambda a: F.conv1d(a["x"], a["w"], padding="same", dilation=2),
)
layer(
    "conv1d_causal",
    """
    param w[o,i,k]
    y[b,o,t] = x[b,i,pad(t+k-2)] w[o,i,k]
    """,
    normal(x=(B, 3, 7), w=(4, 3, 3)),
    lambda a: F.conv1d(F.pad(a["x"], (2, 0)), a["w"]),
)
layer(
    "conv1d_circular",
    """
    param w[o,i,k]
    y[b,o,t] = x[b,i,wrap(t+k-1)] w[o,i,k]
    """,
    normal(x=(B, 3, 7), w=(4, 3, 3)),
    lambda a: F.conv1d(F.pad(a["x"], (1, 1), mode="circular"), a["w"]),
)
layer(
    "conv1d_replicate",
    """
    param w[o,i,k]
    y[b,o,t] = x[b,i,clamp(t+k-1)] w[o,i,k]
    """,
    normal(x=(B, 3, 7), w=(4, 3, 3)),
    lambda a: F.conv1d(F.pad(a["x"], (1, 1), mode="replicate"), a["w"]),
)
layer(
    "conv_transpose1d",
    """
    param w[i,o,k], B[o]
    y[b,o,t+k] += x[b,i,t] w[i,o,k]
    y[b,o,t] += B[o]
    """,
    normal(x=(B, 3, 5), w=(3, 2, 3), B=(2,)),
    lambda a: F.conv_transpose1d(a["x"], a["w"], a["B"]),
)
layer(  # padding=1 crops one position at each end, output_padding=1 adds one at the end
    "conv_transpose1d_s2_p1_op1",
    """
    dim s=10
    param w[i,o,k]
    f[b,o,2*t+k] += x[b,i,t] w[i,o,k]
    y[b,o,s] = f[b,o,pad(s+1)]
    """,
    normal(x=(B, 3, 5), w=(3, 2, 3)),
    lambda a: F.conv_transpose1d(a["x"], a["w"], stride=2, padding=1, output_padding=1),
)
layer(
    "conv_transpose2d_grouped",
    """
    param w[c,o,u,v]
    y[b,2*(c//2)+o,r+u,s+v] += x[b,c,r,s] w[c,o,u,v]
    """,
    normal(x=(B, 4, 3, 3), w=(4, 2, 2, 2)),
    lambda a: F.conv_transpose2d(a["x"], a["w"], groups=2),
)
layer(  # Tensor Comprehensions' group convolution, groups as an axis of their own
    "conv2d_groups_axis",
    """
    param w[g,o,c,u,v]
    y[b,g,o,r,s] = x[b,g,c,r+u,s+v] w[g,o,c,u,v]
    """,
    normal(x=(B, 2, 2, 5, 5), w=(2, 3, 2, 3, 3)),
    lambda a: F.conv2d(a["x"].flatten(1, 2), a["w"].flatten(0, 1), groups=2).unflatten(1, (2, 3)),
)
layer(
    "mobilenet_block",
    """
    param dw[c,u,v], pw[o,c]
    h[b,c,r,s] = min(relu(x[b,c,pad(r+u-1),pad(s+v-1)] dw[c,u,v]), 6)
    y[b,o,r,s] = min(relu(h[b,c,r,s] pw[o,c]), 6)
    """,
    lambda rng: {"x": 2 * rng.standard_normal((B, 3, 5, 5))} | normal(dw=(3, 3, 3), pw=(4, 3))(rng),
    lambda a: F.relu6(
        F.conv2d(F.relu6(F.conv2d(a["x"], a["dw"][:, None], padding=1, groups=3)), a["pw"][:, :, None, None])
    ),
)
layer(
    "avg_pool1d_k3_s2",
    """
    dim k=3
    y[b,c,t] = mean[k](x[b,c,2*t+k])
    """,
    normal(x=(B, 2, 8)),
    lambda a: F.avg_pool1d(a["x"], 3, 2),
)
layer(  # pad reads 0 and the mean divides by 3 everywhere: torch's count_include_pad
    "avg_pool1d_pad1",
    """
    dim k=3
    y[b,c,t] = mean[k](x[b,c,pad(2*t+k-1)])
    """,
    normal(x=(B, 2, 8)),
    lambda a: F.avg_pool1d(a["x"], 3, 2, padding=1),
)
layer(
    "max_pool1d_k3_s2",
    """
    dim k=3
    y[b,c,t] = max[k](x[b,c,2*t+k])
    """,
    normal(x=(B, 2, 9)),
    lambda a: F.max_pool1d(a["x"], 3, 2),
)
layer(
    "lp_pool1d",
    """
    dim k=2
    y[b,c,t] = sum[k](x[b,c,2*t+k]^2)^0.5
    """,
    normal(x=(B, 2, 8)),
    lambda a: F.lp_pool1d(a["x"], 2, 2),
)
layer(
    "adaptive_max_pool",
    "y[b,c] = max[t](x[b,c,t])",
    normal(x=(B, 3, 5)),
    lambda a: F.adaptive_max_pool1d(a["x"], 1)[:, :, 0],
)
layer(
    "avg_pool3d",
    """
    dim u=2, v=2, z=2
    y[b,c,p,q,r] = mean[u,v,z](x[b,c,2*p+u,2*q+v,2*r+z])
    """,
    normal(x=(B, 2, 4, 4, 6)),
    lambda a: F.avg_pool3d(a["x"], 2),
)
layer(
    "pixel_unshuffle",
    "y[b,c,h,w] = x[b,c//4,2*h+(c%4)//2,2*w+c%2]",
    normal(x=(B, 2, 4, 6)),
    lambda a: F.pixel_unshuffle(a["x"], 2),
)
layer(  # the window of channels c-1..c+1, zeros past the ends, as torch pads it
    "local_response_norm",
    """
    dim k=3
    s[b,c,t] = mean[k](x[b,pad(c+k-1),t]^2)
    y[b,c,t] = x[b,c,t] / (2 + 0.5 s[b,c,t])^0.75
    """,
    normal(x=(B, 5, 4)),
    lambda a: F.local_response_norm(a["x"], 3, alpha=0.5, k=2.0),
)
layer(  # im2col: each patch a column, written where it goes
    "unfold",
    """
    dim u=2, v=3
    y[b,6*c+3*u+v,3*r+s] += x[b,c,r+u,s+v]
    """,
    normal(x=(B, 2, 4, 5)),
    lambda a: F.unfold(a["x"], (2, 3)),
)
layer(  # the same, read where it comes from
    "unfold_gather",
    """
    dim p=12, l=9
    y[b,p,l] = x[b,p//6,l//3+(p%6)//3,l%3+p%3]
    """,
    normal(x=(B, 2, 4, 5)),
    lambda a: F.unfold(a["x"], (2, 3)),
)
layer(
    "fold",
    "y[b,c,r+u,s+v] += cols[b,c,u,v,r,s]",
    normal(cols=(B, 2, 2, 3, 3, 3)),
    lambda a: F.fold(a["cols"].reshape(B, 12, 9), (4, 5), (2, 3)),
)

# ---- more embeddings, attention and parametrisations ------------------------------------------

for mode, reduce in (("sum", "sum"), ("mean", "mean"), ("max", "max")):
    layer(
        f"embedding_bag_{mode}",
        f"""
        param E[n,d]
        y[b,d] = {reduce}[l](E[ids[b,l],d])
        """,
        with_labels(normal(E=(7, 4)), ids=(7, (3, 4))),
        lambda a, mode=mode: F.embedding_bag(a["ids"], a["E"], mode=mode),
    )
layer(
    "embedding_bag_weighted",
    """
    param E[n,d]
    y[b,d] = sum[l](w[b,l] E[ids[b,l],d])
    """,
    with_labels(normal(E=(7, 4), w=(3, 4)), ids=(7, (3, 4))),
    lambda a: F.embedding_bag(a["ids"], a["E"], mode="sum", per_sample_weights=a["w"]),
)


def rope_interleaved(a: Tensors) -> torch.Tensor:
    x1, x2, c, s = a["x"][..., 0::2], a["x"][..., 1::2], torch.cos(a["th"]), torch.sin(a["th"])
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2)


def rope_halves(a: Tensors) -> torch.Tensor:
    x1, x2, c, s = a["x"][..., :3], a["x"][..., 3:], torch.cos(a["th"]), torch.sin(a["th"])
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)


layer(  # y is as long as the farther of the two '+=' writes (the second)
    "rope_interleaved",
    """
    y[b,t,2*i] += x[b,t,2*i] cos(th[t,i]) - x[b,t,2*i+1] sin(th[t,i])
    y[b,t,2*i+1] += x[b,t,2*i] sin(th[t,i]) + x[b,t,2*i+1] cos(th[t,i])
    """,
    normal(x=(B, T, 6), th=(T, 3)),
    rope_interleaved,
)
layer(
    "rope_interleaved_gather",
    "y[b,t,d] = x[b,t,d] cos(th[t,d//2]) + x[b,t,2*(d//2)+1-d%2] sin(th[t,d//2]) sg[d]",
    lambda rng: normal(x=(B, T, 6), th=(T, 3))(rng) | {"sg": np.tile([-1.0, 1.0], 3)},
    rope_interleaved,
    const=("sg",),
)
layer(
    "rope_halves",
    """
    y[b,t,i] += x[b,t,i] cos(th[t,i]) - x[b,t,i+3] sin(th[t,i])
    y[b,t,i+3] += x[b,t,i+3] cos(th[t,i]) + x[b,t,i] sin(th[t,i])
    """,
    normal(x=(B, T, 6), th=(T, 3)),
    rope_halves,
)


def alibi(a: Tensors) -> torch.Tensor:
    pos = torch.arange(T, dtype=torch.float64)
    bias = a["m"][:, None, None] * (pos[None, None, :] - pos[None, :, None])
    s = torch.einsum("bhte,bhse->bhts", a["q"], a["k"]) / np.sqrt(a["q"].shape[-1]) + bias
    return torch.softmax(s, -1) @ a["v"]


layer(  # positions are data: an index is never a number in an expression
    "alibi_attention",
    """
    a[b,h,t,s] = q[b,h,t,e] k[b,h,s,e] / sqrt(size[e]) + m[h] (pos[s] - pos[t])
    y[b,h,t,e] = exp(a[b,h,t,s] - logsumexp[u](a[b,h,t,u])) v[b,h,s,e]
    """,
    lambda rng: normal(q=(B, 2, T, 3), k=(B, 2, T, 3), v=(B, 2, T, 3))(rng)
    | {"m": np.array([0.5, 0.25]), "pos": np.arange(T, dtype=float)},
    alibi,
    const=("pos",),
)
layer(
    "attention_causal_mask_product",
    """
    a[b,t,s] = q[b,t,e] k[b,s,e] / sqrt(size[e])
    p[b,t,s] = M[t,s] exp(a[b,t,s] - max[u](a[b,t,u]))
    y[b,t,e] = p[b,t,s] v[b,s,e] / sum[u](p[b,t,u])
    """,
    lambda rng: normal(q=(B, T, 3), k=(B, T, 3), v=(B, T, 3))(rng) | {"M": causal(T)},
    lambda a: F.scaled_dot_product_attention(a["q"], a["k"], a["v"], is_causal=True),
    const=("M",),
)
layer(
    "weight_norm_linear",
    """
    param g[o], v[o,i], B[o]
    y[b,o] = g[o] x[b,i] v[o,i] / sqrt(sum[j](v[o,j]^2)) + B[o]
    """,
    normal(x=(3, 4), g=(2,), v=(2, 4), B=(2,)),
    lambda a: F.linear(a["x"], torch._weight_norm(a["v"], a["g"][:, None], 0), a["B"]),
)
layer(
    "layer_scale_residual",
    """
    param W[d,e], G[e]
    y[b,t,e] = x[b,t,e] + G[e] tanh(x[b,t,d] W[d,e])
    """,
    normal(x=(B, 3, 4), W=(4, 4), G=(4,)),
    lambda a: a["x"] + a["G"] * torch.tanh(a["x"] @ a["W"]),
)
layer(  # separable bilinear resize: one interpolation matrix per axis
    "resize_by_matrices",
    "y[b,c,r,s] = Ah[r,p] x[b,c,p,q] Aw[s,q]",
    normal(x=(B, 2, 3, 4), Ah=(6, 3), Aw=(8, 4)),
    lambda a: torch.einsum("rp,bcpq,sq->bcrs", a["Ah"], a["x"], a["Aw"]),
)

# ---- layers from model code: relative positions, contrastive and dense losses, blocks ----------


def relative_position_attention(a: Tensors) -> torch.Tensor:
    rel = torch.arange(T)[:, None] - torch.arange(T)[None, :] + T - 1
    s = torch.einsum("bte,bse->bts", a["q"], a["k"]) + a["R"][rel]
    return torch.softmax(s, -1) @ a["v"]


layer(  # T5's and Swin's learned bias per offset t - s, read at t-s+3 (T = 4: offsets -3..3)
    "relative_position_bias",
    """
    a[b,t,s] = q[b,t,e] k[b,s,e] + R[t-s+3]
    y[b,t,e] = exp(a[b,t,s] - logsumexp[u](a[b,t,u])) v[b,s,e]
    """,
    normal(q=(B, T, 3), k=(B, T, 3), v=(B, T, 3), R=(2 * T - 1,)),
    relative_position_attention,
)
layer(  # the positives on the diagonal: S[b,b]
    "info_nce",
    """
    S[b,c] = z1[b,d] z2[c,d] / 0.5
    loss = mean[b](logsumexp[c](S[b,c]) - S[b,b])
    """,
    normal(z1=(4, 3), z2=(4, 3)),
    lambda a: F.cross_entropy(a["z1"] @ a["z2"].T / 0.5, torch.arange(4)),
    out="loss",
)
layer(
    "cross_entropy_2d",
    "loss = mean[b,r,c](logsumexp[k](z[b,k,r,c]) - z[b,y[b,r,c],r,c])",
    with_labels(normal(z=(2, 3, 4, 5)), y=(3, (2, 4, 5))),
    lambda a: F.cross_entropy(a["z"], a["y"]),
    out="loss",
)
def focal(lp: torch.Tensor) -> torch.Tensor:
    return -((1 - lp.exp()) ** 2 * lp).mean()


layer(
    "focal_loss",
    """
    lp[b] = z[b,y[b]] - logsumexp[k](z[b,k])
    loss = -mean[b]((1 - exp(lp[b]))^2 lp[b])
    """,
    with_labels(normal(z=(4, 5)), y=(5, (4,))),
    lambda a: focal(F.log_softmax(a["z"], 1).gather(1, a["y"][:, None])),
    out="loss",
)
layer(
    "dice_loss",
    "loss = 1 - (2 sum[b,i](p[b,i] t[b,i]) + 1) / (sum[b,i](p[b,i]) + sum[b,i](t[b,i]) + 1)",
    lambda rng: {"p": rng.random((3, 4)), "t": rng.random((3, 4))},
    lambda a: 1 - (2 * (a["p"] * a["t"]).sum() + 1) / (a["p"].sum() + a["t"].sum() + 1),
    out="loss",
)
layer(
    "cdist",
    "y[i,j] = sqrt(sum[d]((p[i,d] - q[j,d])^2))",
    normal(p=(3, 4), q=(5, 4)),
    lambda a: torch.cdist(a["p"], a["q"]),
)
layer(  # clamp(i-1) repeats the first entry, as torch does
    "linear_upsample2x",
    """
    y[b,c,2*i] += 0.75 x[b,c,i] + 0.25 x[b,c,clamp(i-1)]
    y[b,c,2*i+1] += 0.75 x[b,c,i] + 0.25 x[b,c,clamp(i+1)]
    """,
    normal(x=(B, 2, 5)),
    lambda a: F.interpolate(a["x"], scale_factor=2, mode="linear", align_corners=False),
)
layer(
    "linear_upsample2x_gather",
    "y[b,c,r] = 0.75 x[b,c,r//2] + 0.25 x[b,c,clamp(r//2+2*(r%2)-1)]",
    normal(x=(B, 2, 5)),
    lambda a: F.interpolate(a["x"], scale_factor=2, mode="linear", align_corners=False),
)
layer(  # torch pads an even kernel's "same" by 0 before and 1 after
    "conv2d_same_even_kernel",
    """
    param w[o,i,u,v]
    y[b,o,r,c] = x[b,i,pad(r+u),pad(c+v-1)] w[o,i,u,v]
    """,
    normal(x=(B, 2, 5, 5), w=(3, 2, 2, 3)),
    lambda a: F.conv2d(F.pad(a["x"], (1, 1, 0, 1)), a["w"]),
)
layer(
    "max_pool2d_dilation2",
    """
    dim u=2, v=2
    y[b,c,r,s] = max[u,v](x[b,c,r+2*u,s+2*v])
    """,
    normal(x=(B, 2, 5, 5)),
    lambda a: F.max_pool2d(a["x"], 2, stride=1, dilation=2),
)
layer(  # the last window runs past the edge; clamp repeats the edge, which a max may read twice
    "max_pool2d_ceil_mode",
    """
    dim u=2, v=2
    y[b,c,r,s] = max[u,v](x[b,c,clamp(2*r+u),clamp(2*s+v)])
    """,
    normal(x=(B, 2, 5, 5)),
    lambda a: F.max_pool2d(a["x"], 2, ceil_mode=True),
)
layer(  # count_include_pad=False: divide by the entries the window reads, a padded array of ones
    "avg_pool2d_exclude_pad",
    """
    dim u=3, v=3
    y[b,c,r,s] = sum[u,v](x[b,c,pad(r+u-1),pad(s+v-1)]) / sum[u,v](one[pad(r+u-1),pad(s+v-1)])
    """,
    lambda rng: {"x": rng.standard_normal((B, 2, 4, 4)), "one": np.ones((4, 4))},
    lambda a: F.avg_pool2d(a["x"], 3, 1, 1, count_include_pad=False),
    const=("one",),
)
layer(
    "swin_cyclic_shift",
    "y[b,r,c,d] = x[b,wrap(r+2),wrap(c+2),d]",
    normal(x=(B, 4, 5, 3)),
    lambda a: torch.roll(a["x"], (-2, -2), (1, 2)),
)
layer(
    "squeeze_excitation",
    """
    param W1[c,h], W2[h,c]
    s[b,c] = mean[r,q](x[b,c,r,q])
    e[b,c] = sigmoid(relu(s[b,d] W1[d,h]) W2[h,c])
    y[b,c,r,q] = x[b,c,r,q] e[b,c]
    """,
    normal(x=(B, 4, 3, 3), W1=(4, 2), W2=(2, 4)),
    lambda a: a["x"] * torch.sigmoid(F.relu(a["x"].mean((2, 3)) @ a["W1"]) @ a["W2"])[:, :, None, None],
)
layer(
    "maxout",
    """
    param W[k,o,i]
    y[b,o] = max[k](x[b,i] W[k,o,i])
    """,
    normal(x=(3, 4), W=(3, 2, 4)),
    lambda a: torch.einsum("bi,koi->bko", a["x"], a["W"]).amax(1),
)
layer(
    "soft_mixture_of_experts",
    """
    g[b,e] = exp(x[b,i] Wg[i,e] - logsumexp[f](x[b,j] Wg[j,f]))
    y[b,o] = g[b,e] tanh(x[b,i] We[e,i,o])
    """,
    normal(x=(3, 4), Wg=(4, 2), We=(2, 4, 5)),
    lambda a: torch.einsum(
        "be,beo->bo", torch.softmax(a["x"] @ a["Wg"], -1), torch.einsum("bi,eio->beo", a["x"], a["We"]).tanh()
    ),
)


def convnext(a: Tensors) -> torch.Tensor:
    h = F.conv2d(a["x"], a["dw"][:, None], padding=3, groups=3).permute(0, 2, 3, 1)
    n = F.layer_norm(h, (3,), a["G"], a["S"], 1e-6)
    return a["x"] + (a["L"] * (F.gelu(n @ a["W1"]) @ a["W2"])).permute(0, 3, 1, 2)


layer(
    "convnext_block",
    """
    param dw[c,u,v], G[c], S[c], W1[c,f], W2[f,c], L[c]
    h[b,c,r,s] = x[b,c,pad(r+u-3),pad(s+v-3)] dw[c,u,v]
    mu[b,r,s] = mean[c](h[b,c,r,s])
    var[b,r,s] = mean[c]((h[b,c,r,s] - mu[b,r,s])^2)
    n[b,c,r,s] = (h[b,c,r,s] - mu[b,r,s]) / sqrt(var[b,r,s] + 1e-6) G[c] + S[c]
    f[b,f,r,s] = n[b,c,r,s] W1[c,f]
    y[b,c,r,s] = x[b,c,r,s] + L[c] 0.5 f[b,f,r,s] (1 + erf(f[b,f,r,s] / sqrt(2))) W2[f,c]
    """,
    normal(x=(B, 3, 7, 7), dw=(3, 7, 7), G=(3,), S=(3,), W1=(3, 6), W2=(6, 3), L=(3,)),
    convnext,
)

LAYERS = {entry.name: entry for entry in ZOO}


# ---- running them ----------------------------------------------------------------------------


def reference(entry: Layer, arrays: Arrays, seed: np.ndarray) -> tuple[np.ndarray, Arrays]:
    """torch's output and its vector-Jacobian product with `seed` for every float input but the
    layer's constants."""
    ts = {
        k: torch.tensor(v, requires_grad=v.dtype.kind == "f" and k not in entry.const)
        for k, v in arrays.items()
    }
    out = entry.torch(ts)
    floats = [k for k, t in ts.items() if t.requires_grad]
    grads = torch.autograd.grad(out, [ts[k] for k in floats], torch.as_tensor(seed), allow_unused=True)
    return out.detach().numpy(), {
        k: np.zeros_like(arrays[k]) if g is None else g.numpy() for k, g in zip(floats, grads)
    }


@cache
def case(entry: Layer) -> tuple[Arrays, np.ndarray, np.ndarray, Arrays]:
    """The arrays of a layer, a seed for its output, and torch's output and gradients."""
    rng = np.random.default_rng(sum(map(ord, entry.name)))
    arrays = entry.inputs(rng)
    shape = np.shape(entry.torch({k: torch.as_tensor(v) for k, v in arrays.items()}))
    seed = rng.standard_normal(shape)
    return (arrays, seed, *reference(entry, arrays, seed))


def check(entry: Layer, backend: str, convert: Callable[[np.ndarray], object]) -> None:
    arrays, seed, want, want_grads = case(entry)
    model = ig.compile(entry.src, backend=backend)
    vals = model.forward(**{k: convert(v) for k, v in arrays.items()})
    got = np.asarray(vals[entry.out])
    np.testing.assert_allclose(got, want, rtol=entry.rtol, atol=entry.rtol, err_msg=f"{entry.name} forward")
    grads = model.backward(vals, seed={entry.out: convert(seed)})
    for k, g in want_grads.items():
        np.testing.assert_allclose(
            np.asarray(grads[k]), g, rtol=entry.rtol, atol=entry.rtol, err_msg=f"{entry.name} d/d{k}"
        )


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_numpy(name: str) -> None:
    check(LAYERS[name], "numpy", lambda v: v)


def test_torch_backend() -> None:
    for entry in ZOO:
        check(entry, "torch", torch.as_tensor)


# jax compiles each layer's forward and backward (about 0.3 s a layer): a few whose steps differ
# most (erf, gathers through // and labels, clamp, wrap, an infinite mask, scatters that define
# their tensor, a max over labels)
JAX_LAYERS = (
    "gelu_erf", "max_pool2d_k3_s2_pad1", "pixel_shuffle", "embedding", "attention_additive_inf_mask",
    "conv1d_circular", "conv_transpose1d_s2_p1_op1", "rope_interleaved", "embedding_bag_max",
)


def test_jax_backend() -> None:
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        for name in JAX_LAYERS:
            check(LAYERS[name], "jax", jax.numpy.asarray)


def check_jvp(entry: Layer) -> None:
    """The tangent of the output along random directions of the float inputs, against torch's
    vector-Jacobian products by the inner product <seed, J v> = <J^T seed, v>."""
    arrays, seed, _, want_grads = case(entry)
    rng = np.random.default_rng(7)
    v = {k: rng.standard_normal(arrays[k].shape) for k in want_grads}
    model = ig.compile(entry.src)
    tangent = model.jvp(model.forward(**arrays), tangents=v)[entry.out]
    want = sum(float(np.sum(want_grads[k] * v[k])) for k in v)
    tol = max(entry.rtol, 1e-9)
    np.testing.assert_allclose(np.sum(tangent * seed), want, rtol=tol, atol=tol, err_msg=entry.name)


# the fuzz profile (tests/conftest.py) is the long run, make fuzz
long_only = pytest.mark.skipif(settings().max_examples < 1000, reason="make fuzz checks every layer's jvp")


def few(names: list[str], checked: tuple[str, ...]) -> list:
    """`names`, all but `checked` marked for make fuzz alone."""
    return [n if n in checked else pytest.param(n, marks=[pytest.mark.fuzz, long_only]) for n in names]


JVP_LAYERS = (
    "rope_interleaved", "conv_transpose1d_s2_p1_op1", "embedding_bag_max", "unfold_gather", "glu",
    "softmax_channels",
)


@pytest.mark.parametrize("name", few(sorted(LAYERS), JVP_LAYERS))
def test_jvp_is_torchs_vjp_transposed(name: str) -> None:
    check_jvp(LAYERS[name])


# ---- hostile variants of the same layers (numpy) ---------------------------------------------


def floats(arrays: Arrays) -> list[str]:
    return [k for k, v in arrays.items() if v.dtype.kind == "f"]


@cache
def model(name: str) -> ig.Model:
    return ig.compile(LAYERS[name].src)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_float32_stays_float32(name: str) -> None:
    arrays, seed, want, want_grads = case(LAYERS[name])
    a32 = {k: v.astype(np.float32) if k in floats(arrays) else v for k, v in arrays.items()}
    m, out = model(name), LAYERS[name].out
    vals = m.forward(**a32)
    grads = m.backward(vals, seed={out: seed.astype(np.float32)})
    assert vals[out].dtype == np.float32
    np.testing.assert_allclose(vals[out], want, rtol=1e-4, atol=1e-4)
    for k in want_grads:
        assert grads[k].dtype == np.float32, k
        np.testing.assert_allclose(grads[k], want_grads[k], rtol=1e-3, atol=1e-3, err_msg=k)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_nan_and_integer_inputs_as_torch(name: str) -> None:
    """A NaN in the first float input makes NaNs where torch's does (an infinity runs too; where
    it meets a softmax, the formula as written gives [nan, 0, ...] and F.softmax a row of NaNs,
    as torch.exp(z - torch.logsumexp(z)) does); whole numbers given as an integer array are read
    as float64 and give torch's values."""
    entry = LAYERS[name]
    arrays, seed = case(entry)[:2]
    first = floats(arrays)[0]
    m = model(name)
    for value in (np.nan, np.inf):
        bad = dict(arrays, **{first: arrays[first].copy()})
        bad[first].flat[0] = value
        with np.errstate(all="ignore"):
            vals = m.forward(**bad)
            m.backward(vals, seed={entry.out: seed})
        if value != value:
            want = entry.torch({k: torch.as_tensor(v) for k, v in bad.items()}).numpy()
            np.testing.assert_array_equal(np.isnan(vals[entry.out]), np.isnan(want), err_msg=first)
    whole = dict(arrays, **{first: np.round(3 * arrays[first]).astype(np.int64)})
    got = m.forward(**whole)[entry.out]
    want = entry.torch({k: torch.as_tensor(v, dtype=torch.float64) if k == first else torch.as_tensor(v)
                        for k, v in whole.items()}).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


# ---- what a user writes that the language refuses: a located message saying what to write -----

LIMITATIONS = [
    # (program, line, column, the message's advice)
    ("y[b,c] = softmax(z[b,c])", 1, 10, r"write it out: exp\(z\[b,c\] - logsumexp\[k\]\(z\[b,k\]\)\)"),
    ("y[b,i] = gelu(x[b,i])", 1, 10, r"0\.5 x\[i\] \(1 \+ erf\(x\[i\] / sqrt\(2\)\)\)"),
    # torch's padding=1 as a shifted read: the message offers pad(...)
    ("y[b,o,r] = x[b,i,r+k-1] w[o,i,k]", 1, 18, r"reads below position 0.*read through pad\(k\+r-1\)"),
    # a batch mean written as a sum over size[b] outside the sum
    ("loss = sum[b,c](p[b,c] log(p[b,c])) / size[b]", 1, 39, r"inside: sum\[b,c\]\(\.\.\. / size\[b\]\)"),
    # a pooling window needs its extent
    ("y[b,c,r,s] = max[u,v](x[b,c,2*r+u,2*s+v])", 1, 23, r"declare its extent with `dim u=\.\.\.`"),
    ("y[b,o] = x[b,i] @ W[i,o]", 1, 17, "unexpected character '@'"),
    ("y[b,i] = x[b][i]", 1, 14, r"a tensor takes one index list, like x\[i,j\]"),
    ("erf[i] = x[i]", 1, 1, r"'erf' is a function name and cannot name a tensor"),
]


@pytest.mark.parametrize("text, line, column, advice", LIMITATIONS)
def test_refusals_say_where_and_what_to_write(text: str, line: int, column: int, advice: str) -> None:
    with pytest.raises(ig.IndexgradError, match=advice) as e:
        ig.compile(ig.parse(text, filename="zoo.idx"))
    assert (e.value.line, e.value.column) == (line, column)
    rendered = str(e.value).splitlines()
    assert rendered[0].startswith(f"zoo.idx:{line}:{column}: error: ")
    assert rendered[1].strip() == text and rendered[2].strip().startswith("^")


@pytest.mark.parametrize("name", sorted(SPELLED))
def test_what_an_unknown_function_is_spelled_as_compiles(name: str) -> None:
    formula = SPELLED[name].split(" is ")[0].split(" (")[0]
    lhs = "y[b,c]" if "z[b,c]" in formula else "y[i]"
    ig.compile(f"{lhs} = {formula}")
