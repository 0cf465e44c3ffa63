"""The built-in data set (scikit-learn's 8x8 digits) and `indexgrad train`, which fits a program on it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import IndexgradError, lookup
from .model import Model, compile
from .optim import make_optimizer
from .shapes import infer_shapes
from .train import History, decl_indices, evaluate, fit, infer_sizes, init_params, log_epochs, plot_history

Array = np.ndarray


def load_digits_data(
    seed: int = 0, test_fraction: float = 0.2, dtype: Any = np.float32, labels: str = "onehot"
) -> tuple[dict[str, Array], dict[str, Array]]:
    """scikit-learn's bundled 8x8 digits as (train, test), split stratified by class.

    Each part holds pixels in [0, 1] as `x[b,d]` and the labels one-hot as `Y[b,c]`, or with
    labels="integer" as integer class numbers `y[b]` (for gathering models such as logloss.idx).
    """
    if labels not in ("onehot", "integer"):
        raise IndexgradError(f"unknown labels '{labels}'; available: integer, onehot")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        message = "the digits data set needs scikit-learn: pip install 'indexgrad[train]'"
        raise IndexgradError(message) from None
    digits = load_digits()
    x = (digits.data / 16.0).astype(dtype)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    if labels == "integer":
        return {"x": x_tr, "y": y_tr}, {"x": x_te, "y": y_te}
    eye = np.eye(10, dtype=dtype)
    return {"x": x_tr, "Y": eye[y_tr]}, {"x": x_te, "Y": eye[y_te]}


DATASETS: dict[str, Callable[..., tuple[dict[str, Array], dict[str, Array]]]] = {
    "digits": load_digits_data,
}


def _model_data(model: Model, data: dict[str, Array], dataset: str) -> dict[str, Array]:
    """The arrays of a data set that the model reads, refusing a model that reads something else."""
    wanted = [n for n in model.inputs + model.labels if n not in model.program.params()]
    missing = [n for n in wanted if n not in data]
    if missing:
        raise IndexgradError(
            f"the {dataset} data set provides "
            + ", ".join(sorted(data))
            + "; the program also reads "
            + ", ".join(missing)
            + " (declare trained tensors with `param`)",
            filename=model.program.filename,
        )
    return {n: data[n] for n in wanted}


def _logits_name(
    model: Model, vals: Mapping[str, Array], rows: int, classes: int, widths: Mapping[str, int]
) -> str:
    """The last defined tensor shaped [rows, classes]: the scores that accuracy compares."""
    for name in reversed(model.program.defined()):
        if np.shape(vals[name]) == (rows, classes):
            return name
    guessed = ", ".join(f"{n}={k}" for n, k in widths.items()) or "none"
    raise IndexgradError(
        f"no tensor of the program has shape ({rows}, {classes}) to read class scores from; "
        f"indices the data does not size took the hidden width ({guessed}), so the class "
        "index must appear in a data input such as one-hot Y[b,c]",
        filename=model.program.filename,
    )


def _as_declared(model: Model, data: dict[str, Array]) -> dict[str, Array]:
    """Flat square images x[b,d] as x[b,row,col] when the program declares x with three indices."""
    x = data.get("x")
    decl = next((d for d in model.program.decls if d.ref.name == "x"), None)
    if x is None or decl is None or len(decl.ref.indices) != 3 or x.ndim != 2:
        return data
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        return data
    return {**data, "x": x.reshape(len(x), side, side)}


def train_command(
    path: str,
    data: str,
    epochs: int,
    lr: float,
    batch: int,
    optimizer: str,
    seed: int,
    plot: str | None,
    hidden: int,
    save: str | None = None,
    resume: str | None = None,
    dims: Mapping[str, int] | None = None,
    backend: str = "numpy",
    device: str | None = None,
) -> int:
    """`indexgrad train`: fit FILE on a built-in data set, print each epoch and the test accuracy.

    Index sizes come from the data and `dims` (`--dims o=8,u=3,v=3`), then from index arithmetic
    (x[b,r+u,c+v] with row and u known gives r its "valid" extent); every other index of a param
    (the hidden width) gets `hidden`. Images are given as x[b,row,col] when the program declares
    x with three indices, else as flat rows x[b,d].
    The loss is the program's last defined tensor. `save` writes a checkpoint after every epoch,
    `resume` continues from one (see fit); the seed also fixes the data split and the initial
    params, so a resumed run must use the seed, --hidden and data set of the run that saved.
    `backend` (on `device`) runs the program; params and optimizer stay numpy arrays.
    """
    try:
        load = lookup(DATASETS, data, "data set")
        make_optimizer(optimizer)
        for flag, value in (("--epochs", epochs), ("--hidden", hidden), ("--batch", batch)):
            if value < 1:
                raise IndexgradError(f"{flag} must be at least 1, got {value}")
        if not (lr > 0 and math.isfinite(lr)):
            raise IndexgradError(f"--lr must be a positive number, got {lr}")
        if not 0 <= seed < 2**32:  # the data split takes scikit-learn's 32-bit random_state
            raise IndexgradError(f"--seed must be between 0 and {2**32 - 1}, got {seed}")
    except IndexgradError as e:
        e.filename = "indexgrad train"  # a flag's mistake, not the file's
        raise
    start = time.perf_counter()
    model = compile(path, backend=backend, device=device)
    if not model.program.statements:
        raise IndexgradError("the program defines nothing to train", filename=str(path))
    train, test = load(seed=seed, labels="integer" if model.labels else "onehot")
    train, test = _model_data(model, train, data), _model_data(model, test, data)
    train, test = _as_declared(model, train), _as_declared(model, test)
    sizes = infer_sizes(model, train)
    fixed = [n for n in dims or {} if n in sizes]
    if fixed:
        raise IndexgradError(
            "--dims sizes " + ", ".join(f"'{n}'" for n in fixed) + ", which the data set sizes ("
            + ", ".join(f"{n}={sizes[n]}" for n in fixed) + " in its training part); leave "
            + ("it" if len(fixed) == 1 else "them") + " out of --dims",
            filename="indexgrad train",
        )
    sizes.update(dims or {})
    shapes = infer_shapes(model.program, sizes, default=hidden)
    widths = {}  # param indices neither the data, --dims nor index arithmetic size: the hidden width
    for decl in model.program.decls:
        if decl.role == "param":
            for n, size in zip(decl_indices(model, decl), shapes[decl.ref.name]):
                if n not in sizes:
                    sizes[n] = size
                    if size == hidden:
                        widths[n] = hidden
    params = init_params(model, sizes, init="he", seed=seed)
    loss = model.program.statements[-1].target.name
    labels = test["y"] if "y" in test else test["Y"].argmax(axis=-1)
    probe = model.forward(**{**test, **params})
    scores = _logits_name(model, probe, len(labels), int(labels.max()) + 1, widths)

    def metric(vals: Mapping[str, Array], _: Mapping[str, Array]) -> float:
        return float(np.mean(np.argmax(model.engine.to_numpy(vals[scores]), axis=-1) == labels))

    trained: list[int] = []
    log = log_epochs(epochs)

    def on_epoch(epoch: int, history: History) -> None:
        trained.append(epoch)
        log(epoch, history)

    history = fit(
        model,
        params,
        train,
        loss=loss,
        epochs=epochs,
        batch=batch,
        optimizer=optimizer,
        lr=lr,
        seed=seed,
        valid=test,
        metric=metric,
        on_epoch=on_epoch,
        checkpoint=save,
        resume=resume,
    )
    seconds = time.perf_counter() - start
    done = len(history.loss)
    if not trained:
        print(f"the checkpoint is already at epoch {done} of {epochs}; nothing to train")
    final = history.valid_metric[-1] if history.valid_metric else math.nan
    if not math.isfinite(final):  # a checkpoint written without held-out data, and nothing trained
        final = evaluate(model, params, test, loss, metric)[1] or 0.0
    print(f"test accuracy {100 * final:.2f}% after {done} epochs in {seconds:.1f} s")
    if save and trained:
        print(f"wrote {save} (epoch {done})")
    if plot:
        plot_history(history, plot)
        print(f"wrote {plot}")
    return 0
