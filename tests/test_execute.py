"""Values and gradients of executed programs against einsum, numpy and autograd: dtypes, broadcasting
gradients, diagonals, gathers, index arithmetic, convolutions, max/min ties, stability and finiteness."""

from __future__ import annotations

import platform
import warnings
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from oracles import assert_grads, rng, vjp

import indexgrad as ig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

DTYPE_PROGRAM = """
h[b,i] = tanh(x[b,j] W[j,i] + B[i])
p[b,i] = exp(h[b,i] - logsumexp[k](h[b,k]))
s[b] = sqrt(1 + sum[i](h[b,i]^2)) / 2
m[b] = max[i](h[b,i]) - min[i](h[b,i])
loss = mean[b](s[b] m[b] - sum[i](Y[b,i] log(p[b,i]))) + 0.5 sum[i](sigmoid(B[i]) softplus(B[i]))
"""


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype) -> None:
    r = rng()
    a = {
        "x": r.standard_normal((3, 4)).astype(dtype),
        "W": r.standard_normal((4, 5)).astype(dtype),
        "B": r.standard_normal(5).astype(dtype),
        "Y": np.eye(5, dtype=dtype)[[0, 3, 1]],
    }
    m = ig.compile(DTYPE_PROGRAM)
    vals = m.forward(**a)
    assert {k: np.asarray(v).dtype for k, v in vals.items()} == {k: dtype for k in vals}
    for k, g in m.backward(vals, loss="loss").items():
        assert g.dtype == dtype and g.shape == a[k].shape, k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_by_forward_mode(dtype) -> None:
    m = ig.compile("h[i] = tanh(W[i,j] x[j])\nloss = logsumexp[i](h[i]) + sum[i](h[i]^2) / 3")
    a = {"W": np.ones((2, 3), dtype), "x": np.full(3, 0.1, dtype)}
    vals = m.forward(**a)
    for k, t in m.jvp(vals, tangents={"W": np.ones_like(a["W"])}).items():
        assert np.asarray(t).dtype == dtype, k
    for k, hv in m.hvp(vals, loss="loss", v={"x": a["x"]}).items():
        assert np.asarray(hv).dtype == dtype, k


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_each_gradient_comes_back_in_its_inputs_dtype(backend: str) -> None:
    """float32 x beside float64 W is float64 work; x's gradient and hvp are float32, as torch's are."""
    pytest.importorskip(backend)
    r = rng()
    a = {
        "x": r.standard_normal((3, 4)).astype(np.float32),
        "W": r.standard_normal((4, 5)),
        "B": r.standard_normal(5),
        "Y": np.eye(5)[[0, 3, 1]],
    }
    m = ig.compile(DTYPE_PROGRAM, backend=backend)
    vals = m.forward(**a)
    wide_model = ig.compile(DTYPE_PROGRAM)  # every input float64: test_dtype_is_kept's gradients
    a64 = {k: v.astype(np.float64) for k, v in a.items()}
    wide = wide_model.backward(wide_model.forward(**a64), loss="loss")
    got = m.backward(vals, loss="loss")
    hv = m.hvp(vals, loss="loss", v={"W": np.ones((4, 5))})
    for k in ("x", "W", "B"):
        g, h = np.asarray(got[k]), np.asarray(hv[k])
        assert g.dtype == h.dtype == a[k].dtype, k
        np.testing.assert_allclose(g, wide[k].astype(a[k].dtype), rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("text", ["y[i] = max(0, x[i])", "y[i] = min(x[i], 1)"])
def test_gate_with_a_number_keeps_float32(text: str) -> None:
    m = ig.compile(text)
    vals = m.forward(x=np.array([-1.0, 0.5, 2.0], np.float32))
    assert vals["y"].dtype == np.float32
    assert m.backward(vals, seed={"y": np.ones(3, np.float32)})["x"].dtype == np.float32


def test_scalar_factor_in_a_reduction() -> None:
    m = ig.compile("s = sum[i](x[i] c)")
    x, c = np.array([1.0, 2.0, 4.0]), np.array(3.0)
    vals = m.forward(x=x, c=c)
    assert float(vals["s"]) == 21.0
    g = m.backward(vals, loss="s")
    np.testing.assert_array_equal(g["x"], [3.0, 3.0, 3.0])  # s.grad broadcast over i
    assert np.shape(g["c"]) == () and float(g["c"]) == 7.0


def test_scalar_factor_in_a_vector_output() -> None:
    m = ig.compile("y[i] = x[i] c")
    x, c, gy = np.array([1.0, 2.0, 4.0]), np.array(3.0), np.array([1.0, -1.0, 0.5])
    g = vjp(m, {"x": x, "c": c}, "y", gy)
    np.testing.assert_array_equal(g["x"], 3.0 * gy)
    assert np.shape(g["c"]) == () and float(g["c"]) == pytest.approx(float(x @ gy))


def test_gradient_broadcasts_over_indices_absent_from_operands() -> None:
    m = ig.compile("loss = sum[i,j](A[i,j]) + sum[i](x[i] + c)")
    a = {"A": np.ones((2, 3)), "x": np.ones(4), "c": np.array(0.5)}
    g = m.backward(m.forward(**a), loss="loss")
    np.testing.assert_array_equal(g["A"], np.ones((2, 3)))
    np.testing.assert_array_equal(g["x"], np.ones(4))
    assert float(g["c"]) == 4.0  # c is added once per i


def test_a_product_of_three_that_broadcasts_into_an_index_none_of_them_has() -> None:
    """A product of three tensors added into an index none of them holds (a gradient that
    broadcasts, as `indexgrad grad` prints them) is split into pairwise steps like any other."""
    src = "t.grad[a,e] += g[k] x[a,b] w[b,k]\nq = sum[a,e](t[a,e])"
    r = rng()
    a = {"g": r.standard_normal(2), "x": r.standard_normal((3, 4)), "w": r.standard_normal((4, 2))}
    a["t"] = r.standard_normal((3, 5))
    got = ig.compile(src).forward(**a)["t.grad"]
    want = np.broadcast_to(np.einsum("k,ab,bk->a", a["g"], a["x"], a["w"])[:, None], (3, 5))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_diagonal_read_and_its_gradient_is_a_diagonal_write() -> None:
    A = rng().standard_normal((4, 4))
    m = ig.compile("y[i] = A[i,i]")
    vals = m.forward(A=A)
    np.testing.assert_array_equal(vals["y"], np.diag(A))
    g = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(m.backward(vals, seed={"y": g})["A"], np.diag(g))


def test_trace() -> None:
    A = rng().standard_normal((3, 3))
    m = ig.compile("t = A[i,i]")
    vals = m.forward(A=A)
    assert float(vals["t"]) == pytest.approx(np.trace(A))
    np.testing.assert_array_equal(m.backward(vals, loss="t")["A"], np.eye(3))


@pytest.mark.parametrize(
    "text, spec",
    [
        ("y[i] = T[i,i,i]", "iii->i"),
        ("y[i,j] = T[i,j,i]", "iji->ij"),
        ("t = A[i,i] x[i]", "ii,i->"),
        ("y[j] = A[i,i] B[i,j]", "ii,ij->j"),
    ],
)
def test_diagonals_against_einsum(text: str, spec: str) -> None:
    m = ig.compile(text)
    names = m.inputs
    r = rng(1)
    ins = spec.split("->")[0].split(",")
    a = {n: r.standard_normal((3,) * len(s)) for n, s in zip(names, ins)}
    vals = m.forward(**a)
    out = m.program.statements[-1].target.name
    want = np.einsum(spec, *(a[n] for n in names))
    np.testing.assert_allclose(vals[out], want, rtol=1e-12)
    seed = r.standard_normal(np.shape(want))
    got = m.backward(vals, seed={out: seed})
    # <seed, einsum> is linear in each operand, so a unit central difference is exact
    for n in names:
        fd = np.zeros_like(a[n])
        for pos in np.ndindex(*a[n].shape):
            e = np.zeros_like(a[n])
            e[pos] = 1.0
            plus = np.einsum(spec, *(a[k] + e if k == n else a[k] for k in names))
            minus = np.einsum(spec, *(a[k] - e if k == n else a[k] for k in names))
            fd[pos] = np.sum(seed * (plus - minus)) / 2
        np.testing.assert_allclose(got[n], fd, rtol=1e-10, atol=1e-12, err_msg=n)


def test_gather_forward_and_scatter_add_gradient() -> None:
    P = rng().uniform(0.1, 1.0, (5, 3))
    y = np.array([0, 2, 1, 2, 2])
    m = ig.compile("ell[b] = -log(P[b, y[b]])")
    vals = m.forward(P=P, y=y)
    np.testing.assert_allclose(vals["ell"], -np.log(P[np.arange(5), y]), rtol=1e-14)
    seed = rng(1).standard_normal(5)
    got = m.backward(vals, seed={"ell": seed})
    assert set(got) == {"P"}
    assert_grads(got, lambda P, y: -anp.log(P[np.arange(5), y]), {"P": P, "y": y}, seed)


def test_gather_with_repeated_labels_accumulates() -> None:
    E = rng().standard_normal((4, 3))
    y = np.array([1, 1, 3, 1])
    m = ig.compile("h[b,d] = E[y[b], d]")
    vals = m.forward(E=E, y=y)
    np.testing.assert_array_equal(vals["h"], E[y])
    seed = rng(1).standard_normal((4, 3))
    want = np.zeros_like(E)
    np.add.at(want, y, seed)
    np.testing.assert_allclose(m.backward(vals, seed={"h": seed})["E"], want, rtol=1e-14)


def test_logloss_example_against_autograd() -> None:
    r = rng(3)
    a = {"x": r.standard_normal((4, 3)), "W": r.standard_normal((3, 5)), "B": r.standard_normal(5)}
    y = np.array([4, 0, 2, 2])

    def loss(x, W, B):
        z = x @ W + B
        logq = z - anp.log(anp.sum(anp.exp(z), axis=1, keepdims=True))
        return -anp.mean(logq[np.arange(4), y])

    m = ig.compile(ig.load(EXAMPLES / "logloss.idx"))
    vals = m.forward(y=y, **a)
    assert float(vals["loss"]) == pytest.approx(loss(**a), rel=1e-12)
    assert_grads(m.backward(vals, loss="loss"), loss, a)


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_out_of_range_label(bad: int) -> None:
    m = ig.compile("ell[b] = -log(P[b, y[b]])")
    with pytest.raises(ig.IndexgradError) as info:
        m.forward(P=np.ones((4, 3)), y=np.array([0, bad, 1, 2]))
    assert "'y'" in info.value.message and str(bad) in info.value.message
    assert info.value.line == 1


def test_float_labels_are_an_error() -> None:
    m = ig.compile("ell[b] = -log(P[b, y[b]])")
    with pytest.raises(ig.IndexgradError) as info:
        m.forward(P=np.ones((4, 3)), y=np.array([0.0, 2.0, 1.0, 2.0]))
    assert "'y'" in info.value.message and "float" in info.value.message


@pytest.mark.parametrize(
    "text, stride, dilation",
    [("y[j] = w[k] x[2*j+k]", 2, 1), ("y[j] = w[k] x[j+2*k]", 1, 2), ("y[j] = w[k] x[j+k]", 1, 1)],
)
def test_strided_and_dilated_correlation(text: str, stride: int, dilation: int) -> None:
    r = rng(4)
    x, w = r.standard_normal(12), r.standard_normal(3)
    n = (12 - dilation * 2 - 1) // stride + 1
    m = ig.compile(text)
    vals = m.forward(x=x, w=w)
    loop = [sum(w[k] * x[stride * j + dilation * k] for k in range(3)) for j in range(n)]
    np.testing.assert_allclose(vals["y"], loop, rtol=1e-12)
    if stride == dilation == 1:
        np.testing.assert_allclose(vals["y"], np.correlate(x, w, mode="valid"), rtol=1e-12)
    seed = r.standard_normal(n)
    idx = stride * np.arange(n)[:, None] + dilation * np.arange(3)[None, :]
    assert_grads(m.backward(vals, seed={"y": seed}), lambda x, w: x[idx] @ w, {"x": x, "w": w}, seed)


def _conv_ref(x, w, B=None, stride=1, dilation=1):
    """Cross-correlation by slices and einsum (differentiable by autograd)."""
    _, _, rows, cols = x.shape
    _, _, U, V = w.shape
    R = (rows - dilation * (U - 1) - 1) // stride + 1
    C = (cols - dilation * (V - 1) - 1) // stride + 1
    y = 0.0
    for u in range(U):
        for v in range(V):
            r0, c0 = dilation * u, dilation * v
            rows_ = slice(r0, r0 + stride * (R - 1) + 1, stride)
            cols_ = slice(c0, c0 + stride * (C - 1) + 1, stride)
            patch = x[:, :, rows_, cols_]
            y = y + anp.einsum("bcrs,oc->bors", patch, w[:, :, u, v])
    return y if B is None else y + B[None, :, None, None]


def _conv_loop(x, w, B):
    b_, ch_, rows, cols = x.shape
    o_, _, U, V = w.shape
    y = np.zeros((b_, o_, rows - U + 1, cols - V + 1))
    for b in range(b_):
        for o in range(o_):
            for r in range(rows - U + 1):
                for c in range(cols - V + 1):
                    y[b, o, r, c] = B[o] + sum(
                        x[b, ch, r + u, c + v] * w[o, ch, u, v]
                        for ch in range(ch_)
                        for u in range(U)
                        for v in range(V)
                    )
    return y


def test_conv2d_layer() -> None:
    r = rng(5)
    a = {
        "x": r.standard_normal((2, 3, 6, 5)),
        "w": r.standard_normal((4, 3, 2, 3)),
        "B": r.standard_normal(4),
    }
    m = ig.compile("y[b,o,r,c] = x[b,ch,r+u,c+v] w[o,ch,u,v] + B[o]")
    vals = m.forward(**a)
    np.testing.assert_allclose(vals["y"], _conv_loop(**a), rtol=1e-12, atol=1e-12)
    seed = r.standard_normal(vals["y"].shape)
    assert_grads(m.backward(vals, seed={"y": seed}), _conv_ref, a, seed)


def test_conv2d_example() -> None:
    r = rng(6)
    a = {
        "x": r.standard_normal((2, 2, 5, 6)),
        "w": r.standard_normal((3, 2, 3, 2)),
        "B": r.standard_normal(3),
    }
    m = ig.compile(ig.load(EXAMPLES / "conv2d.idx"))
    vals = m.forward(**a)
    ref = lambda **kw: 0.5 * anp.sum(_conv_ref(**kw) ** 2)  # noqa: E731
    assert float(vals["loss"]) == pytest.approx(ref(**a), rel=1e-12)
    assert_grads(m.backward(vals, loss="loss"), ref, a)


def test_strided_conv_example() -> None:
    r = rng(7)
    a = {
        "x": r.standard_normal((2, 2, 9, 8)),
        "w": r.standard_normal((3, 2, 3, 2)),
        "w2": r.standard_normal((3, 2, 3, 2)),
    }

    def ref(x, w, w2):
        s = _conv_ref(x, w, stride=2)
        d = _conv_ref(x, w2, dilation=2)
        return 0.5 * anp.sum(s**2) + 0.5 * anp.sum(d**2)

    m = ig.compile(ig.load(EXAMPLES / "strided_conv.idx"))
    vals = m.forward(**a)
    assert vals["s"].shape == (2, 3, 4, 4) and vals["d"].shape == (2, 3, 5, 6)
    np.testing.assert_allclose(vals["s"], _conv_ref(a["x"], a["w"], stride=2), rtol=1e-12)
    np.testing.assert_allclose(vals["d"], _conv_ref(a["x"], a["w2"], dilation=2), rtol=1e-12)
    assert_grads(m.backward(vals, loss="loss"), ref, a)


def test_max_min_gates_split_ties_equally() -> None:
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 4.0])
    g = np.array([2.0, 1.0, 1.0])
    mx = vjp(ig.compile("y[i] = max(a[i], b[i])"), {"a": a, "b": b}, "y", g)
    np.testing.assert_array_equal(mx["a"], [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(mx["b"], [1.0, 0.0, 1.0])
    mn = vjp(ig.compile("y[i] = min(a[i], b[i])"), {"a": a, "b": b}, "y", g)
    np.testing.assert_array_equal(mn["a"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(mn["b"], [1.0, 1.0, 0.0])
    hinge = vjp(ig.compile("y[i] = max(0, x[i])"), {"x": np.array([0.0, 1.0, -1.0])}, "y", g)
    np.testing.assert_array_equal(hinge["x"], [1.0, 1.0, 0.0])


def test_max_min_reductions_share_ties_equally() -> None:
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 5.0], [0.0, -1.0, 0.0, 0.0]])
    m = ig.compile("hi[b] = max[i](x[b,i])\nlo[b] = min[i](x[b,i])")
    vals = m.forward(x=x)
    np.testing.assert_array_equal(vals["hi"], [3.0, 5.0, 0.0])
    np.testing.assert_array_equal(vals["lo"], [0.0, 2.0, -1.0])
    g = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(
        m.backward(vals, seed={"hi": g})["x"],
        [[0, 0.5, 0.5, 0], [0, 0, 0, 2.0], [1.0, 0, 1.0, 1.0]],
        rtol=1e-15,
    )
    np.testing.assert_allclose(
        m.backward(vals, seed={"lo": g})["x"],
        [[0, 0, 0, 1.0], [2 / 3, 2 / 3, 2 / 3, 0], [0, 3.0, 0, 0]],
        rtol=1e-15,
    )


def test_max_reduction_without_ties_against_autograd() -> None:
    x = rng(8).standard_normal((3, 5))
    m = ig.compile("loss = sum[b](max[i](x[b,i])^2 - min[i](x[b,i]))")
    ref = lambda x: anp.sum(anp.max(x, axis=1) ** 2 - anp.min(x, axis=1))  # noqa: E731
    assert_grads(m.backward(m.forward(x=x), loss="loss"), ref, {"x": x})


def test_max_min_reduction_tangents() -> None:
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 5.0]])
    dx = np.arange(8.0).reshape(2, 4)
    m = ig.compile("hi[b] = max[i](x[b,i])\nlo[b] = min[i](x[b,i])")
    t = m.jvp(m.forward(x=x), tangents={"x": dx})
    np.testing.assert_allclose(t["hi"], [(1 + 2) / 2, 7.0])
    np.testing.assert_allclose(t["lo"], [3.0, (4 + 5 + 6) / 3])


@pytest.mark.parametrize(
    "text, x, grad, tan",
    [  # seven entries make three windows of two, x[6] in none
        ("dim u=2\ny[r] = max[u](x[2*r+u])", [0, 1, 5, 2, 3, 7, 7], [0, 1, 10, 0, 0, 100, 0], [1, 2, 5]),
        # windows [0,0,1], [1,2,3], [3,4,4]: the edge read twice is one entry's two shares
        ("dim u=3\ny[r] = max[u](x[clamp(2*r+u-1)])", [0, 1, 5, 2, 3], [0, 1, 10, 0, 100], [1, 2, 4]),
    ],
)
def test_ties_of_a_pooling_window_are_counted_in_the_window(text: str, x: list, grad: list, tan: list):
    """The count of ties used to sum over a copy u2 of u that no `dim` sized: it took the valid
    extent (3 and 5 here), counted entries outside the window, and shrank the gradient and tangent."""
    m = ig.compile(text)
    vals = m.forward(x=np.array(x, dtype=float))
    np.testing.assert_array_equal(m.backward(vals, seed={"y": np.array([1.0, 10.0, 100.0])})["x"], grad)
    np.testing.assert_array_equal(m.jvp(vals, tangents={"x": np.arange(len(x), dtype=float)})["y"], tan)


def test_hvp_through_a_max_reduction() -> None:
    x = rng(9).standard_normal(5)
    v = rng(10).standard_normal(5)
    m = ig.compile("loss = max[i](x[i])^2")
    got = m.hvp(m.forward(x=x), loss="loss", v={"x": v})["x"]
    want = autograd.hessian_vector_product(lambda x: anp.max(x) ** 2)(x, v)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_many_accumulations_into_a_scalar() -> None:
    m = ig.compile("s += x[i]\ns += y[i]\ns += x[i] y[i]")
    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    assert float(m.forward(x=x, y=y)["s"]) == 3.0 + 7.0 + 11.0


def test_accumulations_into_a_tensor() -> None:
    m = ig.compile("s[i] += x[i]\ns[i] += y[i]\ns[i] += x[i] y[i]\nt[i] = 2 s[i]")
    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    vals = m.forward(x=x, y=y)
    np.testing.assert_array_equal(vals["t"], 2 * (x + y + x * y))
    g = m.backward(vals, seed={"t": np.ones(2)})
    np.testing.assert_array_equal(g["x"], 2 * (1 + y))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("big", [1e4, -1e4])
def test_logsumexp_is_stable(dtype, big: float) -> None:
    x = np.array([big, big - 1.0, big - 50.0, -big], dtype)
    m = ig.compile("y = logsumexp[i](x[i])")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vals = m.forward(x=x)
        g = m.backward(vals, loss="y")["x"]
    x64 = x.astype(np.float64)
    top = x64.max()
    want = top + np.log(np.sum(np.exp(x64 - top)))
    assert np.asarray(vals["y"]).dtype == dtype and g.dtype == dtype
    assert np.isfinite(vals["y"]) and np.all(np.isfinite(g))
    assert float(vals["y"]) == pytest.approx(want, rel=1e-6)
    softmax = np.exp(x64 - want)
    np.testing.assert_allclose(g, softmax, rtol=2e-3 if dtype == np.float32 else 1e-10, atol=1e-7)


def test_log_of_zero_is_minus_infinity_without_a_warning() -> None:
    m = ig.compile("y[i] = log(x[i])")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = m.forward(x=np.array([0.0, 1.0]))["y"]
    assert y[0] == -np.inf and y[1] == 0.0


def test_check_finite_names_the_statement() -> None:
    text = "z[i] = x[i] - 1\ny[i] = sqrt(z[i])\nw = sum[i](y[i])"
    m = ig.compile(text)
    x = np.array([0.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vals = m.forward(x=x)  # no check: NaN flows through quietly
    assert np.isnan(vals["w"])
    with pytest.raises(ig.IndexgradError) as info:
        m.forward(x=x, check_finite=True)
    assert info.value.line == 2 and "'y'" in info.value.message
    assert "NaN" in info.value.message
    with pytest.raises(ig.IndexgradError) as info:
        ig.compile("y[i] = log(x[i])\nw = sum[i](y[i])").forward(x=x, check_finite=True)
    assert info.value.line == 1 and "'y'" in info.value.message and "Inf" in info.value.message
    assert ig.compile(text).forward(x=x + 2, check_finite=True)["w"] == pytest.approx(1.0 + 3**0.5)


def test_negated_sum_as_the_whole_right_side() -> None:
    m = ig.compile("input a, b, x[k]\ny = -(a + b)\nz = -(x[k] - a)\n")
    vals = m.forward(a=np.array(1.0), b=np.array(2.0), x=np.array([1.0, 5.0]))
    assert float(vals["y"]) == -3.0 and float(vals["z"]) == -(6.0 - 2.0)
    g = m.backward(vals, loss="z")
    assert float(g["a"]) == 2.0 and float(g["b"]) == 0.0 and np.array_equal(g["x"], [-1.0, -1.0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3,), (40,), (5, 3), (6, 40), (2, 3, 17)])
def test_relu_is_numpys_maximum_with_zero_bit_for_bit(dtype, shape) -> None:
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1.5, -2.5], dtype)
    x = np.resize(special, shape)
    want = np.maximum(x, 0)
    got = ig.compile("y[...] = relu(x[...])".replace("...", ",".join("ijk"[: len(shape)]))).forward(x=x)["y"]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()  # NaNs and the sign of zero included
    model = ig.compile(
        "y[...] = relu(2 x[...])\nz[...] = relu(y[...] - 1)".replace("...", ",".join("ijk"[: len(shape)]))
    )
    vals = model.forward(x=x)  # the second relu runs in place in the dying temporary's buffer
    assert vals["z"].tobytes() == np.maximum(np.maximum(2 * x, 0) - 1, 0).tobytes()
    assert np.array_equal(x, np.resize(special, shape), equal_nan=True)  # the input is untouched


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (64, 10), (3, 300)])
@pytest.mark.parametrize("special", [None, np.inf, -np.inf, np.nan])
def test_planned_mean_and_logsumexp_give_the_reference_values_bit_for_bit(dtype, shape, special) -> None:
    """The planned kernels' leaner mean and logsumexp against np.mean and functions.REDUCTIONS."""
    from indexgrad.functions import REDUCTIONS

    x = (rng(4).standard_normal(shape) * 30).astype(dtype)
    if special is not None:
        x[0, -1] = special
    model = ig.compile("m = mean[i,j](x[i,j])\nr[j] = mean[i](x[i,j])\nl[i] = logsumexp[j](x[i,j])")
    with np.errstate(all="ignore"):
        want = {"m": np.mean(x), "r": np.mean(x, axis=0), "l": REDUCTIONS["logsumexp"](x, (1,))}
        for _ in range(2):  # the planning call and a planned one
            vals = model.forward(x=x)
            for name, w in want.items():
                got = vals[name]
                assert got.dtype == np.asarray(w).dtype and got.shape == np.shape(w), name
                if x.dtype.itemsize <= 8:  # a long double's padding bytes are not its value
                    assert np.asarray(got).tobytes() == np.asarray(w).tobytes(), name
                assert np.array_equal(got, w, equal_nan=True), name


def test_reductions_over_an_empty_range() -> None:
    x = np.ones((0, 2))
    assert ig.compile("y[i] = sum[b](x[b,i])").forward(x=x)["y"].tolist() == [0.0, 0.0]
    assert ig.compile("y[i] = logsumexp[b](x[b,i])").forward(x=x)["y"].tolist() == [-np.inf, -np.inf]
    for op in ("max", "min"):
        with pytest.raises(ig.IndexgradError, match=rf"{op}\[b\] over an empty range: 'b' has size 0"):
            ig.compile(f"y[i] = {op}[b](x[b,i])").forward(x=x)
    model = ig.compile("loss = mean[b](x[b,i])")
    with np.errstate(invalid="ignore"):
        vals = model.forward(x=x)
    assert model.backward(vals)["x"].shape == (0, 2)


@pytest.mark.parametrize(
    "text, shapes",
    [
        ("y[j] = w[k] x[2*j+k]\nloss = sum[j](y[j]^2)", {"w": (2,), "x": (7,)}),  # 2 does not divide 7-2
        ("y[j] = w[k] x[j-k+2]\nloss = sum[j](y[j]^2)", {"w": (3,), "x": (7,)}),
        ("t[k] = w[k] + a[j] x[j+k]\nloss = sum[k](t[k]^2)", {"w": (2,), "a": (3,), "x": (7,)}),
        ("y[j] = x[j+k] w[k] / size[k]\nloss = sum[j](y[j]^2)", {"w": (3,), "x": (7,)}),
        ("y[j] = x[j+k] w[j] / size[k]\nloss = sum[j](y[j]^2)", {"w": (5,), "x": (7,)}),
    ],
)
def test_hvp_of_index_arithmetic_against_differences_of_gradients(text: str, shapes: dict) -> None:
    model = ig.compile(text)
    arrays = {n: rng(k).standard_normal(s) for k, (n, s) in enumerate(shapes.items())}
    v = {n: rng(10 + k).standard_normal(s) for k, (n, s) in enumerate(shapes.items())}
    hv = model.hvp(model.forward(**arrays), v=v)
    eps = 1e-6
    plus = model.backward(model.forward(**{n: a + eps * v[n] for n, a in arrays.items()}))
    minus = model.backward(model.forward(**{n: a - eps * v[n] for n, a in arrays.items()}))
    for n in arrays:
        np.testing.assert_allclose(hv[n], (plus[n] - minus[n]) / (2 * eps), rtol=1e-6, atol=1e-7, err_msg=n)


def test_forward_keeps_the_programs_tensors_not_the_rewrites_temporaries() -> None:
    """A layer norm's variance (a mean of squares, rewritten to one product) and a product of three
    tensors (split in pairs) leave temporaries forward() need not return: only those the gradient
    reads are kept, the others run in dying buffers, and the gradient is autograd's."""
    text = (
        "c[b,d] = x[b,d] - mean[j](x[b,j])\n"
        "n[b,d] = c[b,d] / sqrt(mean[j](c[b,j]^2) + 1e-5)\n"
        "y[b,i] = n[b,d] A[d,k] B[k,i]\n"
        "loss = 0.5 sum[b,i](y[b,i]^2)\n"
    )
    r = rng(8)
    arrays = {"x": r.standard_normal((5, 6)), "A": r.standard_normal((6, 4)), "B": r.standard_normal((4, 3))}
    model = ig.compile(text)
    vals = model.forward(**arrays)
    assert {"c", "n", "y", "loss"} <= set(vals)
    assert not {"n.mean", "n.sum", "c.mean"} & set(vals)  # what no gradient reads is not returned
    steps = model.plan(arrays).steps
    assert [s.out for s in steps if s.into == "n.mean"] == ["n.sum"]

    def loss(x, A, B):
        c = x - anp.mean(x, axis=1, keepdims=True)
        n = c / anp.sqrt(anp.mean(c**2, axis=1, keepdims=True) + 1e-5)
        return 0.5 * anp.sum((n @ A @ B) ** 2)

    grads = model.backward(vals)
    want = autograd.grad(loss, (0, 1, 2))(arrays["x"], arrays["A"], arrays["B"])
    for name, w in zip("xAB", want):
        np.testing.assert_allclose(grads[name], w, rtol=1e-9, atol=1e-12)


def test_the_numpy_executor_asks_glibc_to_keep_what_a_plan_frees(monkeypatch: pytest.MonkeyPatch) -> None:
    from indexgrad import memory

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(memory, "_KEPT", [0])
    monkeypatch.setattr(memory, "_mallopt", lambda option, value: calls.append((option, value)) or True)
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    text = "y[i,j] = exp(x[i,j])\nz[i] = sum[j](y[i,j] x[i,j])"
    model = ig.compile(text)
    x = np.ones((64, 64))
    model.forward(x=x)
    peak = model.plan({"x": x.shape}).peak_bytes
    assert calls == [(-3, 32 << 20), (-1, 4 * peak)]  # M_MMAP_THRESHOLD, then M_TRIM_THRESHOLD
    model.forward(x=x[:8])  # a smaller plan asks for nothing: the threshold only grows
    assert len(calls) == 2
    model.forward(x=np.ones((128, 64)))
    assert calls[2:] == [(-1, 4 * model.plan({"x": (128, 64)}).peak_bytes)]
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))
    model.forward(x=np.ones((256, 64)))  # another C library is left as it is
    assert len(calls) == 3


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_a_plans_large_temporaries_come_back_without_page_faults() -> None:
    """Each run frees 2 MiB of temporaries; the next run finds them again without the kernel
    handing out (and zeroing) fresh pages."""
    import resource

    model = ig.compile("y[i,j] = exp(x[i,j])\nu[i,j] = y[i,j] y[i,j]\nz = sum[i,j](u[i,j] x[i,j])")
    x = np.ones((512, 512))
    for _ in range(3):
        model.forward(x=x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        model.forward(x=x)
    pages = 2 * x.nbytes // 4096
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < pages, faults  # in ten runs, fewer than one run would take afresh
