"""Training: params, initialisers, optimisers against autograd and Adam's paper, minibatches."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd.scipy.special import logsumexp

import indexgrad as ig
from indexgrad.digits import load_digits_data, train_command
from indexgrad.files import save_npz_atomic
from indexgrad.optim import SGD, Adam, make_optimizer
from indexgrad.train import (
    History,
    accuracy,
    fans,
    fit,
    infer_sizes,
    init_params,
    load_checkpoint,
    minibatches,
    plot_history,
    restore_checkpoint,
    save_checkpoint,
    summed_axes,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MLP = EXAMPLES / "mlp.idx"
CNN = EXAMPLES / "cnn.idx"


@pytest.fixture(scope="module")
def mlp() -> ig.Model:
    return ig.compile(MLP)


@pytest.fixture(scope="module")
def digits() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return load_digits_data(seed=0)


def small_problem(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Float64 params and a batch for mlp.idx: b=7 rows, d=5 features, h=4 hidden, c=3 classes."""
    params = {
        "W1": rng.standard_normal((5, 4)),
        "B1": rng.standard_normal(4),
        "W2": rng.standard_normal((4, 3)),
        "B2": rng.standard_normal(3),
    }
    data = {"x": rng.standard_normal((7, 5)), "Y": np.eye(3)[rng.integers(0, 3, 7)]}
    return params, data


def mlp_loss(params: dict[str, np.ndarray], x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """mlp.idx written independently in autograd.numpy."""
    hidden = anp.maximum(anp.dot(x, params["W1"]) + params["B1"], 0.0)
    z = anp.dot(hidden, params["W2"]) + params["B2"]
    return anp.mean(logsumexp(z, axis=1) - anp.sum(Y * z, axis=1))


# ---- optimisers ------------------------------------------------------------------------------


def test_one_sgd_step_matches_autograd(mlp: ig.Model) -> None:
    params, data = small_problem(np.random.default_rng(1))
    grads = autograd.grad(mlp_loss)(params, data["x"], data["Y"])
    expected = {n: params[n] - 0.1 * grads[n] for n in params}
    ours = {n: p.copy() for n, p in params.items()}
    arrays = dict(ours)  # fit must update these very arrays
    # one epoch with the whole data set as one batch is exactly one step
    fit(mlp, ours, data, epochs=1, batch=7, optimizer=SGD(0.1), progress=False)
    for n in params:
        assert ours[n] is arrays[n]
        np.testing.assert_allclose(ours[n], expected[n], rtol=1e-12, atol=1e-12)


def test_sgd_momentum_two_steps_by_hand() -> None:
    p = {"w": np.array([1.0, -2.0])}
    opt = SGD(lr=0.5, momentum=0.9)
    opt.step(p, {"w": np.array([1.0, 1.0])})  # v = g = [1, 1]; w -= 0.5 v
    np.testing.assert_allclose(p["w"], [0.5, -2.5])
    opt.step(p, {"w": np.array([2.0, 0.0])})  # v = 0.9 [1, 1] + [2, 0] = [2.9, 0.9]
    np.testing.assert_allclose(p["w"], [0.5 - 1.45, -2.5 - 0.45])


def test_adam_matches_kingma_ba_by_hand() -> None:
    # loss = (u^2 + v^2) / 2, so each gradient is the parameter itself; lr 0.1, the paper's defaults
    model = ig.compile("param u, v\nloss = 0.5 * u^2 + 0.5 * v^2\n")
    params = {"u": np.array(1.0), "v": np.array(-2.0)}
    opt = Adam(lr=0.1)
    # step 1: m = 0.1 g, v = 0.001 g^2, so m̂ = g, v̂ = g^2 and each parameter moves by lr sign(g)
    # step 2 (u): g = 0.9, m = 0.9*0.1 + 0.1*0.9 = 0.18, v = 0.999*0.001 + 0.001*0.81 = 0.001809,
    #   u = 0.9 - 0.1 * (0.18 / 0.19) / (sqrt(0.001809 / 0.001999) + 1e-8) = 0.8004122297...
    # step 3 the same way, from m = 0.2420412231, v = 0.0024478507 (u) and
    #   m = -0.5130166487, v = 0.0108389934 (v)
    expected = [
        (0.9 + 1e-9, -1.9 - 5e-10),
        (0.80041222971233739, -1.8001664866210921),
        (0.70158627450441421, -1.7006233928121132),
    ]
    for u, v in expected:
        opt.step(params, model.backward(model.forward(**params), loss="loss", wrt=["u", "v"]))
        np.testing.assert_allclose([params["u"], params["v"]], [u, v], rtol=1e-14)


def test_optimizer_registry_lists_names() -> None:
    assert isinstance(make_optimizer("adam", 0.01), Adam)
    assert make_optimizer("sgd").lr == 0.01
    with pytest.raises(ig.IndexgradError, match="available: adam, sgd"):
        make_optimizer("rmsprop")


# ---- parameters ------------------------------------------------------------------------------


def test_init_shapes_fans_and_seeding(mlp: ig.Model) -> None:
    sizes = {"d": 64, "h": 32, "c": 10}
    params = init_params(mlp, sizes, init="glorot", seed=3)
    assert {n: p.shape for n, p in params.items()} == {
        "W1": (64, 32),
        "B1": (32,),
        "W2": (32, 10),
        "B2": (10,),
    }
    assert all(p.dtype == np.float32 for p in params.values())
    assert not params["B1"].any() and not params["B2"].any()
    assert np.abs(params["W1"]).max() <= np.sqrt(6 / (64 + 32))
    assert np.abs(params["W1"]).max() > 0.9 * np.sqrt(6 / (64 + 32))
    he = init_params(mlp, sizes, init="he", seed=3, dtype=np.float64)
    assert he["W1"].dtype == np.float64
    assert abs(he["W1"].std() / np.sqrt(2 / 64) - 1) < 0.1
    again = init_params(mlp, sizes, init="he", seed=3, dtype=np.float64)
    assert all(np.array_equal(he[n], again[n]) for n in he)
    assert not np.array_equal(he["W1"], init_params(mlp, sizes, init="he", seed=4)["W1"])
    assert not any(p.any() for p in init_params(mlp, sizes, init="zeros").values())
    assert fans((64, 32)) == (64, 32) and fans((3, 3, 8)) == (9, 8)
    assert fans((8, 3, 3), (False, True, True)) == (9, 8)


def test_fans_follow_the_indices_the_program_sums() -> None:
    cnn = ig.compile(EXAMPLES / "cnn.idx")
    assert summed_axes(cnn, "K") == (False, True, True)  # x[b,r+u,c+v] K[o,u,v]: fan-in u*v
    assert summed_axes(cnn, "W") == (True, True, True, False)
    sizes = {"row": 8, "col": 8, "o": 8, "u": 3, "v": 3, "r": 6, "c": 6, "k": 10}
    he = init_params(cnn, sizes, init="he", seed=0, dtype=np.float64)
    assert abs(he["K"].std() / np.sqrt(2 / 9) - 1) < 0.15
    assert abs(he["W"].std() / np.sqrt(2 / (8 * 6 * 6)) - 1) < 0.1


def test_init_errors(mlp: ig.Model) -> None:
    with pytest.raises(ig.IndexgradError, match="'h' of param 'W1'") as e:
        init_params(mlp, {"d": 64, "c": 10})
    assert e.value.line == 3  # the declaration in mlp.idx
    with pytest.raises(ig.IndexgradError, match="available: glorot, he, normal, zeros"):
        init_params(mlp, {"d": 1, "h": 1, "c": 1}, init="xavier")


def test_infer_sizes(mlp: ig.Model, digits) -> None:
    train, _ = digits
    assert infer_sizes(mlp, train) == {"b": len(train["x"]), "d": 64, "c": 10}
    with pytest.raises(ig.IndexgradError, match="index 'b' has size 5 in 'Y' but 6 in 'x'"):
        infer_sizes(mlp, {"x": np.zeros((6, 2)), "Y": np.zeros((5, 3))})
    with pytest.raises(ig.IndexgradError, match="declared with 2 indices"):
        infer_sizes(mlp, {"x": np.zeros(6)})


# ---- data ------------------------------------------------------------------------------------


def test_minibatches_keep_last_batch_and_cover_every_row() -> None:
    data = {"x": np.arange(10), "y": 2 * np.arange(10)}
    rng = np.random.default_rng(0)
    orders = []
    for _ in range(2):
        batches = list(minibatches(data, 4, rng))
        assert [len(b["x"]) for b in batches] == [4, 4, 2]
        assert all(np.array_equal(b["y"], 2 * b["x"]) for b in batches)  # rows stay together
        order = np.concatenate([b["x"] for b in batches])
        assert sorted(order) == list(range(10))
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch


def test_minibatch_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ig.IndexgradError, match="x: 10, Y: 9"):
        next(minibatches({"x": np.zeros((10, 2)), "Y": np.zeros((9, 2))}, 4, rng))
    with pytest.raises(ig.IndexgradError, match="at least 1"):
        next(minibatches({"x": np.zeros(3)}, 0, rng))


# ---- fitting ---------------------------------------------------------------------------------


def test_seeded_fit_is_reproducible_bit_for_bit(mlp: ig.Model, digits) -> None:
    train, test = digits
    sub = {k: a[:300] for k, a in train.items()}

    def run(seed: int) -> tuple[dict[str, np.ndarray], History]:
        params = init_params(mlp, {**infer_sizes(mlp, sub), "h": 16}, seed=seed)
        history = fit(
            mlp,
            params,
            sub,
            epochs=3,
            batch=32,
            lr=1e-2,
            seed=seed,
            valid=test,
            metric=accuracy(),
            progress=False,
        )
        return params, history

    (p1, h1), (p2, h2), (p3, _) = run(0), run(0), run(1)
    assert all(np.array_equal(p1[n], p2[n]) for n in p1)
    assert (h1.loss, h1.valid_loss, h1.valid_metric) == (h2.loss, h2.valid_loss, h2.valid_metric)
    assert not np.array_equal(p1["W1"], p3["W1"])


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_fit_trains_as_on_numpy_on_another_backend(backend: str) -> None:
    """Each step is one value_and_grad on the model's backend (on jax one jitted computation):
    float64 params and losses as the numpy backend's, epoch by epoch."""
    library = pytest.importorskip(backend)
    params, _ = small_problem(np.random.default_rng(4))
    r = np.random.default_rng(5)
    data = {"x": r.standard_normal((40, 5)), "Y": np.eye(3)[r.integers(0, 3, 40)]}
    runs = []
    with library.enable_x64(True) if backend == "jax" else contextlib.nullcontext():
        for name in ("numpy", backend):
            trained = {n: a.copy() for n, a in params.items()}
            history = fit(ig.compile(MLP, backend=name), trained, data, epochs=3, batch=8, optimizer="sgd",
                          lr=0.1, valid=data, progress=False)  # fmt: skip
            runs.append((trained, history))
    (want, h_want), (got, h_got) = runs
    np.testing.assert_allclose(h_got.loss + h_got.valid_loss, h_want.loss + h_want.valid_loss, rtol=1e-10)
    for n in params:
        assert got[n].dtype == np.float64
        np.testing.assert_allclose(got[n], want[n], rtol=1e-10, atol=1e-12, err_msg=n)
    assert not np.allclose(got["W1"], params["W1"])


def test_short_digits_run_learns(mlp: ig.Model, digits, tmp_path: Path) -> None:
    train, test = digits
    params = init_params(mlp, {**infer_sizes(mlp, train), "h": 32}, init="he")
    seen = []
    history = fit(
        mlp,
        params,
        train,
        epochs=5,
        batch=64,
        lr=1e-2,
        valid=test,
        metric=accuracy(),
        progress=False,
        on_epoch=lambda e, h: seen.append(e),
    )
    assert seen == [1, 2, 3, 4, 5]
    assert len(history.loss) == len(history.valid_metric) == len(history.seconds) == 5
    assert history.loss[-1] < history.loss[0]
    assert history.valid_metric[-1] > 0.85
    plot_history(history, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_accuracy_one_hot_and_integer_labels() -> None:
    vals = {"z": np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])}
    assert accuracy()(vals, {"Y": np.array([[0, 1], [0, 1], [0, 1]])}) == pytest.approx(2 / 3)
    assert accuracy("z", "y")(vals, {"y": np.array([1, 0, 1])}) == 1.0


def test_train_command_sizes_a_cnn_from_dims_and_index_arithmetic(capsys) -> None:
    """cnn.idx reads x[b,row,col]: the digits come as 8x8 images, o, u, v from --dims, and the
    "valid" r = c = 6 of x[b,r+u,c+v] from index arithmetic; the CNN learns in 3 epochs."""
    from indexgrad.cli import main

    args = ["train", str(EXAMPLES / "cnn.idx"), "--dims", "o=4,u=3,v=3", "--epochs", "3", "--lr", "1e-2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert float(out.split("test accuracy ")[-1].split("%")[0]) > 80
    assert main([*args[:3], "o=4,u=3,v=x"]) == 2
    assert capsys.readouterr().err.startswith("indexgrad train: error: --dims size for 'v'")


def test_fit_refuses_params_it_cannot_update(mlp: ig.Model) -> None:
    params, data = small_problem(np.random.default_rng(0))
    params["W1"] = params["W1"].tolist()
    with pytest.raises(ig.IndexgradError, match="param 'W1' must be a writable float numpy array"):
        fit(mlp, params, data, progress=False)


def test_train_command(tmp_path: Path, capsys) -> None:
    plot = tmp_path / "digits.png"
    assert train_command(str(MLP), "digits", 3, 1e-2, 64, "adam", 0, str(plot), 32) == 0
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "test accuracy" in out
    assert plot.exists()
    with pytest.raises(ig.IndexgradError, match="unknown data set 'mnist'; available: digits"):
        train_command(str(MLP), "mnist", 3, 1e-2, 64, "adam", 0, None, 32)


def test_load_digits_data(digits) -> None:
    train, test = digits
    assert set(train) == set(test) == {"x", "Y"}
    assert train["x"].shape == (1437, 64) and test["x"].shape == (360, 64)
    assert train["x"].dtype == np.float32 and 0 <= train["x"].min() and train["x"].max() == 1
    assert (train["Y"].sum(axis=1) == 1).all()
    share = [d["Y"].mean(axis=0) for d in (train, test)]
    np.testing.assert_allclose(share[0], share[1], atol=0.01)  # stratified by class
    train_y, _ = load_digits_data(labels="integer", dtype=np.float64)
    assert set(train_y) == {"x", "y"} and train_y["y"].dtype == np.int64
    assert train_y["x"].dtype == np.float64


# ---- checkpoints -----------------------------------------------------------------------------


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_run(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Two checkpoints hold the same params, optimizer state and History, bit for bit."""
    assert sorted(a) == sorted(b)
    for key in a:
        if key != "history.seconds":  # wall time, the one thing that may differ
            assert a[key].dtype == b[key].dtype, key
            assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "make_opt", [lambda: Adam(1e-2), lambda: SGD(0.05, momentum=0.9)], ids=["adam", "sgd"]
)
def test_resume_equals_straight_run_bit_for_bit(mlp: ig.Model, digits, tmp_path: Path, make_opt) -> None:
    train, test = digits
    sub = {k: a[:300] for k, a in train.items()}
    sizes = {**infer_sizes(mlp, sub), "h": 16}

    def run(epochs: int, seed_init: int = 0, **kw) -> tuple[dict[str, np.ndarray], History]:
        params = init_params(mlp, sizes, seed=seed_init)
        history = fit(
            mlp,
            params,
            sub,
            epochs=epochs,
            batch=32,
            optimizer=make_opt(),
            seed=5,
            valid=test,
            metric=accuracy(),
            progress=False,
            **kw,
        )
        return params, history

    straight, h_straight = run(4, checkpoint=tmp_path / "straight.npz")
    half, h_half = run(2, checkpoint=tmp_path / "c.npz")
    assert load_checkpoint(tmp_path / "c.npz").epoch == 2
    # other initial params prove that the params come from the checkpoint
    resumed, h_resumed = run(4, seed_init=9, resume=tmp_path / "c.npz", checkpoint=tmp_path / "c.npz")
    for n in straight:
        assert np.array_equal(straight[n], resumed[n]), n
        assert not np.array_equal(straight[n], half[n]) or not straight[n].any()
    for name in ("loss", "valid_loss", "valid_metric"):
        assert getattr(h_resumed, name) == getattr(h_straight, name)
        assert len(getattr(h_resumed, name)) == 4
    assert len(h_resumed.seconds) == 4
    assert_same_run(arrays_of(tmp_path / "straight.npz"), arrays_of(tmp_path / "c.npz"))
    assert all(not name.startswith(".") for name in os.listdir(tmp_path))  # no temporary files


def test_checkpoint_holds_plain_numeric_arrays(mlp: ig.Model, tmp_path: Path) -> None:
    params, data = small_problem(np.random.default_rng(0))
    path = tmp_path / "c.npz"
    fit(mlp, params, data, epochs=2, batch=3, optimizer=Adam(1e-2), seed=3, checkpoint=path, progress=False)
    arrays = arrays_of(tmp_path / "c.npz")
    assert all(a.dtype.kind in "iuf" for a in arrays.values())
    assert int(arrays["epoch"]) == 2 and int(arrays["seed"]) == 3
    assert int(arrays["optimizer.t"]) == 2 * 3  # 7 rows in batches of 3: 3 steps per epoch
    assert {k for k in arrays if k.startswith("param.")} == {f"param.{n}" for n in params}
    ckpt = load_checkpoint(tmp_path / "c.npz")
    assert ckpt.optimizer == "adam" and len(ckpt.history.loss) == 2
    assert all(np.array_equal(ckpt.params[n], params[n]) for n in params)


def test_resume_past_the_last_epoch_trains_nothing(mlp: ig.Model, tmp_path: Path) -> None:
    params, data = small_problem(np.random.default_rng(0))
    fit(mlp, params, data, epochs=2, batch=3, progress=False, checkpoint=tmp_path / "c.npz")
    before = {n: p.copy() for n, p in params.items()}
    history = fit(mlp, params, data, epochs=1, batch=3, progress=False, resume=tmp_path / "c.npz")
    assert len(history.loss) == 2
    assert all(np.array_equal(before[n], params[n]) for n in params)


def test_cli_resume_equals_straight_run(tmp_path: Path, capsys) -> None:
    from indexgrad.cli import main

    common = ["train", str(MLP), "--hidden", "8", "--batch", "128"]
    straight, ckpt = str(tmp_path / "straight.npz"), str(tmp_path / "c.npz")
    assert main([*common, "--epochs", "3", "--save", straight]) == 0
    assert main([*common, "--epochs", "2", "--save", ckpt]) == 0
    assert main([*common, "--epochs", "3", "--resume", ckpt, "--save", ckpt]) == 0
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and f"wrote {ckpt} (epoch 3)" in out
    assert_same_run(arrays_of(Path(straight)), arrays_of(Path(ckpt)))


def test_checkpoint_write_is_atomic(mlp: ig.Model, tmp_path: Path, monkeypatch) -> None:
    params, data = small_problem(np.random.default_rng(0))
    path = tmp_path / "c.npz"
    fit(mlp, params, data, epochs=1, batch=7, progress=False, checkpoint=path)
    old = path.read_bytes()
    real_write = np.lib.format.write_array

    def write_then_fail(file, array, **kwargs):
        real_write(file, array, **kwargs)  # a whole entry, then some of another, then a failure
        file.write(b"PK\x03\x04 half of the next entry")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)
    with pytest.raises(ig.IndexgradError, match="cannot write .*No space left on device"):
        fit(mlp, params, data, epochs=1, batch=7, progress=False, checkpoint=path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["c.npz"]  # the temporary file is gone

    def interrupted(file, array, **kwargs):
        file.write(b"PK\x03\x04")
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_npz_atomic(path, {"a": np.zeros(3)})
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["c.npz"]
    monkeypatch.setattr(np.lib.format, "write_array", real_write)
    save_npz_atomic(path, {"a": np.arange(3)})  # and a write that succeeds replaces it
    assert list(arrays_of(path)) == ["a"] and os.listdir(tmp_path) == ["c.npz"]


def bad_checkpoints(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Broken or foreign files, each with the message (a regex) that loading one must give."""
    data = good.read_bytes()
    cases: dict[str, tuple[bytes | dict[str, np.ndarray], str]] = {
        "empty": (b"", "not an .npz archive \\(it is empty\\)"),
        "text": (b"W1 = 3\n", "not an .npz archive"),
        "truncated": (data[: len(data) // 2], "damaged .npz archive"),
        "foreign": ({"W1": np.zeros(3)}, "not an indexgrad checkpoint"),
        "pickled": ({"a": np.array([{}], dtype=object)}, "pickled objects"),
    }
    arrays = arrays_of(good)
    cases["newer"] = ({**arrays, "indexgrad.checkpoint": np.array(99)}, "format version 99")
    cases["no epoch"] = ({k: a for k, a in arrays.items() if k != "epoch"}, "no entry 'epoch'")
    short = {**arrays, "history.loss": arrays["history.loss"][:1]}
    cases["short history"] = (short, "'history.loss' has 1 entries for 2 epochs")
    flipped = bytearray(data)
    start = data.index(b"param.W1.npy") + 200  # inside W1's stored bytes
    flipped[start : start + 8] = bytes(b ^ 0xFF for b in flipped[start : start + 8])
    cases["flipped bytes"] = (bytes(flipped), "damaged .npz archive")
    out = {}
    for name, (content, message) in cases.items():
        path = tmp_path / (name.replace(" ", "_") + ".npz")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            np.savez(path, **content)
        out[name] = (path, message)
    out["missing"] = (tmp_path / "missing.npz", "no such file: .*missing.npz \\(the checkpoint\\)")
    return out


def test_bad_checkpoint_files_are_errors(mlp: ig.Model, tmp_path: Path) -> None:
    params, data = small_problem(np.random.default_rng(0))
    good = tmp_path / "good.npz"
    fit(mlp, params, data, epochs=2, batch=7, progress=False, checkpoint=good)
    assert zipfile.is_zipfile(good)
    before = {n: p.copy() for n, p in params.items()}
    for name, (path, message) in bad_checkpoints(tmp_path, good).items():
        with pytest.raises(ig.IndexgradError, match=message) as e:
            fit(mlp, params, data, epochs=3, batch=7, progress=False, resume=path)
        assert e.value.filename == str(path), name
    assert all(np.array_equal(before[n], params[n]) for n in params)  # nothing was changed


def test_mismatched_checkpoint_is_an_error(mlp: ig.Model, tmp_path: Path) -> None:
    params, data = small_problem(np.random.default_rng(0))
    path = tmp_path / "c.npz"
    fit(mlp, params, data, epochs=1, batch=7, optimizer=Adam(), seed=2, checkpoint=path, progress=False)
    other = ig.compile(
        "param W[d,c], B[c]\n"
        "input x[b,d], Y[b,c]\n"
        "z[b,c] = x[b,d] W[d,c] + B[c]\n"
        "loss = mean[b](sum[c]((z[b,c] - Y[b,c])^2))\n"
    )

    def copy(ps: dict[str, np.ndarray], dtype=None) -> dict[str, np.ndarray]:
        return {n: p.astype(dtype or p.dtype) for n, p in ps.items()}

    wider = {**copy(params), "W1": np.zeros((5, 6)), "B1": np.zeros(6), "W2": np.zeros((6, 3))}
    cases = [  # (model, params, optimizer, seed, message)
        (mlp, wider, Adam(), 2, r"param 'W1' has shape \(5, 4\) in the checkpoint but \(5, 6\) here"),
        (mlp, copy(params, np.float32), Adam(), 2, "param 'W1' is float64 in the checkpoint but float32"),
        (mlp, copy(params), SGD(), 2, "it was written by the adam optimizer, not sgd"),
        (mlp, copy(params), Adam(), 1, "it was trained with seed 2, not 1; pass the same seed"),
        (
            other,
            {"W": np.zeros((5, 3)), "B": np.zeros(3)},
            Adam(),
            2,
            "it holds params B1, B2, W1, W2 but the program's are B, W \\(a checkpoint of another program",
        ),
    ]
    for model, ps, opt, seed, message in cases:
        before = copy(ps)
        with pytest.raises(ig.IndexgradError, match="checkpoint does not fit this run: " + message) as e:
            fit(model, ps, data, epochs=2, batch=7, optimizer=opt, seed=seed, resume=path, progress=False)
        assert e.value.filename == str(path)
        assert all(np.array_equal(before[n], ps[n]) for n in ps)  # nothing was changed
    # the functions fit uses are public too
    ckpt = load_checkpoint(path)
    fresh = {n: np.zeros_like(p) for n, p in params.items()}
    opt = Adam()
    assert restore_checkpoint(ckpt, fresh, opt, seed=2)[0] == 1 and opt.t == 1
    assert all(np.array_equal(fresh[n], params[n]) for n in params)
    save_checkpoint(tmp_path / "again.npz", fresh, opt, ckpt.epoch, ckpt.history, seed=2)
    assert_same_run(arrays_of(path), arrays_of(tmp_path / "again.npz"))


def test_checkpoint_needs_a_stateful_optimizer_and_a_directory(mlp: ig.Model, tmp_path: Path) -> None:
    params, data = small_problem(np.random.default_rng(0))

    class Plain:
        def step(self, params, grads):  # an Optimizer without get_state / set_state
            pass

    with pytest.raises(ig.IndexgradError, match="cannot checkpoint a Plain optimizer"):
        fit(mlp, params, data, optimizer=Plain(), progress=False, checkpoint=tmp_path / "c.npz")
    with pytest.raises(ig.IndexgradError, match="no such directory"):
        fit(mlp, params, data, progress=False, checkpoint=tmp_path / "nowhere" / "c.npz")
    with pytest.raises(ig.IndexgradError, match="seed must be a non-negative integer"):
        fit(mlp, params, data, progress=False, seed=-1)
    assert not os.listdir(tmp_path)


def test_cli_bad_checkpoint_exits_2_without_traceback(tmp_path: Path, capsys) -> None:
    from indexgrad.cli import main

    common = ["train", str(MLP), "--epochs", "2", "--hidden", "8"]
    ckpt = tmp_path / "c.npz"
    assert main([*common, "--epochs", "1", "--save", str(ckpt)]) == 0
    capsys.readouterr()
    (tmp_path / "junk.npz").write_bytes(ckpt.read_bytes()[:100])
    cases = [
        (["--resume", str(tmp_path / "missing.npz")], "(the checkpoint)"),
        (["--resume", str(tmp_path / "junk.npz")], "damaged .npz archive"),
        (["--resume", str(ckpt), "--hidden", "16"], "param 'W1' has shape (64, 8)"),
        (["--resume", str(ckpt), "--seed", "1"], "trained with seed 0, not 1"),
        (["--save", str(tmp_path / "no" / "c.npz")], "no such directory"),
    ]
    for extra, message in cases:
        assert main([*common, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "internal error" not in err


# ---- the CNN of examples/cnn.idx -------------------------------------------------------------


def test_cnn_loss_decreases_with_fit(digits) -> None:
    model = ig.compile(CNN)
    train, _ = digits
    images = {"x": train["x"][:300].reshape(-1, 8, 8), "Y": train["Y"][:300]}
    sizes = {**infer_sizes(model, images), "o": 4, "u": 3, "v": 3, "r": 6, "c": 6}
    params = init_params(model, sizes, init="he", seed=0)
    start = float(model.forward(**images, **params)["loss"])
    history = fit(model, params, images, epochs=2, batch=32, lr=1e-2, progress=False)
    end = float(model.forward(**images, **params)["loss"])
    assert history.loss[1] < history.loss[0]
    assert end < 0.8 * start


def test_fit_reads_fixed_arrays_whole_in_every_step() -> None:
    """`fixed` arrays (here a weight per feature) go unsplit into every step and are not trained:
    fit's params are those of the same loop written by hand, bit for bit."""
    m = ig.compile("param W[d]\ninput x[b,d], y[b], s[d]\nloss = mean[b]((x[b,d] s[d] W[d] - y[b])^2)\n")
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((10, 3)), "y": rng.standard_normal(10)}
    fixed = {"s": np.array([1.0, -2.0, 0.5])}
    params = {"W": rng.standard_normal(3)}
    by_hand = {"W": params["W"].copy()}
    fit(m, params, data, epochs=2, batch=4, optimizer="sgd", lr=0.1, fixed=fixed, progress=False)
    opt = make_optimizer("sgd", 0.1)
    for epoch in (1, 2):
        for b in minibatches(data, 4, np.random.default_rng([0, epoch])):
            vals = m.forward(**b, **fixed, **by_hand)
            opt.step(by_hand, m.backward(vals, loss="loss", wrt=["W"]))
    assert np.array_equal(params["W"], by_hand["W"])
    assert list(params) == ["W"] and np.array_equal(fixed["s"], [1.0, -2.0, 0.5])


def test_a_short_transformer_run_learns_to_sort(tmp_path: Path) -> None:
    """examples/train_transformer.py, two epochs on 3,000 sequences: well past chance (10%) on the
    answer digits, with and without the right digits given, and a plot written."""
    import importlib.util

    from threadpoolctl import threadpool_limits

    spec = importlib.util.spec_from_file_location("train_transformer", EXAMPLES / "train_transformer.py")
    script = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    with threadpool_limits(1):  # as the script asks when run on its own (numpy is loaded here already)
        history, right = script.main(epochs=2, train_size=3_000, plot=tmp_path / "t.png")
    assert history.loss[-1] < history.loss[0] < 2.5
    assert history.valid_metric[-1] > 0.8  # teacher forcing
    assert right.mean() > 0.7  # greedy decoding
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_the_core_install_trains_without_the_train_extra() -> None:
    """Without tqdm, matplotlib and scikit-learn (the `train` extra), fit trains quietly, and a plot
    or the digits data is refused with the extra to install."""
    script = """
import sys
for name in ("tqdm", "tqdm.auto", "matplotlib", "matplotlib.figure", "matplotlib.backend_bases",
             "sklearn", "sklearn.datasets", "sklearn.model_selection"):
    sys.modules[name] = None
import numpy as np
import indexgrad as ig
from indexgrad.digits import load_digits_data
from indexgrad.train import fit, log_epochs, plot_history
m = ig.compile("param w[i]\\nloss = (x[b,i] w[i] - t[b])^2")
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 3))
params = {"w": np.zeros(3)}
h = fit(m, params, {"x": x, "t": x @ np.array([1.0, -2.0, 0.5])}, loss="loss", epochs=40, batch=8,
        lr=0.01, optimizer="sgd", on_epoch=log_epochs(40, every=20))
print(round(float(h.loss[-1]), 6), np.round(params["w"], 3).tolist())
for call in (lambda: plot_history(h, "p.png"), lambda: load_digits_data()):
    try:
        call()
    except ig.IndexgradError as e:
        print(e)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("epoch 20/40") and lines[1].startswith("epoch 40/40")
    assert float(lines[2].split()[0]) < 1e-6 and lines[2].endswith("[1.0, -2.0, 0.5]")
    assert lines[3:] == [
        "<input>: error: plots need matplotlib: pip install 'indexgrad[train]'",
        "<input>: error: the digits data set needs scikit-learn: pip install 'indexgrad[train]'",
    ]
    assert out.stderr == ""
