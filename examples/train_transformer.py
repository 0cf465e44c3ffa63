"""Train the four-block transformer of examples/transformer.idx to sort digit sequences; plot the run.

Each sequence is DIGITS random digits, a separator, then the same digits sorted; the model reads it
left to right (causal attention) and is scored on the tokens after the separator. Held-out sequences
are then sorted by greedy decoding: the model writes each answer digit and reads it back for the next.
"""

import os

# The matrices are small (at most 768 x 64): threads cost BLAS more to start than they save, and on
# a shared machine they wait on each other. Set before numpy loads its BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import indexgrad as ig  # noqa: E402
from indexgrad.train import fit, infer_sizes, init_params, log_epochs, plot_history  # noqa: E402

HERE = Path(__file__).resolve().parent
DIGITS, SEP = 8, 10  # sequences of 8 digits; token 10 separates them from the sorted digits
SIZES = {"c": 11, "d": 32, "h": 4, "e": 8, "f": 64}  # tokens, width, heads, head width, MLP width
EPOCHS, BATCH, LR, SEED, TRAIN, TEST = 8, 64, 2e-3, 0, 12_000, 1_000


def sequences(digits: np.ndarray) -> dict[str, np.ndarray]:
    """Tokens `tok[b,t]` (digits, separator, sorted digits but the last) and the next token of each."""
    full = np.concatenate([digits, np.full((len(digits), 1), SEP), np.sort(digits, axis=1)], axis=1)
    return {"tok": full[:, :-1], "next": full[:, 1:]}


def data(seed: int, train: int, test: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Training and held-out sequences; no held-out sequence is trained on."""
    rng = np.random.default_rng(seed)
    held = np.unique(rng.integers(0, 10, (test, DIGITS)), axis=0)
    seen = {row.tobytes() for row in held}
    pool = rng.integers(0, 10, (train + test, DIGITS))
    kept = np.array([row for row in pool if row.tobytes() not in seen][:train])
    return sequences(kept), sequences(held)


def fixed() -> dict[str, np.ndarray]:
    """The causal mask M[t,s] (position t reads positions s <= t) and the scored positions' weights w[t]."""
    length = 2 * DIGITS
    mask = np.triu(np.full((length, length), -1e9, np.float32), k=1)
    weights = np.where(np.arange(length) >= DIGITS, 1.0 / DIGITS, 0.0).astype(np.float32)
    return {"M": mask, "w": weights}


def answer_accuracy(vals, batch) -> float:
    """The fraction of answer digits predicted right when the right digits before them are given."""
    guess = np.argmax(vals["z"][:, DIGITS:], axis=-1)
    return float(np.mean(guess == batch["next"][:, DIGITS:]))


def decode(model: ig.Model, params, digits: np.ndarray) -> np.ndarray:
    """Greedy decoding: each answer digit is the model's best guess given the guesses before it."""
    tok = sequences(digits)["tok"].copy()
    tok[:, DIGITS + 1 :] = 0  # hidden: the model fills them in one by one
    out = np.zeros_like(digits)
    for k in range(DIGITS):
        vals = model.forward(tok=tok, next=np.zeros_like(tok), **fixed(), **params)
        out[:, k] = np.argmax(vals["z"][:, DIGITS + k], axis=-1)
        if k + 1 < DIGITS:
            tok[:, DIGITS + 1 + k] = out[:, k]
    return out


def main(epochs: int = EPOCHS, train_size: int = TRAIN, plot: Path | None = HERE / "train_transformer.png"):
    start = time.perf_counter()
    model = ig.compile(HERE / "transformer.idx")
    train, test = data(SEED, train_size, TEST)
    sizes = {**infer_sizes(model, {**train, **fixed()}), **SIZES}  # b, t, s from the arrays
    params = init_params(model, sizes, seed=SEED)
    for name in params:
        if name.endswith(".G"):  # layer-norm gains start at one
            params[name][:] = 1
    history = fit(
        model,
        params,
        train,
        epochs=epochs,
        batch=BATCH,
        optimizer="adam",
        lr=LR,
        seed=SEED,
        valid=test,
        metric=answer_accuracy,
        fixed=fixed(),
        on_epoch=log_epochs(epochs),
    )
    digits = test["tok"][:, :DIGITS]
    right = decode(model, params, digits) == np.sort(digits, axis=1)
    seconds = time.perf_counter() - start
    print(f"answer digits right (teacher forcing) {100 * history.valid_metric[-1]:.2f}%")
    print(
        f"held-out sequences sorted exactly (greedy decoding) {100 * np.mean(right.all(axis=1)):.2f}% "
        f"of {len(digits)}; digits right {100 * np.mean(right):.2f}%"
    )
    print(f"wall time {seconds:.1f} s")
    if plot is not None:
        plot_history(history, plot, metric_name="answer-digit accuracy")
        print(f"wrote {plot}")
    return history, right


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--train", type=int, default=TRAIN, help="training sequences")
    a = ap.parse_args()
    main(a.epochs, a.train)
