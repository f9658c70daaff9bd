"""Feature extraction under torchrun: which shard of the images this process takes, and the few
messages the processes exchange.

Under `torchrun` (or `python -m torch.distributed.run`) the variables `RANK`, `WORLD_SIZE` and
`LOCAL_RANK` are set. Each rank extracts one contiguous shard of the plan, cut at batch
boundaries so every batch holds the same images as in a single-process run (hence the same
bytes), into the rows of one shared partial file. Rank 0 prepares the output, and finishes it
once every shard is done. Without those variables there is one shard and no process group.

The ranks only exchange small Python objects, so the group is always gloo (on GPU hosts too):
nothing here needs NCCL. `Ranks`, `ranks_from_env`, `broadcast` and `gather` are the one reading
of torchrun's variables and the one object exchange: training (a later stage,
`amc_data.ranking.distributed`) builds on them.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import AmcDataError, ConfigError

# A rank that finished its shard waits for the slowest one (a resumed shard may have little left
# while another has most of its images to do): the group's collectives must wait that long.
GROUP_TIMEOUT = datetime.timedelta(hours=48)

T = TypeVar("T")


class OtherRankFailed(AmcDataError):
    """Another rank stopped the run; it reports why (the CLI prints nothing more here)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes torchrun started."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the output (features, checkpoints, logs) and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env() -> Ranks:
    """This process's rank, world size and local rank, from torchrun's variables."""
    try:
        ranks = Ranks(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as exc:
        raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({exc}).") from None
    if ranks.world_size < 1 or not 0 <= ranks.rank < ranks.world_size:
        raise ConfigError(
            f"RANK {ranks.rank} does not fit WORLD_SIZE {ranks.world_size}: start the processes "
            "with torchrun."
        )
    return ranks


def shard_bounds(count: int, batch_size: int, world_size: int) -> list[int]:
    """Plan positions where each shard starts, then `count`: shard r is `[b[r], b[r+1])`. Whole
    batches are dealt out as evenly as they go, so shards start at multiples of `batch_size`."""
    batches = -(-count // batch_size)
    return [min(count, (r * batches // world_size) * batch_size) for r in range(world_size)] + [
        count
    ]


def device_for(device: str, ranks: Ranks) -> str:
    """One GPU per local rank: `auto` and `cuda` become `cuda:LOCAL_RANK` when distributed (and
    CUDA is there; ranks share the GPUs when there are more ranks than GPUs); any other choice
    is kept."""
    if not ranks.distributed or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else device  # `cuda` is then refused, saying why
    return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"


def broadcast(obj: T, ranks: Ranks) -> T:
    """Rank 0's `obj` on every rank (`obj` itself for one process)."""
    if not ranks.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: T, ranks: Ranks) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` for one process)."""
    if not ranks.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


class Group:
    """The process group of a distributed extraction (every call is a no-op for one process)."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks
        self._joined = False
        if ranks.distributed:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="gloo", timeout=GROUP_TIMEOUT)
                self._joined = True

    def close(self) -> None:
        if self._joined:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._joined = False

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank."""
        return broadcast(obj, self.ranks)

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        return gather(obj, self.ranks)

    def on_main(self, step: Callable[[], T]) -> T:
        """Run `step` on rank 0 and hand its value to every rank. If it raises, rank 0 raises
        that error and the other ranks `OtherRankFailed` (no rank is left waiting)."""
        value: Any = None
        error: str | None = None
        failure: BaseException | None = None
        if self.ranks.is_main:
            try:
                value = step()
            except Exception as exc:
                failure, error = exc, f"{type(exc).__name__}: {exc}"
        error, value = self.broadcast((error, value))
        if failure is not None:
            raise failure
        if error is not None:
            raise OtherRankFailed(f"rank 0 stopped the run ({error}).")
        return value

    def all_succeed(self, step: Callable[[], T]) -> list[T]:
        """Run `step` on every rank and gather the values. If it raises on some rank, that rank
        raises its error and the others `OtherRankFailed` naming it, once all have finished."""
        value: Any = None
        failure: BaseException | None = None
        try:
            value = step()
        except Exception as exc:
            failure = exc
        outcomes = self.gather((None if failure is None else str(failure), value))
        if failure is not None:
            raise failure
        failed = [(rank, error) for rank, (error, _) in enumerate(outcomes) if error is not None]
        if failed:
            rank, error = failed[0]
            raise OtherRankFailed(f"rank {rank} stopped the run ({error}).")
        return [value for _, value in outcomes]
