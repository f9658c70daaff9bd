"""Devices and distributed training in one place: this process's rank and device, the process
group, and which process is the main one. Everything in training asks this module.

Under `torchrun` (or `python -m torch.distributed.run`) the variables `RANK`, `WORLD_SIZE` and
`LOCAL_RANK` are set; one process per GPU (NCCL) or per CPU worker (gloo). Without them this is a
single process and every helper here is a no-op. The variables are read, and objects exchanged
between processes, by the same code as for feature extraction (`featurizing.shards`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..checks import one_of
from ..errors import ConfigError
from ..featurizing.shards import Ranks, broadcast, gather, ranks_from_env
from .config import DEVICES

__all__ = [
    "Processes",
    "barrier",
    "broadcast",
    "gather",
    "max_across",
    "mean_across",
    "resolve_device",
    "start",
    "stop",
]


@dataclass(frozen=True)
class Processes(Ranks):
    """This process's place among the training processes (rank, world size, local rank, and
    whether it is the main one, as for feature extraction), and its device."""

    device: torch.device = field(kw_only=True)


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; `cuda` without a GPU is an error."""
    one_of("device", choice, DEVICES)
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "--device cuda was asked for but torch sees no CUDA device; use --device cpu, "
                "or install a CUDA build of torch."
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def start(device: str) -> Processes:
    """Join the process group when torchrun started us; pick this process's device."""
    ranks = ranks_from_env()  # torchrun's variables, read and checked in one place
    world_size, rank, local_rank = ranks.world_size, ranks.rank, ranks.local_rank
    chosen = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def stop(processes: Processes) -> None:
    """Leave the process group (a no-op for one process)."""
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_across(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The mean of a tensor over all processes (the tensor itself for one process)."""
    if not processes.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / processes.world_size


def max_across(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The largest value of a tensor over all processes."""
    if not processes.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()
