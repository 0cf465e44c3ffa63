"""The 2-D convolution layer of issue 5, forward + backward, against numpy im2col, PyTorch and JAX.

    y[b,o,r,c] = x[b,ch,r+u,c+v] w[o,ch,u,v] + B[o]
    loss = 0.5 sum[b,o,r,c](y[b,o,r,c]^2)

Two variants: a layer inside a network, which passes the input's gradient down (`conv_xwB`: x, w,
B; in run.py's main table), and the parameters' gradients only (`conv_wB`, by `--only`); the first
exercises the scatter-add through `r+u, c+v`. The hand-written step is numpy im2col per image: one
copy of the patches, one matmul forward, two backward, col2im by nine slice-adds.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from workloads import Result, Spec, Workload, assemble

CONV_IDX = """\
param w[o,ch,u,v], B[o]
input x[b,ch,row,col]
y[b,o,r,c] = x[b,ch,r+u,c+v] w[o,ch,u,v] + B[o]
loss = 0.5 sum[b,o,r,c](y[b,o,r,c]^2)
"""
ORDER = ["x", "w", "B"]


def conv_arrays(b: int, ch: int, o: int, hw: int, k: int, dtype: Any, seed: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((b, ch, hw, hw)).astype(dtype),
        "w": (rng.standard_normal((o, ch, k, k)) / np.sqrt(ch * k * k)).astype(dtype),
        "B": (0.1 * rng.standard_normal(o)).astype(dtype),
    }


def conv_hand(x, w, B, input_grad: bool) -> Result:
    """(b) im2col, laid out per image: the patches of image b as a [ch·u·v, r·c] matrix (one copy
    that streams along c), one matmul forward (w as [o, ch·u·v] broadcast over the images, y
    born as [b, o, r·c]), one per image for w's gradient, summed, one for the patches' gradient,
    then col2im by nine slice-adds. (Patches as one [b·r·c, ch·u·v] matrix copy 7× slower here:
    each run of the copy is 3 elements long.)"""
    nb, ch, hh, ww = x.shape
    o, _, ku, kv = w.shape
    r, c = hh - ku + 1, ww - kv + 1
    # cols[b, ch,u,v, r,c] = x[b,ch,r+u,c+v]
    cols = sliding_window_view(x, (ku, kv), axis=(2, 3)).transpose(0, 1, 4, 5, 2, 3).reshape(nb, -1, r * c)
    wm = w.reshape(o, -1)
    y = wm @ cols  # [b, o, r·c]
    y += B[:, None]
    loss = 0.5 * np.vdot(y, y)
    g = y  # y.grad = y
    grads = {"w": (g @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape), "B": g.sum(axis=(0, 2))}
    if input_grad:
        dcols = (wm.T @ g).reshape(nb, ch, ku, kv, r, c)  # cols.grad, each offset's [b,ch,r,c] contiguous
        dx = np.zeros_like(x)
        for u in range(ku):  # col2im: x.grad[b,ch,r+u,c+v] += cols.grad[b,ch,u,v,r,c]
            for v in range(kv):
                dx[:, :, u : u + r, v : v + c] += dcols[:, :, u, v]
        grads["x"] = dx
    return loss, grads


def _torch_loss(x, w, B):
    import torch.nn.functional as F

    y = F.conv2d(x, w, B)
    return 0.5 * (y * y).sum()


def _jax_loss(x, w, B):
    import jax

    y = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID") + B[None, :, None, None]
    return 0.5 * (y * y).sum()


def conv_workload(
    key: str, dims: tuple[int, ...], use: set[str], before: ModuleType | None = None
) -> Workload:
    b, ch, o, hw, k = dims
    input_grad = key == "conv_xwB"
    dtype = np.float32
    wrt = ["x", "w", "B"] if input_grad else ["w", "B"]
    r = hw - k + 1
    flops = (3 if input_grad else 2) * 2 * (b * r * r) * (ch * k * k) * o  # im2col: 1 product + 1 or 2
    spec = Spec(
        CONV_IDX, conv_arrays(b, ch, o, hw, k, dtype), ORDER, wrt,
        lambda x, w, B: conv_hand(x, w, B, input_grad), _torch_loss, _jax_loss,
    )  # fmt: skip
    title = f"conv2d b={b} ch={ch} o={o} {hw}x{hw} {k}x{k}, grads {','.join(wrt)}, float32"
    return assemble(key, title, dtype, flops, spec, use, before)
