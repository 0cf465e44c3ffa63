"""The planner: which steps a program yields (calls, buffers lent, groups, what is freed), and planned
calls giving the first call's values bit for bit."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from oracles import rng

import indexgrad as ig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_a_plan_is_the_ordered_list_of_its_steps() -> None:
    """SPEC 7: model.plan returns an ordered list of Step records: len, indexing, slicing and
    iteration are those of plan.steps."""
    m = ig.compile("h[b,o] = tanh(x[b,i] W[i,o])\nloss = sum[b,o](h[b,o]^2)")
    plan = m.plan({"x": (4, 3), "W": (3, 2)}, mode="backward")
    assert len(plan) == len(plan.steps) > 1
    assert list(plan) == list(plan.steps) and plan[0] is plan.steps[0] and plan[-1] is plan.steps[-1]
    assert plan[1:] == plan.steps[1:] and [s.out for s in plan] == [s.out for s in plan.steps]


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


def test_a_relu_gradient_reads_a_boolean_mask_but_a_tensor_the_program_defines_stays_float() -> None:
    """step(h) read once by the next product is a boolean mask; `W = step(...)` is the program's
    own tensor, returned (and read by the gradients) as the floats it is."""
    m = ig.compile("y[i] = relu(x[i])\nloss = sum[i](y[i] y[i])")
    x = rng().standard_normal(5)
    assert "greater(y[i], 0) -> bool[5]" in str(m.plan({"x": x}, mode="backward"))
    m = ig.compile("W[b,i] = step(h[b,i] B)\nz[b,i] = W[b,i] x")
    h = rng().standard_normal((2, 3))
    vals = m.forward(h=h, B=np.float64(1.5), x=np.float64(2.0))
    assert vals["W"].dtype == np.float64
    np.testing.assert_array_equal(vals["W"], (h > 0).astype(float))
    g = m.backward(vals, seed={"z": np.ones((2, 3))})
    assert float(g["x"]) == float((h > 0).sum())


@pytest.mark.parametrize("mode", ["forward", "jvp", "hvp"])
def test_a_sum_of_products_over_an_index_they_share_sums_each_product_itself(mode: str) -> None:
    """j spans two products (and the tangent rule writes such a sum for every product's jvp):
    Σ_j of the sum is each product's own matrix product, added, never an array over [b,i,j]
    (at these sizes 392 MiB)."""
    text = "param W[j,i], V[j,i], B[i]\ninput x[b,j], z[b,j]\n"
    text += "y[b,i] = x[b,j] W[j,i] - 2 z[b,j] V[j,i]\ny[b,i] += B[i]\nloss = sum[b,i](y[b,i]^2)\n"
    m = ig.compile(text)
    shapes = {"x": (64, 784), "z": (64, 784), "W": (784, 512), "V": (784, 512), "B": (512,)}
    plan = m.plan(shapes, mode=mode)
    assert all(len(s.shape) <= 2 for s in plan.steps) and plan.peak_bytes < 16 << 20, plan
    small = {"x": (2, 5), "z": (2, 5), "W": (5, 3), "V": (5, 3), "B": (3,)}
    a = {n: rng(1).standard_normal(s) for n, s in small.items()}
    y = a["x"] @ a["W"] - 2 * a["z"] @ a["V"] + a["B"]
    np.testing.assert_allclose(m.forward(**a)["y"], y, rtol=1e-12)


def _multiply_adds(plan: ig.Plan) -> int:
    """The plan's products' multiply-adds: each pairwise step's, the product of its indices' sizes."""
    steps = [s for s in plan.steps if s.kind == "contract"]
    sizes = [{a: n for o in s.inputs for a, n in zip(o.axes, o.shape)} for s in steps]
    return sum(int(np.prod(list(size.values()))) for size in sizes)


def test_the_tangents_of_a_long_product_share_its_partial_products() -> None:
    """x A B runs as A B, then x (A B); its tangent terms (and the hvp's tangents of the
    gradients) are derived from those pairwise steps and read what the forward made, so a jvp
    costs two forwards and an hvp about nine, as by hand, not one three-operand product per
    term (a jvp of 3 forwards and 1.6 times the memory at these sizes)."""
    text = "param A[j,k], B[k,i]\ninput x[b,j]\ny[b,i] = x[b,j] A[j,k] B[k,i]\nloss = sum[b,i](y[b,i]^2)\n"
    m = ig.compile(text)
    shapes = {"x": (512, 256), "A": (256, 256), "B": (256, 256)}
    plans = {mode: m.plan(shapes, mode=mode) for mode in ("forward", "backward", "jvp", "hvp")}
    for plan in plans.values():
        assert all(len(s.inputs) <= 2 for s in plan.steps if s.kind == "contract"), plan
    forward = _multiply_adds(plans["forward"])
    assert _multiply_adds(plans["jvp"]) <= 2 * forward and _multiply_adds(plans["hvp"]) <= 9 * forward
    assert plans["jvp"].peak_bytes <= plans["backward"].peak_bytes
    small = {"x": (3, 4), "A": (4, 5), "B": (5, 2)}
    a = {n: rng(k).standard_normal(s) for k, (n, s) in enumerate(small.items())}
    t = {n: rng(k + 3).standard_normal(s) for k, (n, s) in enumerate(small.items())}
    vals = m.forward(**a)
    y_tan = t["x"] @ a["A"] @ a["B"] + a["x"] @ t["A"] @ a["B"] + a["x"] @ a["A"] @ t["B"]
    np.testing.assert_allclose(m.jvp(vals, t)["y"], y_tan, rtol=1e-12)
    names = list(small)

    def loss(x: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        return anp.sum(anp.dot(anp.dot(x, A), B) ** 2)

    def along_v(*args: np.ndarray) -> np.ndarray:  # <∇loss, v>, whose gradient is H v
        return sum(anp.sum(autograd.grad(loss, k)(*args) * t[n]) for k, n in enumerate(names))

    got = m.hvp(vals, v=t)
    for k, n in enumerate(names):
        want = autograd.grad(along_v, k)(*(a[q] for q in names))
        np.testing.assert_allclose(got[n], want, rtol=1e-10, err_msg=n)


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
                assert call == ("vecdot" if b_size else "full"), call  # nothing to compute: zeros
                assert got.dtype == want.dtype and got.shape == want.shape
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
    assert (
        ig.compile("t[i,j] += x[i,j] w[j]").forward(x=x, w=w, check_finite=True)["t"].tobytes()
        == (x * w).tobytes()
    )


# ---- the planner's decisions, program by program ---------------------------------------------


def _steps(text: str, shapes: dict, mode: str = "forward", **kw) -> list:
    return list(ig.compile(text).plan(shapes, mode=mode, **kw).steps)


def test_a_bias_gradient_is_a_product_with_ones_and_a_relu_gradient_a_boolean_mask() -> None:
    steps = _steps(
        "h[b,i] = relu(x[b,j] W[j,i] + B[i])\nloss = sum[b,i](h[b,i] Y[b,i])",
        {"x": (8, 3), "W": (3, 4), "B": (4,), "Y": (8, 4)},
        "backward",
    )
    by_out = {s.out: s for s in steps}
    assert by_out["B.grad"].call == "ones_sum"
    (mask,) = [s for s in steps if s.call == "mask"]
    assert mask.dtype == "bool" and mask.inputs[0].name == "h"  # step(h) for step(h.sum): h.sum is not kept
    reader = steps[steps.index(mask) + 1]
    assert mask.out in [o.name for o in reader.inputs] and mask.out in reader.release


def test_an_input_or_anything_sharing_its_memory_is_never_written_into() -> None:
    """exp(x) does not reuse x's buffer (the caller's), nor relu(y) that of y = x (the same array)."""
    for text in ["y[i] = exp(x[i])", "y[i] = x[i]\nz[i] = relu(y[i])", "y[i] = x[i] + 0\nz[i] = exp(y[i])"]:
        for s in _steps(text, {"x": (5,)}):
            assert s.into is None, (text, s)


def test_a_step_does_not_write_into_a_buffer_it_also_reads_transposed() -> None:
    """In exp(x + xᵀ)'s gradient, x.grad[i,j] += s.grad[i,j] is s.grad itself read transposed
    (a copy that moves no data), so x.grad[j,i] += s.grad[i,j] would add s.grad into its own
    memory through another layout: the add gets a buffer of its own (torch refuses the overlap)."""
    steps = _steps("y[i,j] = exp(x[i,j] + x[j,i])", {"x": (3, 3)}, "backward")
    first, second = [s for s in steps if s.out == "x.grad"]
    assert first.call == "copy" and second.into is None


def test_a_dead_temporary_lends_its_buffer_and_a_kept_one_does_not() -> None:
    """tanh's derivative reads its output, so y.sum dies at tanh and lends it its buffer; t and y
    are the program's own tensors, which forward returns: `t + 1` makes a buffer of its own."""
    steps = _steps("t[i] = exp(x[i])\ny[i] = tanh(t[i] + 1)", {"x": (5,)})
    assert [(s.call, s.into) for s in steps] == [("exp", None), ("terms", None), ("tanh", "y.sum")]
    sin = _steps("t[i] = exp(x[i])\ny[i] = sin(t[i] + 1)", {"x": (5,)})
    assert sin[2].into is None  # sin's derivative reads cos(y.sum): forward keeps y.sum


def test_reads_through_index_arithmetic_and_labels_are_steps_of_their_own() -> None:
    corr = "param w[k]\ny[j] = w[k] x[j+k]\nloss = sum[j](y[j]^2)"
    fwd = _steps(corr, {"w": (3,), "x": (10,)})
    assert [s.kind for s in fwd][:2] == ["view", "contract"] and fwd[0].out == "x[j+k]"
    assert fwd[0].shape == (8, 3)
    back = _steps(corr, {"w": (3,), "x": (10,)}, "backward")
    (scatter,) = [s for s in back if s.kind == "scatter"]
    assert scatter.out == "x.grad" and scatter.shape == (10,) and scatter.args["fresh"]
    labels = _steps("ell[b] = -log(P[b, y[b]])", {"P": (4, 3), "y": (4,)})
    assert labels[0].kind == "gather" and labels[0].inputs[1].name == "y"


def test_the_peak_counts_what_is_alive_at_once() -> None:
    """a and b are kept (forward returns them), and so is the partial product b b that the
    gradients share; when the loss is made, all three and the loss (8 bytes) are alive."""
    steps_text = "a[i] = exp(x[i])\nb[i] = sin(a[i])\nloss = sum[i](b[i] b[i] a[i])"
    plan = ig.compile(steps_text).plan({"x": (1000,)})
    assert plan.peak_bytes == 3 * 8000 + 8
    assert "peak 23.4 KiB" in str(plan).splitlines()[0]


def test_a_plan_whose_arrays_would_not_fit_at_once_is_refused_before_running() -> None:
    """Eight 200 MB tensors pass a 300 MB limit one by one, but forward keeps them all."""
    text = (
        "\n".join(f"a{k}[i] = exp(x[i])" for k in range(8))
        + "\nloss = "
        + " + ".join(f"sum[i](a{k}[i])" for k in range(8))
    )
    m = ig.compile(text)
    ig.set_memory_limit(300_000_000)
    try:
        with pytest.raises(ig.IndexgradError, match="holding its arrays at once, would need 1.5 GiB"):
            m.plan({"x": (25_000_000,)})
        with pytest.raises(ig.IndexgradError, match="would need"):  # one array over the limit
            m.plan({"x": (50_000_000,)})
    finally:
        ig.set_memory_limit(None)


def test_the_plan_backward_runs_is_the_one_plan_prints() -> None:
    m = ig.compile((EXAMPLES / "mlp.idx").read_text())
    rng_ = np.random.default_rng(0)
    shapes = {"x": (6, 5), "Y": (6, 3), "W1": (5, 4), "B1": (4,), "W2": (4, 3), "B2": (3,)}
    arrays = {n: rng_.standard_normal(s) for n, s in shapes.items()}
    m.backward(m.forward(**arrays), loss="loss")
    printed = m.plan(arrays, mode="backward", loss="loss")
    (used,) = [c.plan for k, c in m._plans.items() if k.mode == "backward"]
    assert printed is used
    assert str(printed).splitlines()[0].endswith("loss.grad = 1")  # the seed folded in as a number
    text = str(printed).splitlines()
    assert len(text) == len(printed.steps) + 2 and text[-1].startswith("returns ")
    data = json.loads(printed.to_json())
    assert [s["call"] for s in data["steps"]] == [s.call for s in printed.steps]
    assert data["constants"] == {"loss.grad": 1.0}


@pytest.mark.parametrize("mode", ["forward", "backward", "jvp", "hvp"])
def test_every_mode_plans_from_shapes_alone(mode: str) -> None:
    m = ig.compile((EXAMPLES / "softmax_xent.idx").read_text())
    shapes = {n: (3, 4) if n == "W" else (4,) if n == "x" else (3,) for n in m.inputs}
    plan = m.plan(shapes, mode=mode)
    assert plan.mode == mode and plan.steps
    assert all(s.dtype in ("float64", "bool") for s in plan.steps)


def test_spec9_positions_plan_as_data() -> None:
    """delta is a step of its own; a read through a boundary mode is a view of the array extended
    (the plan says through which mode); // and labels read by arithmetic are gathers. Each step's
    positions come back from JSON as the positions written."""
    from indexgrad import positions

    text = "dim t=4\nstate[b,t] += x[b] delta[t,2]\ny[b,c] = w[b,c//2] + z[b,wrap(c-1)] + E[ids[b,c+0],b]\n"
    m = ig.compile(text)
    shapes = {"x": (2,), "w": (2, 2), "z": (2, 4), "E": (4, 2), "ids": (2, 4)}
    plan = m.plan(shapes)
    kinds = {s.out: s.kind for s in plan.steps}
    assert kinds["delta[t,2]"] == "delta" and kinds["w[b,c//2]"] == "gather"
    assert kinds["z[b,wrap(c-1)]"] == "view" and kinds["E[ids[b,c+0],b]"] == "gather"
    printed = str(plan)
    assert "equal(t, 2)" in printed and "strided view of z through wrap" in printed
    data = json.loads(plan.to_json())
    for step, d in zip(plan.steps, data["steps"]):
        if "positions" in step.args:
            back = tuple(positions.as_data(positions.from_data(t)) for t in d["args"]["positions"])
            assert back == step.args["positions"], step.out
def _correlation(x, w, stride: int, dilation: int):
    """y[b,o,r,c] = Σ x[b,ch,stride·r+dilation·u, stride·c+dilation·v] w[o,ch,u,v], one
    slice per kernel offset (autograd.numpy, so that HIPS autograd differentiates it)."""
    _, _, hh, ww = x.shape
    _, _, ku, kv = w.shape
    rows = (hh - dilation * (ku - 1) - 1) // stride + 1
    cols = (ww - dilation * (kv - 1) - 1) // stride + 1
    y = 0.0
    for u in range(ku):
        for v in range(kv):
            part = x[:, :, dilation * u :: stride, dilation * v :: stride][:, :, :rows, :cols]
            y = y + anp.einsum("bkrc,ok->borc", part, w[:, :, u, v])
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("position", "stride", "dilation"),
    [("r+u, c+v", 1, 1), ("u+r, v+c", 1, 1), ("2*r+u, 2*c+v", 2, 1), ("r+2*u, c+2*v", 1, 2)],
)
def test_a_convolution_is_one_matmul_of_an_im2col_copy_and_its_gradients_are_right(
    position: str, stride: int, dilation: int, dtype
) -> None:
    """Forward, the weight gradient and the input gradient's product each copy what they read
    through index arithmetic once (`im2col`, laid out so that the copy streams) into one matmul;
    the input gradient's scatter adds slices laid out offset by offset. Values against a loop over
    the kernel's offsets, gradients against HIPS autograd of it."""
    text = (
        "param w[o,ch,u,v]\ninput x[b,ch,row,col]\n"
        f"y[b,o,r,c] = x[b,ch,{position}] w[o,ch,u,v]\nloss = 0.5 sum[b,o,r,c](y[b,o,r,c]^2)"
    )
    x = rng(1).standard_normal((3, 2, 11, 12)).astype(dtype)
    w = rng(2).standard_normal((4, 2, 3, 2)).astype(dtype)
    model = ig.compile(text)
    vals = model.forward(x=x, w=w)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(vals["y"], _correlation(x, w, stride, dilation), **tol)
    grads = model.backward(vals)

    def loss(x_, w_):
        return 0.5 * anp.sum(_correlation(x_, w_, stride, dilation) ** 2)

    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    np.testing.assert_allclose(grads["x"], autograd.grad(loss, 0)(x64, w64), **tol)
    np.testing.assert_allclose(grads["w"], autograd.grad(loss, 1)(x64, w64), **tol)
    assert grads["x"].dtype == grads["w"].dtype == dtype
    forward = model.plan({"x": x, "w": w})
    backward = model.plan({"x": x, "w": w}, mode="backward")
    products = [s for s in (*forward.steps, *backward.steps) if s.call == "matmul"]
    assert len(products) == 3
    assert sum(s.describe().count("im2col(") for s in products) == 2  # forward, w's gradient
    (value,) = [s for s in backward.steps if s.kind == "contract" and s.out.startswith("x.grad[")]
    assert value.axes == ("b", "ch", "u", "v", "r", "c")  # each offset's slice-add reads [b,ch,r,c]


def test_a_derivative_that_recomputes_a_forward_value_reads_it_instead() -> None:
    """logsumexp's derivative reads exp(a - logsumexp(a)), which the forward made as the softmax
    p: the backward reads p (one exp in all, in the forward) and its gradient stays right."""
    text = "p[b,s] = exp(a[b,s] - logsumexp[u](a[b,u]))\nloss = sum[b,s](p[b,s] T[b,s])"
    a, t = rng(1).standard_normal((3, 5)), rng(2).standard_normal((3, 5))
    model = ig.compile(text)
    backward = model.plan({"a": a, "T": t}, mode="backward")
    assert not [s for s in backward.steps if s.call == "exp"]
    assert any(o.name == "p" for s in backward.steps for o in s.inputs if s.text.startswith("a.grad[b,u]"))

    def loss(a_):
        p = anp.exp(a_ - anp.log(anp.sum(anp.exp(a_), axis=1, keepdims=True)))
        return anp.sum(p * t)

    got = model.backward(model.forward(a=a, T=t), wrt="a")["a"]
    np.testing.assert_allclose(got, autograd.grad(loss)(a), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "positions",
    [
        [((1, "r"), (1, "u")), ((1, "c"), (1, "v"))],
        [((1, "r"), (1, "u")), ((2, "c"), (1, "v"))],
        [((1, "r"),), ((1, "c"), (1, "v"))],
        [((2, "r"), (1, "u")), ((1, "c"), (2, "v")), ((1, "d"), (1, "w"))],
    ],
)
def test_a_scatter_add_through_index_arithmetic_against_numpy_add_at(positions) -> None:
    """x's gradient through x[r+u, c+v] (slice-adds grouped by their slice of the last axis,
    summed in a buffer, then added once) against numpy.add.at at every entry's position."""
    sizes = dict(zip("rcduvw", (4, 5, 2, 3, 2, 3)))
    names = [n for axis in positions for _, n in axis]
    where = ", ".join("+".join(f"{k}*{n}" if k != 1 else n for k, n in axis) for axis in positions)
    text = f"loss = sum[{','.join(names)}](x[{where}] g[{','.join(names)}])"
    g = rng(5).standard_normal(tuple(sizes[n] for n in names))
    grid = dict(zip(names, np.meshgrid(*(np.arange(sizes[n]) for n in names), indexing="ij")))
    index = tuple(sum(k * grid[n] for k, n in axis) for axis in positions)
    expected = np.zeros(tuple(int(i.max()) + 1 for i in index))
    np.add.at(expected, index, g)
    model = ig.compile(text)
    got = model.backward(model.forward(x=np.ones(expected.shape), g=g), wrt="x")["x"]
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_a_layer_norms_variance_is_a_dot_product_per_row_with_no_array_of_squares() -> None:
    """`mean[j](c[b,j]^2)` runs as vecdot(c, c) / size[j] and `sum[j](c[b,j]^2)` as vecdot(c, c):
    no temporary of squares forward, none of its gradient backward; values against numpy and
    gradients against HIPS autograd."""
    text = (
        "c[b,d] = x[b,d] - mean[j](x[b,j])\n"
        "n[b,d] = c[b,d] / sqrt(mean[j](c[b,j]^2) + 1e-5)\n"
        "s[b] = sum[j](n[b,j]^2)\n"
        "loss = sum[b,d](n[b,d] T[b,d]) + sum[b](s[b])"
    )
    x, t = rng(1).standard_normal((4, 6)), rng(2).standard_normal((4, 6))
    model = ig.compile(text)
    forward = model.plan({"x": x, "T": t})
    assert [s.call for s in forward.steps if s.out in ("n.mean", "s")] == ["vecdot", "vecdot"]
    assert not [s for s in forward.steps if "pow" in s.out]
    backward = model.plan({"x": x, "T": t}, mode="backward")
    assert not [s for s in backward.steps if "pow" in s.out]

    def loss(x_):
        c = x_ - anp.mean(x_, axis=1, keepdims=True)
        n = c / anp.sqrt(anp.mean(c**2, axis=1, keepdims=True) + 1e-5)
        return anp.sum(n * t) + anp.sum(n**2)

    vals = model.forward(x=x, T=t)
    c = x - x.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(vals["n"], c / np.sqrt((c**2).mean(axis=1, keepdims=True) + 1e-5), rtol=1e-12)
    got = model.backward(vals, wrt="x")["x"]
    np.testing.assert_allclose(got, autograd.grad(loss)(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rows, swapped", [(8, True), (32, False)])
def test_a_product_with_a_transposed_factor_and_few_rows_runs_as_its_transpose(
    rows: int, swapped: bool
) -> None:
    """C[l,r] = A[l,k] B[r,k] with at most 16 rows l (and a million multiply-adds) runs on the
    numpy backend as B Aᵀ read transposed, which OpenBLAS runs faster (a chain's B.grad); with more
    rows, or on torch, as A Bᵀ. Values against numpy, the gradients against HIPS autograd."""
    text = "c[l,r] = a[l,k] b[r,k]\nloss = 0.5 sum[l,r](c[l,r]^2)"
    a, b = rng(3).standard_normal((rows, 256)), rng(4).standard_normal((512, 256))
    model = ig.compile(text)
    (step,) = [s for s in model.plan({"a": a, "b": b}).steps if s.out == "c"]
    assert (step.args["swap"], step.args["res_perm"]) == ((True, (1, 0)) if swapped else (False, None))
    assert ("transpose(1, 0)" in str(model.plan({"a": a, "b": b}))) == swapped
    vals, grads = model.value_and_grad({"a": a, "b": b}, loss="loss", wrt=["a", "b"])
    np.testing.assert_allclose(model.forward(a=a, b=b)["c"], a @ b.T, rtol=1e-12)

    def loss(a_, b_):
        return 0.5 * anp.sum((a_ @ b_.T) ** 2)

    for k, name in enumerate("ab"):
        np.testing.assert_allclose(grads[name], autograd.grad(loss, k)(a, b), rtol=1e-10)
        assert grads[name].flags.c_contiguous
    if importlib.util.find_spec("torch") is not None:
        plan = ig.compile(text, backend="torch").plan({"a": a, "b": b})
        assert [s.args["res_perm"] for s in plan.steps if s.out == "c"] == [None]
