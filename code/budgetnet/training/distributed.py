"""DistributedDataParallel plumbing: which process this is, and sums and gathers across them.

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain `python code/train.py` is a world of one, and
every helper here is then a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from budgetnet.runtime import resolve_device


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    info = Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    gpu = resolve_device(device_name).type == "cuda"
    if gpu:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    return info


def reduce(values: list[float], device: torch.device, world: int) -> list[float]:
    """The sum of `values` over every process."""
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(state: dict, world: int) -> list[dict]:
    """Every process's `state`, in rank order."""
    gathered: list = [None] * world
    dist.all_gather_object(gathered, state)
    return gathered


def teardown(world: int) -> None:
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
