"""Training: parameters from `param` declarations, initialisers, minibatches, fit, checkpoints and plots."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .derive import defined_loss
from .errors import IndexgradError, lookup
from .files import atomic_path, load_npz, save_npz_atomic
from .lower import Contract
from .memory import check_fits
from .model import Model
from .nodes import Affine, Decl, Program, Ref, ref_index_names
from .optim import OPTIMIZERS, Optimizer, make_optimizer
from .shapes import not_a_size

Array = np.ndarray
Data = Mapping[str, Any]
Metric = Callable[[Mapping[str, Array], Mapping[str, Array]], float]


# ---- parameters ------------------------------------------------------------------------------


def _decl_error(model: Model, decl: Decl, message: str) -> IndexgradError:
    """A user error placed at a declaration in the .idx source."""
    return IndexgradError(message, decl.ref.span, model.program.filename, model.program.source)


def decl_indices(model: Model, decl: Decl) -> list[str]:
    """The index names of a declaration; declarations size tensors, so each must be a plain name."""
    names = []
    for pos in decl.ref.indices:
        name = getattr(pos, "plain", None)
        if name is None:
            message = f"'{decl.ref.name}' is declared with a computed index; declare plain names"
            raise _decl_error(model, decl, message)
        names.append(name)
    return names


def param_shapes(model: Model, sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """The shape of every declared param, its index names looked up in `sizes`."""
    if not isinstance(sizes, Mapping):
        raise IndexgradError(f"sizes must be a dict from index names to sizes, not {type(sizes).__name__}")
    shapes = {}
    for decl in model.program.decls:
        if decl.role != "param":
            continue
        dims = []
        for name in decl_indices(model, decl):
            if name not in sizes:
                raise _decl_error(
                    model,
                    decl,
                    f"no size for index '{name}' of param '{decl.ref.name}'; "
                    f"pass sizes={{'{name}': ...}}",
                )
            message = not_a_size(name, sizes[name])
            if message:
                raise _decl_error(model, decl, message)
            dims.append(int(sizes[name]))
        shapes[decl.ref.name] = tuple(dims)
    return shapes


def fans(shape: tuple[int, ...], summed: tuple[bool, ...] | None = None) -> tuple[int, int]:
    """(fan-in, fan-out) of a weight: fan-in the axes its first product sums over, fan-out the rest.

    `summed` marks the axes whose index the first product reading the weight sums over: in
    `x[b,d] W1[d,h]` d is summed (fan-in 64) and h kept (fan-out); a kernel in
    `x[b,r+u,c+v] K[o,u,v]` has fan-in u*v and fan-out o. Without it, or when it marks every axis
    or none, the last axis is the fan-out and the others the fan-in.
    """
    if not shape:
        return 1, 1
    if summed is None or all(summed) or not any(summed):
        summed = (True,) * (len(shape) - 1) + (False,)
    fan_in = math.prod(d for d, s in zip(shape, summed) if s)
    return fan_in, math.prod(d for d, s in zip(shape, summed) if not s)


def summed_axes(model: Model, name: str) -> tuple[bool, ...] | None:
    """Per axis of `name`, whether the first contraction reading it sums that axis's index."""
    for p in model.prims:
        if not isinstance(p, Contract):
            continue
        kept = set(ref_index_names(p.out))
        for f, _ in p.factors:
            if isinstance(f, Ref) and f.name == name:
                return tuple(
                    not (isinstance(i, Affine) and i.plain is not None and i.plain in kept)
                    for i in f.indices
                )
    return None


def _glorot(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> Array:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> Array:
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> Array:
    return rng.standard_normal(shape) * 0.01


def _zeros(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> Array:
    return np.zeros(shape)


Initializer = Callable[[np.random.Generator, tuple[int, ...], int, int], Array]

INITIALIZERS: dict[str, Initializer] = {
    "glorot": _glorot,  # uniform on ±sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)
    "he": _he,  # normal with std sqrt(2 / fan_in) (He et al., 2015), for relu layers
    "normal": _normal,  # normal with std 0.01
    "zeros": _zeros,
}


def init_params(
    model: Model,
    sizes: Mapping[str, int],
    init: str = "glorot",
    seed: int = 0,
    dtype: Any = np.float32,
) -> dict[str, Array]:
    """Fresh arrays for every declared param, seeded; biases and scalars (rank < 2) start at zero.

    Weights (rank >= 2) are drawn by `init` from INITIALIZERS with fan-in the sizes of the indices
    the program sums them over and fan-out the others (see `fans`).
    """
    draw = lookup(INITIALIZERS, init, "initializer")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise IndexgradError(f"the seed of the params must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(seed)
    shapes = param_shapes(model, sizes)
    if shapes:  # each is drawn in float64, then kept in dtype: refused before anything is allocated
        count = sum(math.prod(shape) for shape in shapes.values())
        name, shape = max(shapes.items(), key=lambda kv: math.prod(kv[1]))
        largest = f"the largest, '{name}', of shape {shape}"
        check_fits(count * (8 + np.dtype(dtype).itemsize), f"the params ({largest})", smaller="sizes")
    params = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            values = draw(rng, shape, *fans(shape, summed_axes(model, name)))
        else:
            values = np.zeros(shape)
        params[name] = np.ascontiguousarray(values, dtype=dtype)  # drawn in float64 for any dtype
    return params


def infer_sizes(model: Model, data: Data) -> dict[str, int]:
    """Index sizes read off the arrays given for declared inputs (`x[b,d]` gives b and d), and the
    extents `dim` declarations fix."""
    sizes: dict[str, int] = dict(model.program.dims())
    where: dict[str, str] = {n: f"dim {n}={k}" for n, k in sizes.items()}
    for decl in model.program.decls:
        if decl.role != "input" or decl.ref.name not in data:
            continue
        names = decl_indices(model, decl)
        shape = np.shape(data[decl.ref.name])
        if len(shape) != len(names):
            raise _decl_error(
                model,
                decl,
                f"'{decl.ref.name}' is declared with {len(names)} indices, "
                f"but its array has shape {shape}",
            )
        for name, size in zip(names, shape):
            if name in sizes and sizes[name] != size:
                raise _decl_error(
                    model,
                    decl,
                    f"index '{name}' has size {size} in '{decl.ref.name}' "
                    f"but {sizes[name]} in '{where[name]}'",
                )
            sizes[name], where[name] = int(size), decl.ref.name
    return sizes


# ---- data ------------------------------------------------------------------------------------


def batch_length(data: Data) -> int:
    """The common length of every array's first axis; arrays are rows of one data set."""
    if not data:
        raise IndexgradError("no arrays were given")
    lengths = {name: (np.shape(a)[0] if np.ndim(a) else None) for name, a in data.items()}
    if None in lengths.values():
        scalar = next(n for n, n_rows in lengths.items() if n_rows is None)
        raise IndexgradError(f"'{scalar}' is a scalar; data arrays need a first (batch) axis")
    if len(set(lengths.values())) > 1:
        raise IndexgradError(
            "data arrays must share their first (batch) axis, but have lengths "
            + ", ".join(f"{n}: {k}" for n, k in lengths.items())
        )
    return next(iter(lengths.values()))


def minibatches(data: Data, batch: int, rng: np.random.Generator) -> Iterator[dict[str, Array]]:
    """Row-aligned minibatches in an order shuffled by rng; the last partial batch is kept."""
    if batch < 1:
        raise IndexgradError(f"batch size must be at least 1, got {batch}")
    n = batch_length(data)
    arrays = {name: np.asarray(a) for name, a in data.items()}
    order = rng.permutation(n)
    for start in range(0, n, batch):
        rows = order[start : start + batch]
        yield {name: a[rows] for name, a in arrays.items()}


# ---- fitting ---------------------------------------------------------------------------------


@dataclass
class History:
    """Per epoch: mean training loss, held-out loss and metric (when asked), and seconds taken."""

    loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_metric: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def accuracy(logits_name: str = "z", labels_name: str = "Y") -> Metric:
    """A metric: the fraction of rows whose arg-max logit is the label (one-hot or integer)."""

    def metric(vals: Mapping[str, Array], batch: Mapping[str, Array]) -> float:
        labels = np.asarray(batch[labels_name])
        if labels.ndim == np.ndim(vals[logits_name]):
            labels = labels.argmax(axis=-1)
        return float(np.mean(np.argmax(vals[logits_name], axis=-1) == labels))

    metric.__name__ = "accuracy"
    return metric


def evaluate(
    model: Model,
    params: Mapping[str, Array],
    data: Data,
    loss: str = "loss",
    metric: Metric | None = None,
    fixed: Data | None = None,
) -> tuple[float, float | None]:
    """The loss, and the metric when given, on all of `data` (and the `fixed` arrays) in one forward pass."""
    vals = model.forward(**{**(fixed or {}), **data, **params})
    return float(vals[loss]), (metric(vals, data) if metric is not None else None)


def check_loss(program: Program, loss: str) -> None:
    """Refuse a loss the program does not define, or one with indices: training needs one number."""
    defined_loss(program, loss)
    target = next(s.target for s in program.statements if s.target.name == loss)
    if target.indices:
        raise IndexgradError(
            f"the loss '{loss}' must be a scalar to train on, but it has indices; "
            f"reduce it to one number, e.g. {loss} = mean[b](...)",
            target.span,
            program.filename,
            program.source,
        )


def _check_params(params: Mapping[str, Any]) -> None:
    for name, p in params.items():
        if not (isinstance(p, np.ndarray) and p.dtype.kind == "f" and p.flags.writeable):
            raise IndexgradError(
                f"param '{name}' must be a writable float numpy array (it is updated in place), "
                f"got {type(p).__name__}"
            )


# ---- checkpoints -----------------------------------------------------------------------------
#
# A checkpoint is an .npz archive of plain numeric arrays (loaded with allow_pickle=False):
#
#   indexgrad.checkpoint   int64 scalar, the format version (CHECKPOINT_VERSION)
#   epoch, seed            int64 scalars: epochs completed, and fit's seed
#   param.P                every param P, in its own dtype
#   optimizer              uint8: the optimizer's name in OPTIMIZERS, as ASCII codes
#   optimizer.K            every entry K of the optimizer's get_state()
#   history.F              float64 vectors, one per History field F
#
# Nothing else is needed to continue a run bit for bit, because fit draws no random numbers
# except each epoch's shuffle, and epoch e shuffles with np.random.default_rng([seed, e]),
# a generator that depends on nothing but (seed, e).

CHECKPOINT_VERSION = 1
_HISTORY_FIELDS = ("loss", "valid_loss", "valid_metric", "seconds")


@dataclass
class Checkpoint:
    """What fit needs to continue a run: read by load_checkpoint, written by save_checkpoint."""

    epoch: int
    seed: int
    params: dict[str, Array]
    optimizer: str
    optimizer_state: dict[str, Array]
    history: History


def _optimizer_name(opt: Any) -> str:
    for name, cls in OPTIMIZERS.items():
        if type(opt) is cls:
            return name
    return type(opt).__name__.lower()


def _check_stateful(opt: Any) -> None:
    if not (callable(getattr(opt, "get_state", None)) and callable(getattr(opt, "set_state", None))):
        raise IndexgradError(
            f"cannot checkpoint a {type(opt).__name__} optimizer: it needs get_state() and "
            "set_state(state) methods (as SGD and Adam have)"
        )


def _text(text: str) -> Array:
    return np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8).copy()


def _untext(codes: Array) -> str:
    if codes.ndim != 1 or codes.dtype != np.uint8:
        raise ValueError("not text")
    return codes.tobytes().decode("ascii", "replace")


def save_checkpoint(
    path: str | Path,
    params: Mapping[str, Array],
    optimizer: Any,
    epoch: int,
    history: History,
    seed: int = 0,
) -> None:
    """Write a checkpoint of a run after `epoch` epochs, atomically (see save_npz_atomic)."""
    _check_stateful(optimizer)
    arrays: dict[str, Array] = {
        "indexgrad.checkpoint": np.array(CHECKPOINT_VERSION, dtype=np.int64),
        "epoch": np.array(epoch, dtype=np.int64),
        "seed": np.array(seed, dtype=np.int64),
        "optimizer": _text(_optimizer_name(optimizer)),
    }
    arrays.update((f"param.{name}", np.asarray(p)) for name, p in params.items())
    arrays.update((f"optimizer.{k}", np.asarray(a)) for k, a in optimizer.get_state().items())
    for name in _HISTORY_FIELDS:
        arrays[f"history.{name}"] = np.asarray(getattr(history, name), dtype=np.float64)
    save_npz_atomic(path, arrays)


def _scalar_int(arrays: Mapping[str, Array], key: str) -> int:
    a = arrays[key]
    if a.shape != () or a.dtype.kind not in "iu":
        raise ValueError(f"'{key}' is not an integer scalar")
    return int(a)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint (or fit's `checkpoint=`).

    A missing, unreadable, damaged or foreign file is an IndexgradError naming the file.
    """
    path = Path(path)
    arrays = load_npz(path, "checkpoint")
    if "indexgrad.checkpoint" not in arrays:
        raise IndexgradError(
            "not an indexgrad checkpoint (no 'indexgrad.checkpoint' entry); "
            "write one with `indexgrad train --save` or fit(..., checkpoint=...)",
            filename=str(path),
        )
    try:
        version = _scalar_int(arrays, "indexgrad.checkpoint")
        if version != CHECKPOINT_VERSION:
            raise ValueError(f"format version {version}; this indexgrad reads {CHECKPOINT_VERSION}")
        epoch, seed = _scalar_int(arrays, "epoch"), _scalar_int(arrays, "seed")
        if epoch < 0:
            raise ValueError(f"epoch {epoch} is negative")
        optimizer = _untext(arrays["optimizer"])
        history = History()
        for name in _HISTORY_FIELDS:
            values = arrays[f"history.{name}"]
            if values.ndim != 1 or values.dtype.kind != "f":
                raise ValueError(f"'history.{name}' is not a vector of floats")
            if len(values) not in ((0, epoch) if name.startswith("valid") else (epoch,)):
                raise ValueError(f"'history.{name}' has {len(values)} entries for {epoch} epochs")
            setattr(history, name, values.tolist())
    except KeyError as e:
        raise IndexgradError(f"damaged checkpoint: no entry {e}", filename=str(path)) from None
    except ValueError as e:
        raise IndexgradError(f"damaged checkpoint: {e}", filename=str(path)) from None
    params = {k[len("param.") :]: a for k, a in arrays.items() if k.startswith("param.")}
    bad = _not_finite(params)
    if bad is not None:
        raise IndexgradError(
            f"the checkpoint's param '{bad[0]}' holds {bad[1]}: the run that wrote it had diverged "
            f"by epoch {epoch}; resume an earlier checkpoint, or start again with a smaller learning rate",
            filename=str(path),
        )
    state = {k[len("optimizer.") :]: a for k, a in arrays.items() if k.startswith("optimizer.")}
    return Checkpoint(epoch, seed, params, optimizer, state, history)


def _not_finite(params: Mapping[str, Array]) -> tuple[str, str] | None:
    """The first param holding a NaN or an infinity, and which ('NaN', 'inf'), or None."""
    for name, p in params.items():
        if p.dtype.kind in "fc" and not np.isfinite(p).all():
            return name, ("NaN" if np.isnan(p).any() else "inf")
    return None


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def restore_checkpoint(
    checkpoint: Checkpoint | str | Path,
    params: dict[str, Array],
    optimizer: Any,
    seed: int | None = None,
) -> tuple[int, History]:
    """Copy a checkpoint's params into `params` (in place) and its state into `optimizer`.

    Returns (epochs completed, History so far). Nothing is changed unless everything fits: the
    same param names, shapes and dtypes, the same kind of optimizer, and (when given) the seed.
    """
    where = None if isinstance(checkpoint, Checkpoint) else str(checkpoint)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)

    def fail(message: str) -> IndexgradError:
        return IndexgradError(f"checkpoint does not fit this run: {message}", filename=where)

    _check_stateful(optimizer)
    if set(ckpt.params) != set(params):
        raise fail(
            "it holds params "
            + (", ".join(sorted(ckpt.params)) or "none")
            + " but the program's are "
            + (", ".join(sorted(params)) or "none")
            + " (a checkpoint of another program?)"
        )
    for name, p in params.items():
        saved = ckpt.params[name]
        if saved.shape != p.shape:
            raise fail(
                f"param '{name}' has shape {_shape_text(saved.shape)} in the checkpoint "
                f"but {_shape_text(p.shape)} here"
            )
        if saved.dtype != p.dtype:
            raise fail(f"param '{name}' is {saved.dtype} in the checkpoint but {p.dtype} here")
    name = _optimizer_name(optimizer)
    if ckpt.optimizer != name:
        raise fail(f"it was written by the {ckpt.optimizer} optimizer, not {name}")
    for key, value in ckpt.optimizer_state.items():
        slot, dot, pname = key.partition(".")
        if not dot:
            continue
        if pname not in params:
            raise fail(f"optimizer entry '{key}' is for a param the program does not have")
        if value.shape != params[pname].shape or value.dtype != params[pname].dtype:
            raise fail(
                f"optimizer entry '{key}' is {value.dtype} {_shape_text(value.shape)}, "
                f"param '{pname}' is {params[pname].dtype} {_shape_text(params[pname].shape)}"
            )
    if seed is not None and ckpt.seed != seed:
        raise fail(f"it was trained with seed {ckpt.seed}, not {seed}; pass the same seed")
    try:
        optimizer.set_state(ckpt.optimizer_state)
    except IndexgradError as e:
        raise fail(e.message) from None
    for name, p in params.items():
        p[...] = ckpt.params[name]
    return ckpt.epoch, ckpt.history


def fit(
    model: Model,
    params: dict[str, Array],
    data: Data,
    *,
    loss: str = "loss",
    epochs: int = 10,
    batch: int = 64,
    optimizer: str | Optimizer = "adam",
    lr: float | None = None,
    seed: int = 0,
    valid: Data | None = None,
    metric: Metric | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, History], None] | None = None,
    checkpoint: str | Path | None = None,
    resume: str | Path | None = None,
    fixed: Data | None = None,
) -> History:
    """Train `params` in place by minibatch gradient descent on `data`; returns the History.

    Each step runs forward on the batch with the params and backward with respect to the params
    only, in one call (model.value_and_grad), then the optimizer (a name in OPTIMIZERS or an
    object with `.step`) updates them. A tqdm bar shows the running loss unless progress=False.
    The epoch's loss is the batch losses' mean weighted by batch size. After each epoch, `valid`
    is evaluated when given and `on_epoch(epoch, history)` is called (epochs count from 1).
    `fixed` arrays (a mask, a table of weights) are read by every step as they are: neither
    split into batches nor trained.

    Randomness: epoch e shuffles the rows with `np.random.default_rng([seed, e])`, so the same
    seed gives the same run, bit for bit, and a run can resume at any epoch with no generator
    state to carry.

    Checkpoints: with `checkpoint=PATH` a checkpoint (params, optimizer state, epochs done, seed
    and History; see save_checkpoint) is written atomically after every epoch, before on_epoch.
    With `resume=PATH` the params (in place), the optimizer state and the History are first
    restored from one, and training continues from the epoch after it up to `epochs`; run with
    the same data, batch, optimizer, lr and seed, `epochs=2, checkpoint=c` followed by
    `epochs=4, resume=c` ends with the very params and History (but seconds) of `epochs=4`.
    The optimizer's hyperparameters (lr, momentum, ...) come from this call, not the checkpoint.
    """
    _check_params(params)
    check_loss(model.program, loss)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise IndexgradError(f"seed must be a non-negative integer, got {seed!r}")
    opt = make_optimizer(optimizer, lr)
    n = batch_length(data)
    if checkpoint is not None:
        _check_stateful(opt)
        if not Path(checkpoint).parent.is_dir():
            message = f"cannot write {checkpoint}: no such directory"
            raise IndexgradError(message, filename=str(checkpoint))
    wrt = list(params)
    bad = _not_finite(params)
    if bad is not None:
        raise IndexgradError(f"param '{bad[0]}' holds {bad[1]} before training; give it finite values")
    history, done = History(), 0
    if resume is not None:
        done, history = restore_checkpoint(resume, params, opt, seed=int(seed))
        if valid is not None:  # epochs of a checkpoint written without held-out data have no values
            for values in (history.valid_loss, *([history.valid_metric] if metric is not None else [])):
                values[:0] = [math.nan] * (done - len(values))
    steps = -(-n // max(batch, 1))
    bar = _progress_bar()(
        total=max(epochs, done) * steps,
        initial=done * steps,
        disable=not progress,
        leave=False,
        unit="batch",
    )
    with bar:
        for epoch in range(done + 1, epochs + 1):
            start = time.perf_counter()
            total, rows = 0.0, 0
            rng = np.random.default_rng([int(seed), epoch])
            for b in minibatches(data, batch, rng):
                vals, grads = model.value_and_grad({**(fixed or {}), **b, **params}, loss=loss, wrt=wrt)
                value = float(vals[loss])
                if not math.isfinite(value):
                    raise IndexgradError(
                        f"loss '{loss}' became {value} in epoch {epoch}; "
                        "try a smaller learning rate"
                    )
                opt.step(params, {n: model.engine.to_numpy(g) for n, g in grads.items()})
                k = batch_length(b)
                total, rows = total + value * k, rows + k
                status = f"epoch {epoch}/{epochs} loss {total / rows:.4f}"
                bar.set_postfix_str(status, refresh=False)
                bar.update()
            history.loss.append(total / rows)
            if valid is not None:
                valid_loss, valid_metric = evaluate(model, params, valid, loss, metric, fixed)
                history.valid_loss.append(valid_loss)
                if valid_metric is not None:
                    history.valid_metric.append(valid_metric)
            for values in (history.valid_loss, history.valid_metric):
                if values and len(values) < len(history.loss):  # kept from a checkpoint, none now
                    values.append(math.nan)
            history.seconds.append(time.perf_counter() - start)
            bad = _not_finite(params)
            if bad is not None:  # before the checkpoint, which then keeps the last good epoch
                raise IndexgradError(
                    f"param '{bad[0]}' became {bad[1]} in epoch {epoch}; try a smaller learning rate"
                    + (" (no checkpoint was written for this epoch)" if checkpoint is not None else "")
                )
            if checkpoint is not None:
                save_checkpoint(checkpoint, params, opt, epoch, history, int(seed))
            if on_epoch is not None:
                on_epoch(epoch, history)
    return history


def epoch_line(epoch: int, history: History, epochs: int | None = None) -> str:
    """One line summarising an epoch: losses, held-out accuracy and time."""
    i = epoch - 1
    line = f"epoch {epoch}" + (f"/{epochs}" if epochs else "") + f"  loss {history.loss[i]:.4f}"
    if len(history.valid_loss) > i:
        line += f"  test loss {history.valid_loss[i]:.4f}"
    if len(history.valid_metric) > i:
        line += f"  test accuracy {100 * history.valid_metric[i]:.2f}%"
    return line + f"  ({history.seconds[i]:.2f} s)"


def log_epochs(epochs: int, every: int = 1) -> Callable[[int, History], None]:
    """An `on_epoch` callback printing `epoch_line` every few epochs and the last, above the bar."""

    def on_epoch(epoch: int, history: History) -> None:
        if epoch % every == 0 or epoch == epochs:
            _progress_bar().write(epoch_line(epoch, history, epochs))

    return on_epoch


class _Quiet:
    """A progress bar that shows nothing, where tqdm (the `train` extra) is not installed."""

    def __init__(self, **_: object) -> None:
        pass

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def set_postfix_str(self, *_: object, **__: object) -> None:
        pass

    def update(self) -> None:
        pass

    @staticmethod
    def write(line: str) -> None:
        print(line)


def _progress_bar() -> Any:
    """tqdm's bar class where tqdm is installed, else a quiet stand-in: the core install needs neither."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Quiet
    return tqdm


def plot_formats() -> list[str]:
    """The file extensions a plot can have: matplotlib's formats but pgf, which needs a TeX install."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise IndexgradError("plots need matplotlib: pip install 'indexgrad[train]'") from None

    return sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"})


def check_plot_path(path: str | Path) -> None:
    """Refuse a plot path whose extension names no format matplotlib writes, or whose directory is missing."""
    target = Path(path)
    formats = plot_formats()
    if target.suffix[1:].lower() not in formats:
        has = f"the extension '{target.suffix}'" if target.suffix else "no extension"
        raise IndexgradError(
            f"cannot plot to {target}: it has {has}, and the extension picks the image format; "
            "use one of " + ", ".join(f".{f}" for f in formats)
        )
    if not target.parent.is_dir():
        raise IndexgradError(f"cannot plot to {target}: no such directory")
    if target.is_dir():
        raise IndexgradError(f"cannot plot to {target}: it is a directory")


def plot_history(history: History, path: str | Path, metric_name: str = "accuracy") -> None:
    """Write an image (PNG, PDF, SVG, ... by the extension) of the losses and held-out metric per epoch."""
    check_plot_path(path)
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing left open

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    epochs = range(1, len(history.loss) + 1)
    left.plot(epochs, history.loss, label="training")
    if history.valid_loss:
        left.plot(epochs, history.valid_loss, label="held out")
    positive = min((v for v in history.loss + history.valid_loss if math.isfinite(v)), default=0.0) > 0
    left.set(xlabel="epoch", ylabel="loss", yscale="log" if positive else "linear", title="loss")
    left.legend()
    if history.valid_metric:
        right.plot(epochs, history.valid_metric, color="C1")
    right.set(xlabel="epoch", ylabel=metric_name, title=f"held-out {metric_name}")
    right.grid(alpha=0.3)
    with atomic_path(path) as tmp:  # a failed write (a full disk) keeps the old image whole
        fig.savefig(tmp, dpi=100, format=Path(path).suffix[1:].lower())
