"""Joint image/label augmentation (SPEC §2), with PIL, numpy and torch only.

Train: Inception-style random resized crop (area fraction uniform in
[0.5, 2.0], aspect ratio log-uniform in [3/4, 4/3], up to 10 tries, else a
central crop) resized to S x S, random horizontal flip, ImageNet mean/std
normalisation. Eval: resize the shorter side to S, centre-crop S x S, or keep the
whole image. Images are resampled bilinearly; labels always nearest-neighbour,
so label values stay exact.

Randomness comes only from the `numpy.random.Generator` passed in, so a sample's
augmentation is a pure function of that generator's seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from dkd_core.errors import DKDError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "PairTransform",
    "TrainTransform",
    "random_resized_crop_params",
    "to_normalized_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)  # [3, 1, 1]
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)  # [3, 1, 1]

# SPEC §2 random resized crop parameters.
DEFAULT_SCALE = (0.5, 2.0)
DEFAULT_RATIO = (3 / 4, 4 / 3)
_CROP_TRIES = 10


class PairTransform(Protocol):
    """A joint transform: (RGB image, label, rng) -> (image [3, H, W] float32, label [H, W] uint8)."""

    def __call__(
        self, image: Image.Image, label: Image.Image | np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, np.ndarray]: ...


def random_resized_crop_params(
    width: int,
    height: int,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    *,
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """A random crop box (top, left, height, width), as torchvision's RandomResizedCrop (SPEC §2).

    Up to 10 tries: area = W*H * uniform(scale), aspect ratio w/h log-uniform in
    `ratio`; accepted when the box fits in the image, at a uniform top-left.
    Otherwise a central crop: the whole image with its aspect ratio clamped to `ratio`.
    Draws with scale > 1 never fit, so with the default scale the accepted area
    fraction lies in [0.5, 1].
    """
    if width <= 0 or height <= 0:
        raise DKDError(f"random resized crop: image size must be positive, got {width}x{height}")
    if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]:
        raise DKDError(
            f"random resized crop: expected 0 < min <= max for scale {scale} and ratio {ratio}"
        )
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: central crop, the aspect ratio clamped to the allowed range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def to_normalized_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """RGB uint8 image [H, W, 3] -> float32 tensor [3, H, W], ImageNet-normalised (SPEC §2)."""
    array = np.asarray(image, dtype=np.float32) / 255  # [H, W, 3] in [0, 1]
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # [3, H, W]
    return (tensor - _MEAN) / _STD


def _as_pair(
    image: Image.Image, label: Image.Image | np.ndarray
) -> tuple[Image.Image, Image.Image]:
    """The image as RGB and the label as a single-channel PIL image of the same size."""
    if isinstance(label, np.ndarray):
        if label.dtype != np.uint8 or label.ndim != 2:
            raise DKDError(
                f"label array must be uint8 [H, W], got {label.dtype} with shape {label.shape}"
            )
        label = Image.fromarray(label)  # mode "L"
    if label.mode not in ("L", "P"):
        raise DKDError(f"label image must be mode L or P (class indices), got mode {label.mode}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != label.size:
        raise DKDError(
            f"image and label sizes differ: image {image.size[0]}x{image.size[1]}, "
            f"label {label.size[0]}x{label.size[1]} (width x height)"
        )
    return image, label


def _check_size(name: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise DKDError(f"{name}: crop_size must be a positive integer, got {size!r}")


@dataclass(frozen=True)
class TrainTransform:
    """SPEC §2 train augmentation: random resized crop to S x S, horizontal flip, normalise."""

    crop_size: int
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        _check_size("TrainTransform", self.crop_size)

    def __call__(
        self, image: Image.Image, label: Image.Image | np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, np.ndarray]:
        """-> (image float32 [3, S, S] normalised, label uint8 [S, S])."""
        image, label_img = _as_pair(image, label)
        top, left, h, w = random_resized_crop_params(
            image.width, image.height, self.scale, self.ratio, rng=rng
        )
        size = (self.crop_size, self.crop_size)
        box = (left, top, left + w, top + h)
        # Crop and resize in one resampling step; nearest keeps label values exact.
        image = image.resize(size, Image.Resampling.BILINEAR, box=box)
        label_arr = np.asarray(label_img.resize(size, Image.Resampling.NEAREST, box=box))  # [S, S]
        rgb = np.asarray(image)  # [S, S, 3] uint8
        if rng.random() < self.flip_prob:
            rgb, label_arr = rgb[:, ::-1], label_arr[:, ::-1]
        return to_normalized_tensor(rgb), np.ascontiguousarray(label_arr, dtype=np.uint8)


@dataclass(frozen=True)
class EvalTransform:
    """SPEC §2 validation/test transform: shorter side to S, centre crop S x S, normalise.

    With `whole_image=True` the image keeps its original size (only normalised).
    """

    crop_size: int
    whole_image: bool = False

    def __post_init__(self) -> None:
        _check_size("EvalTransform", self.crop_size)

    def __call__(
        self,
        image: Image.Image,
        label: Image.Image | np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """-> (image float32 [3, H, W] normalised, label uint8 [H, W]); `rng` is unused."""
        image, label_img = _as_pair(image, label)
        if not self.whole_image:
            size = self._resized_size(image.width, image.height)
            image = image.resize(size, Image.Resampling.BILINEAR)
            label_img = label_img.resize(size, Image.Resampling.NEAREST)
            box = self._centre_box(*size)
            image, label_img = image.crop(box), label_img.crop(box)
        label_arr = np.asarray(label_img, dtype=np.uint8)  # [H, W]
        return to_normalized_tensor(image), np.ascontiguousarray(label_arr)

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) with the shorter side S, the longer one truncated as torchvision does."""
        s = self.crop_size
        if width <= height:
            return s, int(s * height / width)
        return int(s * width / height), s

    def _centre_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centred S x S crop, rounded as torchvision's CenterCrop."""
        s = self.crop_size
        top = round((height - s) / 2.0)
        left = round((width - s) / 2.0)
        return left, top, left + s, top + s
