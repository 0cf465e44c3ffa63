"""One rank of examples/torch_layer.py's training under DistributedDataParallel (gloo, CPU), for
tests/test_torch.py, and the single-process run it is compared with.

`rank_run(rank, world, port, out)` runs in a process of its own: a few Adam steps on the rank's
shares of the batches, then it writes its parameters and its last gradients (which DDP averaged
across ranks) to out/rank{rank}.npz.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import torch_layer  # noqa: E402

STEPS = 3


def start() -> torch.nn.Module:
    """The example's network in float64, with the parameters every run starts from."""
    torch.manual_seed(torch_layer.SEED)
    return torch_layer.network(torch.float64)


def run(model: torch.nn.Module, net: torch.nn.Module, rank: int = 0, world: int = 1) -> dict[str, np.ndarray]:
    """STEPS steps of the example's fit on `model` (net, or net under DDP): net's parameters and
    their last gradients."""
    train, test = torch_layer.digits(torch.device("cpu"), torch.float64)
    torch_layer.fit(model, train, test, epochs=1, rank=rank, world=world, steps=STEPS)
    out = {}
    for name, p in net.named_parameters():
        out[f"{name} value"], out[f"{name} gradient"] = p.detach().numpy(), p.grad.numpy()
    return out


def rank_run(rank: int, world: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        net = start()
        np.savez(out / f"rank{rank}.npz", **run(DistributedDataParallel(net), net, rank, world))
    finally:
        dist.destroy_process_group()
