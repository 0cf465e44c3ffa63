"""Independent reference implementations of examples/*.idx in HIPS autograd, for values and gradients.

Each oracle is written by hand with array operations (einsum, maximum, exp, ...), never by reading
the .idx text, so a bug in indexgrad's parser, checker, derivation or executor cannot hide in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np

import indexgrad as ig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Oracle:
    """One example: how to draw its inputs, and its last defined tensor `output` as a function of them."""

    output: str
    inputs: Callable[[np.random.Generator, type], Arrays]
    value: Callable[[Arrays], np.ndarray]

    def seed(self, arrays: Arrays, rng: np.random.Generator) -> np.ndarray | None:
        """A random cotangent shaped like the output, or None when the output is a scalar."""
        out = np.asarray(self.value(arrays))
        if out.ndim == 0:
            return None
        return rng.standard_normal(out.shape).astype(out.dtype)

    def loss(self, arrays: Arrays, seed: np.ndarray | None = None):
        """The scalar being differentiated: the output itself, or sum(output * seed) for a tensor."""
        out = self.value(arrays)
        if anp.ndim(out) == 0:
            return out
        if seed is None:
            raise ValueError(f"{self.output} is not a scalar: pass a seed (cotangent) of its shape")
        return anp.sum(out * seed)


# ---- helpers: the elementwise functions, written out so nothing is shared with indexgrad ----


def _sigmoid(z):
    return 1.0 / (1.0 + anp.exp(-z))


def _relu(z):
    return anp.maximum(z, 0.0)


def _normal(rng: np.random.Generator, dtype, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def _uniform(rng: np.random.Generator, dtype, low: float, high: float, *shape: int) -> np.ndarray:
    return rng.uniform(low, high, shape).astype(dtype)


def _one_hot(rng: np.random.Generator, dtype, rows: int, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=dtype)[rng.integers(0, classes, rows)]


def _labels01(rng: np.random.Generator, dtype, n: int) -> np.ndarray:
    return rng.integers(0, 2, n).astype(dtype)


# ---- one oracle per example; sizes are small and pairwise distinct so a swapped axis shows ----


def _affine_inputs(rng, dtype):
    b, j, i = 3, 5, 4
    return {
        "x": _normal(rng, dtype, b, j),
        "W": _normal(rng, dtype, j, i),
        "B": _normal(rng, dtype, i),
    }


def _affine(a):
    return anp.einsum("bj,ji->bi", a["x"], a["W"]) + a["B"]


def _edf_mlp_inputs(rng, dtype):
    b, d, h, c = 3, 5, 4, 6
    return {
        "x": _normal(rng, dtype, b, d),
        "Y": _one_hot(rng, dtype, b, c),
        "W1": _normal(rng, dtype, d, h),
        "B1": _normal(rng, dtype, h),
        "W2": _normal(rng, dtype, h, c),
        "B2": _normal(rng, dtype, c),
    }


def _edf_mlp(a):
    L1 = _relu(a["x"] @ a["W1"] + a["B1"])
    S = _sigmoid(L1 @ a["W2"] + a["B2"])
    Q = anp.exp(S) / anp.sum(anp.exp(S), axis=1, keepdims=True)
    return anp.mean(-anp.sum(a["Y"] * anp.log(Q), axis=1))


def _sqrt_norm_inputs(rng, dtype):
    return {"x": _normal(rng, dtype), "y": _normal(rng, dtype)}


def _sqrt_norm(a):
    return anp.sqrt(a["x"] ** 2 + a["y"] ** 2)


def _tanh_net_inputs(rng, dtype):
    b, d, h = 3, 5, 4
    return {
        "x": _normal(rng, dtype, b, d),
        "y": _normal(rng, dtype, b),
        "W1": _normal(rng, dtype, d, h),
        "w2": _normal(rng, dtype, h),
    }


def _tanh_net(a):
    yhat = anp.tanh(a["x"] @ a["W1"]) @ a["w2"]
    return anp.sum((yhat - a["y"]) ** 2)


def _logistic_inputs(rng, dtype):
    b, d, i = 4, 3, 5
    return {
        "x": _normal(rng, dtype, b, d),
        "y": _labels01(rng, dtype, b),
        "w": _normal(rng, dtype, d),
        "bias": _normal(rng, dtype),
        "W": _normal(rng, dtype, d, i),
        "B": _normal(rng, dtype, i),
    }


def _logistic(a):
    yhat = _sigmoid(a["x"] @ a["w"] + a["bias"])
    H = anp.maximum(0.0, a["x"] @ a["W"] + a["B"])
    ce = anp.sum(-a["y"] * anp.log(yhat) - (1 - a["y"]) * anp.log(1 - yhat))
    return ce + 0.5 * anp.sum(H**2)


def _composite_inputs(rng, dtype):
    # max(x1,x2) x3/x4 >= 1 > 0.4 >= x5 + x6 keeps the log's argument positive
    return {
        "x1": _uniform(rng, dtype, 1.0, 2.0),
        "x2": _uniform(rng, dtype, 1.0, 2.0),
        "x3": _uniform(rng, dtype, 1.0, 2.0),
        "x4": _uniform(rng, dtype, 0.5, 1.0),
        "x5": _uniform(rng, dtype, 0.0, 0.2),
        "x6": _uniform(rng, dtype, 0.0, 0.2),
    }


def _composite(a):
    inner = anp.maximum(a["x1"], a["x2"]) * a["x3"] / a["x4"] - (a["x5"] + a["x6"])
    return _sigmoid(anp.log(5.0 * inner) + 0.5)


def _log_sin_max_inputs(rng, dtype):
    return {
        "x1": _uniform(rng, dtype, 0.5, 2.0),
        "x2": _normal(rng, dtype),
        "x3": _normal(rng, dtype),
    }


def _log_sin_max(a):
    return 2.0 * anp.log(a["x1"] + anp.sin(a["x1"])) * anp.maximum(a["x2"], a["x3"])


def _softmax_xent_inputs(rng, dtype):
    i, j = 4, 3
    return {
        "x": _normal(rng, dtype, j),
        "t": _one_hot(rng, dtype, 1, i)[0],
        "W": _normal(rng, dtype, i, j),
        "b": _normal(rng, dtype, i),
    }


def _softmax_xent(a):
    logits = a["W"] @ a["x"] + a["b"]
    y = anp.exp(logits) / anp.sum(anp.exp(logits))
    return -anp.dot(a["t"], anp.log(y))


def _losses_inputs(rng, dtype):
    n = 6
    # residuals on both sides of the Huber threshold |r| = 1, well away from it
    s = rng.standard_normal(n)
    r = np.array([0.3, -0.5, 1.7, -2.2, 0.1, 2.9])
    return {"s": s.astype(dtype), "t": (s - r).astype(dtype), "y": _labels01(rng, dtype, n)}


def _losses(a):
    s, t, y = a["s"], a["t"], a["y"]
    r = s - t
    sq = anp.sum(r**2)
    ab = anp.sum(anp.abs(r))
    huber = anp.sum(anp.where(anp.abs(r) <= 1.0, 0.5 * r**2, anp.abs(r) - 0.5))
    p = _sigmoid(s)
    ce = anp.sum(-y * anp.log(p) - (1 - y) * anp.log(1 - p))
    hinge = anp.sum(anp.maximum(0.0, 1.0 - (2 * y - 1) * s))
    return sq + ab + huber + ce + hinge


def _correlation_inputs(rng, dtype):
    n, k = 7, 3
    return {
        "x": _normal(rng, dtype, n),
        "w": _normal(rng, dtype, k),
        "b": _normal(rng, dtype, n - k + 1),
    }


def _correlation(a):
    x, w = a["x"], a["w"]
    j, k = x.shape[0] - w.shape[0] + 1, w.shape[0]
    windows = x[np.arange(j)[:, None] + np.arange(k)[None, :]]  # windows[j, k] = x[j + k]
    y = windows @ w + a["b"]
    return anp.sum(0.5 * y**2)


def _mlp_inputs(rng, dtype):
    b, d, h, c = 5, 8, 6, 4
    return {
        "x": _normal(rng, dtype, b, d),
        "Y": _one_hot(rng, dtype, b, c),
        "W1": _normal(rng, dtype, d, h),
        "B1": _normal(rng, dtype, h),
        "W2": _normal(rng, dtype, h, c),
        "B2": _normal(rng, dtype, c),
    }


def _mlp(a):
    z = _relu(a["x"] @ a["W1"] + a["B1"]) @ a["W2"] + a["B2"]
    top = anp.max(z, axis=1, keepdims=True)
    lse = top[:, 0] + anp.log(anp.sum(anp.exp(z - top), axis=1))
    return anp.mean(lse - anp.sum(a["Y"] * z, axis=1))


DENSE_DEFS = {"W1": "u.W", "B1": "u.B", "W2": "z.W", "B2": "z.B"}  # mlp.idx's params in dense_defs.idx


def _dense_defs_inputs(rng, dtype):
    return {DENSE_DEFS.get(k, k): v for k, v in _mlp_inputs(rng, dtype).items()}


def _dense_defs(a):
    return _mlp({k: a[DENSE_DEFS.get(k, k)] for k in ("x", "Y", *DENSE_DEFS)})


def _windows(x, kh: int, kw: int, out_h: int, out_w: int, stride: int = 1, dilation: int = 1):
    """x[b,ch,row,col] -> patches[b,ch,r,u,c,v] = x[b,ch,stride*r+dilation*u,stride*c+dilation*v]."""
    rows = stride * np.arange(out_h)[:, None] + dilation * np.arange(kh)[None, :]
    cols = stride * np.arange(out_w)[:, None] + dilation * np.arange(kw)[None, :]
    return x[:, :, rows][..., cols]


def _conv(x, w, stride: int = 1, dilation: int = 1):
    """Cross-correlation with "valid" extent, by an einsum over explicitly gathered patches."""
    kh, kw = w.shape[2:]
    out_h = (x.shape[2] - dilation * (kh - 1) - 1) // stride + 1
    out_w = (x.shape[3] - dilation * (kw - 1) - 1) // stride + 1
    return anp.einsum("bhrucv,ohuv->borc", _windows(x, kh, kw, out_h, out_w, stride, dilation), w)


def _conv2d_inputs(rng, dtype):
    return {
        "x": _normal(rng, dtype, 2, 3, 6, 5),
        "w": _normal(rng, dtype, 4, 3, 3, 2),
        "B": _normal(rng, dtype, 4),
    }


def _conv2d(a):
    y = _conv(a["x"], a["w"]) + a["B"][None, :, None, None]
    return anp.sum(0.5 * y**2)


def _strided_conv_inputs(rng, dtype):
    return {
        "x": _normal(rng, dtype, 2, 2, 9, 8),
        "w": _normal(rng, dtype, 3, 2, 3, 2),
        "w2": _normal(rng, dtype, 3, 2, 3, 2),
    }


def _strided_conv(a):
    s = _conv(a["x"], a["w"], stride=2)
    d = _conv(a["x"], a["w2"], dilation=2)
    return anp.sum(0.5 * s**2) + anp.sum(0.5 * d**2)


def _log_softmax_rows(z):
    top = anp.max(z, axis=1, keepdims=True)
    return z - top - anp.log(anp.sum(anp.exp(z - top), axis=1, keepdims=True))


def _cnn_inputs(rng, dtype):
    b, row, col, o, u, v, k = 3, 6, 5, 4, 3, 2, 5
    r, c = row - u + 1, col - v + 1
    return {
        "x": _normal(rng, dtype, b, row, col),
        "Y": _one_hot(rng, dtype, b, k),
        "K": _normal(rng, dtype, o, u, v),
        "KB": _normal(rng, dtype, o),
        "W": _normal(rng, dtype, o, r, c, k),
        "B": _normal(rng, dtype, k),
    }


def _cnn(a):
    conv = _relu(_conv(a["x"][:, None], a["K"][:, None]) + a["KB"][None, :, None, None])
    z = anp.einsum("borc,orck->bk", conv, a["W"]) + a["B"]
    lse = z[:, 0] - _log_softmax_rows(z)[:, 0]  # logsumexp of each row
    return anp.mean(lse - anp.sum(a["Y"] * z, axis=1))


def _logloss_inputs(rng, dtype):
    b, d, c = 5, 4, 3
    return {
        "x": _normal(rng, dtype, b, d),
        "y": rng.integers(0, c, b),
        "W": _normal(rng, dtype, d, c),
        "B": _normal(rng, dtype, c),
    }


def _logloss(a):
    q = anp.exp(_log_softmax_rows(anp.dot(a["x"], a["W"]) + a["B"]))
    return anp.mean(-anp.log(q[np.arange(len(a["y"])), a["y"]]))


def _logsumexp_last(z):
    top = anp.max(z, axis=-1, keepdims=True)
    return top + anp.log(anp.sum(anp.exp(z - top), axis=-1, keepdims=True))


BLOCKS = ("x1", "x2", "x3", "x4")  # the uses of `block` in examples/transformer.idx, in order


def _transformer_inputs(rng, dtype):
    b, t, d, h, e, f, c = 2, 3, 4, 2, 5, 6, 7
    a = {
        "tok": rng.integers(0, c, (b, t)),
        "next": rng.integers(0, c, (b, t)),
        "M": _normal(rng, dtype, t, t),  # any additive bias on the scores, not only a causal mask
        "w": _uniform(rng, dtype, 0.1, 1.0, t),
        "E": _normal(rng, dtype, c, d),
        "P": _normal(rng, dtype, t, d),
        "U": _normal(rng, dtype, d, c),
        "f.G": _uniform(rng, dtype, 0.5, 1.5, d),
        "f.S": _normal(rng, dtype, d),
    }
    for u in BLOCKS:
        for w in ("Q", "K", "V"):
            a[f"{u}.{w}"] = _normal(rng, dtype, d, h, e) / 2
        a[f"{u}.O"] = _normal(rng, dtype, h, e, d) / 2
        a[f"{u}.W1"], a[f"{u}.B1"] = _normal(rng, dtype, d, f) / 2, _normal(rng, dtype, f)
        a[f"{u}.W2"], a[f"{u}.B2"] = _normal(rng, dtype, f, d) / 2, _normal(rng, dtype, d)
        for n in ("n", "m"):
            a[f"{u}.{n}.G"] = _uniform(rng, dtype, 0.5, 1.5, d)
            a[f"{u}.{n}.S"] = _normal(rng, dtype, d)
    return a


def _layer_norm(x, gain, shift):
    c = x - anp.mean(x, axis=-1, keepdims=True)
    return c / anp.sqrt(anp.mean(c**2, axis=-1, keepdims=True) + 1e-5) * gain + shift


def _transformer(a):
    x = a["E"][a["tok"]] + a["P"]
    for u in BLOCKS:
        n = _layer_norm(x, a[f"{u}.n.G"], a[f"{u}.n.S"])
        q, k, v = (anp.einsum("btd,dhe->bthe", n, a[f"{u}.{w}"]) for w in ("Q", "K", "V"))
        scores = anp.einsum("bthe,bshe->bhts", q, k) / q.shape[-1] ** 0.5 + a["M"]
        p = anp.exp(scores - _logsumexp_last(scores))
        heads = anp.einsum("bhts,bshe->bthe", p, v)
        r = x + anp.einsum("bthe,hed->btd", heads, a[f"{u}.O"])
        m = _layer_norm(r, a[f"{u}.m.G"], a[f"{u}.m.S"])
        x = r + anp.dot(_relu(anp.dot(m, a[f"{u}.W1"]) + a[f"{u}.B1"]), a[f"{u}.W2"]) + a[f"{u}.B2"]
    z = anp.dot(_layer_norm(x, a["f.G"], a["f.S"]), a["U"])
    b, t = a["next"].shape
    picked = z[np.arange(b)[:, None], np.arange(t)[None, :], a["next"]]
    return anp.mean(anp.sum(a["w"] * (_logsumexp_last(z)[..., 0] - picked), axis=1))


def _lstm_inputs(rng, dtype):
    b, j, i, c = 3, 2, 4, 5
    a = {f"x{s}": _normal(rng, dtype, b, j) for s in range(1, 5)}
    a.update(
        h0=_normal(rng, dtype, b, i),
        c0=_normal(rng, dtype, b, i),
        Y=_one_hot(rng, dtype, b, c),
        W=_normal(rng, dtype, j, 3, i),
        U=_normal(rng, dtype, i, 3, i) / 2,
        B=_normal(rng, dtype, 3, i),
        Wc=_normal(rng, dtype, j, i),
        Uc=_normal(rng, dtype, i, i) / 2,
        V=_normal(rng, dtype, i, c),
    )
    return a


def _lstm(a):
    h, c = a["h0"], a["c0"]
    for s in range(1, 5):
        x = a[f"x{s}"]
        gates = _sigmoid(anp.einsum("bj,jgi->bgi", x, a["W"]) + anp.einsum("bk,kgi->bgi", h, a["U"]) + a["B"])
        candidate = anp.tanh(anp.dot(x, a["Wc"]) + anp.dot(h, a["Uc"]))
        c = gates[:, 1] * c + gates[:, 0] * candidate  # forget, input
        h = gates[:, 2] * anp.tanh(c)  # output
    z = anp.dot(h, a["V"])
    return anp.mean(_logsumexp_last(z)[:, 0] - anp.sum(a["Y"] * z, axis=1))


def _pool2(x):
    """2x2 max pooling with stride 2 (the sides are even)."""
    b, ch, h, w = x.shape
    return anp.max(anp.reshape(x, (b, ch, h // 2, 2, w // 2, 2)), axis=(3, 5))


def _same3(x, k, bias):
    """A 3x3 convolution that keeps the size: zero padding of 1, then a valid one."""
    padded = anp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="constant")
    return _conv(padded, k) + bias[None, :, None, None]


def _lenet_inputs(rng, dtype):
    b, o, h, k = 3, 4, 5, 10
    return {
        "x": _normal(rng, dtype, b, 8, 8),
        "Y": _one_hot(rng, dtype, b, k),
        "K1": _normal(rng, dtype, o, 3, 3),
        "B1": _normal(rng, dtype, o),
        "K2": _normal(rng, dtype, h, o, 3, 3),
        "B2": _normal(rng, dtype, h),
        "W": _normal(rng, dtype, h, 2, 2, k),
        "B": _normal(rng, dtype, k),
    }


def _lenet(a):
    p1 = _pool2(_relu(_same3(a["x"][:, None], a["K1"][:, None], a["B1"])))
    p2 = _pool2(_relu(_same3(p1, a["K2"], a["B2"])))
    z = anp.einsum("bhrc,hrck->bk", p2, a["W"]) + a["B"]
    lse = z[:, 0] - _log_softmax_rows(z)[:, 0]
    return anp.mean(lse - anp.sum(a["Y"] * z, axis=1))


def _attention_inputs(rng, dtype):
    b, t, d, h, e = 2, 4, 6, 3, 2
    return {
        "x": _normal(rng, dtype, b, t, d),
        "M": (2 * np.tril(np.ones((t, t))) - 1).astype(dtype),  # causal, M > 0 where s <= t; away from 0
        "Wq": _normal(rng, dtype, d, h, e),
        "Wk": _normal(rng, dtype, d, h, e),
        "Wv": _normal(rng, dtype, d, h, e),
        "Wo": _normal(rng, dtype, h, e, d),
    }


def _attention(a):
    q = anp.einsum("btd,dhe->bhte", a["x"], a["Wq"])
    k = anp.einsum("bsd,dhe->bhse", a["x"], a["Wk"])
    v = anp.einsum("bsd,dhe->bhse", a["x"], a["Wv"])
    scores = anp.einsum("bhte,bhse->bhts", q, k) / q.shape[-1] ** 0.5
    scores = anp.where(a["M"] > 0, scores, -1e9)
    top = anp.max(scores, axis=3, keepdims=True)
    w = anp.exp(scores - top) / anp.sum(anp.exp(scores - top), axis=3, keepdims=True)
    return anp.einsum("bhts,bhse,hed->btd", w, v, a["Wo"])


def _norms_inputs(rng, dtype):
    b, c, n = 2, 8, 5
    x = _normal(rng, dtype, b, c, n)
    return {"x": x, "gamma": _normal(rng, dtype, c), "beta": _normal(rng, dtype, c)}


def _norms(a):
    x, gamma, beta = a["x"], a["gamma"][None, :, None], a["beta"][None, :, None]
    b, c, n = x.shape
    mu = anp.mean(x, axis=(1, 2), keepdims=True)
    ln = (x - mu) / anp.sqrt(anp.mean((x - mu) ** 2, axis=(1, 2), keepdims=True) + 1e-5) * gamma + beta
    groups = anp.reshape(x, (b, c // 4, 4, n))
    gmu = anp.mean(groups, axis=(2, 3), keepdims=True)
    gvar = anp.mean((groups - gmu) ** 2, axis=(2, 3), keepdims=True)
    gn = anp.reshape((groups - gmu) / anp.sqrt(gvar + 1e-5), (b, c, n)) * gamma + beta
    rn = x / anp.sqrt(anp.mean(x**2, axis=1, keepdims=True) + 1e-5) * gamma
    return ln + gn + rn


def _tv_denoise_inputs(rng, dtype):
    u, f = _normal(rng, dtype, 5, 6), _normal(rng, dtype, 5, 6)
    return {"u": u, "f": f, "lam": _uniform(rng, dtype, 0.1, 0.5)}


def _tv_denoise(a):
    u = a["u"]
    dr, dc = u[1:, :-1] - u[:-1, :-1], u[:-1, 1:] - u[:-1, :-1]
    tv = anp.sum(anp.sqrt(dr**2 + dc**2 + 1e-3))
    return 0.5 * anp.sum((u - a["f"]) ** 2) + a["lam"] * tv
# ---- implicit layers (SPEC 11): the iteration unrolled until it has converged, or the closed form ----


def _deq_inputs(rng, dtype):
    b, d, h, c = 4, 5, 4, 3
    return {
        "x": _normal(rng, dtype, b, d),
        "Y": _one_hot(rng, dtype, b, c),
        "U": _normal(rng, dtype, d, h),
        "B": _normal(rng, dtype, h),
        "W": (0.3 * rng.standard_normal((h, h))).astype(dtype),  # a contraction by a margin
        "V": _normal(rng, dtype, h, c),
        "C": _normal(rng, dtype, c),
    }


def _deq(a):
    A = a["W"] / anp.sqrt(1 + anp.sum(a["W"] ** 2))
    z = anp.zeros((a["x"].shape[0], A.shape[1]), a["x"].dtype)
    for _ in range(200):  # plain iteration, converged far below float64's precision
        z = anp.tanh(z @ A + a["x"] @ a["U"] + a["B"])
    logits = z @ a["V"] + a["C"]
    top = anp.max(logits, axis=1, keepdims=True)
    lse = top[:, 0] + anp.log(anp.sum(anp.exp(logits - top), axis=1))
    return anp.mean(lse - anp.sum(a["Y"] * logits, axis=1))


def _circle_inputs(rng, dtype):
    return {"x": _uniform(rng, dtype, -0.9, 0.9, 5)}


def _circle(a):
    z = anp.ones_like(a["x"])
    for _ in range(40):  # Newton's iteration on x^2 + z^2 - 1, unrolled
        z = z - (a["x"] ** 2 + z**2 - 1) / (2 * z)
    return anp.sum(z)


def _implicit_lsq_inputs(rng, dtype):
    b, i, k = 4, 6, 3
    return {
        "A": _normal(rng, dtype, i, k),
        "x": _normal(rng, dtype, b, i),
        "t": _normal(rng, dtype, b, k),
        "lam": np.asarray(rng.uniform(0.5, 1.5), dtype),
    }


def _implicit_lsq(a):
    A = a["A"]
    normal = anp.dot(A.T, A) + a["lam"] * anp.eye(A.shape[1], dtype=A.dtype)
    z = anp.transpose(anp.linalg.solve(normal, anp.dot(A.T, a["x"].T)))  # the normal equations
    return anp.sum((z - a["t"]) ** 2)


ORACLES: dict[str, Oracle] = {
    "lenet": Oracle("loss", _lenet_inputs, _lenet),
    "attention": Oracle("y", _attention_inputs, _attention),
    "norms": Oracle("y", _norms_inputs, _norms),
    "tv_denoise": Oracle("loss", _tv_denoise_inputs, _tv_denoise),
    "conv2d": Oracle("loss", _conv2d_inputs, _conv2d),
    "strided_conv": Oracle("loss", _strided_conv_inputs, _strided_conv),
    "cnn": Oracle("loss", _cnn_inputs, _cnn),
    "logloss": Oracle("loss", _logloss_inputs, _logloss),
    "affine": Oracle("y", _affine_inputs, _affine),
    "edf_mlp": Oracle("loss", _edf_mlp_inputs, _edf_mlp),
    "sqrt_norm": Oracle("loss", _sqrt_norm_inputs, _sqrt_norm),
    "tanh_net": Oracle("L", _tanh_net_inputs, _tanh_net),
    "logistic": Oracle("loss", _logistic_inputs, _logistic),
    "composite": Oracle("f", _composite_inputs, _composite),
    "log_sin_max": Oracle("y", _log_sin_max_inputs, _log_sin_max),
    "softmax_xent": Oracle("L", _softmax_xent_inputs, _softmax_xent),
    "losses": Oracle("loss", _losses_inputs, _losses),
    "correlation": Oracle("loss", _correlation_inputs, _correlation),
    "mlp": Oracle("loss", _mlp_inputs, _mlp),
    "dense_defs": Oracle("loss", _dense_defs_inputs, _dense_defs),
    "transformer": Oracle("loss", _transformer_inputs, _transformer),
    "lstm": Oracle("loss", _lstm_inputs, _lstm),
    "deq": Oracle("loss", _deq_inputs, _deq),
    "circle": Oracle("loss", _circle_inputs, _circle),
    "implicit_lsq": Oracle("loss", _implicit_lsq_inputs, _implicit_lsq),
}


# fix and solve stop where the residual is within tol (1e-12 in float64), and two implementations
# (numpy's Anderson restarts with a longer history; jax's, and the generated modules', keep m
# iterates in a fixed buffer) stop at different points within it: for a contraction with
# Lipschitz constant L the two differ by up to about 2 tol / (1 - L), and the gradients (a linear
# fix of the same tolerance) likewise. 1e-9 allows L up to 0.998; Newton's quadratic convergence
# leaves roots far closer than that.
ITERATED_RTOL = 1e-9


def assert_close_in_scale(got: Arrays, want: Arrays, what: str, rtol: float = 1e-12) -> None:
    """Every array of `want` matched in `got` within rtol of the largest magnitude among all of
    them (values, gradients or tangents of one call), or of 1 if that is smaller (as `close` in
    test_properties): a normwise error, so that an entry made small by cancellation, through
    another library's exp or log, is compared at the scale of the terms that cancelled. NaN
    where `want` has NaN."""
    assert set(got) == set(want), f"{what}: {sorted(got)} returned, {sorted(want)} expected"
    want = {n: np.asarray(v, np.float64) for n, v in want.items()}
    scale = max((np.abs(v[np.isfinite(v)]).max() for v in want.values() if np.isfinite(v).any()), default=1.0)
    for n, w in want.items():
        g = np.asarray(got[n], np.float64)
        assert g.shape == w.shape, f"{what} {n}: shape {g.shape}, expected {w.shape}"
        atol = rtol * max(scale, 1.0)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{what} {n}")


def path(name: str) -> Path:
    """The example file an oracle stands for."""
    return EXAMPLES / f"{name}.idx"


def grads(name: str, arrays: Arrays, seed: np.ndarray | None = None) -> Arrays:
    """Gradient of ORACLES[name].loss with respect to every input array, by autograd.

    For a non-scalar output the loss is sum(output * seed); with no seed given, the seed is
    ORACLES[name].seed(arrays, np.random.default_rng(0)), so a caller can draw the same one.
    """
    oracle = ORACLES[name]
    if seed is None:
        seed = oracle.seed(arrays, np.random.default_rng(0))
    keys = sorted(arrays)
    floats = [k for k in keys if arrays[k].dtype.kind == "f"]  # integer labels have no gradient

    def scalar(*values):
        return oracle.loss(dict(zip(keys, values)), seed)

    out = {}
    for pos, key in enumerate(keys):
        if key not in floats:
            continue
        g = autograd.grad(scalar, pos)(*(arrays[k] for k in keys))
        out[key] = np.asarray(g, dtype=arrays[key].dtype).reshape(arrays[key].shape)
    return out


def _self_test() -> None:
    """Every example has an oracle; values are finite; gradients match central differences."""
    stems = sorted(p.stem for p in EXAMPLES.glob("*.idx"))
    assert stems == sorted(ORACLES), f"examples {stems} vs oracles {sorted(ORACLES)}"
    for name, oracle in ORACLES.items():
        for dtype in (np.float64, np.float32):
            rng = np.random.default_rng(1)
            arrays = oracle.inputs(rng, dtype)
            out = np.asarray(oracle.value(arrays))
            assert out.dtype == dtype, (name, out.dtype)
            assert np.all(np.isfinite(out)), name
            g = grads(name, arrays)
            assert sorted(g) == sorted(k for k in arrays if arrays[k].dtype.kind == "f"), name
            for key, val in g.items():
                assert val.shape == arrays[key].shape and np.all(np.isfinite(val)), (name, key)
            if dtype is np.float32:
                continue
            seed = oracle.seed(arrays, np.random.default_rng(0))
            direction = {k: rng.standard_normal(arrays[k].shape) for k in g}
            eps = 1e-6
            plus = oracle.loss({**arrays, **{k: arrays[k] + eps * d for k, d in direction.items()}}, seed)
            minus = oracle.loss({**arrays, **{k: arrays[k] - eps * d for k, d in direction.items()}}, seed)
            numeric = (plus - minus) / (2 * eps)
            analytic = sum(np.sum(g[k] * direction[k]) for k in g)
            assert np.isclose(numeric, analytic, rtol=1e-5, atol=1e-7), (name, numeric, analytic)
        shape = "scalar" if out.ndim == 0 else f"shape {out.shape}"
        print(f"{name:13s} {oracle.output:5s} {shape:14s} inputs {', '.join(sorted(arrays))}")
    print(f"{len(ORACLES)} oracles ok")


if __name__ == "__main__":
    _self_test()


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def vjp(model: ig.Model, arrays: dict, out: str, seed: np.ndarray) -> dict[str, np.ndarray]:
    return model.backward(model.forward(**arrays), seed={out: seed})


def assert_grads(got: dict, fun, arrays: dict, seed=None, rtol: float = 1e-10) -> None:
    """got[k] equals autograd's gradient of sum(fun(**arrays) * seed) for every key of got."""
    keys = sorted(got)

    def scalar(*xs):
        y = fun(**dict(arrays, **dict(zip(keys, xs))))
        return y if seed is None else anp.sum(y * seed)

    for n, k in enumerate(keys):
        want = autograd.grad(scalar, n)(*(arrays[k] for k in keys))
        np.testing.assert_allclose(got[k], want, rtol=rtol, atol=1e-12, err_msg=k)


def assert_value_and_grad_agrees(
    model: ig.Model,
    name: str,
    arrays: Arrays,
    on: Callable[[np.ndarray], object],
    rtol: float = 1e-12,
    oracle: bool = False,
    variants: bool = True,
) -> None:
    """model.value_and_grad on an example (its arrays given as `on` makes them) against forward
    then backward on the same model within rtol (normwise, the same dtypes): of the scalar loss
    by name, or along the oracle's seed for a tensor output; with `oracle`, its gradients also
    against autograd's; with `variants`, again with the gradient of one input only and every
    defined tensor returned."""
    numpy = model.engine.to_numpy
    seed = ORACLES[name].seed(arrays, np.random.default_rng(0))
    given = {n: on(a) for n, a in arrays.items()}
    out = ORACLES[name].output
    how = {"loss": out} if seed is None else {"seed": {out: on(seed)}}
    vals = model.forward(**given)
    want = model.backward(vals, **how)
    values, grads_ = model.value_and_grad(given, **how)
    assert list(values) == [out], f"{name}: value_and_grad returned {list(values)}, not the {out} alone"
    assert {n: g.dtype for n, g in grads_.items()} == {n: g.dtype for n, g in want.items()}, name
    both = {f"{n}.grad": numpy(g) for n, g in grads_.items()} | {out: numpy(values[out])}
    assert_close_in_scale(both, {f"{n}.grad": numpy(g) for n, g in want.items()} | {out: numpy(vals[out])},
                          f"{name}: value_and_grad against forward, backward", rtol)  # fmt: skip
    if oracle:
        assert_close_in_scale({n: numpy(g) for n, g in grads_.items()}, grads(name, arrays, seed),
                              f"{name}: value_and_grad against autograd", ITERATED_RTOL)  # fmt: skip
    if not variants:
        return
    first = model.inputs[0]
    defined = list(model.program.defined())
    values, grads_ = model.value_and_grad(given, wrt=first, outputs=defined, **how)
    assert list(grads_) == [first] and list(values) == defined, name
    assert_close_in_scale({n: numpy(v) for n, v in values.items()} | {"grad": numpy(grads_[first])},
                          {n: numpy(vals[n]) for n in defined} | {"grad": numpy(want[first])},
                          f"{name}: value_and_grad wrt {first}, every defined tensor", rtol)  # fmt: skip
