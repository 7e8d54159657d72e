"""The generated dataset the CISS and pipeline stages share (written once per scratch folder)."""

from __future__ import annotations

import shutil
from pathlib import Path

from dkd_core.data import make_toy_dataset

CLASSES = 6  # the toy 4-1 task: 4 base classes, then one new class per step


def ensure_toy_data(scratch: Path, settings) -> Path:
    """The toy dataset (VOC layout) under `scratch`, generated unless a complete one is there."""
    root = scratch / f"toy_{settings.data_size}px_{settings.ciss_images}"
    done = root / ".complete"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        make_toy_dataset(
            root, classes=CLASSES, images=settings.ciss_images, size=settings.data_size, seed=0
        )
        done.touch()  # last: a half-written folder is never taken for a dataset
    return root
