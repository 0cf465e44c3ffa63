"""The MLP of examples/mlp.idx as a JAX function (ig.jax.function): jax.value_and_grad differentiates
it through the derived program, jax.jit compiles the whole training step, and Adam (a few lines of
jax) trains it on scikit-learn's 8x8 digits in float32; the loss and accuracy are plotted."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import indexgrad as ig
from indexgrad.digits import load_digits_data
from indexgrad.train import infer_sizes, init_params

HERE = Path(__file__).resolve().parent
HIDDEN, EPOCHS, BATCH, LR, SEED = 128, 30, 64, 3e-3, 0  # as examples/train_digits.py


def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):  # type: ignore[no-untyped-def]
    """Adam's (init, update) on dicts of arrays."""

    def init(params):  # type: ignore[no-untyped-def]
        zeros = jax.tree.map(jnp.zeros_like, params)
        return zeros, zeros, jnp.zeros((), jnp.int32)

    def update(params, grads, state):  # type: ignore[no-untyped-def]
        m, v, t = state
        t = t + 1
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        scale = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = jax.tree.map(lambda p, m, v: p - scale * m / (jnp.sqrt(v) + eps), params, m, v)
        return params, (m, v, t)

    return init, update


def main(epochs: int = EPOCHS, plot: Path | None = HERE / "jax_layer.png") -> tuple[list[float], list[float]]:
    """Train; returns the mean training loss and the held-out accuracy per epoch."""
    start = time.perf_counter()
    program = ig.load(HERE / "mlp.idx")
    train, test = load_digits_data(seed=SEED)  # float32 pixels x[b,d], one-hot labels Y[b,c]
    sizes = {**infer_sizes(ig.compile(program), train), "h": HIDDEN}
    params = {n: jnp.asarray(a) for n, a in init_params(ig.compile(program), sizes, "he", SEED).items()}
    loss = ig.jax.function(program, outputs="loss")  # its VJP is the derived program
    logits = ig.jax.function(program, outputs="z")
    init, update = adam(LR)

    @jax.jit
    def step(params, state, batch):  # type: ignore[no-untyped-def]
        value, grads = jax.value_and_grad(lambda p: loss({**p, **batch}))(params)
        params, state = update(params, grads, state)
        return params, state, value

    @jax.jit
    def accuracy(params, data):  # type: ignore[no-untyped-def]
        z = logits({**params, **data})
        return jnp.mean(jnp.argmax(z, 1) == jnp.argmax(data["Y"], 1))

    state = init(params)
    rng = np.random.default_rng(SEED)
    n = len(train["x"]) // BATCH * BATCH  # whole batches: one shape, one compilation
    losses, accuracies = [], []
    for _ in tqdm(range(epochs), desc="epochs", unit="epoch"):
        order = rng.permutation(len(train["x"]))[:n].reshape(-1, BATCH)
        total = 0.0
        for rows in order:
            params, state, value = step(params, state, {k: jnp.asarray(a[rows]) for k, a in train.items()})
            total += float(value)
        losses.append(total / len(order))
        accuracies.append(float(accuracy(params, {k: jnp.asarray(a) for k, a in test.items()})))
    print(f"test accuracy {100 * accuracies[-1]:.2f}% ({len(test['x'])} held-out digits)")
    print(f"wall time {time.perf_counter() - start:.1f} s")
    if plot is not None:
        _plot(losses, accuracies, plot)
        print(f"wrote {plot}")
    return losses, accuracies


def _plot(losses: list[float], accuracies: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = range(1, len(losses) + 1)
    a.plot(epochs, losses)
    a.set(xlabel="epoch", ylabel="mean training loss", yscale="log", title="mlp.idx under jax.jit")
    b.plot(epochs, [100 * x for x in accuracies])
    b.set(xlabel="epoch", ylabel="held-out accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
