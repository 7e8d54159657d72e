"""Joint image/label augmentation (docs/method.md §2), with PIL, numpy and torch only.

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
    "normalize",
    "random_resized_crop_params",
    "to_uint8_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)  # [3, 1, 1]
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)  # [3, 1, 1]

# docs/method.md §2 random resized crop parameters.
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
    """A random crop box (top, left, height, width), as torchvision's RandomResizedCrop (docs/method.md §2).

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


def to_uint8_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """RGB uint8 image [H, W, 3] -> uint8 tensor [3, H, W] (a view; batching copies it)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [..., 3, H, W] -> float32, ImageNet-normalised (docs/method.md §2).

    Loaders hand out uint8 (4x fewer bytes through workers and pinned memory);
    this runs on the training device, batched: (x / 255 - mean) / std.
    """
    mean = _MEAN.to(images.device) * 255
    std = _STD.to(images.device) * 255
    return (images.float() - mean) / std


def _resize_crop(
    rgb: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool
) -> torch.Tensor:
    """Bilinear crop-and-resize (and optional horizontal flip) of uint8 [H, W, 3] -> [3, S, S].

    torch's uint8 kernel (antialiased, so downscaling filters like PIL's) is about 7x
    faster than PIL here; it differs from PIL by 0.02 grey levels on average. The
    flip is applied to the crop before resizing, inside the one copy it needs anyway.
    """
    left, top, right, bottom = box
    crop = rgb[top:bottom, left:right]  # [h, w, 3] view
    crop = np.array(crop[:, ::-1] if flip else crop)  # the one copy, writable
    # [1, h, w, 3] -> [1, 3, h, w] with channels_last strides: torch's fast uint8 path.
    nhwc = torch.from_numpy(crop).unsqueeze(0).permute(0, 3, 1, 2)
    out = torch.nn.functional.interpolate(
        nhwc, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out[0]  # [3, S, S], NHWC strides: batching copies it into place anyway


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
    """docs/method.md §2 train augmentation: random resized crop to S x S, horizontal flip, normalise."""

    crop_size: int
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        _check_size("TrainTransform", self.crop_size)

    def __call__(
        self, image: Image.Image, label: Image.Image | np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, np.ndarray]:
        """-> (image uint8 [3, S, S], label uint8 [S, S]); `normalize` runs on the device."""
        image, label_img = _as_pair(image, label)
        top, left, h, w = random_resized_crop_params(
            image.width, image.height, self.scale, self.ratio, rng=rng
        )
        size = (self.crop_size, self.crop_size)
        box = (left, top, left + w, top + h)
        flip = rng.random() < self.flip_prob
        # Crop and resize in one resampling step; nearest keeps label values exact.
        image_t = _resize_crop(np.asarray(image), box, self.crop_size, flip)  # [3, S, S]
        label_arr = np.asarray(label_img.resize(size, Image.Resampling.NEAREST, box=box))  # [S, S]
        if flip:
            label_arr = label_arr[:, ::-1]
        return image_t, np.ascontiguousarray(label_arr, dtype=np.uint8)


@dataclass(frozen=True)
class EvalTransform:
    """docs/method.md §2 validation/test transform: shorter side to S, centre crop S x S, normalise.

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
        """-> (image uint8 [3, H, W], label uint8 [H, W]); `rng` is unused.

        Eval keeps PIL's resize, as the reference does, so metrics match its numbers.
        """
        image, label_img = _as_pair(image, label)
        if not self.whole_image:
            size = self._resized_size(image.width, image.height)
            image = image.resize(size, Image.Resampling.BILINEAR)
            label_img = label_img.resize(size, Image.Resampling.NEAREST)
            box = self._centre_box(*size)
            image, label_img = image.crop(box), label_img.crop(box)
        label_arr = np.asarray(label_img, dtype=np.uint8)  # [H, W]
        return to_uint8_tensor(image), np.ascontiguousarray(label_arr)

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
