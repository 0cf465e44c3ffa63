"""The Python API (SPEC 4): arguments of forward, backward, jvp, hvp and gradcheck, and their errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from oracles import rng

import indexgrad as ig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_mis_shaped_seed_and_tangent() -> None:
    m = ig.compile("y[i,j] = A[i,j] x[i]\nz[k] = y[k,l] w[l]")
    vals = m.forward(A=np.ones((3, 2)), x=np.ones(3), w=np.ones(2))
    with pytest.raises(ig.IndexgradError, match="z"):
        m.backward(vals, seed={"z": np.ones(4)})
    with pytest.raises(ig.IndexgradError, match="x"):
        m.jvp(vals, tangents={"x": np.ones(2)})
    with pytest.raises(ig.IndexgradError, match="z"):
        m.backward(vals, loss="z")  # not a scalar


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


def test_hvp_along_an_input_the_loss_reads_only_times_zero() -> None:
    """`0 B[j]` stays in the forward statements printed for the Hessian's program (it once printed
    as `+ 0`, where B was no input and j had no size): B's direction adds nothing (its rows and
    columns of the Hessian are 0), as its gradient is 0 in backward."""
    model = ig.compile("I[i,j] = A[i+3-j] + 0 B[j]\nloss = sum[i,j](sin(I[i,j]))")
    a, b = rng(1).standard_normal(10), rng(2).standard_normal(4)
    vals = model.forward(A=a, B=b)
    hv = model.hvp(vals, "loss", {"A": np.ones(10), "B": np.ones(4)})
    want = np.zeros(10)
    for i, j in np.ndindex(7, 4):
        want[i + 3 - j] -= np.sin(a[i + 3 - j])
    np.testing.assert_allclose(hv["A"], want)
    np.testing.assert_array_equal(hv["B"], np.zeros(4))
    assert model.plan({"A": (10,), "B": (4,)}, mode="hvp").steps


@pytest.mark.parametrize(
    "vals, kwargs, message",
    [
        (None, {}, "vals must be the dict forward() returned, not NoneType"),
        ({"x": "ab", "l": 5.0}, {}, "the value of 'x' in vals must hold real numbers"),
        ("ok", {"seed": [("l", 1.0)]}, "seed must be a dict from tensor names to arrays, not list"),
        ("ok", {"seed": {"l": 1j}}, "seed for 'l' must hold real numbers, not complex128"),
        ("ok", {"seed": {"l": [[1], [1, 2]]}}, "seed for 'l' is not an array"),
        ("ok", {"seed": {"x": np.ones(3)}}, "seed names 'x', which is not a tensor the program defines"),
        ("ok", {"seed": {}}, "seed is empty: give the gradient of at least one defined tensor"),
        ({"x": np.ones(3)}, {"seed": {"l": 1.0}}, "vals holds no value for 'l', which the seed is"),
    ],
)
def test_backward_says_what_is_wrong_with_its_arguments(vals, kwargs: dict, message: str) -> None:
    model = ig.compile("l = x[i] x[i]")
    if vals == "ok":
        vals = model.forward(x=np.ones(3))
    with pytest.raises(ig.IndexgradError) as info:
        model.backward(vals, **kwargs)
    assert info.value.message.startswith(message)


def test_derivatives_given_the_inputs_for_vals_say_to_pass_what_forward_returned() -> None:
    """backward(arrays) for backward(forward(**arrays)): the derivative reads y, which the program
    defines; it was called an input no array was given for, at the statement that defines it."""
    model = ig.compile("y[b,o] = tanh(x[b,i] W[i,o])\nloss = sum[b,o](y[b,o]^2)")
    arrays = {"x": np.ones((4, 3)), "W": np.ones((3, 2))}
    want = "vals holds no value for 'y', which the program defines and the derivative reads: pass the dict"
    for call in (
        lambda: model.backward({**arrays, "loss": 1.0}, loss="loss"),
        lambda: model.backward({**arrays, "loss": 1.0}, seed={"loss": 1.0}),
        lambda: model.jvp(arrays, {"x": arrays["x"]}),
    ):
        with pytest.raises(ig.IndexgradError) as info:
            call()
        assert info.value.message.startswith(want), info.value.message
    with pytest.raises(ig.IndexgradError, match="no array was given for input 'W'"):
        model.forward(x=arrays["x"])  # forward's own message is unchanged


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


VG_TEXT = "input x[b,i], W[i,j]\ny[b,j] = x[b,i] W[i,j]\nl2 = sum[b,j](y[b,j])\nloss = sum[b,j](y[b,j]^2)"


@pytest.mark.parametrize(
    "arrays, kwargs, message",
    [
        ([1.0], {}, "value_and_grad() takes a dict of the input arrays, not list; the program's inputs"),
        ("ok", {"loss": 3}, "loss must be the name of a defined tensor, not int"),
        ("ok", {"loss": "nope"}, "loss 'nope' is not defined by the program"),
        ("ok", {"loss": "y"}, "loss 'y' has shape (2, 4), not a scalar; pass seed={'y': ...}"),
        ("ok", {"wrt": "v"}, "wrt names 'v', which is not an input of the program; inputs: x, W"),
        ("ok", {"wrt": 3}, "wrt must be a name or a list of names, not int"),
        ("ok", {"outputs": "v"}, "outputs names 'v', which is not a tensor the program defines; it defines"),
        ("ok", {"outputs": "x"}, "outputs names 'x', which is not a tensor the program defines"),
        ("ok", {"outputs": [3]}, "outputs must list names as strings, not int"),
        ("ok", {"seed": [("y", 1.0)]}, "seed must be a dict from tensor names to arrays, not list"),
        ("ok", {"seed": {"y": np.ones(4)}}, "seed for 'y' has shape (4,), but 'y' has shape (2, 4)"),
        ("ok", {"seed": {"x": np.ones(3)}}, "seed names 'x', which is not a tensor the program defines"),
        ("ok", {"seed": {"y": 1j * np.ones((2, 4))}}, "seed for 'y' must hold real numbers, not complex128"),
        ("ok", {"seed": {"l2": 1.0}, "loss": "l2"}, "give either loss= or seed=, not both"),
        ("ok", {"seed": {}}, "seed is empty: give the gradient of at least one defined tensor"),
        ({"x": np.ones((2, 3))}, {}, "no array was given for input 'W'"),
        ({"x": np.ones((2, 3)), "W": np.ones((3, 4)), "v": 1.0}, {}, "'v' is not an input of the program"),
        ({"x": np.ones((2, 3)), "W": np.ones((2, 4))}, {}, "index 'i' has size 3 from x[b,i] (axis 1)"),
    ],
)
def test_value_and_grad_says_what_is_wrong_with_its_arguments(arrays, kwargs: dict, message: str) -> None:
    """The errors of forward and of backward, for the same mistakes, from the one call."""
    model = ig.compile(VG_TEXT)
    if arrays == "ok":
        arrays = {"x": np.ones((2, 3)), "W": np.ones((3, 4))}
    with pytest.raises(ig.IndexgradError) as info:
        model.value_and_grad(arrays, **kwargs)
    assert info.value.message.startswith(message), info.value.message


def test_value_and_grad_calls_follow_changes_of_shapes_loss_wrt_seed_and_outputs() -> None:
    """A call like an earlier one reuses what it joined; any change is planned as on a first call,
    and returns what forward then backward would."""
    model = ig.compile(VG_TEXT)
    g = rng(6)
    for _ in range(2):
        for b, i, j, dtype in [(2, 3, 4, np.float64), (5, 3, 2, np.float64), (2, 3, 4, np.float32)]:
            arrays = {"x": g.standard_normal((b, i)), "W": g.standard_normal((i, j))}
            arrays = {n: a.astype(dtype) for n, a in arrays.items()}
            vals = model.forward(**arrays)
            dy = g.standard_normal((b, j)).astype(dtype)
            seeds = ({"seed": {"y": dy}}, {"seed": {"y": dy, "l2": 2.0}})
            for how in ({}, {"loss": "loss"}, {"loss": "l2"}, *seeds):
                for wrt in (None, "W", ["x"], "x, W"):
                    for outputs, names in ((None, None), ("y", ["y"]), (["loss", "y"], ["loss", "y"]),
                                           ("l2, y", ["l2", "y"])):  # fmt: skip
                        values, grads = model.value_and_grad(arrays, wrt=wrt, outputs=outputs, **how)
                        want = model.backward(vals, wrt=wrt, **how)
                        names = names or list(how.get("seed", {})) or [how.get("loss", "loss")]
                        assert list(values) == names and list(grads) == list(want)
                        for n in names:
                            np.testing.assert_array_equal(values[n], vals[n])
                        for n in want:
                            assert grads[n].dtype == want[n].dtype == dtype
                            np.testing.assert_array_equal(grads[n], want[n])


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


def test_integer_arrays_for_float_inputs_become_float64() -> None:
    m = ig.compile("y[i] = x[i] / 2")
    y = m.forward(x=np.array([1, 2, 3]))["y"]
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [0.5, 1.0, 1.5])


def test_forward_returns_every_defined_tensor() -> None:
    m = ig.compile("h[i] = relu(x[i] + 1)\nloss = sum[i](h[i] w[i])")
    vals = m.forward(x=np.ones(2), w=np.ones(2))
    assert {"x", "w", "h", "loss"} <= set(vals)


def test_importing_indexgrad_imports_neither_torch_jax_nor_the_web_stack() -> None:
    """SPEC 8: importing indexgrad (and its CLI), even running a numpy model, imports neither torch,
    jax nor the playground's web stack; ig.torch and ig.jax load theirs on first use. One fresh
    interpreter for all of it: each import of torch or jax takes it 1-2 s."""
    code = (
        "import sys, numpy as np, indexgrad as ig, indexgrad.cli\n"
        "m = ig.compile('y = x^2'); m.backward(m.forward(x=np.float64(3)))\n"
        "early = {'torch', 'jax', 'starlette', 'uvicorn'} & set(sys.modules)\n"
        "assert not early, f'imported too early: {sorted(early)}'\n"
        "ig.torch.Module\n"
        "assert 'torch' in sys.modules\n"
        "f = ig.jax.function('y = x^2', outputs='y')\n"
        "assert 'jax' in sys.modules and callable(f)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["compile", "derive", "derive_jvp"])
def test_a_program_that_is_not_text_a_path_or_a_program_is_an_error_naming_the_call(name: str) -> None:
    with pytest.raises(ig.IndexgradError) as e:
        getattr(ig, name)(5)
    assert e.value.message == f"{name}() takes .idx text, the path of an .idx file or a Program, got int"


def test_compile_with_a_dtype_on_numpy_computes_every_float_in_it() -> None:
    """SPEC 7: compile(dtype=) on numpy, as on torch: lists and integer arrays become that dtype,
    an array of another float dtype is refused (no silent rounding); device is "cpu" or none."""
    m = ig.compile("h[b,o] = tanh(x[b,i] W[i,o])\nloss = sum[b,o](h[b,o]^2)", dtype="float32", device="cpu")
    x, W = rng().standard_normal((4, 3)).astype(np.float32), rng(1).standard_normal((3, 2))
    vals = m.forward(x=x.tolist(), W=W.astype(np.float32))
    grads = m.backward(vals)
    assert vals["loss"].dtype == grads["x"].dtype == grads["W"].dtype == np.float32
    h = np.tanh(x.astype(np.float64) @ W.astype(np.float32))  # the float64 oracle
    np.testing.assert_allclose(vals["loss"], (h**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(grads["W"], x.T @ (2 * h * (1 - h**2)), rtol=1e-4, atol=1e-6)
    assert m.forward(x=np.arange(12).reshape(4, 3), W=W.astype(np.float32))["h"].dtype == np.float32
    with pytest.raises(ig.IndexgradError, match=r"'W' holds float64, .* with x\.astype\(numpy\.float32\)"):
        m.forward(x=x, W=W)
    with pytest.raises(ig.IndexgradError, match="is not a float dtype the numpy backend computes in"):
        ig.compile("y = x[i]", dtype="int32")


def test_ig_torch_and_ig_jax_without_their_package_say_what_to_install() -> None:
    """SPEC 7: a backend whose package is not installed is an IndexgradError saying what to
    install, for ig.torch and ig.jax as for compile(backend=). One fresh interpreter where
    neither package can be imported (sys.modules[name] = None)."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['jax'] = None\n"
        "import indexgrad as ig\n"
        "for name, use in (('torch', lambda: ig.torch.Module), ('jax', lambda: ig.jax.function)):\n"
        "    try:\n"
        "        use()\n"
        "    except ig.IndexgradError as e:\n"
        "        assert f'pip install {name}' in str(e) and f'indexgrad.{name}' in str(e), str(e)\n"
        "    else:\n"
        "        raise AssertionError(f'ig.{name} loaded without {name}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_model_that_has_run_copies_and_pickles_without_its_plans() -> None:
    """copy.deepcopy and pickle of a compiled model keep the program and settings and plan again:
    its plans held closures (and on torch per-thread state) that neither can copy."""
    import copy
    import pickle

    model = ig.compile("y[b,o] = tanh(x[b,i] W[i,o])\nloss = sum[b,o](y[b,o]^2)", tol=1e-9)
    g = rng(3)
    arrays = {"x": g.standard_normal((4, 3)), "W": g.standard_normal((3, 2))}
    vals = model.forward(**arrays)
    want, hv = model.backward(vals), model.hvp(vals, v={"W": arrays["W"]})
    model.value_and_grad(arrays)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other.iterations == model.iterations and other.program == model.program
        got = other.forward(**arrays)
        np.testing.assert_array_equal(got["loss"], vals["loss"])
        for k, a in other.backward(got).items():
            np.testing.assert_array_equal(a, want[k])
        for k, a in other.value_and_grad(arrays)[1].items():
            np.testing.assert_array_equal(a, want[k])
        for k, a in other.hvp(got, v={"W": arrays["W"]}).items():
            np.testing.assert_array_equal(a, hv[k])


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_bfloat16_array_is_a_located_error_that_says_to_convert_it(backend: str) -> None:
    """torch's describe raised without a place or the tensor's name; jax's bfloat16 (an ml_dtypes
    type numpy calls kind V) was said not to hold real numbers."""
    lib = pytest.importorskip(backend)
    x = lib.ones(3, dtype=lib.bfloat16) if backend == "torch" else lib.numpy.ones(3, lib.numpy.bfloat16)
    model = ig.compile("y = x[i]^2", backend=backend)
    message = r"the value given for 'x' holds (torch\.)?bfloat16, .* convert it"
    with pytest.raises(ig.IndexgradError, match=message) as e:
        model.forward(x=x)
    assert (e.value.line, e.value.column) == (1, 5)
