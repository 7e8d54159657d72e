"""Reading label PNGs: class indices, never colours (docs/method.md §2).

One reader for the split pass and the training data, so a label that passes
one passes the other. Mode P (palette indices) and L are read as they are; a
16-bit grayscale label is accepted when its values fit 0..255. RGB, RGBA or
out-of-range values are a DKDError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dkd_core.errors import DKDError

NUM_LABEL_VALUES = 256  # label values 0..255; 255 = ignore


def read_label(path: str | Path) -> np.ndarray:
    """A label PNG as uint8 [H, W] class indices; the palette is never applied."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            mode = img.mode
            label = np.asarray(img)
    except FileNotFoundError:
        raise DKDError(f"{path}: label file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DKDError(f"{path}: cannot read label image ({exc})") from None
    if label.ndim != 2:
        raise DKDError(
            f"{path}: a label PNG must be single-channel (mode L, or P holding palette "
            f"indices), got mode {mode} with shape {label.shape}"
        )
    if label.dtype == np.uint8:
        return label
    if label.dtype.kind not in "biu":
        raise DKDError(f"{path}: label values must be integers, got mode {mode} ({label.dtype})")
    if label.size and (int(label.min()) < 0 or int(label.max()) >= NUM_LABEL_VALUES):
        raise DKDError(
            f"{path}: label values must lie in 0..255, got {int(label.min())}..{int(label.max())}"
        )
    return label.astype(np.uint8)
