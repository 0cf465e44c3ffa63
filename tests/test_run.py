"""The executor (SPEC §1.6, §1.7, §3, §4): dtypes, broadcasting gradients, diagonals, many indices,
input errors, gathers, index arithmetic, convolutions, max/min ties, stability and finiteness."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import indexgrad as ig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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


# ---- dtypes ------------------------------------------------------------------------------------

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


@pytest.mark.parametrize("text", ["y[i] = max(0, x[i])", "y[i] = min(x[i], 1)"])
def test_gate_with_a_number_keeps_float32(text: str) -> None:
    m = ig.compile(text)
    vals = m.forward(x=np.array([-1.0, 0.5, 2.0], np.float32))
    assert vals["y"].dtype == np.float32
    assert m.backward(vals, seed={"y": np.ones(3, np.float32)})["x"].dtype == np.float32


def test_integer_arrays_for_float_inputs_become_float64() -> None:
    m = ig.compile("y[i] = x[i] / 2")
    y = m.forward(x=np.array([1, 2, 3]))["y"]
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [0.5, 1.0, 1.5])


def test_forward_returns_every_defined_tensor() -> None:
    m = ig.compile("h[i] = relu(x[i] + 1)\nloss = sum[i](h[i] w[i])")
    vals = m.forward(x=np.ones(2), w=np.ones(2))
    assert {"x", "w", "h", "loss"} <= set(vals)


# ---- gradients that broadcast ------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "text, fun",
    [
        ("z[b] = x[b] + (size[b] + c)", lambda x, c: x + (x.shape[0] + c)),
        ("z[b] = x[b] - (size[b] - 2 c)", lambda x, c: x - (x.shape[0] - 2 * c)),
        ("z[b] = c x[b] - (c + -(size[b] + 1))", lambda x, c: c * x - (c - (x.shape[0] + 1))),
        ("z[b] = x[b]^2 + (size[b] + c)^2", None),  # a squared group is a factor: refused
    ],
)
def test_size_of_the_statement_index_inside_parenthesised_terms(text: str, fun) -> None:
    """size[b] as a term of a parenthesised sum with no tensor indexed by b is the statement's
    b (the group's terms join the statement's), not a temporary's, which has no b."""
    if fun is None:
        with pytest.raises(ig.IndexgradError, match="size"):
            ig.compile(text)
        return
    m = ig.compile(text)
    a = {"x": rng().standard_normal(5), "c": np.array(0.7)}
    gz = rng(1).standard_normal(5)
    np.testing.assert_allclose(m.forward(**a)["z"], fun(**a), rtol=1e-12)
    assert_grads(vjp(m, a, "z", gz), fun, a, seed=gz)


# ---- diagonals and traces ----------------------------------------------------------------------


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


# ---- more index names than einsum has letters --------------------------------------------------


def test_sixty_one_indices_in_one_statement() -> None:
    n = 60
    r = rng(2)
    mats = {f"a{k}": r.uniform(0.5, 1.0, (2, 2)) for k in range(n)}
    rhs = " ".join(f"a{k}[i{k},i{k + 1}]" for k in range(n))
    m = ig.compile(f"y[i0,i{n}] = {rhs}")
    vals = m.forward(**mats)
    chain = np.linalg.multi_dot([mats[f"a{k}"] for k in range(n)])
    np.testing.assert_allclose(vals["y"], chain, rtol=1e-10)
    seed = r.standard_normal((2, 2))
    got = m.backward(vals, seed={"y": seed})
    left = np.linalg.multi_dot([mats[f"a{k}"] for k in range(30)])
    right = np.linalg.multi_dot([mats[f"a{k}"] for k in range(31, n)])
    np.testing.assert_allclose(got["a30"], left.T @ seed @ right.T, rtol=1e-10)
    np.testing.assert_allclose(
        got["a0"], seed @ np.linalg.multi_dot([mats[f"a{k}"] for k in range(1, n)]).T, rtol=1e-10
    )


def test_sixty_index_names_in_one_program() -> None:
    lines = [f"t{k}[i{k}] = x[i{k}] + {k}" for k in range(60)]
    lines.append("loss = " + " + ".join(f"sum[j{k}](t{k}[j{k}])" for k in range(60)))
    m = ig.compile("\n".join(lines))
    vals = m.forward(x=np.arange(3.0))
    assert float(vals["loss"]) == 60 * 3.0 + 3 * sum(range(60))
    np.testing.assert_array_equal(m.backward(vals, loss="loss")["x"], [60.0] * 3)


# ---- input errors ------------------------------------------------------------------------------

ERR = "y[i,j] = A[i,j] x[i]\nz[k] = y[k,l] w[l]"


def _error(**arrays) -> ig.IndexgradError:
    with pytest.raises(ig.IndexgradError) as info:
        ig.compile(ERR).forward(**arrays)
    return info.value


def test_missing_array() -> None:
    e = _error(A=np.ones((3, 2)), w=np.ones(2))
    assert "'x'" in e.message and e.line == 1


def test_extra_array() -> None:
    e = _error(A=np.ones((3, 2)), x=np.ones(3), w=np.ones(2), v=np.ones(2))
    assert "'v'" in e.message


def test_mis_ranked_array() -> None:
    e = _error(A=np.ones((3, 2)), x=np.ones((3, 1)), w=np.ones(2))
    assert "'x'" in e.message and "1" in e.message and "2" in e.message


def test_mis_sized_array_names_index_and_both_sizes() -> None:
    e = _error(A=np.ones((3, 2)), x=np.ones(4), w=np.ones(2))
    assert "'i'" in e.message and "3" in e.message and "4" in e.message
    assert e.line == 1


def test_mis_sized_array_in_a_later_statement() -> None:
    e = _error(A=np.ones((3, 2)), x=np.ones(3), w=np.ones(5))
    assert "'l'" in e.message and "2" in e.message and "5" in e.message
    assert e.line == 2


@pytest.mark.parametrize(
    "text, arrays, message, column",
    [
        (
            "y[b,i] = x[b,j] W[j,i] + B[i]",
            {"x": (2, 3), "W": (3, 4), "B": (5,)},
            "index 'i' has size 4 from W[j,i] (axis 1) but size 5 from B[i] (axis 0)",
            26,
        ),
        (
            "loss = mean[b](-Y[b,c] log(P[b,c]))",
            {"Y": (2, 3), "P": (2, 4)},
            "index 'c' has size 3 from Y[b,c] (axis 1) but size 4 from P[b,c] (axis 1)",
            28,
        ),
        (
            "y[j] = w[k] x[j+k] + b[j]",
            {"w": (3,), "x": (10,), "b": (9,)},
            "x[j+k] reaches position 10 along axis 0, but 'x' has size 10 there",
            13,
        ),
    ],
)
def test_a_size_conflict_names_what_the_user_wrote(text: str, arrays: dict, message: str, column: int):
    with pytest.raises(ig.IndexgradError) as info:
        ig.compile(text).forward(**{n: np.ones(shape) for n, shape in arrays.items()})
    assert info.value.message == message
    assert (info.value.line, info.value.column) == (1, column)


def test_a_size_from_the_statement_comes_before_the_valid_size() -> None:
    """SPEC 1.6: j gets the valid size only with no other source; b[j] is one, in a sum as in a product."""
    w, x, b = np.array([1.0, 2.0, 3.0]), np.arange(10.0), np.zeros(7)
    want = np.array([np.dot(w, x[j : j + 3]) for j in range(7)])
    for text in ["y[j] = w[k] x[j+k] + b[j]", "y[j] = w[k] x[j+k] (b[j] + 1)"]:
        np.testing.assert_allclose(ig.compile(text).forward(w=w, x=x, b=b)["y"], want)
    t = ig.compile("t[k] = w[k] + a[j] x[j+k]\nloss = sum[k](t[k]^2)")
    arrays = {"w": rng(1).standard_normal(2), "a": rng(2).standard_normal(3), "x": rng(3).standard_normal(7)}
    assert t.forward(**arrays)["t"].shape == (2,)
    assert ig.gradcheck(t, arrays).ok


@pytest.mark.parametrize(
    "text, arrays, message",
    [
        (
            "y[j] = tanh(x[j+k]) w[k]\nloss = sum[j](y[j] t[j])",
            {"x": 7, "w": 3, "t": 2},
            "index 'j' has size 5 from y[j] (axis 0) but size 2 from t[j] (axis 0)",
        ),
        ("y[j] = x[j+k] / size[k]\nz[j] = y[j] t[j]", {"x": 7, "t": 2}, "the size of index 'j' cannot"),
        ("y[j,k] = x[j+k]\nz[j] = y[j,k] t[k]", {"x": 7, "t": 2}, "the size of index 'j' cannot"),
    ],
)
def test_a_later_statement_never_sizes_an_earlier_one(text: str, arrays: dict, message: str) -> None:
    """Index names are local to a statement: a valid size stays valid, or it is an error."""
    with pytest.raises(ig.IndexgradError) as info:
        ig.compile(text).forward(**{n: np.ones(size) for n, size in arrays.items()})
    assert info.value.message.startswith(message)


def test_mis_shaped_seed_and_tangent() -> None:
    m = ig.compile(ERR)
    vals = m.forward(A=np.ones((3, 2)), x=np.ones(3), w=np.ones(2))
    with pytest.raises(ig.IndexgradError, match="z"):
        m.backward(vals, seed={"z": np.ones(4)})
    with pytest.raises(ig.IndexgradError, match="x"):
        m.jvp(vals, tangents={"x": np.ones(2)})
    with pytest.raises(ig.IndexgradError, match="z"):
        m.backward(vals, loss="z")  # not a scalar


# ---- gathers with integer labels ---------------------------------------------------------------


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


# ---- index arithmetic --------------------------------------------------------------------------


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


# ---- max and min with ties ---------------------------------------------------------------------


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


def test_hvp_through_a_max_reduction() -> None:
    x = rng(9).standard_normal(5)
    v = rng(10).standard_normal(5)
    m = ig.compile("loss = max[i](x[i])^2")
    got = m.hvp(m.forward(x=x), loss="loss", v={"x": v})["x"]
    want = autograd.hessian_vector_product(lambda x: anp.max(x) ** 2)(x, v)
    np.testing.assert_allclose(got, want, rtol=1e-12)


# ---- accumulation ------------------------------------------------------------------------------


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


# ---- numerical behaviour -----------------------------------------------------------------------


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


def test_the_gradient_of_a_mean_is_not_filled_into_a_vector() -> None:
    """`loss.sum.grad[b] += loss.grad / size[b]` holds one value; the products read it directly."""
    m = ig.compile("loss = mean[b](x[b,c] W[c])")
    x, w = rng().standard_normal((4, 3)), rng(1).standard_normal(3)
    report = str(m.plan({"x": x, "W": w}, mode="backward"))
    assert "W.grad[c] += loss.grad x[b,c] / size[b]" in report
    assert ".grad[b] +=" not in report  # no step writes the one value into a vector
    g = m.backward(m.forward(x=x, W=w), loss="loss")
    np.testing.assert_allclose(g["W"], x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(g["x"], np.broadcast_to(w / 4, (4, 3)), rtol=1e-14)


def test_a_seeded_gradient_that_also_receives_a_mean_gradient_keeps_its_seed() -> None:
    m = ig.compile("s[b] = mean[c](x[b,c])\nloss = mean[b](s[b])")
    x, g = rng().standard_normal((4, 3)), rng(1).standard_normal(4)
    vals = m.forward(x=x)
    got = m.backward(vals, seed={"loss": np.array(1.0), "s": g})["x"]
    np.testing.assert_allclose(got, np.broadcast_to(((1 / 4 + g) / 3)[:, None], (4, 3)), rtol=1e-14)


def test_a_scale_outside_a_sum_is_one_product() -> None:
    """`0.5 sum[b,i](y^2)` runs as the one product `0.5 y[b,i]^2`, with no temporary."""
    m = ig.compile("loss = 0.5 sum[b,i](y[b,i]^2)")
    y = rng().standard_normal((3, 4))
    report = str(m.plan({"y": y}))
    assert "  loss = 0.5 y[b,i]^2  " in report and "loss.sum" not in report
    assert float(m.forward(y=y)["loss"]) == pytest.approx(0.5 * float(np.sum(y * y)), rel=1e-14)


def test_scales_outside_sums_accumulate_into_their_target() -> None:
    m = ig.compile("y[b] = 2 sum[i](x[b,i])\ny[b] += -3 sum[i](z[b,i] x[b,i])\nloss = sum[b](y[b] y[b])")
    x, z = rng().standard_normal((3, 4)), rng(1).standard_normal((3, 4))
    vals = m.forward(x=x, z=z)
    want = 2 * x.sum(1) - 3 * (z * x).sum(1)
    np.testing.assert_allclose(vals["y"], want, rtol=1e-13)
    g = m.backward(vals, loss="loss")
    np.testing.assert_allclose(g["z"], -3 * 2 * want[:, None] * x, rtol=1e-12)


def _product(a: str, b: str, out: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, str]:
    """`z[out] = x[a] y[b]` run by a compiled model: its value and the call its plan chose."""
    ix = lambda s: f"[{','.join(s)}]" if s else ""  # noqa: E731
    m = ig.compile(f"z{ix(out)} = x{ix(a)} y{ix(b)}")
    (step,) = [s for s in m.plan({"x": x, "y": y}).steps if s.out == "z"]
    return m.forward(x=x, y=y)["z"], step.call


@pytest.mark.parametrize("a", ["ij", "ji", "ik", "ki", "jk", "kj"])
@pytest.mark.parametrize("b", ["ij", "ji", "ik", "ki", "jk", "kj"])
def test_every_product_of_two_matrices_against_einsum(a: str, b: str) -> None:
    """Two-operand contractions run as one matmul of (transposed) views, or a broadcast product:
    every output order of every pair of matrices over three indices."""
    from itertools import permutations

    size = {"i": 2, "j": 3, "k": 4}
    x = rng().standard_normal([size[c] for c in a])
    y = rng(1).standard_normal([size[c] for c in b])
    used = sorted(set(a) | set(b))
    for r in range(3):
        for out in permutations(used, r):
            want = np.einsum(f"{a},{b}->{''.join(out)}", x, y)
            got, call = _product(a, b, "".join(out), x, y)
            assert call in ("matmul", "vecdot", "multiply", "scale", "dot"), (a, b, out, call)
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13, err_msg=f"{a},{b}->{out}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("b_size", [3, 0])
def test_batched_dot_products_against_einsum(dtype, b_size: int) -> None:
    """`out[b,c] = x[...] y[...]` summed over the rest (np.vecdot of two matrices): operands with
    two kept and two summed indices in every order, one summed index only one operand has."""
    from itertools import permutations

    size = {"b": b_size, "c": 2, "j": 3, "k": 4, "e": 2}
    g = rng(2)
    for a in ["bcjk", "kjcb", "jbkc"]:
        for b in ["cbkj", "jkbce"]:
            x = g.standard_normal([size[n] for n in a]).astype(dtype)
            y = g.standard_normal([size[n] for n in b]).astype(dtype)
            for out in permutations("bc"):
                want = np.einsum(f"{a},{b}->{''.join(out)}", x, y)
                got, call = _product(a, b, "".join(out), x, y)
                assert call == "vecdot" and got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{a},{b}->{out}")


@pytest.mark.parametrize(
    "text, scalars",
    [
        # a.grad passes y.grad through (a copy that is no copy); y.grad is then scaled where it dies
        ("y[i] = 2 c e[i]\ny[i] += a[i]\nloss = sum[i](d[i] y[i]^2)", {"c": 0.7}),
        # a scale by exactly 1 hands y.grad over as it is
        ("y[i] = 2 c e[i]\ny[i] += s a[i]\nloss = sum[i](d[i] y[i]^2)", {"c": 3.0, "s": 1.0}),
        # y.grad is later the buffer a product is written into
        ("y[i] = b[i] e[i]\ny[i] += a[i]\nloss = sum[i](d[i] y[i]^2)", {}),
        (
            "y[i] = s2 e[i]\ny[i] += s a[i]\nz[i] = relu(y[i])\nloss = sum[i](z[i] d[i])",
            {"s": 1.0, "s2": 3.0},
        ),
    ],
)
def test_a_gradient_handed_to_another_name_is_never_written_in_place(text: str, scalars: dict) -> None:
    """A kernel whose result may be its operand's buffer makes the buffer shared: no later
    statement may update it in place through either name."""
    m = ig.compile(text)
    arrays = {n: rng(k).standard_normal(6) for k, n in enumerate(m.inputs) if n not in scalars}
    arrays |= {n: np.array(v) for n, v in scalars.items()}
    for _ in range(2):  # the first call plans the kernels, the second runs them
        grads = m.backward(m.forward(**arrays), loss="loss")
        for n in arrays:
            e = 1e-6
            want = []
            for i in np.ndindex(arrays[n].shape):
                up = {k: v.copy() for k, v in arrays.items()}
                down = {k: v.copy() for k, v in arrays.items()}
                up[n][i] += e
                down[n][i] -= e
                want.append((float(m.forward(**up)["loss"]) - float(m.forward(**down)["loss"])) / (2 * e))
            np.testing.assert_allclose(grads[n].ravel(), want, rtol=1e-6, atol=1e-8, err_msg=n)
        for p, q in [(p, q) for p in grads for q in grads if p < q]:
            assert not np.shares_memory(grads[p], grads[q]), (p, q)


def test_broadcast_values_stay_made_when_inlining_them_would_drop_a_summed_index() -> None:
    """`y = t1[b] t2[b]` sums over b, which only the two one-value temporaries carry: inlining
    both would leave b to no tensor (and lose the factor size[b]), so both are kept."""
    from indexgrad.lower import Contract
    from indexgrad.nodes import Ref, Span, idx
    from indexgrad.rewrite import inline_broadcasts

    span = Span()
    t1, t2 = Ref("t1", (idx("b"),)), Ref("t2", (idx("b"),))
    prims = [
        Contract(t1, "=", 1.0, ((Ref("s", ()), 1.0),), span),
        Contract(t2, "=", 2.0, ((Ref("r", ()), 1.0),), span),
        Contract(Ref("y", ()), "=", 1.0, ((t1, 1.0), (t2, 1.0)), span),
    ]
    assert inline_broadcasts(prims, {"y"}) == prims
    # with a tensor that carries b, both are inlined
    x = Ref("x", (idx("b"),))
    prims[2] = Contract(Ref("y", ()), "=", 1.0, ((t1, 1.0), (t2, 1.0), (x, 1.0)), span)
    (only,) = inline_broadcasts(prims, {"y"})
    assert isinstance(only, Contract) and only.coef == 2.0
    assert [f.name for f, _ in only.factors] == ["s", "r", "x"]


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


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    "text, axes",
    [
        ("y[j] = x[b,j]", (0,)),
        ("y[b] = x[b,j]", (1,)),
        ("y[k] = x[a,b,k]", (0, 1)),
        ("y[a] = x[a,b,k]", (1, 2)),
        ("y[a,k] = x[a,b,k]", (1,)),
        ("y[k,a] = x[a,b,k]", (1,)),
    ],
)
def test_sums_over_leading_or_trailing_axes_match_numpy(text: str, axes, dtype) -> None:
    """Plain sums (bias gradients) run as a product with ones; values, NaN and Inf as np.sum's."""
    shape = (6, 5) if text.count(",") == 1 else (4, 3, 5)
    x = rng(7).standard_normal(shape).astype(dtype)
    for a in (x, np.asfortranarray(x)):  # contiguous and not
        want = np.sum(a, axis=axes)
        if text.startswith("y[k,a]"):
            want = want.T
        got = ig.compile(text).forward(x=a)["y"]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-2 if dtype == np.float16 else 1e-6, atol=1e-6)
    bad = x.copy()
    bad.flat[0], bad.flat[-1] = np.nan, np.inf
    got = ig.compile(text).forward(x=bad)["y"]
    want = np.sum(bad, axis=axes)
    assert np.array_equal(np.isnan(got), np.isnan(want.T if text.startswith("y[k,a]") else want))
    assert np.array_equal(np.isinf(got), np.isinf(want.T if text.startswith("y[k,a]") else want))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_layer_hands_one_buffer_along(dtype) -> None:
    """h = relu(x W + B): the matmul makes a buffer, the bias is added into it and relu runs in it
    (one group, two `into`s), and the values are numpy's."""
    m = ig.compile("h[b,i] = relu(x[b,j] W[j,i] + B[i])")
    x, w, b = (rng(k).standard_normal(s).astype(dtype) for k, s in enumerate([(5, 3), (3, 4), (4,)]))
    steps = m.plan({"x": x, "W": w, "B": b}).steps
    assert [(s.call, s.into) for s in steps] == [("matmul", None), ("add", "h.prod"), ("relu", "h.sum")]
    assert steps[0].group == steps[1].group == steps[2].group is not None
    assert steps[1].release == ("h.prod",) and steps[2].release == ("h.sum",)
    h = m.forward(x=x, W=w, B=b)["h"]
    assert h.dtype == dtype and h.tobytes() == np.maximum(x @ w + b, 0).tobytes()
    assert np.array_equal(x, rng(0).standard_normal((5, 3)).astype(dtype))  # operands untouched


def _layered_program(r: random.Random) -> str:
    """A few layers over (b,i) tensors mixing products, sums, functions and `+=`, then a loss."""
    names = ["x", "c", "d"]
    lines = []
    for k in range(r.randint(2, 6)):
        t, a, b2, f = f"t{k}", r.choice(names), r.choice(names), r.choice(["relu", "exp", "tanh", "sin"])
        lines.append(
            r.choice(
                [
                    f"{t}[b,i] = {a}[b,k] W[k,i] + B[i]",
                    f"{t}[b,i] = {f}({a}[b,k] W[k,i] + B[i])",
                    f"{t}[b,i] = {f}({a}[b,i] {b2}[b,i])",
                    f"{t}[b,i] = {a}[b,i] {b2}[b,i] c[b,i]",
                    f"{t}[b,i] = {a}[b,i] + {b2}[b,i] d[b,i]",
                    f"{t}[b,i] = {a}[b,i] - {b2}[b,i] d[b,i]",
                    f"{t}[b,i] = 2 {a}[b,i] s + {b2}[b,i]",
                    f"{t}[b,i] = {f}({a}[b,k] W[k,i]) d[b,i]",
                    f"{t}[b,i] = {a}[b,i] + {b2}[b,i]\n{t}[b,i] += {f}({a}[b,k] W[k,i])",
                ]
            )
        )
        names.append(t)
    loss = " + ".join(f"sum[b,i]({u}[b,i]^2)" for u in r.sample(names, 3))
    lines += [f"y[b,j] = {names[-1]}[b,i] V[i,j]", f"loss = sum[b,j](y[b,j]^2) + {loss}"]
    return "param W[i,k], V[i,j], B[i], s\ninput x[b,i], c[b,i], d[b,i]\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(40))
def test_planned_calls_give_the_first_calls_values(seed: int) -> None:
    planned_calls_repeat(seed)


def planned_calls_repeat(seed: int) -> None:
    """The calls after the first for the same shapes run planned (fused) kernels: the same bits as
    the first call, for every input, for one or two of them (pruned programs), and with seeds.
    (`make fuzz` runs this on many more seeds.)"""
    r = random.Random(seed)
    model = ig.compile(_layered_program(r))
    g = rng(seed)
    arrays = {n: g.standard_normal(s) for n, s in [("x", (5, 4)), ("c", (5, 4)), ("d", (5, 4))]}
    arrays |= {"W": 0.5 * g.standard_normal((4, 4)), "V": g.standard_normal((4, 3))}
    arrays |= {"B": g.standard_normal(4), "s": np.array(g.standard_normal())}
    inputs = sorted(arrays)
    for wrt in [None, *([n] for n in inputs), r.sample(inputs, 2)]:
        for seeds in (None, {"y": np.ones((5, 3)), "t1": np.ones((5, 4))}):
            with np.errstate(all="ignore"):  # some layers overflow: the same inf and NaN each call
                calls = [model.backward(model.forward(**arrays), wrt=wrt, seed=seeds) for _ in range(3)]
            for later in calls[1:]:
                for n, v in calls[0].items():
                    assert later[n].tobytes() == v.tobytes(), (wrt, seeds is not None, n)


def test_a_chain_ends_at_a_statement_that_adds_to_its_target() -> None:
    """`u.grad += a.grad c` adds to what u.grad holds: a chain through it would drop that."""
    text = (
        "input x[b,i], c[b,i], d[b,i], V[i,o]\nu[b,i] = x[b,i] d[b,i]\n"
        "y[b,o] = u[b,i] c[b,i] V[i,o]\nloss = sum[b,o](y[b,o]^2) + sum[b,i](u[b,i]^2)\n"
    )
    g = rng(3)
    arrays = {n: g.standard_normal((5, 4)) for n in "xcd"} | {"V": g.standard_normal((4, 3))}
    model = ig.compile(text)
    want = None
    for _ in range(3):
        got = model.backward(model.forward(**arrays), wrt=["x"])["x"]
        want = got if want is None else want
        np.testing.assert_array_equal(got, want)
    assert ig.gradcheck(model, arrays, wrt=["x"]).ok


def test_accumulating_into_a_name_first_written_by_the_accumulation() -> None:
    """`+=` into a name nothing wrote yet is a plain write, planned as one; into a defined name, an add."""
    x, w = rng(5).standard_normal((4, 3)), rng(6).standard_normal(3)
    model = ig.compile("t[i,j] += x[i,j] w[j]\nt[i,j] += x[i,j]\ny[i] = sum[j](t[i,j])\ny[i] += 1")
    want_t = x * w + x
    for _ in range(3):
        vals = model.forward(x=x, w=w)
        np.testing.assert_array_equal(vals["t"], want_t)
        np.testing.assert_array_equal(vals["y"], want_t.sum(axis=1) + 1)
    assert ig.compile("t[i,j] += x[i,j] w[j]").forward(x=x, w=w, check_finite=True)["t"].tobytes() == (
        x * w
    ).tobytes()


# ---- index arithmetic read inside a function: the valid size from the rest of the statement ----

def _correlate(f, step: int = 1):
    """y[j] = sum_k f(x[j + step k]) w[k], for w of size 3 and x of size 10, by slicing."""
    n = 10 - 2 * step
    return lambda x, w: anp.stack([anp.dot(f(x[j : j + 2 * step + 1 : step]), w) for j in range(n)])


SHIFTED_IN_A_CALL = [
    ("y[j] = tanh(x[j+k]) w[k]", _correlate(anp.tanh)),
    ("y[j] = (x[j+k] + 1) w[k]", _correlate(lambda v: v + 1)),
    ("y[j] = sum[k](exp(x[j+k]) w[k])", _correlate(anp.exp)),
    ("y[j] = tanh(x[j+2*k]) w[k]", _correlate(anp.tanh, 2)),
]


@pytest.mark.parametrize("text, fun", SHIFTED_IN_A_CALL)
def test_a_shifted_read_inside_a_function_gets_the_valid_size(text: str, fun) -> None:
    arrays = {"x": rng(1).standard_normal(10), "w": rng(2).standard_normal(3)}
    model = ig.compile(text)
    y = model.forward(**arrays)["y"]
    np.testing.assert_allclose(y, fun(**arrays), rtol=1e-12)
    seed = rng(3).standard_normal(y.shape)
    assert_grads(vjp(model, arrays, "y", seed), fun, arrays, seed)


# ---- Python numbers and the Python API's keyword names ----------------------------------------


def test_a_python_number_takes_the_arrays_float32_instead_of_upcasting() -> None:
    model = ig.compile("y[i] = s x[i] + t\nloss = sum[i](y[i]^2)")
    x = rng().standard_normal(4).astype(np.float32)
    vals = model.forward(x=x, s=2.0, t=1)
    assert vals["y"].dtype == vals["loss"].dtype == np.float32
    np.testing.assert_allclose(vals["y"], 2 * x + 1, rtol=1e-6)
    assert {n: g.dtype for n, g in model.backward(vals).items()} == dict.fromkeys("xst", np.float32)
    assert model.forward(x=x, s=np.float64(2.0), t=1)["y"].dtype == np.float64  # numpy's own scalar
    assert model.forward(x=x.astype(np.float64), s=2.0, t=1)["y"].dtype == np.float64


def test_tensors_may_be_called_like_the_methods_keywords() -> None:
    model = ig.compile("y[i] = self[i] check_finite[i]\nloss = sum[i](y[i])")
    a, b = rng(1).standard_normal(3), rng(2).standard_normal(3)
    vals = model.forward(self=a, check_finite=b)
    np.testing.assert_allclose(vals["y"], a * b)
    with pytest.raises(ig.IndexgradError, match="NaN"):
        ig.compile("y[i] = log(x[i])").forward(x=-np.ones(2), check_finite=True)


def test_wrt_may_be_one_name_or_a_comma_separated_string() -> None:
    model = ig.compile("loss = sum[i](a[i] b[i] c[i])")
    arrays = {n: rng(k).standard_normal(3) for k, n in enumerate("abc")}
    vals = model.forward(**arrays)
    assert list(model.backward(vals, wrt="b")) == ["b"]
    assert list(model.backward(vals, wrt="c, a")) == ["c", "a"]
    assert {s.target.name for s in ig.derive(model.program, wrt="a").statements} == {"a.grad"}


def test_gradcheck_takes_program_text() -> None:
    assert ig.gradcheck("loss = sum[i](x[i]^3)", {"x": rng().standard_normal(4)}).ok


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"v": {"y": np.ones(3)}}, "v names 'y', which is not an input"),
        ({"loss": "y", "v": {"x": np.ones(3)}}, "not a scalar"),
        ({"loss": "nope", "v": {"x": np.ones(3)}}, "loss 'nope' is not defined by the program"),
    ],
)
def test_hvp_says_what_is_wrong_with_its_arguments(kwargs: dict, message: str) -> None:
    model = ig.compile("y[i] = x[i]^2\nloss = sum[i](y[i])")
    vals = model.forward(x=np.ones(3))
    with pytest.raises(ig.IndexgradError, match=message):
        model.hvp(vals, **kwargs)
    with pytest.raises(ig.IndexgradError, match="vals lacks input x"):
        model.hvp({"loss": vals["loss"]}, v={"x": np.ones(3)})


def test_a_huge_stride_over_a_size_one_index_reads_and_scatters() -> None:
    model = ig.compile("y[j] = w[k] x[100000000000000000000*j + k]\nloss = sum[j](y[j]^2)")
    x, w = np.arange(1.0, 4.0), np.array([1.0, 2.0])
    vals = model.forward(x=x, w=w)
    assert vals["y"].tolist() == [5.0]
    grads = model.backward(vals)
    assert grads["x"].tolist() == [10.0, 20.0, 0.0] and grads["w"].tolist() == [10.0, 20.0]


# ---- empty ranges, foreign values and seeds -----------------------------------------------------


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
    "vals, kwargs, message",
    [
        (None, {}, "vals must be the dict forward() returned, not NoneType"),
        ({"x": "ab", "l": 5.0}, {}, "the value of 'x' in vals must hold real numbers"),
        ("ok", {"seed": [("l", 1.0)]}, "seed must be a dict from tensor names to arrays, not list"),
        ("ok", {"seed": {"l": 1j}}, "seed for 'l' must hold real numbers, not complex128"),
        ("ok", {"seed": {"l": [[1], [1, 2]]}}, "seed for 'l' is not an array"),
        ("ok", {"seed": {"x": np.ones(3)}}, "seed names 'x', which is not a tensor the program defines"),
    ],
)
def test_backward_says_what_is_wrong_with_its_arguments(vals, kwargs: dict, message: str) -> None:
    model = ig.compile("l = x[i] x[i]")
    if vals == "ok":
        vals = model.forward(x=np.ones(3))
    with pytest.raises(ig.IndexgradError) as info:
        model.backward(vals, **kwargs)
    assert info.value.message.startswith(message)


def test_backward_calls_follow_changes_to_vals_wrt_and_loss() -> None:
    """A call like an earlier one reuses its plan; any change of names, shapes, dtypes, wrt or
    loss is planned (or refused) as on a first call."""
    model = ig.compile(
        "input x[b,i], W[i,j]\ny[b,j] = x[b,i] W[i,j]\nl2 = sum[b,j](y[b,j])\nloss = sum[b,j](y[b,j]^2)"
    )
    g = rng(5)
    for _ in range(2):
        for b, i, j, dtype in [(2, 3, 4, np.float64), (5, 3, 2, np.float64), (2, 3, 4, np.float32)]:
            x, W = g.standard_normal((b, i)).astype(dtype), g.standard_normal((i, j)).astype(dtype)
            vals = model.forward(x=x, W=W)
            dy = 2 * (x @ W)
            for wrt in (None, ["W"], ("x", "W"), "W", "x, W"):
                grads = model.backward(vals, wrt=wrt)
                names = ["W"] if wrt in ("W", ["W"]) else ["x", "W"]
                assert list(grads) == names and all(grads[n].dtype == dtype for n in names)
                want = {"x": dy @ W.T, "W": x.T @ dy}
                for n in names:
                    np.testing.assert_allclose(grads[n], want[n], rtol=1e-5)
            ones = model.backward(vals, loss="l2", wrt=["x"])["x"]
            np.testing.assert_allclose(ones, np.ones((b, j)) @ W.T, rtol=1e-5)
            vals["x"] = 2 * x  # another array under the same name and shape: its values are used
            np.testing.assert_allclose(model.backward(vals, wrt=["W"])["W"], 2 * x.T @ dy, rtol=1e-5)
            vals["extra"] = np.ones(7)  # a name more: planned again, the same gradients
            np.testing.assert_allclose(model.backward(vals, wrt="W")["W"], 2 * x.T @ dy, rtol=1e-5)
            del vals["y"]  # a derivative reads y: refused, as on a first call
            with pytest.raises(ig.IndexgradError):
                model.backward(vals, wrt=["x"])
    with pytest.raises(ig.IndexgradError, match="loss must be the name"):
        model.backward(model.forward(x=np.ones((1, 3)), W=np.ones((3, 2))), ["W"])


def test_backward_takes_lists_and_numbers_for_vals() -> None:
    model = ig.compile("l = x[i] x[i]")
    assert model.backward({"x": [1.0, 2.0], "l": 5.0})["x"].tolist() == [2.0, 4.0]


@pytest.mark.parametrize("seed_dtype", [np.int64, np.float32, np.bool_])
def test_a_seed_takes_the_dtype_of_what_it_seeds(seed_dtype) -> None:
    model = ig.compile(EXAMPLES / "affine.idx")
    vals = model.forward(x=rng(1).standard_normal((2, 3)), W=rng(2).standard_normal((3, 4)), B=np.ones(4))
    seed = np.ones((2, 4), seed_dtype)
    grads = model.backward(vals, seed={"y": seed})
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float64)}
    np.testing.assert_allclose(grads["B"], [2.0] * 4)


def test_gradcheck_refuses_a_step_that_is_not_positive() -> None:
    for eps in (0.0, -1e-6, float("nan")):
        with pytest.raises(ig.IndexgradError, match="positive step"):
            ig.gradcheck("l = x[i] x[i]", {"x": np.ones(3)}, eps=eps)


def test_derive_takes_program_text() -> None:
    assert str(ig.derive("l = x[i] x[i]")) == str(ig.derive(ig.parse("l = x[i] x[i]")))
    assert str(ig.derive_jvp("l = x[i] x[i]")) == str(ig.derive_jvp(ig.parse("l = x[i] x[i]")))


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


def test_jvp_hvp_and_forward_say_what_is_wrong_with_their_arguments() -> None:
    model = ig.compile("loss = sum[i](x[i]^3)")
    vals = model.forward(x=np.ones(3))
    with pytest.raises(ig.IndexgradError, match="v for 'x' is not an array"):
        model.hvp(vals, v={"x": [[1.0], [1.0, 1.0]]})
    with pytest.raises(ig.IndexgradError, match="tangent for 'x' must hold real numbers"):
        model.jvp(vals, {"x": np.array(["a", "b", "c"])})
    with pytest.raises(ig.IndexgradError, match="check_finite must be True or False, not ndarray"):
        model.forward(x=np.ones(3), check_finite=np.array([1, 0]))
    assert model.jvp({"x": [1.0, 2.0, 3.0], "loss": 36.0}, {"x": np.ones(3)})["loss"] == 3 * (1 + 4 + 9)
    with pytest.raises(ig.IndexgradError, match="loss must be the name of a defined tensor, not dict; pass"):
        model.hvp(vals, {"x": np.ones(3)})  # the directions given where the loss's name goes
    with pytest.raises(ig.IndexgradError, match="loss must be the name of a defined tensor, not list"):
        model.backward(vals, ["x"])
