"""Train the small CNN of examples/cnn.idx on scikit-learn's 8x8 digits and plot loss and accuracy.

cnn.idx reads images as x[b,row,col], so the flat 64-pixel rows of the digits data are reshaped
to 8x8. The sizes the data does not give are chosen here: 8 output channels o, a 3x3 kernel
(u, v) and the "valid" 6x6 output (r, c) that the convolution x[b,r+u,c+v] K[o,u,v] produces.
"""

import time
from pathlib import Path

import indexgrad as ig
from indexgrad.digits import load_digits_data
from indexgrad.train import accuracy, fit, infer_sizes, init_params, log_epochs, plot_history

HERE = Path(__file__).resolve().parent
CHANNELS, KERNEL, EPOCHS, BATCH, LR, SEED = 8, 3, 40, 64, 1e-2, 0


def as_images(part: dict) -> dict:
    """x[b,d] with d = 64 pixels -> x[b,row,col] with 8x8 pixels; labels Y[b,k] unchanged."""
    return {"x": part["x"].reshape(-1, 8, 8), "Y": part["Y"]}


def main() -> None:
    start = time.perf_counter()
    model = ig.compile(HERE / "cnn.idx")
    train, test = load_digits_data(seed=SEED)  # pixels x[b,d] and one-hot labels Y[b,k]
    train, test = as_images(train), as_images(test)
    sizes = infer_sizes(model, train)  # b, row = col = 8, k = 10 classes
    out = sizes["row"] - KERNEL + 1  # the "valid" extent of r and c
    sizes.update(o=CHANNELS, u=KERNEL, v=KERNEL, r=out, c=out)
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
    plot_history(history, HERE / "train_cnn.png")
    print(f"wrote {HERE / 'train_cnn.png'}")


if __name__ == "__main__":
    main()
