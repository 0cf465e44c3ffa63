"""JAX (SPEC 7, 8): the jax backend against the numpy backend (every example, random programs of the
property and fuzz generators; float64, relative 1e-12), float32 without 64-bit mode, and
`ig.jax.function` under jax.jit, jax.grad, jax.vmap and jax.test_util.check_grads.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from oracles import ITERATED_RTOL, ORACLES, assert_close_in_scale, assert_value_and_grad_agrees, path

import indexgrad as ig
from indexgrad.shapes import random_inputs

jax = pytest.importorskip("jax")
jnp = jax.numpy
from jax.test_util import check_grads  # noqa: E402

IMPLICIT = {"circle", "deq", "implicit_lsq"}  # fix and solve: their own tests below
NAMES = sorted(set(ORACLES) - IMPLICIT)
HEAVY = {"transformer", "lstm", "lenet"}  # their Hessian-vector plans take XLA 4-20 s to compile


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@cache
def models(name: str) -> tuple[ig.Model, ig.Model]:
    prog = ig.load(path(name))
    return ig.compile(prog), ig.compile(prog, backend="jax")


def inputs(name: str) -> dict[str, np.ndarray]:
    return ORACLES[name].inputs(np.random.default_rng(1), np.float64)


# ---- the jax backend against the numpy backend ------------------------------------------------


def results(model: ig.Model, arrays: dict, seed: int, hvp: bool = True) -> dict[str, dict]:
    """forward, backward (along a random seed for a tensor output), jvp and hvp (along random
    directions) of a model on arrays: the same draws for every backend."""
    rng = np.random.default_rng(seed)
    vals = model.forward(**arrays)
    loss = model.program.defined()[-1]
    if np.ndim(vals[loss]) == 0:
        grads = model.backward(vals, loss=loss)
    else:
        grads = model.backward(vals, seed={loss: rng.standard_normal(np.shape(vals[loss]))})
    v = {n: rng.standard_normal(np.shape(arrays[n])) for n in model.inputs}
    out = {"forward": vals, "backward": grads, "jvp": model.jvp(vals, v)}
    if hvp and np.ndim(vals[loss]) == 0:
        out["hvp"] = model.hvp(vals, loss, v)
    return out


def compare(
    prog: ig.Program | tuple[ig.Model, ig.Model],
    arrays: dict,
    seed: int,
    what: str,
    hvp: bool = True,
    want: dict | None = None,
    rtol: float = 1e-12,
) -> None:
    """The jax backend's results (jax arrays, from jax arrays) against the numpy backend's, for a
    program or a pair of its models (numpy, jax)."""
    pair = prog if isinstance(prog, tuple) else (ig.compile(prog), ig.compile(prog, backend="jax"))
    want = want or results(pair[0], arrays, seed, hvp)
    got = results(pair[1], {n: jnp.asarray(a) for n, a in arrays.items()}, seed, hvp)
    assert all(isinstance(v, jax.Array) for part in got.values() for v in part.values())
    for part, values in want.items():
        assert_close_in_scale(got[part], values, f"{what}: {part}", rtol)


@pytest.mark.parametrize("name", NAMES)
def test_the_jax_backend_agrees_with_numpy_on_the_examples(name: str) -> None:
    compare(models(name), inputs(name), 2, name, hvp=name not in HEAVY)  # check_grads reuses the plans


def test_the_jax_backend_agrees_on_every_kind_of_index_position() -> None:
    """Boundary modes, // and %, a label read through clamp, delta, a comparison and where."""
    prog = ig.parse(__import__("test_codegen").POSITIONS)
    arrays = random_inputs(prog, {"i": 5, "j": 4, "t": 3, "n": 6, "d": 2}, np.random.default_rng(0))
    compare(prog, arrays, 0, "positions")


CONVOLUTIONS = [
    ("y[i] = x[i+k] w[k]\nloss = sum[i](y[i]^2)\n", {"i": 6, "k": 3}),
    ("y[b,o,r,c] = x[b,ch,u+r,v+c] w[o,ch,u,v]\nloss = sum[b,o,r,c](tanh(y[b,o,r,c]))\n",
     {"b": 2, "o": 3, "ch": 2, "r": 5, "c": 4, "u": 3, "v": 2}),
    ("y[b,o,r] = x[b,ch,r+u] w[ch,u,o] + B[o]\nloss = sum[b,o,r](y[b,o,r]^2)\n",
     {"b": 3, "o": 2, "ch": 4, "r": 7, "u": 2}),
]  # fmt: skip


@pytest.mark.parametrize("text, dims", CONVOLUTIONS)
def test_products_through_r_plus_u_run_as_convolutions_and_agree_with_numpy(text: str, dims: dict) -> None:
    """A view through r+u read by one product, and a product added through r+u (the input's
    gradient), run as lax.conv_general_dilated: with and without batch and channel axes, offsets
    written first, the kernel's axes in any order."""
    from indexgrad.backends.jax import _fused

    prog = ig.parse(text)
    arrays = random_inputs(prog, dims, np.random.default_rng(0))
    jax_model = ig.compile(prog, backend="jax")
    backward = jax_model.plan(arrays, "backward")
    steps = backward.steps
    assert len(_fused(jax_model.plan(arrays).steps)) == 1
    assert {steps[j].kind for j in _fused(steps)} == {"contract", "scatter"}  # w.grad, x.grad
    compare(prog, arrays, 0, text, hvp=False)


def test_a_returned_array_is_written_once_in_the_layout_it_is_returned_in() -> None:
    """A convolution's forward: XLA keeps the convolution's output channels last; y, returned and
    read by the loss's sum of squares, is written once, row-major, where it was written three
    times (kept channels last, copied for the caller, copied again for the sum)."""
    from indexgrad.backends.jax import JaxExecutor

    text = "param w[o,ch,u,v], B[o]\ninput x[b,ch,row,col]\n"
    text += "y[b,o,r,c] = x[b,ch,r+u,c+v] w[o,ch,u,v] + B[o]\nloss = 0.5 sum[b,o,r,c](y[b,o,r,c]^2)\n"
    prog = ig.parse(text)
    dims = {"b": 2, "ch": 3, "o": 5, "row": 8, "col": 8, "u": 3, "v": 3}
    arrays = random_inputs(prog, dims, np.random.default_rng(0))
    executor = JaxExecutor(ig.compile(prog, backend="jax").plan(arrays))
    hlo = executor.jitted.lower({n: jnp.asarray(arrays[n]) for n in executor.reads}).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    writes = [ln for ln in entry.splitlines() if " = f64[2,5,6,6]" in ln and " bitcast(" not in ln]
    assert len(writes) == 1, writes
    compare(prog, arrays, 0, text, hvp=False)


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_value_and_grad_agrees_with_forward_then_backward_on_the_examples(name: str) -> None:
    """(The variants plan and compile twice more: on the examples that compile fast.)"""
    rtol = ITERATED_RTOL if name in IMPLICIT else 1e-12  # a fix or solve may stop one step apart
    variants = name not in HEAVY | IMPLICIT | {"norms", "strided_conv", "cnn"}
    assert_value_and_grad_agrees(models(name)[1], name, inputs(name), jnp.asarray, rtol, variants=variants)


def test_value_and_grad_is_one_jitted_computation_of_the_forward_and_backward_plans() -> None:
    """The plans plan() shows for forward and backward, traced into one function that returns
    the values asked for and the gradients and nothing else; neither plan runs on its own, and
    a second call compiles nothing."""
    from indexgrad.backends.jax import JaxChain

    model = ig.compile(ig.load(path("mlp")), backend="jax")
    arrays = {n: jnp.asarray(v) for n, v in inputs("mlp").items()}
    for _ in range(2):
        values, grads = model.value_and_grad(arrays, wrt="W1, B1", outputs="z")
    assert list(values) == ["z"] and list(grads) == ["W1", "B1"]
    ((compiled, returned),) = model._joints.values()
    chain = compiled.executor
    assert isinstance(chain, JaxChain) and returned == ("z",)
    first, then = chain.parts
    assert first.plan is model.plan(arrays) and then.plan is model.plan(arrays, "backward", wrt=["W1", "B1"])
    assert (first.jitted._cache_size(), then.jitted._cache_size(), chain.jitted._cache_size()) == (0, 0, 1)
    out = chain.jitted.lower({n: arrays[n] for n in chain.reads}).out_info
    assert set(out) == {"z", "W1.grad", "B1.grad"}  # hidden, loss and the other gradients stay inside


PASSED_ON = ["loss = s", "loss = 3 s", "y[i] = x[i]\nz[i] = y[i]", "y[i] = x[i]\nl = sum[i](y[i])"]


@pytest.mark.parametrize("text", PASSED_ON)
def test_value_and_grad_returns_values_and_gradients_that_pass_through_unchanged(text: str) -> None:
    """Copies and seeds passed on as they are: what the chain returns is what its plans define."""
    prog = ig.parse(text)
    arrays = {n: jnp.asarray(a) for n, a in random_inputs(prog, {"i": 3}, np.random.default_rng(0)).items()}
    model = ig.compile(prog, backend="jax")
    out = prog.defined()[-1]
    how = {"seed": {out: jnp.full(3, 2.0)}} if out == "z" else {}
    vals = model.forward(**arrays)
    values, grads = model.value_and_grad(arrays, outputs=list(prog.defined()), **how)
    assert_close_in_scale(values, {n: vals[n] for n in prog.defined()}, "values", 0)
    assert_close_in_scale(grads, model.backward(vals, **how), "gradients", 0)


def test_jax_differentiates_through_value_and_grad() -> None:
    """jax.grad of a function of value_and_grad's gradients (a Hessian-vector product through the
    chain) equals jax's own: what jax differentiates is the plain trace of both plans."""
    model = ig.compile("y[b,i] = tanh(x[b,j] W[j,i])\nloss = sum[b,i](y[b,i]^2)", backend="jax")
    r = np.random.default_rng(0)
    a = {"x": jnp.asarray(r.standard_normal((2, 3))), "W": jnp.asarray(r.standard_normal((3, 4)))}
    v = {k: jnp.asarray(r.standard_normal(x.shape)) for k, x in a.items()}
    got = jax.grad(lambda d: sum(jnp.vdot(model.value_and_grad(d)[1][k], v[k]) for k in v))(a)
    f = lambda d: jnp.sum(jnp.tanh(d["x"] @ d["W"]) ** 2)  # noqa: E731
    want = jax.grad(lambda d: sum(jnp.vdot(jax.grad(f)(d)[k], v[k]) for k in v))(a)
    for k in a:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_value_and_grad_in_float32_without_64_bit_mode() -> None:
    m = models("mlp")[1]
    a32 = {n: jnp.asarray(v.astype(np.float32)) for n, v in inputs("mlp").items()}
    with jax.enable_x64(False):
        values, grads = m.value_and_grad(a32, outputs="loss, z")
        vals = m.forward(**a32)
        want = m.backward(vals)
        assert {v.dtype for v in [*values.values(), *grads.values()]} == {np.dtype(np.float32)}
        got = {n: values[n] for n in values} | {f"{n}.grad": g for n, g in grads.items()}
        expected = {n: vals[n] for n in values} | {f"{n}.grad": g for n, g in want.items()}
        assert_close_in_scale(got, expected, "float32", 1e-5)
        with pytest.raises(ig.IndexgradError, match=r"the value given for 'W1' is float64, and"):
            m.value_and_grad({**a32, "W1": inputs("mlp")["W1"]})


def test_value_and_grad_checks_labels_and_iterations_as_forward_does_on_jax() -> None:
    m = models("logloss")[1]
    a = inputs("logloss")
    with pytest.raises(ig.IndexgradError, match=r"label 7 in 'y' is out of range for axis 1 of 'Q'"):
        m.value_and_grad({**a, "y": np.full_like(a["y"], 7)})
    m = ig.compile("z[b] = fix(z[b]^2 + x[b])\nloss = sum[b](z[b])\n", backend="jax")
    with pytest.raises(ig.IndexgradError, match=r"1:1: error: fix\(...\) found no fixed point for 'z'"):
        m.value_and_grad({"x": np.ones(3)})


def budget(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))


@budget(8)
@given(case=__import__("test_properties").programs())
def test_the_jax_backend_agrees_on_random_programs(case) -> None:
    p, arrays = case
    compare(ig.parse(p.text()), arrays, 0, p.text())


@budget(8)
@given(text=__import__("test_fuzz").programs(), seed=__import__("hypothesis").strategies.integers(0, 3))
def test_the_jax_backend_agrees_on_fuzzed_programs(text: str, seed: int) -> None:
    """Programs of the fuzzer's generator that the numpy backend runs (index arithmetic, labels,
    definitions, every function), with the fuzzer's sizes and inputs."""
    try:
        prog = ig.parse(text)
        assume(prog.defined())  # the fuzzer's programs may be all comment
        arrays = random_inputs(prog, {n: 2 for n in "abcdhijkluvnors"}, np.random.default_rng(seed))
        with np.errstate(all="ignore"):
            want = results(ig.compile(prog), arrays, seed, hvp=False)
    except ig.IndexgradError:
        assume(False)
    except (ValueError, IndexError):  # the reference failing is test_fuzz's finding, not this test's
        assume(False)
    # under jit XLA reads a product with a 0/1 mask (relu's step) as a select: 0 where numpy's
    # 0 * Inf is NaN, so the backends are compared where the derivatives are finite
    assume(all(np.isfinite(v).all() for part in want.values() for v in part.values()))
    compare(prog, arrays, seed, text, hvp=False, want=want)


# ---- dtypes, labels, errors -----------------------------------------------------------------------


def test_sigmoid_is_exact_in_its_far_tail_as_on_numpy() -> None:
    """1 / sigmoid(x) is 1 + e^-x, finite at x = -40 (0.5 (1 + tanh(x/2)) rounds sigmoid to 0 there)."""
    x = np.array([-700.0, -40.0, -4.0, 0.0, 5.0])
    got = ig.compile("y[i] = 1 / sigmoid(x[i])\n", backend="jax").forward(x=x)["y"]
    np.testing.assert_allclose(np.asarray(got), 1 + np.exp(-x), rtol=1e-13)


def test_float32_without_64_bit_mode_and_a_clear_error_for_float64() -> None:
    m = models("mlp")[1]
    a32 = {n: v.astype(np.float32) for n, v in inputs("mlp").items()}
    with jax.enable_x64(False):
        vals = m.forward(**a32)
        grads = m.backward(vals)
        assert vals["loss"].dtype == jnp.float32
        assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
        want = models("mlp")[0].forward(**a32)["loss"]
        assert abs(float(vals["loss"]) - float(want)) <= 1e-5 * abs(float(want))
        refused = r"the value given for 'W1' is float64, and .*jax_enable_x64"
        with pytest.raises(ig.IndexgradError, match=refused):
            m.forward(**{**a32, "W1": inputs("mlp")["W1"]})


def test_the_cli_with_backend_jax_computes_float64_data_in_float64(tmp_path, capsys, monkeypatch) -> None:
    """SPEC 7: `indexgrad check/run --backend jax` work without the user's 64-bit mode (the command
    turns it on for itself, and off again), locate a bad file's error (exit 2), and respect an
    explicit JAX_ENABLE_X64, whose refusal of float64 names that variable."""
    from indexgrad.cli import main

    good, bad = tmp_path / "good.idx", tmp_path / "bad.idx"
    good.write_text("y[b,i] = tanh(x[b,j] W[j,i])\nloss = sum[b,i](y[b,i]^2)\n")
    bad.write_text("y[b,i] = tanh(x[b,j] W[j,i])\nloss = sum[b,i](y[b,k]^2)\n")
    x, W = np.random.default_rng(0).standard_normal((2, 3)), np.random.default_rng(1).standard_normal((3, 4))
    np.savez(tmp_path / "in.npz", x=x, W=W)
    run = ["run", str(good), "--inputs", str(tmp_path / "in.npz"), "--backend", "jax"]
    with jax.enable_x64(False):
        assert main(["check", str(good), "--backend", "jax", "--dims", "b=2,j=3,i=4"]) == 0
        assert "passed: 2 inputs checked" in capsys.readouterr().out
        assert main(["check", str(bad), "--backend", "jax"]) == 2
        assert capsys.readouterr().err.startswith(f"{bad}:2:")
        assert main([*run, "--out", str(tmp_path / "out.npz")]) == 0
        out = np.load(tmp_path / "out.npz")
        assert out["y"].dtype == np.float64
        np.testing.assert_allclose(out["y"], np.tanh(x @ W), rtol=1e-13)
        assert not jax.config.jax_enable_x64  # the command's 64-bit mode ended with it
        monkeypatch.setenv("JAX_ENABLE_X64", "0")
        assert main(run) == 2
        assert "environment variable JAX_ENABLE_X64=1" in capsys.readouterr().err


def test_compile_with_a_dtype_and_a_device_on_jax() -> None:
    """SPEC 7: compile(backend="jax", dtype=, device=): float32 in either mode, float64 only in
    64-bit mode; a platform name places the arrays on its first device."""
    a = {"x": [[1.0, 2.0, 3.0]], "W": np.ones((3, 2), np.float32)}
    for x64 in (False, True):
        with jax.enable_x64(x64):
            m = ig.compile("y[b,i] = x[b,j] W[j,i]", backend="jax", dtype="float32", device="cpu")
            vals = m.forward(**a)
            assert vals["y"].dtype == jnp.float32 and vals["y"].devices() == {jax.devices("cpu")[0]}
            np.testing.assert_allclose(np.asarray(vals["y"]), [[6.0, 6.0]])
            with pytest.raises(ig.IndexgradError, match=r"holds float64, but the model computes in float32"):
                m.forward(**{**a, "W": np.ones((3, 2))})
    assert ig.compile("y = x[i]", backend="jax", dtype="float64").engine.dtype == np.float64
    with jax.enable_x64(False), pytest.raises(ig.IndexgradError, match="JAX_ENABLE_X64=1"):
        ig.compile("y = x[i]", backend="jax", dtype="float64")
    with pytest.raises(ig.IndexgradError, match=r"device='tpu' is not a platform jax has here \(cpu\)"):
        ig.compile("y = x[i]", backend="jax", device="tpu")


def test_labels_out_of_range_are_errors_where_they_can_be_seen_and_nan_under_jit() -> None:
    m = models("logloss")[1]
    a = inputs("logloss")
    with pytest.raises(ig.IndexgradError, match=r"label 7 in 'y' is out of range for axis 1 of 'Q'"):
        m.forward(**{**a, "y": np.full_like(a["y"], 7)})
    f = ig.jax.function(m, outputs="loss")
    assert np.isnan(float(jax.jit(f)({**a, "y": np.full_like(a["y"], -1)})))  # traced: unchecked, NaN


def test_labels_a_jitted_gradient_closes_over_are_read_and_checked() -> None:
    """jax.jit(jax.grad(...)) of a loss that closes over its labels runs the forward with the labels
    known inside the jit trace: their range check crashed (TracerArrayConversionError) instead of
    checking them; the gradient is torch's cross entropy's, and a bad label the usual error."""
    torch = pytest.importorskip("torch")
    f = ig.jax.function("loss = mean[b](logsumexp[c](z[b,c]) - z[b,y[b]])")
    z = np.random.default_rng(0).standard_normal((3, 4))
    zt = torch.tensor(z, requires_grad=True)
    torch.nn.functional.cross_entropy(zt, torch.tensor([0, 3, 1])).backward()
    y = jnp.asarray([0, 3, 1])
    got = jax.jit(jax.grad(lambda z: f({"z": z, "y": y})))(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(got), zt.grad.numpy(), rtol=1e-12, atol=1e-15)
    y = jnp.asarray([0, 4, 1])
    with pytest.raises(ig.IndexgradError, match=r"label 4 in 'y' is out of range for axis 1 of 'z'"):
        jax.jit(jax.grad(lambda z: f({"z": z, "y": y})))(jnp.asarray(z))


def test_check_finite_names_the_statement_on_the_jax_backend() -> None:
    m = ig.compile("y[i] = log(x[i])\nloss = sum[i](y[i])", backend="jax")
    with pytest.raises(ig.IndexgradError, match="1:1: error: this statement produced NaN in 'y'"):
        m.forward(x=np.array([1.0, -1.0]), check_finite=True)


def test_a_function_the_jax_table_lacks_is_an_error_naming_it() -> None:
    from indexgrad.backends import jax as backend

    step = models("mlp")[1].plan({n: np.shape(v) for n, v in inputs("mlp").items()}).steps[2]
    assert step.call == "relu"
    with pytest.raises(ig.IndexgradError, match="the jax backend has no function 'gelu'; it has: .*abs, cos"):
        backend.elementwise(type(step)(**{**step.__dict__, "call": "gelu"}))


def test_the_jax_plan_lends_no_buffers() -> None:
    plan = models("mlp")[1].plan({n: np.shape(v) for n, v in inputs("mlp").items()}, mode="backward")
    assert plan.backend == "jax" and all(s.into is None for s in plan.steps)
    assert "(jax)" in str(plan)


def test_the_jax_executor_asks_glibc_to_keep_what_a_plan_frees(monkeypatch: pytest.MonkeyPatch) -> None:
    """XLA's CPU buffers come from glibc's malloc, as numpy's arrays do: the forward's and the
    backward's outputs freed after a step come back without fresh pages on the next one."""
    from indexgrad.backends import jax as backend

    asked: list[int] = []
    monkeypatch.setattr(backend, "keep_freed_memory", asked.append)
    model = ig.compile("y[b,i] = x[b,j] A[j,i]\nloss = 0.5 sum[b,i](y[b,i]^2)", backend="jax")
    x, A = jnp.ones((64, 32)), jnp.ones((32, 48))
    model.backward(model.forward(x=x, A=A))
    got, shapes = list(asked), {"x": x.shape, "A": A.shape}
    assert got == [model.plan(shapes).peak_bytes, model.plan(shapes, mode="backward").peak_bytes]


# ---- ig.jax.function ----------------------------------------------------------------------------


def floats_and_labels(name: str) -> tuple[dict, dict]:
    a = inputs(name)
    labels = set(models(name)[0].labels)
    return {n: jnp.asarray(v) for n, v in a.items() if n not in labels}, {n: a[n] for n in labels}


# ig.jax.function wraps every program in the same jax.custom_vjp, and the jax backend's gradients
# are checked against numpy's on every example above: check_grads, whose finite differences cost
# 0.5-3 s an example, runs on one of each kind (a tensor output, a softmax over a tensor, definitions,
# labels, strided index positions; fix and solve below); make fuzz runs it on every example
CHECKED = ["affine", "attention", "dense_defs", "logloss", "strided_conv"]
LONG_RUN = settings().max_examples >= 1000  # the fuzz profile (tests/conftest.py)
long_only = pytest.mark.skipif(not LONG_RUN, reason="make fuzz checks every example")
EVERY = [n if n in CHECKED else pytest.param(n, marks=[pytest.mark.fuzz, long_only]) for n in NAMES]


@pytest.mark.parametrize("name", EVERY)
def test_check_grads_passes_on_every_example(name: str) -> None:
    floats, labels = floats_and_labels(name)
    f = ig.jax.function(models(name)[1], outputs=ORACLES[name].output)
    check_grads(lambda a: f({**a, **labels}), (floats,), order=1, modes=["rev"])


def test_second_derivatives_by_jax_grad_of_the_gradient_are_the_hessians() -> None:
    """jax differentiates the custom VJP's backward (the derived program) for a second order: its
    Hessian-vector product equals jax's own, and check_grads passes at order 2."""
    src = "y[b,i] = tanh(x[b,j] W[j,i])\nloss = sum[b,i](y[b,i]^2)"
    f = ig.jax.function(ig.compile(src, backend="jax"), outputs="loss")
    r = np.random.default_rng(0)
    a = {"x": jnp.asarray(r.standard_normal((2, 3))), "W": jnp.asarray(r.standard_normal((3, 4)))}
    v = {k: jnp.asarray(r.standard_normal(x.shape)) for k, x in a.items()}

    def hvp(fn):  # type: ignore[no-untyped-def]
        return jax.grad(lambda d: sum(jnp.vdot(jax.grad(fn)(d)[k], v[k]) for k in v))(a)

    got, want = hvp(f), hvp(lambda d: jnp.sum(jnp.tanh(d["x"] @ d["W"]) ** 2))
    for k in a:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)
    check_grads(f, (a,), order=2, modes=["rev"])


def test_jit_grad_and_value_and_grad_equal_the_model() -> None:
    numpy_model, jax_model = models("mlp")
    a = inputs("mlp")
    f = ig.jax.function(jax_model, outputs="loss")
    value, grads = jax.jit(jax.value_and_grad(f))({n: jnp.asarray(v) for n, v in a.items()})
    want = numpy_model.backward(numpy_model.forward(**a))
    assert_close_in_scale({"loss": value}, {"loss": numpy_model.forward(**a)["loss"]}, "value")
    assert_close_in_scale(grads, want, "grad")
    assert float(jax.jit(f)(a)) == pytest.approx(float(value), rel=1e-15)


def test_vmap_over_a_batch_of_parameters_and_grad_under_vmap() -> None:
    numpy_model, jax_model = models("tanh_net")
    a = inputs("tanh_net")
    f = ig.jax.function(jax_model, outputs="L")
    scales = np.array([0.5, 1.0, 2.0])
    batch = {n: jnp.stack([v * s for s in scales]) if n == "W1" else jnp.broadcast_to(v, (3, *np.shape(v)))
             for n, v in a.items()}  # fmt: skip
    values = jax.vmap(f)(batch)
    grads = jax.vmap(jax.grad(f))(batch)
    for k, s in enumerate(scales):
        moved = {**a, "W1": a["W1"] * s}
        vals = numpy_model.forward(**moved)
        assert float(values[k]) == pytest.approx(float(vals["L"]), rel=1e-12)
        assert_close_in_scale({n: g[k] for n, g in grads.items()}, numpy_model.backward(vals), f"grad {k}")


def test_several_outputs_come_back_as_a_tuple_and_their_vjp_is_the_derived_program() -> None:
    numpy_model, jax_model = models("affine")
    a = inputs("affine")
    f = ig.jax.function(jax_model, outputs=["y"])
    (y,), vjp = jax.vjp(f, {n: jnp.asarray(v) for n, v in a.items()})
    g = np.random.default_rng(3).standard_normal(np.shape(y))
    (got,) = vjp((jnp.asarray(g),))
    assert_close_in_scale(got, numpy_model.backward(numpy_model.forward(**a), seed={"y": g}), "vjp")


def test_labels_get_float0_cotangents_and_integer_inputs_become_floats() -> None:
    a = inputs("logloss")
    f = ig.jax.function(models("logloss")[1])
    grads = jax.grad(f, allow_int=True)({n: jnp.asarray(v) for n, v in a.items()})
    assert grads["y"].dtype == jax.dtypes.float0
    g = ig.jax.function("y = x^2")
    assert float(g({"x": 3})) == 9.0 and float(jax.grad(lambda x: g({"x": x}))(3.0)) == 6.0


@pytest.mark.parametrize(
    "outputs, message",
    [
        ("nope", "outputs names 'nope', which the program does not define; it defines: y"),
        ([], "names no tensor"),
    ],
)
def test_bad_outputs_are_errors(outputs, message: str) -> None:
    with pytest.raises(ig.IndexgradError, match=message):
        ig.jax.function("y = x^2", outputs=outputs)


def test_the_function_takes_a_dict() -> None:
    with pytest.raises(ig.IndexgradError, match="one dict from input names to arrays, not list"):
        ig.jax.function("y = x^2")([1.0])


@pytest.mark.parametrize("value, dtype", [("abc", "<U3"), (None, "object"), ({"a": 1}, "object")])
def test_a_value_jax_cannot_take_is_a_located_error(value, dtype: str) -> None:
    """jax itself refused a string with a TypeError, before the Model saw it."""
    message = rf"1:5: error: the value given for 'x' must hold real numbers, not {dtype}"
    with pytest.raises(ig.IndexgradError, match=message):
        ig.jax.function("y = x^2")({"x": value})


def test_a_bfloat16_value_of_the_function_says_to_convert_it() -> None:
    """It was said not to hold real numbers, unlike the Model's word on the same array."""
    message = r"1:5: error: the value given for 'x' holds bfloat16, which is not computed in; convert it"
    with pytest.raises(ig.IndexgradError, match=message):
        ig.jax.function("y = x^2")({"x": jnp.ones(3, jnp.bfloat16)})


def test_the_jax_layer_example_trains_the_digits_mlp(tmp_path) -> None:
    """examples/jax_layer.py for two epochs (float32, outside 64-bit mode): the loss falls and
    the held-out accuracy is far past chance (10%); the plot is written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("jax_layer", path("mlp").parent / "jax_layer.py")
    script = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    with jax.enable_x64(False):
        losses, accuracies = script.main(epochs=2, plot=tmp_path / "j.png")
    assert losses[-1] < losses[0] < 2.5
    assert accuracies[-1] > 0.85
    assert (tmp_path / "j.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", sorted(IMPLICIT))
def test_implicit_layers_run_inside_jit_and_agree_with_numpy(name: str) -> None:
    """fix and solve are while loops in the one jitted computation: forward, backward and jvp agree
    with the numpy backend; ig.jax.function passes check_grads."""
    numpy_model, jax_model = models(name)
    compare((numpy_model, jax_model), inputs(name), 2, name, hvp=False, rtol=ITERATED_RTOL)
    floats, labels = floats_and_labels(name)
    f = ig.jax.function(jax_model, ORACLES[name].output)
    check_grads(lambda a: f({**a, **labels}), (floats,), order=1, modes=["rev"])


def test_a_deep_equilibrium_layer_under_vmap_iterates_each_example_to_its_own_fixed_point() -> None:
    """jit(vmap(value_and_grad)) of the layer: vmap of a while loop runs until every example has
    converged, each example's state held once it has (jax selects per example), so each gets the
    numpy model's value and gradient for it alone."""
    numpy_model, jax_model = models("deq")
    a = inputs("deq")
    f = ig.jax.function(jax_model, outputs="loss")
    scales = np.array([0.2, 1.0, 3.0])  # W scaled: A (W normalised) barely moves, U's scale does
    batch = {n: jnp.stack([v * s for s in scales]) if n == "U" else jnp.broadcast_to(v, (3, *np.shape(v)))
             for n, v in a.items()}  # fmt: skip
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(f)))(batch)
    for k, s in enumerate(scales):
        vals = numpy_model.forward(**{**a, "U": a["U"] * s})
        assert float(values[k]) == pytest.approx(float(vals["loss"]), rel=ITERATED_RTOL)
        want = numpy_model.backward(vals)
        assert_close_in_scale({n: g[k] for n, g in grads.items()}, want, f"grad {k}", ITERATED_RTOL)


def test_no_fixed_point_is_an_error_naming_the_statement_eagerly_and_nan_under_jit() -> None:
    m = ig.compile("z[b] = fix(z[b]^2 + x[b])\n", backend="jax")
    with pytest.raises(ig.IndexgradError, match=r"1:1: error: fix\(...\) found no fixed point for 'z'"):
        m.forward(x=np.ones(3))
    singular = ig.compile("z[b] = solve(z[b]^2 - x[b], 0)\n", backend="jax")
    with pytest.raises(ig.IndexgradError, match="found no root for 'z'.*singular"):
        singular.forward(x=np.ones(2))
    f = ig.jax.function(m, outputs="z")
    assert np.isnan(np.asarray(jax.jit(f)({"x": jnp.ones(3)}))).all()  # traced: cannot raise
