"""The torch backend and indexgrad.torch (SPEC §7, §8).

The backend against the numpy backend on every example (forward, backward, jvp, hvp: float64 within
1e-12; float32 stays float32); `indexgrad.torch.function` through torch's gradcheck and
gradgradcheck on every example; the Module's parameters, initialisation, state_dict, dtype, use in
nn.Sequential with torch.optim against the same layer written in torch, and under
DistributedDataParallel on two processes; user errors; the CLI's --backend.
"""

from __future__ import annotations

import multiprocessing
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from agree import assert_backends_agree, assert_close, tensors
from oracles import EXAMPLES, ORACLES, assert_value_and_grad_agrees, path
from torch import nn

import indexgrad as ig
from indexgrad.backends import torch as torch_backend
from indexgrad.cli import main
from indexgrad.functions import FUNCTIONS, REDUCTIONS
from indexgrad.train import init_params

ROOT = Path(__file__).resolve().parent.parent
NAMES = sorted(ORACLES)
LAYER = "param W[d,h], B[h]\ninput x[b,d]\ny[b,h] = relu(x[b,d] W[d,h] + B[h])\n"


def inputs(name: str, dtype: type = np.float64) -> dict[str, np.ndarray]:
    return ORACLES[name].inputs(np.random.default_rng(1), dtype)


# ---- the backend -----------------------------------------------------------------------------


def test_every_example_has_an_oracle() -> None:
    assert set(NAMES) == {p.stem for p in (ROOT / "examples").glob("*.idx")}


@pytest.mark.parametrize("name", NAMES)
def test_backend_agrees_with_numpy(name: str) -> None:
    a = inputs(name)
    seed = ORACLES[name].seed(a, np.random.default_rng(0))
    seeds = None if seed is None else {ORACLES[name].output: seed}
    reached = assert_backends_agree(ig.load(path(name)), a, seed=seeds)
    assert reached == ("hvp" if seed is None else "jvp")


@pytest.mark.parametrize("name", NAMES)
def test_value_and_grad_is_forward_then_backward_on_torch(name: str) -> None:
    model = ig.compile(ig.load(path(name)), backend="torch")
    assert_value_and_grad_agrees(model, name, inputs(name), torch.as_tensor)


@pytest.mark.parametrize("name", NAMES)
def test_float32_stays_float32(name: str) -> None:
    m = ig.compile(ig.load(path(name)), backend="torch")
    vals = m.forward(**tensors(inputs(name, np.float32)))
    want = ig.compile(ig.load(path(name))).forward(**inputs(name, np.float32))
    for k, v in vals.items():
        if k not in m.labels:
            assert v.dtype == torch.float32, k
            np.testing.assert_allclose(v.numpy(), want[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_a_gradient_added_to_its_own_transpose() -> None:
    """x.grad collects s.grad and s.grad transposed, where the first is s.grad's own memory."""
    rng = np.random.default_rng(0)
    text = "y[i,j] = exp(x[i,j] + x[j,i])"
    assert assert_backends_agree(text, {"x": rng.standard_normal((3, 3))}) == "jvp"


def test_steps_read_through_negative_strides() -> None:
    """x[j-k+2] has a negative step along k: torch's views cannot, so the backend gathers."""
    text = "input w[k], x[i]\ny[j] = w[k] x[j-k+2]\nloss = sum[j](y[j] y[j])\n"
    rng = np.random.default_rng(0)
    assert assert_backends_agree(text, {"w": rng.standard_normal(3), "x": rng.standard_normal(7)}) == "hvp"


# ---- correlations run as torch's convolutions --------------------------------------------------

F = torch.nn.functional
CONV = "{dims}input x[{x}], w[{w}]\ny[{y}] = {coef}x[{at}] w[{w}]\n"
# (x's axes, its positions, w's axes, y's axes, x's shape, w's shape, torch's y from x and w)
CORRELATIONS = {
    "plain, non-square": (
        "b,ch,row,col", "b,ch,r+u,c+v", "o,ch,u,v", "b,o,r,c", (2, 3, 7, 6), (4, 3, 3, 2),
        lambda x, w: F.conv2d(x, w),
    ),
    "stride, a column left over": (
        "b,ch,row,col", "b,ch,2*r+u,2*c+v", "o,ch,u,v", "b,o,r,c", (2, 3, 9, 8), (4, 3, 3, 3),
        lambda x, w: F.conv2d(x, w, stride=2),
    ),
    "dilation": (
        "b,ch,row,col", "b,ch,r+2*u,c+v", "o,ch,u,v", "b,o,r,c", (2, 3, 9, 6), (4, 3, 3, 2),
        lambda x, w: F.conv2d(x, w, dilation=(2, 1)),
    ),
    "pad": (
        "b,ch,row,col", "b,ch,pad(r+u-1),pad(c+v-1)", "o,ch,u,v", "b,o,r,c", (2, 3, 7, 6), (4, 3, 3, 3),
        lambda x, w: F.conv2d(x, w, padding=1),
    ),
    "uneven pad, stride and a crop": (
        "b,ch,row,col", "b,ch,pad(2*r+u-1),c+v+1", "o,ch,u,v", "b,o,r,c", (2, 3, 8, 7), (4, 3, 3, 3),
        lambda x, w: F.conv2d(F.pad(x, (0, 0, 1, 2))[..., 1:], w, stride=(2, 1)),
    ),
    "one image of one channel": (
        "row,col", "r+u,c+v", "o,u,v", "o,r,c", (6, 5), (2, 3, 3),
        lambda x, w: F.conv2d(x[None, None], w[:, None])[0],
    ),
    "axes in any order": (
        "ch,b,col,row", "ch,b,c+v,r+u", "u,ch,v,o", "o,b,c,r", (3, 2, 6, 7), (3, 3, 2, 4),
        lambda x, w: F.conv2d(x.permute(1, 0, 3, 2), w.permute(3, 1, 0, 2)).permute(1, 0, 3, 2),
    ),
    "1-D, times 2": (
        "b,ch,i", "b,ch,t+k", "o,ch,k", "b,o,t", (2, 3, 9), (4, 3, 4),
        lambda x, w: 2 * F.conv1d(x, w),
    ),
}  # fmt: skip
DIMS = {"uneven pad, stride and a crop": "dim r=5\n"}  # rows -1 ... 9 of x's 8


@pytest.mark.parametrize("case", sorted(CORRELATIONS))
def test_correlations_run_as_convolutions_and_agree_with_torch(case: str) -> None:
    """The forward against torch's convolution; x's and w's gradients against torch's autograd;
    the plans run the forward, and both gradients, as one conv step each."""
    xs, at, ws, ys, xshape, wshape, conv = CORRELATIONS[case]
    coef = "2 " if "times 2" in case else ""
    text = CONV.format(dims=DIMS.get(case, ""), x=xs, w=ws, y=ys, at=at, coef=coef)
    m = ig.compile(text, backend="torch")
    rng = np.random.default_rng(0)
    x, w = (torch.tensor(rng.standard_normal(s), requires_grad=True) for s in (xshape, wshape))
    want = conv(x, w)
    seed = torch.tensor(rng.standard_normal(want.shape))
    want_x, want_w = torch.autograd.grad(want, (x, w), seed)
    vals = m.forward(x=x.detach(), w=w.detach())
    grads = m.backward(vals, seed={"y": seed})
    for got, ref in ((vals["y"], want), (grads["x"], want_x), (grads["w"], want_w)):
        np.testing.assert_allclose(got.numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    shapes = {"x": xshape, "w": wshape, "y.grad": tuple(want.shape)}
    (forward,) = [s for s in m.plan(shapes).steps if s.kind == "conv"]
    assert forward.call.startswith("conv") and forward.out == "y"
    backward = {s.out: s.call for s in m.plan(shapes, "backward", loss="y").steps if s.kind == "conv"}
    assert set(backward) == {"x.grad", "w.grad"}
    assert backward["x.grad"].startswith("conv_transpose")


def test_an_hvp_of_a_convolution_runs_its_correlations_as_convolutions() -> None:
    """The hvp makes x's strided view once per product that reads it, and the tangent of x's
    gradient is a sum of two products scattered through r+u: each is its own conv step (each
    view read once; each product scattered on its own), never an im2col array over
    [b,ch,r,u,c,v], nine times x (48 MiB at these sizes, a peak of 116 MiB, now 42)."""
    m = ig.compile(str(EXAMPLES / "conv2d.idx"), backend="torch")
    shapes = {"w": (32, 16, 3, 3), "B": (32,), "x": (64, 16, 28, 28)}
    plan = m.plan(shapes, mode="hvp")
    assert all(len(s.shape) <= 4 for s in plan.steps), plan
    assert {s.call for s in plan.steps if s.kind == "conv"} == {"conv2d", "conv2d_weight", "conv_transpose2d"}
    assert plan.peak_bytes <= 4 * m.plan(shapes).peak_bytes
    rng = np.random.default_rng(0)
    small = {"w": (3, 2, 2, 2), "B": (3,), "x": (2, 2, 5, 4)}
    a = {n: torch.tensor(rng.standard_normal(s), requires_grad=True) for n, s in small.items()}
    v = {n: torch.tensor(rng.standard_normal(s)) for n, s in small.items()}
    y = torch.nn.functional.conv2d(a["x"], a["w"]) + a["B"][:, None, None]
    grads = torch.autograd.grad(0.5 * (y**2).sum(), tuple(a.values()), create_graph=True)
    want = torch.autograd.grad(sum((g * v[n]).sum() for g, n in zip(grads, a)), tuple(a.values()))
    got = m.hvp(m.forward(**{n: t.detach() for n, t in a.items()}), v=v)
    for n, ref in zip(a, want):
        np.testing.assert_allclose(got[n].numpy(), ref.numpy(), rtol=1e-12, atol=1e-12, err_msg=n)


def test_a_product_that_is_no_correlation_stays_a_product() -> None:
    """The kernel's index kept in the result: a broadcast product, not a convolution."""
    text = "input x[i], w[k]\ny[j,k] = x[j+k] w[k]\n"
    m = ig.compile(text, backend="torch")
    assert all(s.kind != "conv" for s in m.plan({"x": (6,), "w": (3,)}).steps)
    rng = np.random.default_rng(0)
    assert assert_backends_agree(text, {"x": rng.standard_normal(6), "w": rng.standard_normal(3)}) == "jvp"


SOFTMAX = "input a[s,b]\np[s,b] = exp(a[s,b] - logsumexp[u](a[u,b]))\nloss = sum[s,b](p[s,b] a[s,b])\n"


@pytest.mark.parametrize(
    "row",
    [
        [0.5, -1.0, 2.0, 0.0],
        [0.5, -1e9, -1e9, 3.0],  # a mask, where torch's exp is slow
        [0.5, np.inf, 1.0, np.inf],
        [-np.inf, -np.inf, -np.inf, -np.inf],
        [0.5, np.nan, 1.0, 2.0],
    ],
)
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy's inf - inf
def test_a_softmax_is_one_step_with_the_values_of_its_three(row: list[float]) -> None:
    """exp(a - logsumexp(a)) over an axis that is not the last: one softmax step, with numpy's
    values, gradients, NaNs and infinities (a row holding +inf, or only -inf, included)."""
    steps = ig.compile(SOFTMAX, backend="torch").plan({"a": (4, 3)}).steps
    assert [s.kind for s in steps if s.out == "p"] == ["softmax"]
    # forward() does not keep the logsumexp: its derivatives read exp(a - logsumexp(a)) as p, so
    # the softmax finds a's maximum and sum itself, and exp runs once
    assert [[o.name for o in s.inputs] for s in steps if s.out == "p"] == [["a"]]
    assert [s.out for s in steps] == ["p", "loss"]
    a = np.random.default_rng(0).standard_normal((4, 3))
    a[:, 1] = row
    assert assert_backends_agree(SOFTMAX, {"a": a}) in ("hvp", "forward")


ATTENTION = (
    "input a[b,t,s], v[b,s,e]\np[b,t,s] = exp(a[b,t,s] - logsumexp[u](a[b,t,u]))\n"
    "loss = sum[b,t,e]((p[b,t,s] v[b,s,e])^2)\n"
)


def _softmax_grad_steps(text: str, arrays: dict[str, np.ndarray]) -> list[str]:
    m = ig.compile(text, backend="torch")
    steps = m.plan(m.forward(**tensors(arrays)), mode="backward").steps
    return [s.out for s in steps if s.kind == "softmax_grad"]


@pytest.mark.parametrize("over", ["last", "first"])
def test_a_softmax_gradient_is_one_step_of_torchs_kernel_with_the_plain_values(over: str) -> None:
    """p g - p Σ p g, four derived steps from p's gradient g to a's, is torch's softmax backward
    kernel (the plan prints it), with the plain steps' values in every mode (numpy runs those), the
    gradients of finite differences, and a second order that gradgradcheck passes."""
    text = ATTENTION if over == "last" else SOFTMAX
    rng = np.random.default_rng(0)
    a = (
        {"a": rng.standard_normal((2, 3, 4)), "v": rng.standard_normal((2, 4, 3))}
        if over == "last"
        else {"a": rng.standard_normal((4, 3))}
    )
    a["a"][..., 1] = -1e9 if over == "last" else a["a"][..., 1]  # a mask
    assert _softmax_grad_steps(text, a) == ["a.grad"]
    m = ig.compile(text, backend="torch")
    printed = str(m.plan(m.forward(**tensors(a)), mode="backward"))
    assert "a.grad" in printed and "_softmax_backward_data(p.grad" in printed
    assert assert_backends_agree(text, a) == "hvp"
    f = ig.torch.function(text, outputs=["loss"])
    xs = [torch.tensor(a[n], requires_grad=True) for n in ig.compile(text).inputs]
    assert torch.autograd.gradcheck(f, xs) and torch.autograd.gradgradcheck(f, xs)


def test_a_softmax_whose_logsumexp_is_read_elsewhere_keeps_its_plain_gradient() -> None:
    """l's gradient has a second term (the loss reads l): a.grad is no softmax gradient alone."""
    text = ATTENTION.replace("exp(a[b,t,s] - logsumexp[u](a[b,t,u]))", "exp(a[b,t,s] - l[b,t])")
    text = text.replace("p[b,t,s] =", "l[b,t] = logsumexp[u](a[b,t,u])\np[b,t,s] =")
    text = text.replace("^2)\n", "^2) + sum[b,t](l[b,t]^2)\n")
    rng = np.random.default_rng(0)
    a = {"a": rng.standard_normal((2, 3, 4)), "v": rng.standard_normal((2, 4, 3))}
    assert _softmax_grad_steps(text, a) == []
    assert assert_backends_agree(text, a) == "hvp"


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy's 0 * inf
def test_a_relu_gradient_is_one_gate_step_with_numpys_values() -> None:
    """step(u) read once by the product with the incoming gradient: one `gate` step instead of a
    boolean mask and a product; entries where u is exactly 0 pass nothing."""
    text = LAYER + "loss = sum[b,h](y[b,h]^2)\n"
    m = ig.compile(text, backend="torch")
    x = np.random.default_rng(0).standard_normal((5, 3))
    x[0] = 0  # relu(0 + B) with B = 0: the gate's boundary
    a = {"x": x, "W": np.random.default_rng(1).standard_normal((3, 4)), "B": np.zeros(4)}
    steps = m.plan(a, mode="backward", loss="loss", wrt=["W", "B"]).steps
    assert [s.kind for s in steps].count("gate") == 1 and all(s.call not in ("mask", "step") for s in steps)
    assert assert_backends_agree(text, a) == "hvp"
    y = ig.compile(LAYER).forward(**a)["y"]
    seed = np.where(y > 0, 1.0, np.inf)  # 0 * inf where the gate is shut: numpy's NaN, not 0
    seed[1, 0] = np.nan
    assert assert_backends_agree(LAYER, a, seed={"y": seed}) == "jvp"


def test_a_product_summed_over_its_leading_axes_multiplies_in_place_of_copying_to_rows() -> None:
    """a[b,t,d] c[b,t,d] -> [d] (a layer norm's scale gradient): on torch the product as the
    operands lie, summed over b and t, rather than both transposed into rows for a vecdot."""
    text = "input a[b,t,d], c[b,t,d], e[b,d,t]\ny[d] = a[b,t,d] c[b,t,d]\nz[t] = a[b,t,d] e[b,d,t]\n"
    rng = np.random.default_rng(0)
    a = {n: rng.standard_normal(s) for n, s in {"a": (2, 3, 4), "c": (2, 3, 4), "e": (2, 4, 3)}.items()}
    steps = ig.compile(text, backend="torch").plan({n: v.shape for n, v in a.items()}).steps
    assert [s.call for s in steps] == ["sum_product", "sum_product"]
    assert "sum(multiply(a[b,t,d], c[b,t,d]), over b,t)" in str(steps[0].describe())
    assert assert_backends_agree(text, a) == "jvp"


NORM_HEAD = "param G[d], S[d]\ninput x[b,t,d]\n"
CENTRED = "c[b,t,d] = x[b,t,d] - mean[j](x[b,t,j])\n"
NORM = "n[b,t,d] = c[b,t,d] G[d] / sqrt(mean[j](c[b,t,j]^2) + 1e-5) + S[d]\n"
CUBED = "loss = sum[b,t,d](n[b,t,d]^3)\n"  # a gradient at n that varies, unlike a sum's


def _layer_norm_steps(text: Any, arrays: dict[str, np.ndarray], backend: str = "torch", **kw: Any) -> list:
    """The calls of the backward plan's layer_norm steps."""
    m = ig.compile(text, backend=backend)
    vals = m.forward(**(tensors(arrays) if backend == "torch" else arrays))
    return [s.call for s in m.plan(vals, mode="backward", **kw).steps if s.kind == "layer_norm"]


def _norm_arrays(x: tuple[int, ...] = (2, 3, 5)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    d = x[-1]
    return {"x": 3 * rng.standard_normal(x) + 1, "G": rng.standard_normal(d), "S": rng.standard_normal(d)}


def test_a_layer_norms_input_and_weight_gradients_are_torchs_kernel_with_the_plain_values() -> None:
    """The ten steps from n's product's gradient to x.grad and G.grad run as torch's layer-norm
    backward kernel (the plan says so), with the plain plan's values in every mode (numpy runs the
    plain steps); a seed (a vector-Jacobian product) and the transformer example are recognised too."""
    text, a = NORM_HEAD + CENTRED + NORM + CUBED, _norm_arrays()
    both = ["layer_norm_grad", "weight_grad"]
    assert _layer_norm_steps(text, a) == both and _layer_norm_steps(text, a, "numpy") == []
    m = ig.compile(text, backend="torch")
    plan = m.plan(m.forward(**tensors(a)), mode="backward")
    printed = str(plan)
    assert "x.grad[b,t,d] = layer_norm_grad(n.prod.grad[b,t,d], c[b,t,d], n.sqrt[b,t], G[d])" in printed
    assert "native_layer_norm_backward(n.prod.grad[b,t,d], input c[b,t,d], mean 0, rstd 1 / n.sqrt" in printed
    assert "G.grad[d] = weight_grad(n.prod.grad[b,t,d]" in printed
    assert not {"n.prod.part.grad", "c.grad", "n.sqrt.grad"} & {s.out for s in plan.steps}
    assert assert_backends_agree(text, a) == "hvp"
    assert _layer_norm_steps(text, a, wrt=["x", "S"]) == ["layer_norm_grad"]  # nothing reads G's
    vjp = NORM_HEAD + CENTRED + NORM
    seed = {"n": np.random.default_rng(1).standard_normal((2, 3, 5))}
    assert _layer_norm_steps(vjp, a) == both  # n is no scalar: the plan of backward(seed=...)
    assert assert_backends_agree(vjp, a, seed=seed) == "jvp"
    unshifted = NORM_HEAD + CENTRED + NORM.replace(" + S[d]", "")  # g is the seed itself
    assert _layer_norm_steps(unshifted, a) == both
    assert assert_backends_agree(unshifted, a, seed=seed) == "jvp"
    # x's gradient has a term already (a residual): the step adds to it; G's has one as well
    residual = NORM_HEAD + CENTRED + NORM + "y[b,t,d] = x[b,t,d] + n[b,t,d] G[d]\n"
    residual += CUBED.replace("n[", "y[")
    assert _layer_norm_steps(residual, a) == both and assert_backends_agree(residual, a) == "hvp"
    example = ig.load(path("transformer"))
    arrays = inputs("transformer")
    assert _layer_norm_steps(example, arrays) == both * 9  # four blocks of two, and the last norm
    assert assert_backends_agree(example, arrays) == "hvp"


@pytest.mark.parametrize(
    "body",
    [
        # epsilon outside the square root
        CENTRED + "n[b,t,d] = c[b,t,d] G[d] / (sqrt(mean[j](c[b,t,j]^2)) + 1e-5) + S[d]\n" + CUBED,
        # centred over another index than the one normalised
        "c[b,t,d] = x[b,t,d] - mean[u](x[b,u,d])\n" + NORM + CUBED,
        # not centred
        "c[b,t,d] = x[b,t,d] - 0.5 mean[j](x[b,t,j])\n" + NORM + CUBED,
        # c, or the standard deviation, read elsewhere: their gradients have more terms
        CENTRED + NORM + "loss = sum[b,t,d](n[b,t,d]^3) + sum[b,t,d](c[b,t,d]^2)\n",
        CENTRED + "s[b,t] = sqrt(mean[j](c[b,t,j]^2) + 1e-5)\nn[b,t,d] = c[b,t,d] G[d] / s[b,t] + S[d]\n"
        "loss = sum[b,t,d](n[b,t,d]^3) + sum[b,t](s[b,t])\n",
        # a gain of two factors, and none
        CENTRED + "n[b,t,d] = c[b,t,d] G[d] S[d] / sqrt(mean[j](c[b,t,j]^2) + 1e-5)\n" + CUBED,
        CENTRED + "n[b,t,d] = c[b,t,d] / sqrt(mean[j](c[b,t,j]^2) + 1e-5) + S[d] G[d]\n" + CUBED,
        # normalised along the first axis of c as it is stored (the kernel normalises the last)
        "c[d,b,t] = x[b,t,d] - mean[j](x[b,t,j])\n"
        "n[b,t,d] = c[d,b,t] G[d] / sqrt(mean[j](c[j,b,t]^2) + 1e-5) + S[d]\n" + CUBED,
    ],
)
def test_what_is_not_a_layer_norm_keeps_its_plain_steps(body: str) -> None:
    text, a = NORM_HEAD + body, _norm_arrays()
    assert _layer_norm_steps(text, a) == []
    assert assert_backends_agree(text, a) == "hvp"


def test_a_gradient_divided_by_a_row_that_nothing_reads_is_not_taken_for_a_layer_norm() -> None:
    """B.grad = W.grad / x[b] starts like a layer norm's p.grad = g / s, but nothing reads it (it is
    what backward returns): the matcher gives up rather than looking up its readers."""
    text = "W[b,i] = B[b,i] / x[b]\nloss = sum[b,i](W[b,i]^3)\n"
    r = np.random.default_rng(0)
    a = {"B": r.standard_normal((2, 3)), "x": r.uniform(1, 2, 2)}
    assert _layer_norm_steps(text, a) == []
    assert assert_backends_agree(text, a) == "hvp"


SHAPES = {
    "x": (2, 3), "W": (3, 3), "B": (3,), "q": (2, 4, 3, 2), "k": (2, 4, 3, 2), "M": (4, 4),
    "c": (2, 3), "G": (3,), "s": (2,), "S": (3,),
}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "call"),
    [
        ("y[b,h] = x[b,d] W[d,h] + B[h]\n", "matmul"),  # a bias: addmm
        ("y[b,h] = 0.5 x[b,d] W[d,h] + B[h] + relu(x[b,h])\n", "matmul"),  # scaled, two terms
        ("y[b,h,t,s] = q[b,t,h,e] k[b,s,h,e] / size[e]^0.5 + M[t,s]\n", "matmul"),  # baddbmm
        ("y[b,d] = c[b,d] G[d] / s[b] + S[d]\n", "multiply"),  # addcmul
        ("y[b,d] = c[b,d] G[d] / s[b] + S[d] + x[b,d]\n", "multiply"),
    ],
)
def test_a_product_and_the_terms_added_to_it_are_one_step(text: str, call: str) -> None:
    """On torch one call that adds as it multiplies (addmm, baddbmm, addcmul), with numpy's values."""
    out = text[2 : text.index("]")]
    text += f"loss = sum[{out}](y[{out}]^3)\n"
    rng = np.random.default_rng(0)
    a = {n: rng.standard_normal(SHAPES[n]) for n in ig.compile(text).inputs}
    steps = ig.compile(text, backend="torch").plan(a).steps
    assert [(s.kind, s.call) for s in steps if s.out == "y"] == [("product_add", call)]
    assert all(s.kind != "product_add" for s in ig.compile(text).plan(a).steps)  # numpy: the plain steps
    assert assert_backends_agree(text, a) == "hvp"


@pytest.mark.parametrize(
    "text",
    [
        "z[b,h] = x[b,d] W[d,h]\ny[b,h] = z[b,h] + B[h]\n",  # the product is the program's own
        "y[b,h] = x[b,d] W[d,h] - B[h]\n",  # subtracted from
        "y[b,h] = x[b,d] W[d,h] + 1\n",  # a constant
    ],
)
def test_a_product_not_added_to_whole_keeps_its_steps(text: str) -> None:
    m = ig.compile(text + "loss = sum[b,h](y[b,h]^3)\n", backend="torch")
    rng = np.random.default_rng(0)
    a = {n: rng.standard_normal(SHAPES[n]) for n in m.inputs}
    assert all(s.kind != "product_add" for s in m.plan(a).steps)
    assert assert_backends_agree(m.program, a) == "hvp"


def test_a_transposed_product_two_products_reshape_is_copied_once() -> None:
    """q.grad comes out of its product as a transposed view; the gradients of n and Q both read it
    as rows: it is copied once where it is made (the plan says .copy()), not once by each."""
    text = "input n[b,t,d], Q[d,h,e], k[b,s,h,e]\nq[b,t,h,e] = n[b,t,d] Q[d,h,e]\n"
    text += "a[b,h,t,s] = q[b,t,h,e] k[b,s,h,e]\nloss = sum[b,h,t,s](a[b,h,t,s]^2)\n"
    rng = np.random.default_rng(0)
    a = {n: rng.standard_normal(s) for n, s in {"n": (2, 3, 4), "Q": (4, 2, 3), "k": (2, 3, 2, 3)}.items()}
    m = ig.compile(text, backend="torch")
    plan = m.plan(m.forward(**tensors(a)), mode="backward")
    [made] = [s for s in plan.steps if s.out == "q.grad"]
    assert made.args["res_order"] == (0, 1, 2, 3) and made.describe().endswith(".copy()")
    assert ".copy()" not in str(ig.compile(text).plan(a, mode="backward"))
    assert assert_backends_agree(text, a) == "hvp"


HEADS = """input x[b,t,d], Q[d,h,e], K[d,h,e], V[d,h,e]
q[b,t,h,e] = x[b,t,d] Q[d,h,e]
k[b,s,h,e] = x[b,s,d] K[d,h,e]
v[b,s,h,e] = x[b,s,d] V[d,h,e]
a[b,h,t,s] = q[b,t,h,e] k[b,s,h,e]
p[b,h,t,s] = exp(a[b,h,t,s] - logsumexp[u](a[b,h,t,u]))
o[b,t,h,e] = p[b,h,t,s] v[b,s,h,e]
loss = sum[b,t,h,e](o[b,t,h,e]^2)
"""


def test_a_kept_product_is_stored_as_its_reads_ask() -> None:
    """Attention's heads: q, k and v are stored head-major where they are made (k as [b,h,e,s], as
    the scores read it), so the products that read them, forward and backward, read views instead
    of each copying them; the values agree with numpy's."""
    rng = np.random.default_rng(0)
    shapes = {"x": (2, 5, 6), "Q": (6, 2, 3), "K": (6, 2, 3), "V": (6, 2, 3)}
    a = {n: rng.standard_normal(s) for n, s in shapes.items()}
    m = ig.compile(HEADS, backend="torch")
    stored = {s.out: s.args.get("res_order") for s in m.plan(tensors(a)).steps}
    assert (stored["q"], stored["k"], stored["v"]) == ((0, 2, 1, 3), (0, 2, 3, 1), (0, 2, 1, 3))
    vals = m.forward(**tensors(a))
    assert all(vals[n].permute(stored[n]).is_contiguous() for n in "qkv")
    assert assert_backends_agree(HEADS, a) == "hvp"


@pytest.mark.parametrize(
    ("shape", "order", "perm", "to"),
    [
        ((2, 3, 4, 5), (0, 2, 1, 3), (0, 2, 1, 3), (8, 3, 5)),  # stored as read
        ((2, 3, 4, 5), (0, 1, 2, 3), (0, 2, 1, 3), (8, 3, 5)),  # heads apart: a copy
        ((2, 3, 4, 5), (0, 2, 1, 3), (0, 2, 3, 1), (8, 5, 3)),  # matrices transposed: a view
        ((2, 3, 4, 5), (0, 1, 2, 3), (2, 3, 0, 1), (20, 6)),  # the transpose of rows: a view
        ((2, 3, 4, 5), (0, 1, 2, 3), (1, 0, 2, 3), (6, 20)),  # batch axes swapped: a copy
        ((2, 1, 4, 5), (0, 1, 2, 3), (1, 0, 2, 3), (2, 20)),  # ... of length 1: a view
    ],
)
def test_a_read_is_a_view_as_torch_reshapes(shape: Any, order: Any, perm: Any, to: Any) -> None:
    """plan._viewed says a read is a view exactly when torch's reshape shares the memory and each
    matrix lies in rows or in columns (what torch's products take without a copy)."""
    from indexgrad.plan import _viewed

    back = tuple(sorted(range(len(order)), key=order.__getitem__))
    stored = torch.zeros([shape[k] for k in order]).permute(back)
    read = stored.permute(perm).reshape(to)
    matrices = 1 in read.stride()[-2:] or 1 in read.shape[-2:]
    assert _viewed(shape, order, perm, to) == (read.data_ptr() == stored.data_ptr() and matrices)


@pytest.mark.parametrize("read", ["y[lab[b]]", "y[b//2]"])
def test_a_scatter_of_a_value_in_its_targets_own_memory(read: str) -> None:
    """y.grad's first term passes x.sum.grad along uncopied, and its scatter adds the same memory:
    the value is copied first (index_put_ refuses it; slice-adds would read what they wrote)."""
    text = f"x[b] += relu(y[b] + {read})\nloss = sum[b](x[b]^2)\n"
    y, lab = np.random.default_rng(0).standard_normal(5), np.array([0, 1, 1, 4, 2])
    arrays = {"y": y, "lab": lab} if "lab" in read else {"y": y}
    model = ig.compile(text, backend="torch")
    got = model.backward(model.forward(**arrays))
    at = lab if "lab" in read else np.arange(5) // 2
    x = np.maximum(y + y[at], 0)
    want = 2 * x
    np.add.at(want, at, 2 * x)
    assert_close(got["y"], want, "y.grad")
    assert_backends_agree(text, arrays)


@pytest.mark.parametrize("text", ["y[i] = 1 / sigmoid(x[i])\n", "y[i] = 1 / sigmoid(200 x[i])\n"])
def test_sigmoid_is_numpys_exact_form_in_its_far_tail(text: str) -> None:
    """sigmoid(-40) is 4.2e-18 on torch as on numpy (1 / sigmoid finite), not the 0 that
    0.5 (1 + tanh(x/2)) rounds it to; the second program's sigmoid overwrites its operand."""
    x = np.array([-40.0, -4.0, -0.2, 0.0, 0.1, 5.0])
    scale = 200 if "200" in text else 1
    got = ig.compile(text, backend="torch").forward(x=torch.from_numpy(x))["y"]
    with np.errstate(over="ignore"):
        assert_close(got, 1 + np.exp(-scale * x), "y")


def test_a_division_by_a_sigmoid_in_its_far_tail() -> None:
    """make fuzz's case: y.pre / y[j,k] was inf on torch alone where sigmoid(200 x) rounded to 0,
    and relu's gradient there NaN (0 times inf) where numpy's was 0."""
    program = "y[j,k] = sigmoid(x[j,k] 2E+2)\nW[j,k] = relu(y.pre / y[j,k]) B[j,k]\nloss = sum[j,k](W[j,k])\n"
    rng = np.random.default_rng(4)
    arrays = {"x": rng.standard_normal((3, 3)), "y.pre": np.array(-1.5), "B": rng.standard_normal((3, 3))}
    assert assert_backends_agree(program, arrays) == "hvp"


def test_delta_is_no_read_only_array_torch_warns_about(monkeypatch: pytest.MonkeyPatch) -> None:
    """delta's values are a read-only broadcast view; torch.as_tensor of one warns (once per
    process, so the test looks at what it is given rather than at the warning)."""
    as_tensor = torch.as_tensor

    def strict(a, *args, **kwargs):
        assert not isinstance(a, np.ndarray) or a.flags.writeable, "torch.as_tensor of a read-only array"
        return as_tensor(a, *args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", strict)
    x = np.random.default_rng(0).standard_normal(4)
    assert assert_backends_agree("y[i,j] = delta[i,j] x[j]\nloss = sum[i,j](y[i,j] y[i,j])", {"x": x})


def test_every_function_and_reduction_runs_on_torch() -> None:
    assert set(FUNCTIONS) <= set(torch_backend.FUNCTIONS)
    assert set(REDUCTIONS) <= set(torch_backend.REDUCTIONS)


def test_a_function_torch_lacks_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(torch_backend.FUNCTIONS, "tanh")
    m = ig.compile("input x[i]\ny[i] = tanh(x[i])\n", backend="torch")
    with pytest.raises(ig.IndexgradError, match="no forward for the function 'tanh'") as e:
        m.forward(x=torch.ones(3))
    assert e.value.line == 2


def test_the_plan_names_its_backend() -> None:
    plan = ig.compile(path("mlp"), backend="torch").plan(
        {"x": (4, 3), "Y": (4, 2), "W1": (3, 5), "B1": (5,), "W2": (5, 2), "B2": (2,)}
    )
    assert str(plan).startswith("forward plan (torch)")


def test_outputs_are_new_tensors_and_inputs_are_not_written() -> None:
    m = ig.compile(path("mlp"), backend="torch")
    a = tensors(inputs("mlp"))
    before = {k: v.clone() for k, v in a.items()}
    vals = m.forward(**a)
    grads = m.backward(vals, loss="loss")
    for k, v in a.items():
        assert torch.equal(v, before[k]), k
        assert grads[k].data_ptr() != v.data_ptr(), k


# ---- user errors -------------------------------------------------------------------------------


def test_a_float64_tensor_on_a_float32_model_is_an_error() -> None:
    m = ig.compile(LAYER, backend="torch", dtype=torch.float32)
    a = {"x": torch.ones(2, 3), "W": torch.ones(3, 4), "B": torch.zeros(4)}
    assert m.forward(**a)["y"].dtype == torch.float32
    with pytest.raises(ig.IndexgradError, match="'x' holds float64, but the model computes in float32"):
        m.forward(**{**a, "x": torch.ones(2, 3, dtype=torch.float64)})
    with pytest.raises(ig.IndexgradError, match="'W' holds float64"):
        m.forward(**{**a, "W": np.ones((3, 4))})
    # lists and Python numbers have no dtype of their own: they take the model's
    assert m.forward(**{**a, "B": [0.0] * 4})["y"].dtype == torch.float32


def test_tensors_on_two_devices_are_an_error() -> None:
    m = ig.compile(LAYER, backend="torch")
    a = {"x": torch.ones(2, 3, device="meta"), "W": torch.ones(3, 4), "B": torch.zeros(4)}
    with pytest.raises(ig.IndexgradError, match="'x' is on meta but 'W' is on cpu: a program runs on one"):
        m.forward(**a)
    on_meta = ig.compile(LAYER, backend="torch", device="meta")
    with pytest.raises(ig.IndexgradError, match="'W' is on cpu, but the model runs on meta"):
        on_meta.forward(**a)


def _iterates(name: str) -> bool:
    """Does the example have a fix or solve (whose iteration reads its values on the host)?"""
    text = path(name).read_text()
    return "fix(" in text or "solve(" in text


@pytest.mark.parametrize(
    "name", [n for n in NAMES if not ig.load(path(n)).integer_inputs() and not _iterates(n)]
)
def test_every_mode_stays_on_the_device_of_its_tensors(name: str) -> None:
    """The code paths of device="cuda", on torch's "meta" device (tensors without data, so labels,
    whose values are checked, and fix and solve, which test convergence, are left out): forward,
    backward, jvp and hvp make every tensor there, none on the CPU, with the numpy backend's shapes."""
    prog = ig.load(path(name))
    a = inputs(name)
    on_meta = ig.compile(prog, backend="torch", device="meta")
    vals = on_meta.forward(**{k: torch.as_tensor(v, device="meta") for k, v in a.items()})
    want = ig.compile(prog).forward(**a)
    out = prog.defined()[-1]
    seed = {out: torch.ones(want[out].shape, dtype=torch.float64, device="meta")}
    tangents = {k: torch.ones(np.shape(v), dtype=torch.float64, device="meta") for k, v in a.items()}
    results = {
        "forward": vals,
        "backward": on_meta.backward(vals, seed=seed),
        "jvp": on_meta.jvp(vals, tangents),
    }
    if not want[out].ndim:
        results["hvp"] = on_meta.hvp(vals, loss=out, v=tangents)
    for mode, got in results.items():
        for k, v in got.items():
            assert v.device.type == "meta", f"{mode} {k} is on {v.device}"
    for k, v in vals.items():
        assert tuple(v.shape) == np.shape(want[k]), k


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_an_error() -> None:
    with pytest.raises(ig.IndexgradError, match="CUDA is not available"):
        ig.compile(LAYER, backend="torch", device="cuda")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"device": "nowhere"}, "is not a torch device"),
        ({"dtype": "int32"}, "is not a float dtype"),
    ],
)
def test_bad_options_are_errors(options: dict, message: str) -> None:
    with pytest.raises(ig.IndexgradError, match=message):
        ig.compile(LAYER, backend="torch", **options)


def test_the_numpy_backend_takes_the_cpu_as_its_device_and_no_other() -> None:
    assert ig.compile(LAYER, device="cpu").engine.dtype is None
    with pytest.raises(ig.IndexgradError, match="device='cuda', but the numpy backend computes on the CPU"):
        ig.compile(LAYER, device="cuda")


def test_a_tensor_that_requires_grad_is_refused_where_autograd_does_not_record() -> None:
    m = ig.compile(LAYER, backend="torch")
    W = torch.ones(3, 4, requires_grad=True)
    a = {"x": torch.ones(2, 3), "W": W, "B": torch.zeros(4)}
    with pytest.raises(ig.IndexgradError, match="'W' requires grad.*indexgrad.torch"):
        m.forward(**a)
    with torch.no_grad():
        assert m.forward(**a)["y"].shape == (2, 4)
    assert m.forward(**{**a, "W": W.detach()})["y"].requires_grad is False


def test_out_of_range_labels_are_errors_at_their_statement() -> None:
    m = ig.compile(path("logloss"), backend="torch")
    a = tensors(inputs("logloss"))
    a["y"] = a["y"].clone()
    a["y"][0] = 99
    with pytest.raises(ig.IndexgradError, match="label 99 in 'y' is out of range"):
        m.forward(**a)


# ---- indexgrad.torch.function: gradcheck and gradgradcheck --------------------------------------

# inputs whose gradients gradgradcheck follows in the largest examples (each Hessian-vector
# product runs the whole second-order program, so all of them would take minutes)
SECOND_ORDER_SUBSET = {"transformer": {"E", "x1.Q", "x2.W1", "f.G"}, "lstm": {"x1", "W", "V"}}


@pytest.mark.parametrize("name", NAMES)
def test_function_passes_gradcheck_and_gradgradcheck(name: str) -> None:
    prog = ig.load(path(name))
    f = ig.torch.function(prog, outputs=ORACLES[name].output)
    a = inputs(name)
    labels = set(prog.integer_inputs())
    xs = [torch.tensor(a[n], requires_grad=n not in labels) for n in prog.inputs()]
    assert torch.autograd.gradcheck(f, xs, fast_mode=True)
    subset = SECOND_ORDER_SUBSET.get(name)
    if subset is not None:
        xs = [x.detach().requires_grad_(n in subset) for n, x in zip(prog.inputs(), xs)]
    assert torch.autograd.gradgradcheck(f, xs, fast_mode=True)


def test_function_takes_inputs_in_the_order_given_and_by_name() -> None:
    f = ig.torch.function(LAYER, inputs=["x", "W", "B"], outputs=["y"])
    x, W, B = torch.randn(2, 3), torch.randn(3, 4), torch.randn(4)
    (y,) = f(x, W, B)
    torch.testing.assert_close(y, torch.relu(x @ W + B))
    (y2,) = f(x, B=B, W=W)
    assert torch.equal(y, y2)
    with pytest.raises(ig.IndexgradError, match="inputs= must name each input"):
        ig.torch.function(LAYER, inputs=["x", "W"])
    with pytest.raises(ig.IndexgradError, match="output 'q' is not a tensor the program defines"):
        ig.torch.function(LAYER, outputs="q")
    with pytest.raises(ig.IndexgradError, match="no tensor was given for input 'B'"):
        f(x, W)
    with pytest.raises(ig.IndexgradError, match="'W' is given twice"):
        f(x, W, B, W=W)
    with pytest.raises(ig.IndexgradError, match="'x' must be a torch tensor"):
        f(x.numpy(), W, B)
    with pytest.raises(ig.IndexgradError, match="'W' is torch.float64 but the other inputs"):
        f(x, W.double(), B)


def test_backward_computes_only_the_gradients_asked_for() -> None:
    f = ig.torch.function(LAYER, outputs="y")
    x, W, B = torch.randn(2, 3, requires_grad=True), torch.randn(3, 4), torch.randn(4, requires_grad=True)
    y = f(B=B, W=W, x=x)
    y.sum().backward()
    assert W.grad is None
    torch.testing.assert_close(B.grad, (x @ W + B > 0).sum(0).to(B.dtype))


# ---- indexgrad.torch.Module -----------------------------------------------------------------------


def test_module_parameters_are_the_programs_params_initialised_as_train_does() -> None:
    sizes = {"d": 64, "h": 32, "c": 10}
    m = ig.torch.Module(path("mlp"), outputs="z", sizes=sizes, seed=5)
    assert [n for n, _ in m.named_parameters()] == ["W1", "B1", "W2", "B2"]
    want = init_params(ig.compile(path("mlp")), sizes, init="he", seed=5, dtype=np.float64)
    for n, p in m.named_parameters():
        assert p.dtype == torch.float32
        np.testing.assert_array_equal(p.detach().numpy(), want[n].astype(np.float32))
    torch.manual_seed(7)
    a = ig.torch.Module(path("mlp"), sizes=sizes)
    torch.manual_seed(7)
    b = ig.torch.Module(path("mlp"), sizes=sizes)
    c = ig.torch.Module(path("mlp"), sizes=sizes)
    assert torch.equal(a.W1, b.W1) and not torch.equal(a.W1, c.W1)
    with pytest.raises(ig.IndexgradError, match="no size for index 'h' of param 'W1'"):
        ig.torch.Module(path("mlp"), sizes={"d": 3, "c": 2})


def test_module_state_dict_uses_the_programs_names() -> None:
    sizes = {"d": 3, "h": 4, "c": 2}
    m = ig.torch.Module(path("dense_defs"), outputs="z", sizes=sizes, seed=0)
    keys = list(m.state_dict())
    assert keys == list(ig.load(path("dense_defs")).params())
    assert "u.W" in keys
    other = ig.torch.Module(path("dense_defs"), outputs="z", sizes=sizes, seed=1)
    x = torch.randn(5, 3)
    Y = torch.eye(2)[torch.randint(0, 2, (5,))]
    assert not torch.equal(other(x, Y), m(x, Y))
    other.load_state_dict(m.state_dict())
    assert torch.equal(other(x, Y), m(x, Y))


def test_module_follows_to_dtype_and_refuses_other_inputs() -> None:
    m = ig.torch.Module(LAYER, sizes={"d": 3, "h": 4}, seed=0).double()
    y = m(torch.randn(2, 3, dtype=torch.float64))
    assert y.dtype == torch.float64
    with pytest.raises(
        ig.IndexgradError, match="'x' is torch.float32 but the other inputs .* are torch.float64"
    ):
        m(torch.randn(2, 3))
    with pytest.raises(ig.IndexgradError, match="'q' is not an input; the inputs are: x"):
        m(q=torch.randn(2, 3))


def test_module_copies_and_pickles_after_it_has_run() -> None:
    """copy.deepcopy (as torch.optim.swa_utils.AveragedModel makes its average) and pickle (as
    torch.save(module) does) of a module that has run: the copy computes what the original does,
    with parameters of its own; they raised TypeError on the compiled program's per-thread state."""
    import copy
    import pickle

    sizes = {"d": 3, "h": 4, "c": 2}
    m = ig.torch.Module(path("dense_defs"), outputs="z", sizes=sizes, seed=0)
    x, Y = torch.randn(5, 3), torch.eye(2)[torch.randint(0, 2, (5,))]
    want = m(x, Y)
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert torch.equal(other(x, Y), want)
        assert list(other.state_dict()) == list(m.state_dict())
        other.get_parameter("u.W").data += 1
        assert not torch.equal(other(x, Y), want) and torch.equal(m(x, Y), want)
        other(x, Y).sum().backward()
        assert other.get_parameter("u.W").grad is not None and m.get_parameter("u.W").grad is None
    average = torch.optim.swa_utils.AveragedModel(m)
    average.update_parameters(m)
    assert torch.allclose(average(x, Y), want)
    plain = ig.torch.Module("input x[b,i]\ny[b] = sum[i](x[b,i]^2)\n")  # no params
    assert torch.equal(pickle.loads(pickle.dumps(plain))(x), (x**2).sum(1))


def test_module_passes_gradcheck_and_gradgradcheck_through_its_parameters() -> None:
    m = ig.torch.Module(path("mlp"), outputs="loss", sizes={"d": 4, "h": 5, "c": 3}, seed=0).double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    Y = torch.eye(3, dtype=torch.float64)[torch.randint(0, 3, (6,))]
    names = [n for n, _ in m.named_parameters()]

    def f(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, dict(zip(names, params)), (x, Y))

    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True)


def test_adam_moves_the_parameters_as_the_same_layer_written_in_torch() -> None:
    """An .idx layer between torch layers in nn.Sequential, trained with torch.optim.Adam, against
    the same network with the layer written in torch: the same parameters after every step."""
    torch.manual_seed(0)
    idx = ig.torch.Module(LAYER, outputs="y", sizes={"d": 6, "h": 5}, dtype=torch.float64)

    class Dense(nn.Module):
        def __init__(self, W: torch.Tensor, B: torch.Tensor) -> None:
            super().__init__()
            self.W, self.B = nn.Parameter(W.detach().clone()), nn.Parameter(B.detach().clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x @ self.W + self.B)

    first, last = nn.Linear(4, 6, dtype=torch.float64), nn.Linear(5, 3, dtype=torch.float64)
    ours = nn.Sequential(first, idx, last)
    theirs = nn.Sequential(
        nn.Linear(4, 6, dtype=torch.float64), Dense(idx.W, idx.B), nn.Linear(5, 3, dtype=torch.float64)
    )
    theirs.load_state_dict(ours.state_dict())
    opts = [torch.optim.Adam(net.parameters(), lr=0.05) for net in (ours, theirs)]
    for _ in range(4):
        x, t = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
        for net, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), t).backward()
            opt.step()
        for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=n)
    assert not torch.equal(idx.W, Dense(idx.W, idx.B).W * 0)  # it moved


def test_the_torch_layer_example_learns_digits(capsys) -> None:
    """examples/torch_layer.py for two epochs: the .idx layer between torch layers, trained by Adam,
    is well past chance (10%) on the held-out digits."""
    sys.path.insert(0, str(ROOT / "examples"))
    import torch_layer

    assert torch_layer.main(epochs=2) > 0.9
    assert "Module(" in capsys.readouterr().out  # the .idx layer sits in the printed network


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_data_parallel_trains_as_one_process_on_the_whole_batches(tmp_path: Path) -> None:
    """examples/torch_layer.py's network under DDP on two processes (gloo, localhost), each taking
    half of every batch: after a few Adam steps, both ranks' parameters and gradients equal those of
    one process training on the whole batches."""
    import ddp_worker

    # forked, the ranks start with torch imported (and this process runs torch on one thread,
    # so there is no thread pool to inherit)
    fork = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [fork.Process(target=ddp_worker.rank_run, args=(r, 2, port, tmp_path)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.exitcode is None:
            p.kill()
        assert p.exitcode == 0, f"a rank failed (exit code {p.exitcode})"
    net = ddp_worker.start()
    want = ddp_worker.run(net, net)
    assert any("W" in k for k in want)  # the .idx layer's parameters are among them
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert set(got) == set(want)
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-10, atol=1e-13, err_msg=f"rank {rank}: {k}")
    assert not np.array_equal(want["2.W value"], ddp_worker.start()[2].W.detach().numpy())  # it moved


# ---- the CLI --------------------------------------------------------------------------------------


def test_run_with_the_torch_backend_writes_numpys_values(tmp_path: Path, capsys) -> None:
    a = inputs("mlp")
    np.savez(tmp_path / "in.npz", **a)
    outs = {}
    for backend in ("numpy", "torch"):
        out = tmp_path / f"{backend}.npz"
        argv = ["run", str(path("mlp")), "--inputs", str(tmp_path / "in.npz"), "--out", str(out)]
        assert main([*argv, "--backend", backend]) == 0
        outs[backend] = dict(np.load(out))
    assert set(outs["torch"]) == set(outs["numpy"])
    for k, v in outs["numpy"].items():
        assert_close(outs["torch"][k], v, k)


def test_check_with_the_torch_backend(capsys) -> None:
    assert main(["check", str(path("conv2d")), "--backend", "torch"]) == 0
    assert "passed" in capsys.readouterr().out


def test_train_with_the_torch_backend_learns_as_numpy_does(capsys) -> None:
    argv = ["train", str(path("mlp")), "--epochs", "2", "--hidden", "16"]
    assert main([*argv, "--backend", "torch", "--device", "cpu"]) == 0
    on_torch = capsys.readouterr().out.splitlines()[-1]
    assert main([*argv, "--device", "cpu"]) == 0  # --device cpu is meaningful on every backend
    on_numpy = capsys.readouterr().out.splitlines()[-1]
    assert on_torch.split(" after")[0] == on_numpy.split(" after")[0]  # the same test accuracy


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cuda"], "device='cuda', but the numpy backend computes on the CPU"),
        (["--backend", "tensorflow"], "unknown backend 'tensorflow'; available: jax, numpy, torch"),
    ],
)
def test_train_flags_are_checked(argv: list[str], message: str, capsys) -> None:
    assert main(["train", str(path("mlp")), "--epochs", "1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_torch_executor_asks_glibc_to_keep_what_a_plan_frees(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's CPU tensors come from glibc's malloc, as numpy's arrays do: what a step frees comes
    back on the next one without fresh pages."""
    from indexgrad.backends import torch as backend

    asked: list[int] = []
    monkeypatch.setattr(backend, "keep_freed_memory", asked.append)
    model = ig.compile("y[b,i] = x[b,j] A[j,i]\nloss = 0.5 sum[b,i](y[b,i]^2)", backend="torch")
    x, A = torch.ones(64, 32), torch.ones(32, 48)
    vals = model.forward(x=x, A=A)
    model.backward(vals)
    got, given = list(asked), {"x": x, "A": A}
    assert got == [model.plan(given).peak_bytes, model.plan(vals, mode="backward").peak_bytes]
