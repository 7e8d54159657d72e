"""How one optimizer step's global batch is split over processes and micro-batches.

`data.batch_size` is the global batch: the images behind one optimizer step,
whatever the number of processes. Each process runs `accumulation_steps`
forward/backward passes of `micro_batch_size` images and steps once. The
gradient then equals the full batch's: every loss term is a mean over the
images and pixels of its batch (`losses.channel_bce`), micro-batches are of
equal size and crops are all S x S, so the full-batch mean is the mean of the
micro-batch means (each backward is scaled by 1 / accumulation_steps), and DDP
averages over processes. Which images form iteration b's global batch is fixed
by the seeded shuffle alone (`data.ResumableSampler`), not by the split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

from dkd_core.errors import DKDError

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int  # images per optimizer step, all processes together
    per_process: int  # images per optimizer step on one process
    micro_batch: int  # images per forward/backward on one process
    accumulation_steps: int  # micro-batches per optimizer step on one process


def plan_batches(batch_size: int, world_size: int, micro_batch_size: int | None) -> BatchPlan:
    """The split of `data.batch_size` over `world_size` processes; a config error if uneven."""
    if batch_size % world_size:
        raise DKDError(
            f"data.batch_size {batch_size} is not divisible by the {world_size} processes"
        )
    per_process = batch_size // world_size
    micro = micro_batch_size or per_process  # None or 0: no accumulation
    if per_process % micro:
        raise DKDError(
            f"data.batch_size {batch_size} is not a multiple of processes ({world_size}) x "
            f"data.micro_batch_size ({micro}); choose a data.micro_batch_size that divides "
            f"{per_process} (the images per process), or 0 for no accumulation"
        )
    return BatchPlan(batch_size, per_process, micro, per_process // micro)


def grouped(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of `size` items (the micro-batches of one step); a short tail is dropped."""
    iterator = iter(items)
    while len(group := list(islice(iterator, size))) == size:
        yield group
