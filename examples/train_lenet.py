"""Train LeNet (examples/lenet.idx) on scikit-learn's 8x8 digits and plot loss and accuracy.

lenet.idx reads images as x[b,row,col], so the flat 64-pixel rows of the digits data are reshaped
to 8x8; its `dim` line fixes the 3x3 kernels (u, v), the 2x2 pooling windows (p, q) and the image
side. The sizes chosen here are the channels: o after the first convolution, h after the second;
after two poolings the dense layer W[h,r,c,k] reads a 2x2 image (r, c).
"""

import time
from pathlib import Path

import indexgrad as ig
from indexgrad.digits import load_digits_data
from indexgrad.train import accuracy, fit, infer_sizes, init_params, log_epochs, plot_history

HERE = Path(__file__).resolve().parent
CHANNELS, HIDDEN, EPOCHS, BATCH, LR, SEED = 12, 24, 30, 64, 3e-3, 0


def as_images(part: dict) -> dict:
    """x[b,d] with d = 64 pixels -> x[b,row,col] with 8x8 pixels; labels Y[b,k] unchanged."""
    return {"x": part["x"].reshape(-1, 8, 8), "Y": part["Y"]}


def main() -> None:
    start = time.perf_counter()
    model = ig.compile(HERE / "lenet.idx")
    train, test = load_digits_data(seed=SEED)  # pixels x[b,d] and one-hot labels Y[b,k]
    train, test = as_images(train), as_images(test)
    sizes = infer_sizes(model, train)  # b, row = col = 8, k = 10 classes, and the dims
    sizes.update(o=CHANNELS, h=HIDDEN, r=2, c=2)
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
        on_epoch=log_epochs(EPOCHS, every=5),
    )
    seconds = time.perf_counter() - start
    print(f"test accuracy {100 * history.valid_metric[-1]:.2f}% ({len(test['x'])} held-out digits)")
    print(f"wall time {seconds:.1f} s")
    plot_history(history, HERE / "train_lenet.png")
    print(f"wrote {HERE / 'train_lenet.png'}")


if __name__ == "__main__":
    main()
