"""A torch Dataset over one step's split, and its DataLoader (SPEC §2).

Each item is read, augmented jointly (image and label) and its label remapped
from dataset labels to output channels with the step's lookup table
(`TaskStep.label_lut`) in one vectorised indexing op (SPEC §2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, DistributedSampler, Sampler, SequentialSampler

from dkd_core.data.layout import Sample
from dkd_core.data.transforms import PairTransform
from dkd_core.errors import DKDError

__all__ = ["SegmentationDataset", "build_loader", "read_label", "set_loader_epoch"]

BACKGROUND, IGNORE = 0, 255
_LABEL_MODES = ("P", "L")


def read_label(path: Path) -> np.ndarray:
    """A label PNG as uint8 [H, W] class indices (palette indices for mode P, values for L).

    The palette is never applied: an RGB, RGBA or 16-bit label is a DKDError.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in _LABEL_MODES:
                raise DKDError(
                    f"{path}: expected a palette or grayscale PNG (mode P or L) holding "
                    f"class indices, got mode {img.mode}"
                )
            return np.asarray(img, dtype=np.uint8)  # [H, W]
    except FileNotFoundError:
        raise DKDError(f"{path}: label file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DKDError(f"{path}: cannot read label image ({exc})") from None


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DKDError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DKDError(f"{path}: cannot read image ({exc})") from None


class SegmentationDataset(torch.utils.data.Dataset):
    """Images and channel-space labels of one split of one step (SPEC §2).

    Item i -> {"image": float32 [3, H, W], "label": int64 [H, W] (after the LUT), "index": i}.
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
        self.label_lut = label_lut  # [256] uint8: dataset label -> channel (SPEC §2)
        self.transform = transform
        self.seed = int(seed)
        self._allowed: np.ndarray | None = None
        if allowed_labels is not None:
            self._allowed = np.array(sorted({*allowed_labels, BACKGROUND, IGNORE}), dtype=np.int64)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch`; call before iterating the loader."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        sample = self.samples[index]
        label = read_label(sample.label)  # [H, W] uint8 dataset labels
        if self._allowed is not None:
            values = np.unique(label)
            bad = values[~np.isin(values, self._allowed)]
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
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image_t, label = self.transform(image, label, rng)  # [3, H', W'], [H', W']
        channels = self.label_lut[label]  # [H', W'] uint8, one vectorised lookup (SPEC §2)
        return {
            "image": image_t,
            "label": torch.from_numpy(channels.astype(np.int64)),
            "index": index,
        }


def build_loader(
    dataset: SegmentationDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    drop_last: bool,
    distributed: bool,
    seed: int,
) -> DataLoader:
    """A DataLoader over `dataset`; call `set_loader_epoch(loader, epoch)` before each epoch.

    Distributed: a DistributedSampler over this rank's shard. Otherwise shuffling
    uses a single-replica DistributedSampler too: its order is a function of
    (seed, epoch), so a run resumed at epoch e sees the same order as an
    uninterrupted one.
    """
    sampler: Sampler[int]
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's sampler (shuffle order) and dataset (augmentation)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if isinstance(loader.dataset, SegmentationDataset):
        loader.dataset.set_epoch(epoch)
