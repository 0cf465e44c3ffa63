"""One rank of a DistributedDataParallel step on an indexgrad Module (gloo, CPU), for tests/test_torch.py.

`rank_step(rank, world, port, out)` runs in a process of its own: the rank takes its share of one
batch and writes its parameters' gradients (which DDP averages across ranks) to out/rank{rank}.npz.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import indexgrad as ig

PROGRAM = Path(__file__).resolve().parent.parent / "examples" / "mlp.idx"
SIZES = {"d": 8, "h": 6, "c": 4}
ROWS = 16


def module() -> torch.nn.Module:
    """The MLP with the parameters every rank (and the single-process reference) starts from."""
    torch.manual_seed(0)
    return ig.torch.Module(PROGRAM, outputs="loss", sizes=SIZES, dtype=torch.float64)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.standard_normal((ROWS, SIZES["d"])))
    Y = torch.as_tensor(np.eye(SIZES["c"])[rng.integers(0, SIZES["c"], ROWS)])
    return x, Y


def rank_step(rank: int, world: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        layer = module()
        model = DistributedDataParallel(layer)
        x, Y = batch()
        rows = slice(rank * ROWS // world, (rank + 1) * ROWS // world)
        model(x[rows], Y[rows]).backward()
        grads = {name: p.grad.numpy() for name, p in layer.named_parameters()}
        np.savez(out / f"rank{rank}.npz", **grads)
    finally:
        dist.destroy_process_group()
