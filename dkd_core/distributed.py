"""Everything about process groups, in one place.

Training runs under `torchrun`, which sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; we read those (env://) and nothing else — no
spawned processes, no hard-coded ports. Without them, training runs as a
single process. Backend: NCCL on CUDA, gloo on CPU. SyncBatchNorm only on
CUDA (it does not run on CPU/gloo); CPU processes keep plain BatchNorm.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dkd_core.errors import DKDError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None, timeout_minutes: int | None = None) -> DistInfo:
    """Join the process group torchrun describes (or run alone); pick this process's device.

    `timeout_minutes` bounds every collective, the barrier the other ranks wait in while
    a node's first rank downloads the dataset included (`train.process_group_timeout_minutes`);
    None keeps the backend's default.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = None if timeout_minutes is None else timedelta(minutes=timeout_minutes)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", init_method="env://", timeout=timeout
        )
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place (e.g. a confusion matrix)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (for small things: paths, manifests)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's object, in rank order (for small things: per-image label sets)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def prepare_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """Move to the device; with several processes, SyncBN (CUDA only) and DDP.

    Returns the module to call for training; keep the plain model for saving.
    """
    model = model.to(info.device)
    if not info.enabled:
        return model
    if info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    # The auxiliary head reads detached features and frozen BN takes no gradients:
    # every trainable parameter still gets a gradient each step, so no unused-parameter scan.
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def on_main(info: DistInfo, action: Callable[[], T]) -> T:
    """Run `action` on rank 0 and give every process its result, or its `DKDError`."""
    outcome: tuple[T | None, str | None] = (None, None)
    error = None
    if info.is_main:
        try:
            outcome = (action(), None)
        except DKDError as e:
            error = e
            outcome = (None, str(e))
    result, message = broadcast_object(outcome)
    if error is not None:
        raise error
    if message is not None:
        raise DKDError(message)
    return result
