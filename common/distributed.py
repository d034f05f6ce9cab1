"""Sharding a run over ``torchrun`` processes: each takes a disjoint share of the cases, and the per-case results
are gathered so that the tables and lists are written once, by the first process, as one process would write them.
Without an initialised process group everything here is the single-process case."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes the run's shared outputs (rank 0)."""
    return world()[0] == 0


def shard(items: Sequence[T], source: str = "the data list") -> list[T]:
    """This process's share of ``items``: every ``world``-th item from its rank on (disjoint, together complete). A
    ``ValueError`` when there are fewer items than processes: each process needs one."""
    rank, size = world()
    if len(items) < size:
        raise ValueError(
            f"{source}: {len(items)} case(s) for {size} processes; run with --nproc_per_node {max(len(items), 1)} "
            f"or fewer."
        )
    return list(items[rank::size])


def gather(obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (``[obj]`` outside ``torchrun``)."""
    rank, size = world()
    if size == 1:
        return [obj]
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered
