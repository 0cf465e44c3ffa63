"""Hostile inputs the earlier rounds missed: each test is a reproducer that failed before its fix
(an internal error, a silently wrong result, or a message about the wrong thing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_reliability import assert_no_crash_text, run_cli

import indexgrad as ig

AFFINE = "param W[j,i], B[i]\ny[b,i] = x[b,j] W[j,i]\ny[b,i] += B[i]\n"


def affine_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(2, 3)), "W": rng.normal(size=(3, 4)), "B": rng.normal(size=4)}


# ---- a program that defines nothing ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["backward", "hvp"])
@pytest.mark.parametrize("src", ["", "input x[i]\n"])
def test_plan_of_a_gradient_of_nothing_says_so(src: str, mode: str) -> None:
    """plan() took the last statement of a program with none: IndexError."""
    model = ig.compile(src)
    arrays = {"x": np.ones(2)} if src else {}
    with pytest.raises(ig.IndexgradError, match="defines nothing to differentiate"):
        model.plan(arrays, mode=mode)
    assert model.plan(arrays, mode="jvp").steps == ()  # no loss is needed: nothing to do


@pytest.mark.parametrize("argv", [["plan", "--grad"], ["grad", "--format", "numpy"]])
def test_cli_gradient_of_an_empty_file_is_a_user_error(tmp_path: Path, argv: list[str]) -> None:
    empty = tmp_path / "empty.idx"
    empty.write_text("# nothing yet\n")
    code, _, err = run_cli([argv[0], str(empty), *argv[1:]])
    assert code == 2 and "defines nothing to differentiate" in err, err
    assert_no_crash_text(err)


@pytest.mark.parametrize("command", ["grad", "check", "cost", "graph --grad"])
def test_an_empty_file_is_named_in_the_error(tmp_path: Path, command: str) -> None:
    """The error was `indexgrad grad: error: the program defines nothing...`: which file?"""
    empty = tmp_path / "empty.idx"
    empty.write_text("\n")
    name, *flags = command.split()
    code, _, err = run_cli([name, str(empty), *flags])
    assert code == 2 and err.startswith(f"{empty}: error: the program defines nothing"), err


@pytest.mark.parametrize("loss", [["y"], {"y": 1}, 3])
@pytest.mark.parametrize("mode", ["backward", "hvp"])
def test_plan_refuses_a_loss_that_is_no_name(loss: object, mode: str) -> None:
    """A list or dict loss reached `loss in shapes`: TypeError, unhashable type."""
    with pytest.raises(ig.IndexgradError, match="loss must be the name of a defined tensor"):
        ig.compile(AFFINE).plan(affine_arrays(), mode=mode, loss=loss)  # type: ignore[arg-type]


# ---- flags ----------------------------------------------------------------------------------------


def test_dims_given_twice_are_both_used(tmp_path: Path) -> None:
    """`--dims b=2,j=4 --dims i=5` kept only the last occurrence: j was silently 3."""
    prog = tmp_path / "affine.idx"
    prog.write_text(AFFINE)
    code, out, _ = run_cli(["cost", str(prog), "--dims", "b=2,j=4", "--dims", "i=5"])
    assert code == 0 and "index sizes b=2, i=5, j=4" in out, out
    code, _, err = run_cli(["plan", str(prog), "--dims", "b=2", "--dims", "b=3"])
    assert code == 2 and "--dims gives 'b' twice" in err, err


def test_wrt_given_twice_lists_both(tmp_path: Path) -> None:
    prog = tmp_path / "affine.idx"
    prog.write_text(AFFINE)
    code, out, _ = run_cli(["grad", str(prog), "--wrt", "W", "--wrt", "B"])
    assert code == 0 and "W.grad" in out and "B.grad" in out and "x.grad" not in out, out


# ---- Model.plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, -3), (2, 3.5), (True, 3), (2, "3")])
def test_plan_refuses_a_shape_that_is_no_shape(shape: tuple) -> None:
    """A tuple with a negative or fractional entry was read as an array of those numbers ("'x' is
    used with 2 indices but its array has 1 dimensions"), and True as a size of 1."""
    with pytest.raises(ig.IndexgradError, match=r"the shape given for 'x' must be a tuple of whole numbers"):
        ig.compile(AFFINE).plan({"x": shape, "W": (3, 4), "B": (4,)})


def test_plan_of_integer_inputs_is_the_plan_forward_runs() -> None:
    """Integer inputs are computed as float64, but plan() planned them as given: a float32 result
    where forward() gives float64."""
    model = ig.compile(AFFINE)
    arrays = {**affine_arrays(), "W": np.ones((3, 4), np.float32), "B": np.ones(4, np.float32)}
    arrays["x"] = np.arange(6).reshape(2, 3)
    plan = model.plan(arrays)
    assert dict((n, d) for n, _, d in plan.inputs)["x"] == "float64"
    assert str(model.plan({**arrays, "x": (2, 3)})) == str(plan)
    assert model.forward(**arrays)["y"].dtype == np.float64


# ---- integers a backend's library cannot hold ------------------------------------------------------


def test_torch_refuses_unsigned_integers_past_int64() -> None:
    """uint64 went through int64 on the torch backend: 2^63 became -2^63 and 2^64 - 1 became -1."""
    pytest.importorskip("torch")
    x = np.array([3, 2**63], np.uint64)
    wrapped = "holds the integer 9223372036854775808, which torch would wrap"
    with pytest.raises(ig.IndexgradError, match=wrapped):
        ig.compile("y[i] = x[i]", backend="torch").forward(x=x)
    small = ig.compile("y[i] = x[i]", backend="torch").forward(x=np.array([3, 2**40], np.uint64))["y"]
    assert small.tolist() == [3.0, 2.0**40]


@pytest.mark.parametrize(
    ("src", "name", "value"),
    [("y[i] = x[i]", "x", np.array([1, 2**40])), ("y[i] = x[i]", "x", np.array([2**33], np.uint64)),
     ("l[b] = -log(P[b, y[b]])", "y", np.array([1, -(2**40)]))],
)
def test_jax_in_32_bits_refuses_integers_past_32_bits(src: str, name: str, value: np.ndarray) -> None:
    """jax without 64-bit mode wrapped int64 and uint64 into 32 bits: 2^40 became 0, and a label
    of -2^40 read row 0 instead of being out of range."""
    jax = pytest.importorskip("jax")
    arrays = {name: value, "P": np.ones((2, 3), np.float32)}
    model = ig.compile(src, backend="jax")
    refused = f"'{name}' holds the integer .*jax_enable_x64"
    with jax.enable_x64(False), pytest.raises(ig.IndexgradError, match=refused):
        model.forward(**{n: a for n, a in arrays.items() if n in model.inputs + model.labels})


# ---- tensors and arrays the torch backend cannot take as they are -----------------------------------


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_torch_refuses_sparse_and_nested_tensors_by_name() -> None:
    """A sparse or nested tensor passed the dtype check and failed inside a torch kernel
    (RuntimeError: addmm_sparse_dense..., reshape is not implemented for sparse tensors)."""
    torch = pytest.importorskip("torch")
    model = ig.compile(AFFINE, backend="torch")
    arrays = {n: torch.tensor(a) for n, a in affine_arrays().items()}
    for name, kind, value in [
        ("W", "sparse_coo", arrays["W"].to_sparse()),
        ("B", "sparse_coo", arrays["B"].to_sparse()),
        ("x", "sparse_csr", arrays["x"].to_sparse_csr()),
        ("x", "nested", torch.nested.as_nested_tensor([arrays["x"][0], arrays["x"][1]])),
    ]:
        with pytest.raises(ig.IndexgradError, match=f"'{name}' is a {kind} tensor; pass a dense one"):
            model.forward(**{**arrays, name: value})
    vals = model.forward(**arrays)
    with pytest.raises(ig.IndexgradError, match="seed for 'y' is a sparse_coo tensor"):
        model.backward(vals, seed={"y": torch.ones(2, 4, dtype=torch.float64).to_sparse()})


def test_torch_takes_byte_swapped_arrays_and_names_float128() -> None:
    """A big-endian float64 array was "not an array: dtype('>f8')" on the torch backend (numpy's
    takes it), and a float128 one likewise, with no word on what to do."""
    pytest.importorskip("torch")
    model = ig.compile(AFFINE, backend="torch")
    arrays = affine_arrays()
    want = ig.compile(AFFINE).forward(**arrays)["y"]
    got = model.forward(**{**arrays, "x": arrays["x"].astype(">f8")})["y"]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-15)
    with pytest.raises(ig.IndexgradError, match="'x' holds float128, which torch does not compute in"):
        model.forward(**{**arrays, "x": arrays["x"].astype(np.longdouble)})


# ---- ig.torch and ig.jax: arguments of the wrong kind ---------------------------------------------


@pytest.mark.parametrize("lib", ["torch", "jax"])
@pytest.mark.parametrize(("outputs", "needle"), [(3, "not int"), ([None], "as strings, not NoneType")])
def test_outputs_that_are_no_names_are_refused(lib: str, outputs: object, needle: str) -> None:
    """outputs=3 reached tuple(outputs): TypeError, 'int' object is not iterable."""
    pytest.importorskip(lib)
    make = (lambda: ig.torch.function(AFFINE, outputs=outputs)) if lib == "torch" else (
        lambda: ig.jax.function(AFFINE, outputs=outputs)
    )
    with pytest.raises(ig.IndexgradError, match=f"outputs must .*{needle}"):
        make()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"dtype": "nope"}, "dtype='nope' is not a float dtype"),
        ({"dtype": "int32"}, "is not a float dtype"),  # RuntimeError: only floats can require grad
        ({"device": "nope"}, "device='nope' is not a torch device"),  # RuntimeError from torch.as_tensor
        ({"seed": -1}, "seed of the params must be a non-negative integer, got -1"),  # ValueError from numpy
        ({"seed": "a"}, "seed of the params must be a non-negative integer, got 'a'"),  # TypeError
    ],
)
def test_torch_module_refuses_options_it_cannot_use(kwargs: dict, needle: str) -> None:
    pytest.importorskip("torch")
    with pytest.raises(ig.IndexgradError, match=needle):
        ig.torch.Module(AFFINE, sizes={"i": 4, "j": 3}, **kwargs)


def test_torch_module_reads_integer_inputs_in_its_own_float_dtype() -> None:
    """An int64 x with float32 params gave a float64 output (the Model made x float64 first);
    torch's own arithmetic gives float32, and so do the same values given as float32."""
    torch = pytest.importorskip("torch")
    module = ig.torch.Module(AFFINE, sizes={"i": 4, "j": 3}, seed=0)
    x = torch.arange(6).reshape(2, 3)
    y = module(x=x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, module(x=x.float()), rtol=0, atol=0)
    f = ig.torch.function(AFFINE, outputs="y")
    assert f(torch.ones(3, 4), torch.ones(4), x).dtype == torch.float32


def test_jax_function_takes_a_torch_tensor_as_the_jax_backend_does() -> None:
    """A torch tensor went to jax as it was: TypeError from jax (and a tensor that requires grad
    a RuntimeError from numpy)."""
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    f = ig.jax.function(AFFINE, outputs="y")
    arrays = {n: a.astype(np.float32) for n, a in affine_arrays().items()}
    want = f({n: jnp.asarray(a) for n, a in arrays.items()})
    np.testing.assert_allclose(f({**arrays, "x": torch.tensor(arrays["x"])}), want, rtol=1e-6)
    with pytest.raises(ig.IndexgradError, match="'x' is not an array: .*requires grad"):
        f({**arrays, "x": torch.tensor(arrays["x"], requires_grad=True)})


@pytest.mark.parametrize(("filename", "shown"), [(None, "<string>"), (Path("layer.idx"), "layer.idx")])
def test_parse_takes_a_missing_or_path_filename(filename: object, shown: str) -> None:
    with pytest.raises(ig.IndexgradError) as e:
        ig.parse("y[i] = \n", filename=filename)  # type: ignore[arg-type]
    assert str(e.value).startswith(f"{shown}:1:8: error:"), str(e.value)


def test_parse_refuses_a_filename_that_is_no_name() -> None:
    """filename=3 was kept, and printing the first error about the program raised AttributeError."""
    with pytest.raises(ig.IndexgradError, match="parse\\(\\) takes the filename as a string, got int"):
        ig.parse("y[i] = x[i]\n", filename=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dims", "needle"),
    [
        ("i=3", "dims must be a dict from index names to sizes, not str"),  # ValueError from dict()
        ({"i": -1}, "the size of index 'i' must be a whole number of at least 1, got -1"),
        ({"i": 2.0}, "the size of index 'i' must be a whole number of at least 1, got 2.0"),
        ({"k": 2}, "'k', which is not an index of the program"),  # sized nothing, silently
    ],
)
def test_to_python_refuses_dims_that_size_nothing(dims: object, needle: str) -> None:
    with pytest.raises(ig.IndexgradError, match=needle):
        ig.parse("loss = x[i]^2\n").to_python("numpy", dims=dims)  # type: ignore[arg-type]
