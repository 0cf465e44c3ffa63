"""Train the deep equilibrium layer of examples/deq.idx on the 8x8 digits and plot loss and accuracy."""

import time
from pathlib import Path

import indexgrad as ig
from indexgrad.digits import load_digits_data
from indexgrad.train import accuracy, fit, infer_sizes, init_params, log_epochs, plot_history

HERE = Path(__file__).resolve().parent
HIDDEN, EPOCHS, BATCH, LR, SEED = 48, 20, 64, 3e-3, 0


def main() -> None:
    start = time.perf_counter()
    model = ig.compile(HERE / "deq.idx", tol=1e-6)  # float64; a training step needs no more
    train, test = load_digits_data(seed=SEED)  # pixels x[b,d] and one-hot labels Y[b,c]
    sizes = {**infer_sizes(model, train), "h": HIDDEN, "g": HIDDEN}
    params = init_params(model, sizes, init="glorot", seed=SEED)
    history = fit(
        model,
        params,
        train,
        epochs=EPOCHS,
        batch=BATCH,
        optimizer="adam",
        lr=LR,
        seed=SEED,
        valid=test,
        metric=accuracy("logits", "Y"),
        on_epoch=log_epochs(EPOCHS, every=5),
    )
    seconds = time.perf_counter() - start
    print(f"test accuracy {100 * history.valid_metric[-1]:.2f}% ({len(test['x'])} held-out digits)")
    print(f"wall time {seconds:.1f} s")
    plot_history(history, HERE / "train_deq.png")
    print(f"wrote {HERE / 'train_deq.png'}")


if __name__ == "__main__":
    main()
