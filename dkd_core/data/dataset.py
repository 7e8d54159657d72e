"""A torch Dataset over one step's split, and its DataLoader (docs/method.md §2).

Each item is read, augmented jointly (image and label) and its label remapped
from dataset labels to output channels with the step's lookup table
(`TaskStep.label_lut`) in one vectorised indexing op (docs/method.md §2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Sampler

from dkd_core.data.labels import read_label
from dkd_core.data.layout import Sample
from dkd_core.data.transforms import PairTransform
from dkd_core.errors import DKDError

__all__ = [
    "ResumableSampler",
    "SegmentationDataset",
    "eval_loader",
    "make_loader",
    "read_label",
    "train_loader",
]

BACKGROUND, IGNORE = 0, 255


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DKDError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DKDError(f"{path}: cannot read image ({exc})") from None


class SegmentationDataset(torch.utils.data.Dataset):
    """Images and channel-space labels of one split of one step (docs/method.md §2).

    Item i -> {"image": uint8 [3, H, W], "label": uint8 [H, W] (after the LUT), "index": i};
    the training loop normalises images (`transforms.normalize`) and widens labels on the device.
    Augmentation draws from `np.random.default_rng([seed, epoch, i])`: deterministic
    per (seed, epoch, sample), different across epochs, independent of the
    DataLoader worker that loads it. The epoch lives in shared memory, so
    `set_epoch` also reaches persistent DataLoader workers.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        label_lut: np.ndarray,
        transform: PairTransform,
        seed: int = 0,
        allowed_labels: Iterable[int] | None = None,
    ) -> None:
        label_lut = np.asarray(label_lut)
        if label_lut.shape != (256,) or label_lut.dtype != np.uint8:
            raise DKDError(
                f"label_lut must be a uint8 array of shape (256,) (TaskStep.label_lut), "
                f"got {label_lut.dtype} {label_lut.shape}"
            )
        self.samples = list(samples)
        self.label_lut = label_lut  # [256] uint8: dataset label -> channel (docs/method.md §2)
        self.transform = transform
        self.seed = int(seed)
        self._allowed: np.ndarray | None = None  # sorted valid label values
        self._invalid: np.ndarray | None = None  # [256] bool lookup: value -> not a class
        if allowed_labels is not None:
            self._allowed = np.array(sorted({*allowed_labels, BACKGROUND, IGNORE}), dtype=np.int64)
            self._invalid = np.ones(256, dtype=bool)
            self._invalid[self._allowed] = False
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch`; call before iterating the loader."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.samples)

    def remap(self, label: np.ndarray) -> np.ndarray:
        """Dataset labels -> output channels: one vectorised lookup (docs/method.md §2)."""
        return np.take(self.label_lut, label)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        sample = self.samples[index]
        label = read_label(sample.label)  # [H, W] uint8 dataset labels
        if self._invalid is not None and np.take(self._invalid, label).any():  # one LUT pass
            values = np.unique(label)
            bad = values[self._invalid[values]]
            if bad.size:
                raise DKDError(
                    f"{sample.label}: label values {bad.tolist()} are not classes of this "
                    f"dataset; expected values in 0, 255 and {self._allowed[1:-1].tolist()}"
                )
        image = _read_image(sample.image)
        if image.size != (label.shape[1], label.shape[0]):
            raise DKDError(
                f"{sample.label}: label is {label.shape[1]}x{label.shape[0]} but image "
                f"{sample.image} is {image.width}x{image.height} (width x height)"
            )
        # The remap is a pure value map and labels are resized nearest-neighbour, so
        # remapping first gives the same result on the (usually fewer) source pixels.
        channels = self.remap(label)  # [H, W] uint8
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image_t, channels = self.transform(image, channels, rng)  # [3, H', W'], [H', W']
        return {
            "image": image_t,
            "label": torch.from_numpy(np.require(channels, requirements="W")),  # uint8
            "index": index,
        }


class ResumableSampler(Sampler[int]):
    """This rank's share of a seeded per-epoch shuffle, startable mid-epoch.

    The order depends only on (seed, epoch), so a resumed run sees the same
    batches as an uninterrupted one; `set_epoch(epoch, start_batch)` skips
    batches without loading them. `batch_size` is this rank's images per
    optimizer step. Global batch b of an epoch is the shuffle's slice
    [b·G, (b+1)·G), G = batch_size · world_size, and each rank takes every
    world_size-th index of it (as DistributedSampler does), in order: so
    which images make up step b depends on G alone, not on how they are split
    over processes, or over micro-batches within a rank (the loader cuts this
    rank's share into consecutive micro-batches; `batching`).
    """

    def __init__(self, size: int, batch_size: int, rank: int, world_size: int, seed: int):
        self.size, self.batch_size = size, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batches_per_epoch = size // (batch_size * world_size)
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise DKDError(
                f"{size} training images are fewer than one global batch "
                f"({batch_size} x {world_size} processes); lower data.batch_size"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g)
        global_batch = self.batch_size * self.world_size
        used = self.batches_per_epoch * global_batch
        # order[rank::world_size] over whole global batches: its b-th run of batch_size
        # indices lies in global batch b's slice.
        mine = order[:used][self.rank :: self.world_size]
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def make_loader(
    dataset: SegmentationDataset,
    batch_size: int,
    sampler: Sampler[int] | Sequence[int],
    num_workers: int,
    drop_last: bool,
) -> DataLoader:
    """DataLoader with pinned memory (CUDA) and persistent workers (when there are any)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        # Its own generator: seeding workers must not consume the global RNG (dropout).
        generator=torch.Generator().manual_seed(0),
    )


def train_loader(
    dataset: SegmentationDataset, batch_size: int, rank: int, world_size: int, seed: int,
    num_workers: int, micro_batch_size: int | None = None,
) -> tuple[DataLoader, ResumableSampler]:  # fmt: skip
    """Shuffled, whole batches; call `sampler.set_epoch` and `dataset.set_epoch` per epoch.

    `batch_size` is this rank's images per optimizer step; the loader yields them in
    `micro_batch_size` pieces (all of them at once when None), which must divide it.
    """
    micro = micro_batch_size or batch_size
    if batch_size % micro:
        raise DKDError(f"micro-batch {micro} does not divide the per-process batch {batch_size}")
    sampler = ResumableSampler(len(dataset), batch_size, rank, world_size, seed)
    return make_loader(dataset, micro, sampler, num_workers, drop_last=True), sampler


def eval_loader(
    dataset: SegmentationDataset, batch_size: int, rank: int, world_size: int, num_workers: int
) -> DataLoader:
    """Every world_size-th image for this rank, in order; confusion matrices are summed."""
    indices = list(range(rank, len(dataset), world_size))
    return make_loader(dataset, batch_size, indices, num_workers, drop_last=False)
