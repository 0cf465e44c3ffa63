"""SPEC 9, the layers people write: each form against torch.nn.functional (or numpy by hand) forward,
HIPS autograd and torch autograd backward, finite differences, jvp and hvp, float32, and the
printed gradient program run alone.

Every case is a program whose last statement defines OUT; the checks add
`loss = sum[...](tanh(OUT[...]) gs[...])` so that the loss is not linear (its Hessian is not 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from oracles import ORACLES
from test_derive import assert_printed_gradients_run_alone

import indexgrad as ig

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """A program defining `out`, its inputs, and references: `anp` (HIPS autograd, for values and
    gradients) and `torch` (torch.nn.functional, for values and gradients), each a function of the
    inputs as arrays of that library."""

    text: str
    out: str
    inputs: Callable[[np.random.Generator], Arrays]
    anp: Callable[..., np.ndarray]
    torch: Callable[..., torch.Tensor] | None = None


def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


def windows(n: int, k: int, stride: int = 1) -> np.ndarray:
    """Positions stride*r + u of a window u < k at output r, for an axis of n."""
    out = (n - k) // stride + 1
    return stride * np.arange(out)[:, None] + np.arange(k)[None, :]


def padded_windows(x):
    """Windows of 3 at stride 2 along the last axis of x, padded by one zero on each side: [b, ch, r, u]."""
    return anp.pad(x, ((0, 0), (0, 0), (1, 1)), mode="constant")[:, :, windows(x.shape[2] + 2, 3, 2)]


def pool(x, k: int, stride: int, reduce) -> np.ndarray:
    rows, cols = windows(x.shape[2], k, stride), windows(x.shape[3], k, stride)
    patches = x[:, :, rows][:, :, :, :, cols]  # [b, ch, r, u, c, v]
    return reduce(patches, axis=(3, 5))


def correlate(x, w, B):
    """A "valid" 2-D cross-correlation with bias, by an einsum over gathered patches."""
    kh, kw = w.shape[2:]
    rows, cols = windows(x.shape[2], kh), windows(x.shape[3], kw)
    patches = x[:, :, rows][:, :, :, :, cols]
    return anp.einsum("bhrucv,ohuv->borc", patches, w) + B[None, :, None, None]


def extended(x, mode: str):
    """x with one more row and column on each side, as pad, clamp or wrap read them."""
    if mode == "pad":
        return anp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="constant")
    rows, cols = np.arange(-1, x.shape[2] + 1), np.arange(-1, x.shape[3] + 1)
    if mode == "clamp":
        rows, cols = np.clip(rows, 0, x.shape[2] - 1), np.clip(cols, 0, x.shape[3] - 1)
    else:
        rows, cols = rows % x.shape[2], cols % x.shape[3]
    return x[:, :, rows][:, :, :, cols]


TORCH_PAD = {"pad": "constant", "clamp": "replicate", "wrap": "circular"}


def conv_case(mode: str) -> Case:
    return Case(
        f"param w[o,ch,u,v], B[o]\ninput x[b,ch,row,col]\n"
        f"y[b,o,r,c] = x[b,ch,{mode}(r+u-1),{mode}(c+v-1)] w[o,ch,u,v] + B[o]\n",
        "y",
        lambda g: {"x": normal(g, 2, 3, 5, 4), "w": normal(g, 4, 3, 3, 3), "B": normal(g, 4)},
        lambda x, w, B: correlate(extended(x, mode), w, B),
        lambda x, w, B: F.conv2d(F.pad(x, (1, 1, 1, 1), mode=TORCH_PAD[mode]), w, B),
    )


def transposed_1d(x, w):
    """y[b,o,t+k] += x[b,i,t] w[i,o,k]: one shifted copy per kernel offset."""
    k = w.shape[2]
    return sum(
        anp.pad(anp.einsum("bit,io->bot", x, w[:, :, m]), ((0, 0), (0, 0), (m, k - 1 - m)), mode="constant")
        for m in range(k)
    )


def transposed_2d_stride2(x, w):
    """y[b,o,2r+u,2c+v] += x[b,i,r,c] w[i,o,u,v]: x spread to even positions, then one copy per offset."""
    h, wd = x.shape[2:]
    kh, kw = w.shape[2:]
    up_r = np.zeros((2 * h - 1, h))
    up_r[2 * np.arange(h), np.arange(h)] = 1
    up_c = np.zeros((2 * wd - 1, wd))
    up_c[2 * np.arange(wd), np.arange(wd)] = 1
    spread = anp.einsum("Rr,birc,Cc->biRC", up_r, x, up_c)
    out = 0
    for u in range(kh):
        for v in range(kw):
            part = anp.einsum("biRC,io->boRC", spread, w[:, :, u, v])
            out = out + anp.pad(part, ((0, 0), (0, 0), (u, kh - 1 - u), (v, kw - 1 - v)), mode="constant")
    return out


CASES: dict[str, Case] = {
    "max_pool2d": Case(
        "dim u=2, v=2\ny[b,ch,r,c] = max[u,v](x[b,ch,2*r+u,2*c+v])\n",
        "y",
        lambda g: {"x": normal(g, 2, 3, 6, 4)},
        lambda x: pool(x, 2, 2, anp.max),
        lambda x: F.max_pool2d(x, 2),
    ),
    "max_pool2d 3x3 stride 2": Case(
        "dim u=3, v=3\ny[b,ch,r,c] = max[u,v](x[b,ch,2*r+u,2*c+v])\n",
        "y",
        lambda g: {"x": normal(g, 2, 2, 7, 9)},
        lambda x: pool(x, 3, 2, anp.max),
        lambda x: F.max_pool2d(x, 3, stride=2),
    ),
    "avg_pool2d": Case(
        "dim u=2, v=2\ny[b,ch,r,c] = mean[u,v](x[b,ch,2*r+u,2*c+v])\n",
        "y",
        lambda g: {"x": normal(g, 2, 3, 6, 4)},
        lambda x: pool(x, 2, 2, anp.mean),
        lambda x: F.avg_pool2d(x, 2),
    ),
    "conv2d padding zeros": conv_case("pad"),
    "conv2d padding replicate": conv_case("clamp"),
    "conv2d padding circular": conv_case("wrap"),
    "avg_pool1d padding 1 stride 2": Case(
        "dim u=3\ny[b,ch,r] = mean[u](x[b,ch,pad(2*r+u-1)])\n",
        "y",
        lambda g: {"x": normal(g, 2, 3, 7)},
        lambda x: anp.mean(padded_windows(x), axis=3),
        lambda x: F.avg_pool1d(x, 3, stride=2, padding=1),
    ),
    "max over zero-padded windows": Case(
        "dim u=3\ny[b,ch,r] = max[u](x[b,ch,pad(2*r+u-1)])\n",
        "y",
        lambda g: {"x": normal(g, 2, 3, 7)},
        lambda x: anp.max(padded_windows(x), axis=3),
        lambda x: F.max_pool1d(F.pad(x, (1, 1)), 3, stride=2),
    ),
    "conv_transpose1d": Case(
        "y[b,o,t+k] += x[b,i,t] w[i,o,k]\n",
        "y",
        lambda g: {"x": normal(g, 2, 3, 5), "w": normal(g, 3, 4, 3)},
        transposed_1d,
        lambda x, w: F.conv_transpose1d(x, w),
    ),
    "conv_transpose2d stride 2": Case(
        "y[b,o,2*r+u,2*c+v] += x[b,i,r,c] w[i,o,u,v]\n",
        "y",
        lambda g: {"x": normal(g, 2, 3, 3, 4), "w": normal(g, 3, 2, 3, 2)},
        transposed_2d_stride2,
        lambda x, w: F.conv_transpose2d(x, w, stride=2),
    ),
    "pixel_shuffle": Case(
        "y[b,c,h,w] = x[b,4*c+2*(h%2)+w%2,h//2,w//2]\n",
        "y",
        lambda g: {"x": normal(g, 2, 8, 3, 2)},
        lambda x: anp.reshape(
            anp.transpose(anp.reshape(x, (2, 2, 2, 2, 3, 2)), (0, 1, 4, 2, 5, 3)), (2, 2, 6, 4)
        ),
        lambda x: F.pixel_shuffle(x, 2),
    ),
    "interpolate nearest": Case(
        "y[b,ch,r,c] = x[b,ch,r//2,c//2]\n",
        "y",
        lambda g: {"x": normal(g, 2, 3, 3, 4)},
        lambda x: anp.repeat(anp.repeat(x, 2, axis=2), 2, axis=3),
        lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
    ),
    "embedding": Case(
        "e[b,t,d] = E[ids[b,t], d]\n",
        "e",
        lambda g: {"E": normal(g, 7, 4), "ids": g.integers(0, 7, (3, 5))},
        lambda E, ids: E[ids],
        lambda E, ids: F.embedding(ids, E),
    ),
    "embedding windows (labels by index arithmetic)": Case(
        "dim w=3\ne[b,t,w,d] = E[ids[b,t+w], d]\n",
        "e",
        lambda g: {"E": normal(g, 7, 4), "ids": g.integers(0, 7, (3, 6))},
        lambda E, ids: E[ids[:, windows(6, 3)]],
        lambda E, ids: F.embedding(ids.unfold(1, 3, 1), E),
    ),
    "total variation (read shifted and plain)": Case(
        "input x[r,c]\ntv[r,c] = sqrt((x[r+1,c] - x[r,c])^2 + (x[r,c+1] - x[r,c])^2 + 0.01)\n",
        "tv",
        lambda g: {"x": normal(g, 5, 6)},
        lambda x: anp.sqrt((x[1:, :-1] - x[:-1, :-1]) ** 2 + (x[:-1, 1:] - x[:-1, :-1]) ** 2 + 0.01),
        lambda x: torch.sqrt(torch.diff(x, dim=0)[:, :-1] ** 2 + torch.diff(x, dim=1)[:-1] ** 2 + 0.01),
    ),
    "gated unit (read shifted and plain)": Case(
        "g[b,k] = h[b,k] sigmoid(h[b,k+3])\n",
        "g",
        lambda g: {"h": normal(g, 2, 7)},
        lambda h: h[:, :-3] / (1 + anp.exp(-h[:, 3:])),
        lambda h: h[:, :-3] * torch.sigmoid(h[:, 3:]),
    ),
    "leaky relu by where": Case(
        "y[i] = where(x[i] > 0, x[i], 0.01 x[i])\n",
        "y",
        lambda g: {"x": normal(g, 9)},
        lambda x: anp.where(x > 0, x, 0.01 * x),
        lambda x: F.leaky_relu(x, 0.01),
    ),
    "huber by where and comparison": Case(
        "r[i] = p[i] - t[i]\ny[i] = where(abs(r[i]) <= 1, 0.5 r[i]^2, abs(r[i]) - 0.5)\n",
        "y",
        lambda g: {"p": normal(g, 9), "t": normal(g, 9) * 2},
        lambda p, t: anp.where(anp.abs(p - t) <= 1, 0.5 * (p - t) ** 2, anp.abs(p - t) - 0.5),
        lambda p, t: F.huber_loss(p, t, reduction="none"),
    ),
    "a comparison alone is 1 or 0": Case(
        "m[i] = (x[i] >= y[i]) + (x[i] != 0) - (x[i] == y[i]) + (x[i] < 0.5) (x[i] <= 0.25)\n",
        "m",
        lambda g: {"x": normal(g, 8), "y": normal(g, 8)},
        lambda x, y: 1.0 * (x >= y) + 1.0 * (x != 0) - 1.0 * (x == y) + 1.0 * (x < 0.5) * (x <= 0.25),
        None,
    ),
    "size anywhere (attention scores)": Case(
        "s[b,q,k] = Q[b,q,e] K[b,k,e] / sqrt(size[e]) + log(size[k]) / (size[q] size[k])\n",
        "s",
        lambda g: {"Q": normal(g, 2, 3, 5), "K": normal(g, 2, 4, 5)},
        lambda Q, K: anp.einsum("bqe,bke->bqk", Q, K) / np.sqrt(5) + np.log(4) / 12,
        lambda Q, K: Q @ K.transpose(1, 2) / 5**0.5 + np.log(4) / 12,
    ),
    "delta (diagonal and shift)": Case(
        "D[i,j] = delta[i,j] x[i]\nz[i] = delta[i,j+1] x[j] + D[i,j] y[j]\n",
        "z",
        lambda g: {"x": normal(g, 5), "y": normal(g, 5)},
        lambda x, y: anp.concatenate([np.zeros(1), x[:-1]]) + x * y,
        lambda x, y: torch.cat([torch.zeros(1, dtype=x.dtype), x[:-1]]) + torch.diag_embed(x) @ y,
    ),
    "a += that defines its tensor (by dim)": Case(
        "dim t=4\nstate[b,t] += x[b] delta[t,2]\nstate[b,t] += 2 x[b] delta[t,0]\n",
        "state",
        lambda g: {"x": normal(g, 3)},
        lambda x: anp.stack([2 * x, 0 * x, x, 0 * x], axis=1),
        None,
    ),
}

NAMES = sorted(CASES)


def loss_text(case: Case) -> str:
    """The case's program with `loss = sum[...](tanh(OUT[...]) gs[...])` after it."""
    target = ig.parse(case.text).statements[-1].target
    idx = ",".join(f"q{n}" for n in range(len(target.indices)))
    return case.text + f"loss = sum[{idx}](tanh({case.out}[{idx}]) gs[{idx}])\n"


@cache
def model(name: str) -> ig.Model:
    return ig.compile(CASES[name].text)


@cache
def loss_model(name: str) -> ig.Model:
    return ig.compile(loss_text(CASES[name]))


def arrays(name: str, seed: int = 1) -> Arrays:
    return CASES[name].inputs(np.random.default_rng(seed))


def floats(a: Arrays) -> list[str]:
    return sorted(k for k in a if a[k].dtype.kind == "f")


def anp_value(name: str, a: Arrays):
    case = CASES[name]
    return case.anp(**{k: a[k] for k in case.anp.__code__.co_varnames[: case.anp.__code__.co_argcount]})


def with_gs(name: str, a: Arrays) -> Arrays:
    out = np.asarray(anp_value(name, a))
    return dict(a, gs=np.random.default_rng(9).standard_normal(out.shape))


@pytest.mark.parametrize("name", NAMES)
def test_forward_against_numpy_and_torch(name: str) -> None:
    case, a = CASES[name], arrays(name)
    got = model(name).forward(**a)[case.out]
    np.testing.assert_allclose(got, anp_value(name, a), rtol=1e-12, atol=1e-12)
    if case.torch is not None:
        want = case.torch(**{k: torch.from_numpy(v) for k, v in a.items()})
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_against_autograd_and_torch(name: str) -> None:
    case, a = CASES[name], arrays(name)
    m = model(name)
    vals = m.forward(**a)
    seed = np.random.default_rng(2).standard_normal(np.shape(vals[case.out]))
    got = m.backward(vals, seed={case.out: seed})
    keys = floats(a)
    assert sorted(got) == keys

    def scalar(*xs):
        return anp.sum(anp_value(name, dict(a, **dict(zip(keys, xs)))) * seed)

    for n, k in enumerate(keys):
        want = autograd.grad(scalar, n)(*(a[k] for k in keys))
        np.testing.assert_allclose(got[k], want, rtol=1e-10, atol=1e-12, err_msg=k)
    if case.torch is not None:
        t = {k: torch.tensor(v, requires_grad=k in keys) for k, v in a.items()}
        (case.torch(**t) * torch.from_numpy(seed)).sum().backward()
        for k in keys:
            np.testing.assert_allclose(got[k], t[k].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_by_finite_differences(name: str) -> None:
    report = ig.gradcheck(loss_model(name), with_gs(name, arrays(name)), loss="loss")
    assert report, str(report)


@pytest.mark.parametrize("name", NAMES)
def test_jvp_against_backward_and_finite_differences(name: str) -> None:
    case, a = CASES[name], arrays(name)
    m = model(name)
    vals = m.forward(**a)
    rng = np.random.default_rng(3)
    v = {k: rng.standard_normal(a[k].shape) for k in floats(a)}
    tan = m.jvp(vals, tangents=v)[case.out]
    g = rng.standard_normal(np.shape(vals[case.out]))
    back = m.backward(vals, seed={case.out: g})
    assert np.isclose(np.sum(g * tan), sum(np.sum(back[k] * v[k]) for k in v), rtol=1e-10, atol=1e-12)
    eps = 1e-6
    plus = m.forward(**{k: x + eps * v[k] if k in v else x for k, x in a.items()})[case.out]
    minus = m.forward(**{k: x - eps * v[k] if k in v else x for k, x in a.items()})[case.out]
    np.testing.assert_allclose(tan, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_hvp_against_autograd(name: str) -> None:
    a = with_gs(name, arrays(name))
    keys = floats(a)
    keys.remove("gs")
    rng = np.random.default_rng(4)
    v = {k: rng.standard_normal(a[k].shape) for k in keys}
    m = loss_model(name)
    got = m.hvp(m.forward(**a), loss="loss", v=v)

    def loss(*xs):
        b = dict(a, **dict(zip(keys, xs)))
        return anp.sum(anp.tanh(anp_value(name, b)) * a["gs"])

    for n, k in enumerate(keys):
        def directional(*xs, n=n):
            return sum(anp.sum(autograd.grad(loss, j)(*xs) * v[keys[j]]) for j in range(len(keys)))

        want = autograd.grad(directional, n)(*(a[k] for k in keys))
        np.testing.assert_allclose(got[k], want, rtol=1e-8, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_float32_stays_float32(name: str) -> None:
    case = CASES[name]
    a64 = arrays(name)
    a32 = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in a64.items()}
    m = model(name)
    vals = m.forward(**a32)
    assert vals[case.out].dtype == np.float32
    seed = np.ones(np.shape(vals[case.out]), np.float32)
    for k, g in m.backward(vals, seed={case.out: seed}).items():
        assert g.dtype == np.float32, k
    np.testing.assert_allclose(vals[case.out], m.forward(**a64)[case.out], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_printed_gradient_program_runs_alone(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """SPEC 9: `indexgrad grad` prints a program that parses, declares and defines what it reads,
    and gives backward()'s gradients from the inputs and LOSS.grad alone."""
    assert_printed_gradients_run_alone(loss_text(CASES[name]), capsys, with_gs(name, arrays(name)))


@pytest.mark.parametrize("name", NAMES)
def test_derived_programs_round_trip(name: str) -> None:
    p = ig.parse(loss_text(CASES[name]))
    assert ig.parse(str(p)) == p
    for d in (ig.derive(p), ig.derive_jvp(p)):
        assert ig.parse(str(d)) == d


def test_definitions_keep_boundary_modes_and_floor_division() -> None:
    """A definition's body read through clamp(...) and // at each use: against torch, and its
    gradients against finite differences."""
    text = (
        "def conv(x[b,i,t]) -> y[b,o,t]:\n    param w[o,i,k]\n    y[b,o,t] = x[b,i,clamp(t+k-1)] w[o,i,k]\n\n"
        "def up(x[b,t]) -> y[b,s]:\n    y[b,s] = x[b,s//2]\n\n"
        "h[b,o,t] = conv(z[b,i,t])\ng[b,s] = up(q[b,t])\n"
        "l = sum[b,o,t](h[b,o,t]^2) + sum[b,s](tanh(g[b,s]) g[b,s])\n"
    )
    rng = np.random.default_rng(5)
    a = {"h.w": normal(rng, 4, 3, 3), "z": normal(rng, 2, 3, 6), "q": normal(rng, 2, 5)}
    m = ig.compile(text)
    vals = m.forward(**a)
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    want_h = F.conv1d(F.pad(t["z"], (1, 1), mode="replicate"), t["h.w"])
    np.testing.assert_allclose(vals["h"], want_h.numpy(), rtol=1e-12, atol=1e-12)
    want_g = F.interpolate(t["q"][:, None], scale_factor=2, mode="nearest")[:, 0]
    np.testing.assert_allclose(vals["g"], want_g.numpy(), rtol=1e-12, atol=1e-12)
    assert ig.gradcheck(m, a, loss="l")


# ---- misuse the arrays reveal: FILE:LINE:COL, a caret, what to write ---------------------------------

BAD_ARRAYS = [
    ("dim k=3\ny[i] = x[i,k]\n", {"x": np.ones((2, 4))}, 2, 8, "'k' has size 3 from dim k=3 but size 4"),
    (
        "dim w=3\ne[b,t,w,d] = E[ids[b,t+w], d]\n",
        {"E": np.ones((5, 2)), "ids": np.array([[0, 1, 7, 2]])},
        2,
        14,
        "label 7 in 'ids' is out of range for axis 0 of 'E', which has size 5",
    ),
    ("y[r] = x[r+1] - x[r]\n", {"x": np.ones(1)}, 1, 8, "index 'r' in x[r+1] has no valid positions"),
    ("y[b,r] = x[b,r//2] + z[b,r]\n", {"x": np.ones((2, 3)), "z": np.ones((2, 7))}, 1, 10, "reaches"),
    (
        "y[i] = x[i] + z[i]\n",
        {"x": np.ones(3), "z": np.ones(4)},
        1,
        15,
        "index 'i' has size 3 from x[i] (axis 0) but size 4 from z[i] (axis 0)",
    ),
]


@pytest.mark.parametrize("text, given, line, column, message", BAD_ARRAYS)
def test_bad_arrays_are_placed(text: str, given: Arrays, line: int, column: int, message: str) -> None:
    with pytest.raises(ig.IndexgradError) as info:
        ig.compile(ig.parse(text, filename="t.idx")).forward(**given)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert message in err.message
    shown = str(err).splitlines()
    assert shown[0].startswith(f"t.idx:{line}:{column}: error: ")
    assert shown[2].index("^") == 2 + column - 1


def test_indexgrad_run_places_each_bad_array(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same table through `indexgrad run --inputs FILE.npz`: status 2, FILE:LINE:COL, a caret."""
    from indexgrad.cli import main

    f, npz = tmp_path / "t.idx", tmp_path / "in.npz"
    for text, given, line, column, message in BAD_ARRAYS:
        f.write_text(text)
        np.savez(npz, **given)
        assert main(["run", str(f), "--inputs", str(npz)]) == 2, text
        err = capsys.readouterr().err
        assert err.startswith(f"{f}:{line}:{column}: error: ") and message in err, (text, err)
        assert err.splitlines()[2].index("^") == 2 + column - 1, text


def test_an_empty_array_read_shifted_gives_an_empty_result() -> None:
    m = ig.compile("y[r] = x[r+1] - x[r]\nl = sum[r](y[r]^2)\n")
    vals = m.forward(x=np.ones(0))
    assert vals["y"].shape == (0,) and m.backward(vals)["x"].shape == (0,)


def test_dim_fixes_a_size_everywhere_and_the_cli_says_so(tmp_path, capsys) -> None:
    from indexgrad.cli import main

    f = tmp_path / "pool.idx"
    f.write_text(CASES["max_pool2d"].text + "l = sum[b,ch,r,c](y[b,ch,r,c]^2)\n")
    assert main(["check", str(f), "--dims", "b=2,ch=1,r=3,c=2"]) == 0
    assert main(["check", str(f), "--dims", "u=3"]) == 2
    assert "the program declares dim u=2" in capsys.readouterr().err


# ---- the new examples against torch.nn.functional --------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def example_values(name: str) -> tuple[Arrays, dict[str, np.ndarray]]:
    a = ORACLES[name].inputs(np.random.default_rng(1), np.float64)
    return a, ig.compile(ig.load(ROOT / "examples" / f"{name}.idx")).forward(**a)


def test_lenet_against_torch() -> None:
    a, vals = example_values("lenet")
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    c1 = F.relu(F.conv2d(t["x"][:, None], t["K1"][:, None], t["B1"], padding=1))
    p1 = F.max_pool2d(c1, 2)
    p2 = F.max_pool2d(F.relu(F.conv2d(p1, t["K2"], t["B2"], padding=1)), 2)
    z = torch.einsum("bhrc,hrck->bk", p2, t["W"]) + t["B"]
    loss = F.cross_entropy(z, t["Y"].argmax(1))
    for name, want in [("c1", c1), ("p1", p1), ("p2", p2), ("z", z), ("loss", loss)]:
        np.testing.assert_allclose(vals[name], want.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


def test_attention_against_torch() -> None:
    a, vals = example_values("attention")
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    q = torch.einsum("btd,dhe->bhte", t["x"], t["Wq"])
    k = torch.einsum("bsd,dhe->bhse", t["x"], t["Wk"])
    v = torch.einsum("bsd,dhe->bhse", t["x"], t["Wv"])
    heads = F.scaled_dot_product_attention(q, k, v, attn_mask=t["M"] > 0)
    y = torch.einsum("bhte,hed->btd", heads, t["Wo"])
    np.testing.assert_allclose(vals["y"], y.numpy(), rtol=1e-12, atol=1e-12)


def test_norms_against_torch() -> None:
    a, vals = example_values("norms")
    x, gamma, beta = (torch.from_numpy(a[k]) for k in ("x", "gamma", "beta"))
    c, n = x.shape[1:]
    ln = F.layer_norm(x, (c, n), eps=1e-5) * gamma[:, None] + beta[:, None]
    gn = F.group_norm(x, c // 4, gamma, beta, eps=1e-5)
    rn = F.rms_norm(x.transpose(1, 2), (c,), gamma, eps=1e-5).transpose(1, 2)
    for name, want in [("ln", ln), ("gn", gn), ("rn", rn)]:
        np.testing.assert_allclose(vals[name], want.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


def test_tv_denoise_against_torch() -> None:
    a, vals = example_values("tv_denoise")
    u = torch.from_numpy(a["u"])
    tv = torch.sqrt(torch.diff(u, dim=0)[:, :-1] ** 2 + torch.diff(u, dim=1)[:-1] ** 2 + 1e-3).sum()
    np.testing.assert_allclose(vals["tv"], tv.item(), rtol=1e-12)


def test_lenet_trains_on_the_digits_in_a_few_steps() -> None:
    """A few Adam steps on a batch of digits lower LeNet's loss (make demo trains it to >= 97%)."""
    from indexgrad.digits import load_digits_data
    from indexgrad.optim import Adam
    from indexgrad.train import infer_sizes, init_params

    model = ig.compile(ROOT / "examples" / "lenet.idx")
    train, _ = load_digits_data(seed=0)
    batch = {"x": train["x"][:64].reshape(-1, 8, 8), "Y": train["Y"][:64]}
    sizes = {**infer_sizes(model, batch), "o": 4, "h": 8, "r": 2, "c": 2}
    params = init_params(model, sizes, init="he", seed=0)
    adam, losses = Adam(lr=1e-2), []
    for _ in range(15):
        vals = model.forward(**batch, **params)
        losses.append(float(vals["loss"]))
        adam.step(params, model.backward(vals, wrt=list(params)))
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_a_label_read_at_r_plus_0_beside_r_plus_1_reads_its_first_positions(backend: str) -> None:
    """`t[b+0]` next to `t[b+1]` ranges b over all but t's last entry, so the first read takes
    t's first positions only (it once took all of them and failed to broadcast)."""
    src = "W[b, i] = x[t[b+0], b] x[t[b+1], i]\nloss = sum[b,i](W[b,i] W[b,i])"
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(4, 4)).astype(np.float32), np.array([2, 0, 3, 1])
    want = np.array([[x[t[b], b] * x[t[b + 1], i] for i in range(4)] for b in range(3)])
    m = ig.compile(src, backend=backend)
    vals = m.forward(x=m.engine.asarray(x), t=m.engine.asarray(t))
    np.testing.assert_allclose(m.engine.to_numpy(vals["W"]), want, rtol=1e-6)
    got = m.engine.to_numpy(m.backward(vals, loss="loss")["x"])
    ref = ig.compile(src).backward(ig.compile(src).forward(x=x.astype(np.float64), t=t), loss="loss")["x"]
    dx = np.zeros((4, 4))
    for b in range(3):
        for i in range(4):
            dx[t[b], b] += 2 * want[b, i] * x[t[b + 1], i]
            dx[t[b + 1], i] += 2 * want[b, i] * x[t[b], b]
    np.testing.assert_allclose(ref, dx, rtol=1e-6)
    np.testing.assert_allclose(got, dx, rtol=1e-4)
