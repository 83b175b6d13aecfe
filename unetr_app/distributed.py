"""Processes under `torchrun`: rank, sharding and small collective helpers (training and prediction).

Under `torchrun --nproc-per-node N -m unetr_app predict ...` every process gets the cases
`cases[rank::world_size]`, writes its own outputs, and sends its records to rank 0, which writes the
one merged report; that group only carries small Python objects, so it uses gloo on every device.
`unetr train` under torchrun trains with DistributedDataParallel: gloo on CPU, NCCL on CUDA. Each
process runs on `cuda:LOCAL_RANK` when CUDA is chosen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(backend: str = "gloo") -> Shard:
    """Join torchrun's process group when launched by it; a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Shard()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, **_attempt_store(world_size))
    return Shard(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _attempt_store(world_size: int) -> dict[str, Any]:
    """The process group's store, with its own keys for each attempt of `torchrun --max-restarts`.

    The launcher keeps one store across restarts; left as it is, the restarted workers read the
    addresses the dead attempt's ranks published there and the group never connects ("Connection
    refused" in gloo's connectFullMesh, and NCCL's equivalent)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:  # not under torchrun: init_process_group's own env:// rendezvous
        return {}
    rank = int(os.environ["RANK"])
    hosted_by_launcher = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=rank == 0 and not hosted_by_launcher)
    return {"store": dist.PrefixStore(f"unetr/attempt_{attempt}", store), "rank": rank, "world_size": world_size}


def stop(shard: Shard) -> None:
    if shard.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(backend: str = "gloo") -> Iterator[Shard]:
    """`start` ... `stop`, with a barrier on the way out of a run that did not fail: a process that
    tears its group down while a peer still flushes the last collective's sends makes the peer's
    gloo thread throw, and that peer dies of SIGABRT. After a failure there is no barrier (the
    failed rank would never reach it) and torchrun stops the others."""
    shard = start(backend)
    try:
        yield shard
        barrier(shard)
    finally:
        stop(shard)


def device_for(shard: Shard, device: torch.device) -> torch.device:
    """One GPU per process on a node: `cuda` becomes `cuda:LOCAL_RANK`."""
    if device.type == "cuda" and shard.distributed and device.index is None:
        return torch.device("cuda", shard.local_rank % torch.cuda.device_count())
    return device


def my_part(items: list[T], shard: Shard) -> list[T]:
    return items[shard.rank :: shard.world_size]


def barrier(shard: Shard) -> None:
    if shard.distributed:
        dist.barrier()


def gather_to_main(items: list[Any], shard: Shard) -> list[Any] | None:
    """Every process's list, concatenated on rank 0 (None elsewhere)."""
    if not shard.distributed:
        return list(items)
    gathered: list[list[Any]] | None = [None] * shard.world_size if shard.is_main else None  # type: ignore[list-item]
    dist.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if gathered is not None else None


def all_gather(item: T, shard: Shard) -> list[T]:
    """Every process's `item`, in rank order, on every process."""
    if not shard.distributed:
        return [item]
    gathered: list[Any] = [None] * shard.world_size
    dist.all_gather_object(gathered, item)
    return gathered


def broadcast_from_main(value: T, shard: Shard) -> T:
    if not shard.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
