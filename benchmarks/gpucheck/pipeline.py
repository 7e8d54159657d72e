"""Stage 5: the input pipeline alone, images/s per worker count.

The training loader of `dkd_core` (`SegmentationDataset` with the SPEC §2
train transform, `make_loader`: pinned memory on CUDA, persistent workers) over
the generated toy images, at the check's crop size and the largest per-GPU
batch. The sampler repeats the images in a seeded shuffled order so that no
epoch boundary stalls the workers; files are read from the page cache after the
first pass, as a dataset of VOC's size is. Each worker count is timed for
`pipeline_seconds` after its first batch (worker start-up is reported apart).
The driver sets these rates beside the training rates of stage 4.
"""

from __future__ import annotations

import time

import torch

from dkd_core.data import make_loader, open_layout
from dkd_core.step_data import train_dataset
from gpucheck.stage_io import Deadline, StageResult
from gpucheck.toydata import CLASSES, ensure_toy_data


def _dataset(settings, root):
    from dkd_core.config import load_config
    from dkd_core.tasks import get_task

    config = load_config(
        None,
        [
            "task.dataset=toy", "task.name=4-1", f"task.num_classes={CLASSES}",
            f"data.root={root}", f"data.crop_size={settings.size}",
        ],
    )  # fmt: skip
    step = get_task("toy", "4-1", num_classes=CLASSES).step(0)
    samples = open_layout(root).samples("train")
    return train_dataset(config, step, samples)


def measure(dataset, batch: int, workers: int, seconds: float) -> dict:
    g = torch.Generator().manual_seed(0)
    repeats = 1000  # far more batches than `seconds` can use
    order = torch.cat([torch.randperm(len(dataset), generator=g) for _ in range(repeats)])
    loader = make_loader(dataset, batch, order.tolist(), workers, drop_last=True)
    started = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - started
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += next(iterator)["image"].shape[0]
    elapsed = time.perf_counter() - start
    del iterator, loader  # stops the workers
    return {
        "workers": workers,
        "batch": batch,
        "images_per_second": images / elapsed,
        "first_batch_seconds": first,
        "images": images,
    }


def run(settings, result: StageResult, deadline: Deadline, scratch, **_) -> None:
    root = ensure_toy_data(scratch, settings)
    dataset = _dataset(settings, root)
    batch = max(settings.batches)
    result.set("dataset", {"train_images": len(dataset), "image_size": settings.data_size,
                           "crop_size": settings.size, "pinned_memory": torch.cuda.is_available()})  # fmt: skip
    for workers in settings.pipeline_workers:
        if deadline.left() < settings.pipeline_seconds + 5:
            result.append("rates", {"workers": workers, "skipped": "the stage's budget ran out"})
            continue
        row = measure(dataset, batch, workers, settings.pipeline_seconds)
        result.append("rates", row)
        print(f"pipeline {workers} workers: {row['images_per_second']:.1f} images/s", flush=True)
    rates = [r for r in result.data["rates"] if "images_per_second" in r]
    result.check(
        "pipeline",
        bool(rates) and all(r["images_per_second"] > 0 for r in rates),
        ", ".join(f"{r['workers']} workers {r['images_per_second']:.1f} images/s" for r in rates)
        or "nothing measured",
    )
