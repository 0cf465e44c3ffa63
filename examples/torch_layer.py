"""An .idx layer inside a PyTorch network: nn.Sequential with torch layers around it, trained with Adam.

The hidden layer (a dense layer, layer-normalised, then relu) is written in index notation;
`ig.torch.Module` makes it an nn.Module whose parameters are the program's params and whose
backward is the derived program, so no backward is written by hand. Run it with
`python examples/torch_layer.py [--device cuda]`; it trains on scikit-learn's 8x8 digits and prints
the held-out accuracy.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import indexgrad as ig
from indexgrad.digits import load_digits_data

LAYER = """
# a dense layer, normalised over its h outputs, then relu
param W[d,h], B[h]
input x[b,d]
a[b,h] = x[b,d] W[d,h] + B[h]
c[b,h] = a[b,h] - mean[k](a[b,k])
y[b,h] = relu(c[b,h] / sqrt(mean[k](c[b,k]^2) + 1e-5))
"""
PIXELS, HIDDEN, CLASSES = 64, 96, 10
EPOCHS, BATCH, LR, SEED = 20, 64, 3e-3, 0


def network(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """torch's Linear and ReLU around the .idx layer; torch.manual_seed fixes every initial weight."""
    return nn.Sequential(
        nn.Linear(PIXELS, HIDDEN, dtype=dtype),
        nn.ReLU(),
        ig.torch.Module(LAYER, outputs="y", sizes={"d": HIDDEN, "h": HIDDEN}, dtype=dtype),
        nn.Linear(HIDDEN, CLASSES, dtype=dtype),
    )


Pair = tuple[torch.Tensor, torch.Tensor]


def digits(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Pair, Pair]:
    """(pixels x[b,d], class numbers) for training and for the held-out test, on `device`."""
    train, test = load_digits_data(seed=SEED, labels="integer")
    return tuple(  # type: ignore[return-value]
        (torch.as_tensor(part["x"], device=device, dtype=dtype), torch.as_tensor(part["y"], device=device))
        for part in (train, test)
    )


def accuracy(net: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(dim=1) == labels).float().mean())


def fit(
    model: nn.Module,
    train: Pair,
    test: Pair,
    epochs: int,
    rank: int = 0,
    world: int = 1,
    steps: int | None = None,
) -> None:
    """Adam on minibatches of BATCH rows in an order seeded by SEED; with `world` processes, this
    one (`rank`) takes its share of each batch, and its loss is scaled so that the ranks' gradients,
    averaged (as DistributedDataParallel does), are the whole batch's mean gradient. `steps` stops
    early (the tests' short runs)."""
    (x, labels), (x_test, labels_test) = train, test
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order = torch.Generator().manual_seed(SEED)  # the same batches on every rank
    done = 0
    for epoch in range(1, epochs + 1):
        total, seen = 0.0, 0
        for batch in torch.randperm(len(x), generator=order).split(BATCH):
            rows = batch.tensor_split(world)[rank].to(x.device)
            opt.zero_grad()
            summed = nn.functional.cross_entropy(model(x[rows]), labels[rows], reduction="sum")
            loss = summed * (world / len(batch))
            loss.backward()  # through the derived program of the .idx layer
            opt.step()
            total, seen = total + summed.item(), seen + len(rows)
            done += 1
            if done == steps:
                return
        if rank == 0 and (epoch == 1 or epoch % 5 == 0 or epoch == epochs):
            print(
                f"epoch {epoch}/{epochs}: loss {total / seen:.4f}{' on rank 0' if world > 1 else ''}, "
                f"test accuracy {100 * accuracy(model, x_test, labels_test):.2f}%"
            )


def main(epochs: int = EPOCHS, device: str = "cpu") -> float:
    """Train the network; returns its held-out accuracy."""
    start = time.perf_counter()
    # the matrices are small (at most 64 x 96): a second thread costs more to wake than it saves,
    # and on a shared machine the threads wait on each other
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    where = torch.device(device)
    net = network().to(where)
    print(net)
    train, test = digits(where)
    fit(net, train, test, epochs)
    score = accuracy(net, *test)
    seconds = time.perf_counter() - start
    print(f"test accuracy {100 * score:.2f}% ({len(test[0])} held-out digits) in {seconds:.1f} s")
    return score


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args()
    main(args.epochs, args.device)
