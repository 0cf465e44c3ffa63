"""Reliability (issue 8): numerics stay finite and quiet, check_finite names the statement, `.npz`
inputs fail clearly, `--out` is written atomically, a Model is safe across threads, and the wheel
installs and runs outside the source tree."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import indexgrad as ig
from indexgrad.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DTYPES = [np.float32, np.float64]


@contextlib.contextmanager
def strict_numerics():
    """Any RuntimeWarning (overflow, invalid, divide by zero) is an error.

    Underflow stays ignored, as in numpy's own default: exp(-2e4) is 0 by design in a stable
    logsumexp, and numpy never warns about it.
    """
    with warnings.catch_warnings(), np.errstate(all="raise", under="ignore"):
        warnings.simplefilter("error")
        yield


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_no_crash_text(text: str) -> None:
    assert "Traceback" not in text, text
    assert "internal error" not in text, text


# ---- numerics: finite and warning-free for inputs of +-1e4 ------------------------------------------

BIG = [[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4], [1e4, 1e4 - 1, -1e4]]

STABLE = {
    "logsumexp": "y[b] = logsumexp[k](x[b,k])\nloss = sum[b](y[b])",
    "softmax": "P[b,k] = exp(x[b,k] - logsumexp[c](x[b,c]))\nloss = sum[b,k](P[b,k] x[b,k])",
    "softmax_xent": "loss = mean[b](logsumexp[c](x[b,c]) - sum[c](Y[b,c] x[b,c]))",
    "logloss": "Q[b,c] = exp(x[b,c] - logsumexp[k](x[b,k]))\nloss = mean[b](-log(Q[b, lab[b]]))",
    "log_softmax": "L[b,c] = x[b,c] - logsumexp[k](x[b,k])\nloss = -sum[b](L[b, lab[b]])",
    "sigmoid": "y[b,k] = sigmoid(x[b,k])\nloss = sum[b,k](y[b,k])",
    "softplus": "y[b,k] = softplus(x[b,k])\nloss = sum[b,k](y[b,k])",
    "tanh": "y[b,k] = tanh(x[b,k])\nloss = sum[b,k](y[b,k])",
    "logistic_loss": "loss = sum[b,k](softplus(x[b,k]) - Y[b,k] x[b,k])",
    "max_gate": "loss = sum[b,k](max(x[b,k], 0) + min(x[b,k], 0)^2 / 1e8)",
}


def stable_inputs(model: ig.Model, dtype) -> dict[str, np.ndarray]:
    x = np.array(BIG, dtype=dtype)
    out: dict[str, np.ndarray] = {"x": x}
    if "Y" in model.inputs:
        out["Y"] = np.eye(4, 3, dtype=dtype)
    if "lab" in model.labels:
        out["lab"] = np.array([0, 1, 2, 1])
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(STABLE))
def test_stable_programs_stay_finite_and_quiet(name: str, dtype) -> None:
    model = ig.compile(STABLE[name])
    arrays = stable_inputs(model, dtype)
    with strict_numerics():
        vals = model.forward(**arrays)
        grads = model.backward(vals)
        tans = model.jvp(vals, {"x": np.ones_like(arrays["x"])})
    for n, v in vals.items():
        if n == "lab":
            continue
        assert np.all(np.isfinite(v)), f"{n} = {v}"
        assert np.asarray(v).dtype == dtype, f"{n} is {np.asarray(v).dtype}, not {np.dtype(dtype)}"
    for n, g in grads.items():
        assert np.all(np.isfinite(g)), f"gradient of {n} = {g}"
        assert g.dtype == dtype
    for n, t in tans.items():
        if n != "lab":
            assert np.all(np.isfinite(t)), f"tangent of {n} = {t}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_extreme_values_are_right(dtype) -> None:
    x = np.array([1e4, -1e4, 0.0], dtype=dtype)
    with strict_numerics():
        sig = ig.compile("y[i] = sigmoid(x[i])\nloss = sum[i](y[i])")
        v = sig.forward(x=x)
        np.testing.assert_allclose(v["y"], [1.0, 0.0, 0.5])
        np.testing.assert_allclose(sig.backward(v)["x"], [0.0, 0.0, 0.25])

        sp = ig.compile("y[i] = softplus(x[i])\nloss = sum[i](y[i])")
        v = sp.forward(x=x)
        np.testing.assert_allclose(v["y"], [1e4, 0.0, np.log(2)], rtol=1e-6)
        np.testing.assert_allclose(sp.backward(v)["x"], [1.0, 0.0, 0.5])

        lse = ig.compile("loss = logsumexp[i](x[i])")
        v = lse.forward(x=x)
        np.testing.assert_allclose(v["loss"], 1e4, rtol=1e-6)
        np.testing.assert_allclose(lse.backward(v)["x"], [1.0, 0.0, 0.0], atol=1e-6)

        lse2 = ig.compile("loss = logsumexp[i](x[i])")
        v = lse2.forward(x=np.array([1e4, 1e4], dtype=dtype))
        np.testing.assert_allclose(v["loss"], 1e4 + np.log(2), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_logsumexp_of_all_minus_infinity(dtype) -> None:
    """A row that is entirely -inf (a fully masked row) gives -inf, not NaN, and no warning."""
    x = np.array([[-np.inf, -np.inf], [0.0, -np.inf]], dtype=dtype)
    model = ig.compile("y[b] = logsumexp[k](x[b,k])")
    with strict_numerics():
        y = model.forward(x=x)["y"]
    assert y[0] == -np.inf
    np.testing.assert_allclose(y[1], 0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_log_of_zero_is_minus_infinity_quietly(dtype) -> None:
    model = ig.compile("y[i] = log(x[i])\nloss = sum[i](y[i])")
    x = np.array([0.0, 1.0, np.e], dtype=dtype)
    with strict_numerics():
        for _ in range(50):  # no warning storm: not one warning, however often it runs
            vals = model.forward(x=x)
    assert vals["y"][0] == -np.inf
    np.testing.assert_allclose(vals["y"][1:], [0.0, 1.0], rtol=1e-6)
    assert vals["loss"] == -np.inf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = model.backward(vals)
    assert grads["x"][0] == np.inf  # 1/0, deliberately
    assert len(caught) <= 1, [str(w.message) for w in caught]


def test_log_of_zero_through_the_cli_is_quiet(tmp_path: Path) -> None:
    prog = tmp_path / "log0.idx"
    prog.write_text("y[i] = log(x[i])\n")
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.zeros(3))
    code, out, err = run_cli(["run", str(prog), "--inputs", str(inputs)])
    assert code == 0, err
    assert "Warning" not in err and "warning" not in err.lower(), err


# ---- check_finite: the first statement whose output is NaN or Inf --------------------------------

NET = """\
# a small net; the comment and the blank line count as lines

param w[k]
input x[b,k]
h[b] = x[b,k] w[k]
p[b] = 1 + exp(h[b])
loss = mean[b](log(p[b]) - h[b])
"""


def finite_error(model: ig.Model, **arrays) -> ig.IndexgradError:
    """The located error of forward(check_finite=True), which replaces numpy's warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ig.IndexgradError) as info:
            model.forward(check_finite=True, **arrays)
    return info.value


def names(message: str, name: str) -> bool:
    """The message names `name` or a temporary of its statement (`p.exp`)."""
    return re.search(rf"'{re.escape(name)}(\.[\w.]+)?'", message) is not None


def test_check_finite_names_the_first_statement_with_inf() -> None:
    model = ig.compile(ig.parse(NET, "net.idx"))
    x = np.array([[800.0, 0.0], [0.0, 1.0]])
    w = np.ones(2)
    vals = model.forward(x=x, w=w)  # without the check: a result, with Inf in it
    assert np.isinf(vals["p"][0]) and np.isinf(vals["loss"])
    e = finite_error(model, x=x, w=w)
    assert (e.line, e.filename) == (6, "net.idx"), str(e)
    assert e.column == 1
    assert "Inf" in e.message and names(e.message, "p"), e.message
    assert "p[b] = 1 + exp(h[b])" in str(e)  # the rendered error shows the statement


def test_check_finite_names_nan() -> None:
    model = ig.compile("a[i] = x[i] + 1\nr[i] = sqrt(a[i])\ns = sum[i](r[i])\n")
    e = finite_error(model, x=np.array([-3.0, 0.5]))
    assert e.line == 2, str(e)
    assert "NaN" in e.message and names(e.message, "r"), e.message


def test_check_finite_on_a_nan_input_names_the_first_statement_reading_it() -> None:
    model = ig.compile("a[i] = 2 * z[i]\nb[i] = x[i] + a[i]\n")
    e = finite_error(model, x=np.array([np.nan, 1.0]), z=np.ones(2))
    assert e.line == 2, str(e)
    assert "NaN" in e.message


def test_check_finite_passes_finite_values_and_returns_them() -> None:
    model = ig.compile(ig.parse(NET, "net.idx"))
    arrays = {"x": np.array([[0.5, 0.0], [0.0, 1.0]]), "w": np.ones(2)}
    got = model.forward(check_finite=True, **arrays)
    want = model.forward(**arrays)
    assert got.keys() == want.keys()
    for n in want:
        np.testing.assert_array_equal(got[n], want[n])


def test_check_finite_after_a_planned_run_with_the_same_shapes() -> None:
    """The planned (cached) path for a shape signature does not skip the check."""
    model = ig.compile(ig.parse(NET, "net.idx"))
    ok = {"x": np.zeros((2, 2)), "w": np.ones(2)}
    model.forward(**ok)
    model.forward(**ok)
    e = finite_error(model, x=np.array([[800.0, 0.0], [0.0, 1.0]]), w=np.ones(2))
    assert e.line == 6


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_check_finite_overflow_in_float32(dtype) -> None:
    model = ig.compile("e[i] = exp(x[i])\nz = sum[i](e[i])\nq[i] = e[i] / z\n")
    x = np.array([100.0, 0.0], dtype=dtype)  # exp(100) overflows float32 only
    if dtype is np.float32:
        e = finite_error(model, x=x)
        assert e.line == 1 and "Inf" in e.message, str(e)
    else:
        vals = model.forward(check_finite=True, x=x)
        np.testing.assert_allclose(vals["q"], [1.0, np.exp(-100)])


def test_naive_softmax_overflow_is_caught_by_check_finite() -> None:
    """exp(1e4) overflows; the naive softmax (no logsumexp) is named where it goes wrong."""
    text = EXAMPLES.joinpath("softmax_xent.idx").read_text()
    model = ig.compile(ig.parse(text, "softmax_xent.idx"))
    arrays = {
        "W": np.eye(3) * 1e4,
        "b": np.zeros(3),
        "x": np.array([1.0, 0.0, 0.0]),
        "t": np.array([1.0, 0.0, 0.0]),
    }
    e = finite_error(model, **arrays)
    line = next(k for k, s in enumerate(text.splitlines(), 1) if s.startswith("e[i] = exp"))
    assert e.line == line, str(e)


# ---- .npz inputs through `indexgrad run` -----------------------------------------------------------


@pytest.fixture
def affine(tmp_path: Path) -> Path:
    p = tmp_path / "affine.idx"
    shutil.copy(EXAMPLES / "affine.idx", p)
    return p


def good_inputs(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((2, 3)), W=rng.standard_normal((3, 4)), B=rng.standard_normal(4))
    return path


def run_error(argv: list[str]) -> str:
    code, out, err = run_cli(argv)
    assert code == 2, (code, out, err)
    assert_no_crash_text(out + err)
    assert "error" in err
    return err


def test_run_reads_npz_and_prints_outputs(affine: Path, tmp_path: Path) -> None:
    code, out, err = run_cli(["run", str(affine), "--inputs", str(good_inputs(tmp_path / "in.npz"))])
    assert code == 0, err
    assert "y: shape (2, 4)" in out


def test_missing_inputs_file(affine: Path, tmp_path: Path) -> None:
    err = run_error(["run", str(affine), "--inputs", str(tmp_path / "nope.npz")])
    assert "no such file" in err.lower() or "not found" in err.lower(), err


def test_missing_program_file(tmp_path: Path) -> None:
    inputs = good_inputs(tmp_path / "in.npz")
    err = run_error(["run", str(tmp_path / "nope.idx"), "--inputs", str(inputs)])
    assert "nope.idx" in err


def test_inputs_path_is_a_directory(affine: Path, tmp_path: Path) -> None:
    """Unreadable as a file (works as root too, where chmod 000 does not stop reading)."""
    d = tmp_path / "dir.npz"
    d.mkdir()
    err = run_error(["run", str(affine), "--inputs", str(d)])
    assert "dir.npz" in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_inputs_file(affine: Path, tmp_path: Path) -> None:
    p = good_inputs(tmp_path / "in.npz")
    p.chmod(0)
    try:
        err = run_error(["run", str(affine), "--inputs", str(p)])
    finally:
        p.chmod(0o644)
    assert "in.npz" in err


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_not_an_npz(affine: Path, tmp_path: Path, seed: int) -> None:
    p = tmp_path / "random.npz"
    p.write_bytes(np.random.default_rng(seed).bytes(512))
    run_error(["run", str(affine), "--inputs", str(p)])


def test_random_bytes_are_called_not_an_npz(affine: Path, tmp_path: Path) -> None:
    p = tmp_path / "random.npz"
    p.write_bytes(b"this is not an archive\n" * 10)
    err = run_error(["run", str(affine), "--inputs", str(p)])
    assert "pickle" not in err.lower(), err


@pytest.mark.parametrize(
    "data",
    [b"", b"PK\x03\x04" + b"\x00" * 40, b"\x93NUMPY\x01\x00"],
    ids=["empty", "broken-zip-header", "broken-npy-header"],
)
def test_truncated_or_empty_files(affine: Path, tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "bad.npz"
    p.write_bytes(data)
    run_error(["run", str(affine), "--inputs", str(p)])


def test_truncated_npz(affine: Path, tmp_path: Path) -> None:
    whole = good_inputs(tmp_path / "in.npz").read_bytes()
    for cut in (10, len(whole) // 2, len(whole) - 5):
        p = tmp_path / f"cut{cut}.npz"
        p.write_bytes(whole[:cut])
        run_error(["run", str(affine), "--inputs", str(p)])


def test_plain_npy_is_refused_clearly(affine: Path, tmp_path: Path) -> None:
    p = tmp_path / "x.npy"
    np.save(p, np.ones((2, 3)))
    err = run_error(["run", str(affine), "--inputs", str(p)])
    assert "npz" in err


def test_pickled_object_array_is_refused(affine: Path, tmp_path: Path) -> None:
    p = tmp_path / "obj.npz"
    np.savez(p, a=np.array([object()], dtype=object))
    err = run_error(["run", str(affine), "--inputs", str(p)])
    assert "pickle" in err.lower(), err


def test_pickled_array_next_to_good_ones_is_refused(affine: Path, tmp_path: Path) -> None:
    p = tmp_path / "mixed.npz"
    rng = np.random.default_rng(0)
    np.savez(
        p, x=rng.standard_normal((2, 3)), W=rng.standard_normal((3, 4)), B=np.array([{"a": 1}], dtype=object)
    )
    err = run_error(["run", str(affine), "--inputs", str(p)])
    assert "pickle" in err.lower(), err


def test_pickle_file_is_never_unpickled(affine: Path, tmp_path: Path) -> None:
    """A raw pickle that would run code when unpickled is refused without running it."""
    import pickle

    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    p = tmp_path / "evil.npz"
    p.write_bytes(pickle.dumps(Boom()))
    run_error(["run", str(affine), "--inputs", str(p)])
    assert not marker.exists()


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"x": np.ones((2, 3)), "W": np.ones((3, 4))}, "B"),  # missing input
        ({"x": np.ones((2, 3)), "W": np.ones((3, 4)), "B": np.ones(5)}, "B"),  # mis-sized
        ({"x": np.ones((2, 3)), "W": np.ones((3, 4)), "B": np.array(["a"] * 4)}, "B"),  # strings
        ({"x": np.ones((2, 3)), "W": np.ones((3, 4)), "B": np.ones(4), "Q": np.ones(1)}, "Q"),  # extra
    ],
    ids=["missing-array", "mis-sized", "string-dtype", "extra-array"],
)
def test_wrong_arrays_in_npz(affine: Path, tmp_path: Path, arrays: dict, needle: str) -> None:
    p = tmp_path / "in.npz"
    np.savez(p, **arrays)
    err = run_error(["run", str(affine), "--inputs", str(p)])
    assert needle in err, err


# ---- --out: written atomically ------------------------------------------------------------------


def test_out_is_complete_and_leaves_no_temporaries(affine: Path, tmp_path: Path) -> None:
    inputs = good_inputs(tmp_path / "in.npz")
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "result.npz"
    code, _, err = run_cli(["run", str(affine), "--inputs", str(inputs), "--out", str(out)])
    assert code == 0, err
    assert sorted(os.listdir(outdir)) == ["result.npz"]
    with np.load(out, allow_pickle=False) as z:
        y = z["y"]
    with np.load(inputs) as i:
        np.testing.assert_allclose(y, i["x"] @ i["W"] + i["B"])


def test_out_replaces_an_existing_file_whole(affine: Path, tmp_path: Path) -> None:
    inputs = good_inputs(tmp_path / "in.npz")
    out = tmp_path / "result.npz"
    out.write_bytes(b"old contents")
    code, _, err = run_cli(["run", str(affine), "--inputs", str(inputs), "--out", str(out)])
    assert code == 0, err
    with np.load(out, allow_pickle=False) as z:
        assert z["y"].shape == (2, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["affine.idx", "in.npz", "result.npz"]


def _interrupting_write(exc: BaseException):
    real = np.lib.format.write_array

    def write_array(file, array, **kwargs):
        real(file, array, **kwargs)  # the temporary archive has an entry written ...
        file.write(b"\0" * 17)  # ... and some bytes more, and the run dies before the rename
        raise exc

    return write_array


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1)], ids=["ctrl-c", "exit"])
def test_interrupted_out_keeps_the_old_file_and_no_temporaries(
    affine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    inputs = good_inputs(tmp_path / "in.npz")
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "result.npz"
    np.savez(out, y=np.zeros(1))
    old = out.read_bytes()
    monkeypatch.setattr(np.lib.format, "write_array", _interrupting_write(exc))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        run_cli(["run", str(affine), "--inputs", str(inputs), "--out", str(out)])
    assert out.read_bytes() == old  # never a truncated file
    assert sorted(os.listdir(outdir)) == ["result.npz"]


def test_interrupted_first_write_leaves_nothing(
    affine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = good_inputs(tmp_path / "in.npz")
    outdir = tmp_path / "out"
    outdir.mkdir()
    monkeypatch.setattr(np.lib.format, "write_array", _interrupting_write(KeyboardInterrupt()))
    with contextlib.suppress(KeyboardInterrupt):
        run_cli(["run", str(affine), "--inputs", str(inputs), "--out", str(outdir / "r.npz")])
    assert os.listdir(outdir) == []


def test_out_write_failure_is_a_user_error(
    affine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    inputs = good_inputs(tmp_path / "in.npz")
    outdir = tmp_path / "out"
    outdir.mkdir()
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np.lib.format, "write_array", _interrupting_write(full))
    err = run_error(["run", str(affine), "--inputs", str(inputs), "--out", str(outdir / "r.npz")])
    assert "r.npz" in err
    assert os.listdir(outdir) == []


def test_out_into_a_missing_directory(affine: Path, tmp_path: Path) -> None:
    inputs = good_inputs(tmp_path / "in.npz")
    err = run_error(["run", str(affine), "--inputs", str(inputs), "--out", str(tmp_path / "no" / "r.npz")])
    assert "r.npz" in err


def test_out_onto_a_directory(affine: Path, tmp_path: Path) -> None:
    inputs = good_inputs(tmp_path / "in.npz")
    d = tmp_path / "taken.npz"
    d.mkdir()
    run_error(["run", str(affine), "--inputs", str(inputs), "--out", str(d)])
    assert d.is_dir() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_out_file_permissions_follow_the_umask(affine: Path, tmp_path: Path) -> None:
    inputs = good_inputs(tmp_path / "in.npz")
    out = tmp_path / "r.npz"
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(["run", str(affine), "--inputs", str(inputs), "--out", str(out)])
    finally:
        os.umask(old)
    assert code == 0, err
    assert out.stat().st_mode & 0o777 == 0o644


# ---- threads: one compiled Model called from several threads at once ------------------------------


def _mlp_arrays(batch: int, seed: int, dtype=np.float64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, h, c = 5, 4, 3
    return {
        "W1": rng.standard_normal((d, h)).astype(dtype),
        "B1": rng.standard_normal(h).astype(dtype),
        "W2": rng.standard_normal((h, c)).astype(dtype),
        "B2": rng.standard_normal(c).astype(dtype),
        "x": rng.standard_normal((batch, d)).astype(dtype),
        "Y": np.eye(c, dtype=dtype)[rng.integers(0, c, batch)],
    }


def _work(model: ig.Model, arrays: dict) -> tuple[dict, dict, dict]:
    vals = model.forward(**arrays)
    grads = model.backward(vals)
    tans = model.jvp(vals, {"W1": np.ones_like(arrays["W1"])})
    return {k: np.array(v) for k, v in vals.items()}, grads, {"loss": np.array(tans["loss"])}


def _same(a: tuple, b: tuple) -> None:
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_allclose(x[k], y[k], rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("example", ["mlp.idx", "cnn.idx", "logloss.idx", "strided_conv.idx"])
def test_model_from_four_threads_matches_serial(example: str) -> None:
    from indexgrad.shapes import random_inputs

    prog = ig.load(EXAMPLES / example)
    dims_list = [{"b": b, "c": 3} for b in (1, 2, 3, 5, 2, 3, 1, 5)]  # several shape signatures
    jobs = [random_inputs(prog, dims, np.random.default_rng(k)) for k, dims in enumerate(dims_list)]
    jobs = jobs * 3

    def work(model: ig.Model, arrays: dict) -> tuple:
        vals = model.forward(**arrays)
        grads = model.backward(vals)
        return {k: np.array(v) for k, v in vals.items()}, grads

    serial_model = ig.compile(prog)
    serial = [work(serial_model, a) for a in jobs]

    model = ig.compile(prog)  # fresh: its plan caches fill while the threads race
    barrier = threading.Barrier(4)

    def task(k: int) -> list:
        barrier.wait()
        return [(i, work(model, jobs[i])) for i in range(k, len(jobs), 4)]

    with ThreadPoolExecutor(4) as pool:
        results = [r for part in pool.map(task, range(4)) for r in part]
    assert len(results) == len(jobs)
    for i, got in results:
        _same(got, serial[i])


def test_model_from_four_threads_forward_backward_jvp() -> None:
    prog = ig.load(EXAMPLES / "mlp.idx")
    jobs = [_mlp_arrays(batch, seed) for seed, batch in enumerate([1, 2, 3, 4, 2, 3, 1, 4] * 4)]
    serial = [_work(ig.compile(prog), a) for a in jobs]
    model = ig.compile(prog)
    errors: list[BaseException] = []
    out: dict[int, tuple] = {}
    barrier = threading.Barrier(4)

    def task(k: int) -> None:
        try:
            barrier.wait()
            for i in range(k, len(jobs), 4):
                out[i] = _work(model, jobs[i])
        except BaseException as e:  # reported below, with the thread's exception
            errors.append(e)

    threads = [threading.Thread(target=task, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(out) == list(range(len(jobs)))
    for i in out:
        _same(out[i], serial[i])


def test_threads_with_check_finite_and_errors() -> None:
    """User errors raised in one thread do not disturb the others."""
    model = ig.compile(ig.parse(NET, "net.idx"))
    good = {"x": np.array([[0.5, 0.0], [0.0, 1.0]]), "w": np.ones(2)}
    bad = {"x": np.array([[800.0, 0.0], [0.0, 1.0]]), "w": np.ones(2)}
    want = model.forward(**good)["loss"]

    def task(k: int):
        got = []
        for j in range(30):
            if (j + k) % 3 == 0:
                try:
                    model.forward(check_finite=True, **bad)
                    got.append("no error")
                except ig.IndexgradError as e:
                    got.append(e.line)
            else:
                got.append(float(model.forward(check_finite=bool(j % 2), **good)["loss"]))
        return got

    with ThreadPoolExecutor(4) as pool:
        for got in pool.map(task, range(4)):
            for g in got:
                assert g == 6 or g == pytest.approx(float(want), rel=1e-12), got


# ---- packaging: the wheel installs and runs outside the source tree ------------------------------


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources, install it alone into a fresh venv, run the CLI.

    The venv gets only the wheel; numpy, lark and opt_einsum come from this environment's
    site-packages through PYTHONPATH, which does not run its .pth files (so not the editable
    install of the sources).
    """
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".*_cache"
        ),
    )
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), "./src"],
        check=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    (wheel,) = wheels.glob("indexgrad-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(py), "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip

    away = tmp_path / "elsewhere"
    away.mkdir()
    shutil.copy(EXAMPLES / "mlp.idx", away / "mlp.idx")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(Path(np.__file__).parent.parent)  # the dependencies, not the sources
    where = subprocess.run(
        [str(py), "-c", "import indexgrad; print(indexgrad.__file__)"],
        cwd=away, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert str(ROOT) not in where.stdout and str(venv) in where.stdout, where.stdout

    done = subprocess.run(
        [str(venv / "bin" / "indexgrad"), "grad", "mlp.idx"],
        cwd=away, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "W1.grad" in done.stdout and "B2.grad" in done.stdout, done.stdout
    assert_no_crash_text(done.stdout + done.stderr)

    # the grammar ships inside the wheel: a syntax error is still a located user error
    (away / "bad.idx").write_text("y[i] = x[i] +\n")
    bad = subprocess.run(
        [str(venv / "bin" / "indexgrad"), "check", "bad.idx"],
        cwd=away, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "bad.idx:1:" in bad.stderr, bad.stderr
    assert_no_crash_text(bad.stdout + bad.stderr)


# ---- outputs never overwrite what a command reads; flag and program mistakes are user errors ------


@pytest.mark.parametrize(
    "out, needle",
    [
        ("in.npz", "is the inputs file"),
        ("sub/../in.npz", "is the inputs file"),
        ("link.npz", "is the program file"),  # a symlink to the program
        ("affine.idx", "must end in .npz"),
        ("result.txt", "must end in .npz"),
    ],
)
def test_run_out_never_overwrites_the_program_or_the_inputs(
    affine: Path, tmp_path: Path, out: str, needle: str
) -> None:
    inputs = good_inputs(tmp_path / "in.npz")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.npz").symlink_to(affine)
    before = {p: p.read_bytes() for p in (affine, inputs)}
    err = run_error(["run", str(affine), "--inputs", str(inputs), "--out", str(tmp_path / out)])
    assert err.startswith("indexgrad run: error: --out") and needle in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "result.txt").exists()


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    p = tmp_path / "mlp.idx"
    shutil.copy(EXAMPLES / "mlp.idx", p)
    return p


TRAIN = ["--epochs", "1", "--hidden", "8"]


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--save", "mlp.idx"], "--save"),
        (["--save", "link.npz"], "--save"),
        (["--plot", "link.png"], "--plot"),
        (["--plot", "out.xyz", "--save", "c.npz"], "'.xyz'"),  # refused before any training
        (["--plot", "nowhere/h.png", "--save", "c.npz"], "no such directory"),
    ],
)
def test_train_outputs_never_overwrite_the_program_and_are_checked_first(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], needle: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.npz").symlink_to(mlp)
    (tmp_path / "link.png").symlink_to(mlp)
    before = mlp.read_bytes()
    code, out, err = run_cli(["train", str(mlp), *TRAIN, *flags])
    assert code == 2 and err.startswith("indexgrad train: error:") and needle in err, (code, err)
    assert_no_crash_text(out + err)
    assert "epoch" not in out and not (tmp_path / "c.npz").exists()  # nothing was trained
    assert mlp.read_bytes() == before


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--loss", "nope"], "loss 'nope' is not defined by the program; defined tensors: y"),
        (["--loss", "x"], "loss 'x' is not defined by the program"),  # an input, as grad says
        (["--tolerance", "nan"], "--tolerance must be a positive number"),
        (["--tolerance", "-1"], "--tolerance must be a positive number"),
        (["--dims", "b=3,b=4"], "--dims gives 'b' twice"),
        (["--dims", "b=3,q=3"], "'q', which is not an index of the program; its indices: j, i, b"),
    ],
)
def test_check_flag_mistakes_are_user_errors(affine: Path, flags: list[str], needle: str) -> None:
    err = run_error(["check", str(affine), *flags])
    assert err.startswith("indexgrad check: error:") and needle in err, err


def test_cost_refuses_dims_that_are_no_index(affine: Path) -> None:
    err = run_error(["cost", str(affine), "--dims", "b=2,q=3,z=1"])
    assert err.startswith("indexgrad cost: error: --dims sizes 'q', 'z', which are not indices"), err


def test_train_says_what_a_program_needs(affine: Path, tmp_path: Path) -> None:
    err = run_error(["train", str(affine), *TRAIN])  # no labels Y
    assert err.startswith(f"{affine}: error: train fits a classifier") and "Y[b,c]" in err, err
    vector = tmp_path / "vector.idx"
    vector.write_text("param W[d,c]\ninput x[b,d], Y[b,c]\nz[b,c] = x[b,d] W[d,c]\n")
    err = run_error(["train", str(vector), *TRAIN])
    assert err.startswith(f"{vector}:3:1: error: the loss 'z' must be a scalar"), err
    assert "\n  z[b,c] = x[b,d] W[d,c]\n  ^" in err


@pytest.mark.parametrize("command", ["check", "cost"])
@pytest.mark.parametrize("rank, size", [(65, 1), (2000, 1), (2000, None)])
def test_too_many_indices_is_a_user_error(tmp_path: Path, command: str, rank: int, size: int | None) -> None:
    """Sizes of 1 pass the memory guard (numpy refuses the array); 3 ** 2000 bytes overflow a float."""
    prog = tmp_path / "wide.idx"
    prog.write_text(f"y = a[{','.join(f'i{k}' for k in range(rank))}]\n")
    dims = ["--dims", ",".join(f"i{k}={size}" for k in range(rank))] if size else []
    err = run_error([command, str(prog), *dims])
    assert err.startswith(f"{prog}:1:5: error: 'a' has {rank} indices: too many dimensions"), err


def test_run_of_a_tensor_with_too_many_indices_is_a_user_error(tmp_path: Path) -> None:
    """Inputs of 32 and 33 axes are fine for numpy; their 65-axis outer product is not."""
    names = [f"i{k}" for k in range(65)]
    prog = tmp_path / "outer.idx"
    prog.write_text(f"y[{','.join(names)}] = a[{','.join(names[:32])}] b[{','.join(names[32:])}]\n")
    inputs = tmp_path / "in.npz"
    np.savez(inputs, a=np.ones((1,) * 32), b=np.ones((1,) * 33))
    err = run_error(["run", str(prog), "--inputs", str(inputs)])
    assert err.startswith(f"{prog}:1:1: error: 'y' has 65 indices: too many dimensions"), err
