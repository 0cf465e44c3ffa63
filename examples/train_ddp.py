"""The network of examples/torch_layer.py, .idx layer and all, trained data-parallel under
DistributedDataParallel: `torchrun --nproc_per_node 2 examples/train_ddp.py` (gloo, on CPU).

Every rank starts from the same parameters (DDP copies rank 0's), takes its share of each batch,
and DDP averages the ranks' gradients, the .idx layer's among them, before each Adam step: the
parameters follow those of one process training on the whole batches (tests/test_torch.py checks
this on two processes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_layer import EPOCHS, SEED, accuracy, digits, fit, network  # noqa: E402


def main(epochs: int = EPOCHS) -> float:
    """Train on this rank's shares (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT);
    returns the held-out accuracy, the same on every rank."""
    start = time.perf_counter()
    torch.set_num_threads(1)  # each process on one core: two processes share this machine's two
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(SEED)
        net = network()
        train, test = digits(torch.device("cpu"))
        fit(DistributedDataParallel(net), train, test, epochs, rank, world)
        score = accuracy(net, *test)
        if rank == 0:
            print(
                f"test accuracy {100 * score:.2f}% ({len(test[0])} held-out digits), {world} processes, "
                f"{time.perf_counter() - start:.1f} s"
            )
        return score
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    main(parser.parse_args().epochs)
