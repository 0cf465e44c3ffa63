"""The 2-D convolution layer of issue 5, forward + backward, against numpy im2col and PyTorch conv2d.

    y[b,o,r,c] = x[b,ch,r+u,c+v] w[o,ch,u,v] + B[o]
    loss = 0.5 sum[b,o,r,c](y[b,o,r,c]^2)

Two variants: the parameters' gradients only (w, B), and a layer inside a network, which must also
pass the input's gradient down (x, w, B); the latter exercises the scatter-add through `r+u, c+v`.
The reference (b) is numpy im2col: one matmul forward, two backward, col2im by nine slice-adds.

Run alone with `python benchmarks/conv.py` (same options as run.py); `run.py` includes it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import (  # noqa: E402
    HAVE_JAX,
    HAVE_TORCH,
    Impl,
    Result,
    Workload,
    _identity,
    indexgrad_impl,
    jax_impl,
    torch_impl,
)

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
    """(b) im2col: patches as a [b·r·c, ch·u·v] matrix, one matmul forward, two backward, col2im."""
    nb, ch, hh, ww = x.shape
    o, _, ku, kv = w.shape
    r, c = hh - ku + 1, ww - kv + 1
    # cols[b,r,c,ch,u,v] = x[b,ch,r+u,c+v], copied once into a matrix
    cols = sliding_window_view(x, (ku, kv), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5).reshape(nb * r * c, -1)
    wm = w.reshape(o, -1)
    ym = cols @ wm.T  # [b·r·c, o]
    ym += B
    loss = 0.5 * np.vdot(ym, ym)
    g = ym  # y.grad = y, kept in the [b·r·c, o] layout
    grads = {"w": (g.T @ cols).reshape(w.shape), "B": g.sum(axis=0)}
    if input_grad:
        # cols.grad as [b,ch,u,v,r,c] (one transposing copy), so each slice-add below reads contiguously
        dcols = np.ascontiguousarray((g @ wm).reshape(nb, r, c, ch, ku, kv).transpose(0, 3, 4, 5, 1, 2))
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


def conv_workload(input_grad: bool, use: set[str], b=16, ch=8, o=16, hw=28, k=3) -> Workload:
    dtype = np.float32
    arrays = conv_arrays(b, ch, o, hw, k, dtype)
    wrt = ["x", "w", "B"] if input_grad else ["w", "B"]
    key = "conv_xwB" if input_grad else "conv_wB"
    title = f"conv2d layer b={b} ch={ch} o={o} {hw}x{hw} {k}x{k}, grads {','.join(wrt)}, float32"
    w = Workload(key, title, dtype, None, note="reference: numpy im2col")
    w.impls["numpy"] = Impl(
        "numpy", lambda: conv_hand(arrays["x"], arrays["w"], arrays["B"], input_grad), _identity
    )
    if "indexgrad" in use:
        w.impls["indexgrad"] = indexgrad_impl(CONV_IDX, arrays, wrt)
    if "torch" in use and HAVE_TORCH:
        w.impls["torch"] = torch_impl(_torch_loss, arrays, ORDER, wrt)
    if "jax" in use and HAVE_JAX:
        w.impls["jax"] = jax_impl(_jax_loss, arrays, ORDER, wrt)
    return w


def conv_workloads(use: set[str]) -> list:
    return [lambda: conv_workload(False, use), lambda: conv_workload(True, use)]


CONV_KEYS = ["conv_wB", "conv_xwB"]


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", ",".join(CONV_KEYS), "--no-extras", *sys.argv[1:]]))
