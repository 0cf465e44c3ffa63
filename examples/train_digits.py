"""Train the MLP of examples/mlp.idx on scikit-learn's 8x8 digits and plot loss and accuracy."""

import time
from pathlib import Path

import indexgrad as ig
from indexgrad.digits import load_digits_data
from indexgrad.train import accuracy, fit, infer_sizes, init_params, log_epochs, plot_history

HERE = Path(__file__).resolve().parent
HIDDEN, EPOCHS, BATCH, LR, SEED = 128, 30, 64, 3e-3, 0  # the defaults of `indexgrad train`


def main() -> None:
    start = time.perf_counter()
    model = ig.compile(HERE / "mlp.idx")
    train, test = load_digits_data(seed=SEED)  # pixels x[b,d] and one-hot labels Y[b,c]
    sizes = {**infer_sizes(model, train), "h": HIDDEN}  # d = 64 pixels, c = 10 classes
    params = init_params(model, sizes, init="he", seed=SEED)
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
        metric=accuracy("z", "Y"),
        on_epoch=log_epochs(EPOCHS, every=10),
    )
    seconds = time.perf_counter() - start
    print(f"test accuracy {100 * history.valid_metric[-1]:.2f}% ({len(test['x'])} held-out digits)")
    print(f"wall time {seconds:.1f} s")
    plot_history(history, HERE / "train_digits.png")
    print(f"wrote {HERE / 'train_digits.png'}")


if __name__ == "__main__":
    main()
