"""Training: params, initialisers, optimisers against autograd and Adam's paper, minibatches."""

from __future__ import annotations

from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd.scipy.special import logsumexp

import indexgrad as ig
from indexgrad.train import (
    SGD,
    Adam,
    History,
    accuracy,
    fans,
    fit,
    infer_sizes,
    init_params,
    load_digits_data,
    make_optimizer,
    minibatches,
    plot_history,
    train_command,
)

MLP = Path(__file__).resolve().parent.parent / "examples" / "mlp.idx"


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
