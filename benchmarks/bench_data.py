"""Data pipeline images/s: our loader vs a per-pixel Python label remap, same images, one run.

Two baselines, on the same images in the same run:
- per-pixel: our dataset with one change, the label remap of docs/method.md §2 done the
  way the authors' loader does it, after the transform, a Python function
  applied to every pixel (`tensor.apply_(lambda x: x if x in labels else 0)`);
  the ratio isolates the remap.
- reference-style: the whole train path as the authors' loader runs it (PIL
  crop+resize, flip, float normalisation on the CPU, then the per-pixel remap).
Ours hands out uint8 (normalised later, batched, on the device). Images are
generated at VOC-like size (default 384 px).

    python benchmarks/bench_data.py [--images 60] [--size 384] [--crop 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dkd_core.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationDataset,
    TrainTransform,
    make_loader,
    make_toy_dataset,
    random_resized_crop_params,
)
from dkd_core.data.layout import open_layout
from dkd_core.tasks import get_task


class PerPixelRemapDataset(SegmentationDataset):
    """The same dataset, remapping the way the authors' loader does: after the transform,
    on the output crop, with a Python function called for every pixel."""

    def __init__(self, *args, keep_labels, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep = list(set(keep_labels) | {0, 255})  # a list, as theirs

    def remap(self, label: np.ndarray) -> np.ndarray:
        return label  # deferred to after the transform

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        keep = self.keep
        label = item["label"].long()  # [S, S]
        item["label"] = label.apply_(lambda x: x if x in keep else 0).to(torch.uint8)
        return item


class ReferenceStyleTransform:
    """The authors' train transform as their loader runs it: PIL crop+resize and flip,
    then float conversion and normalisation on the CPU."""

    def __init__(self, crop_size: int):
        self.crop_size = crop_size

    def __call__(self, image, label, rng):
        top, left, h, w = random_resized_crop_params(image.width, image.height, rng=rng)
        size, box = (self.crop_size, self.crop_size), (left, top, left + w, top + h)
        image = image.resize(size, Image.Resampling.BILINEAR, box=box)
        label = Image.fromarray(label).resize(size, Image.Resampling.NEAREST, box=box)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            label = label.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        floats = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (floats - mean) / std, np.array(label)


def images_per_second(dataset, num_workers: int, batch_size: int = 4) -> float:
    loader = make_loader(dataset, batch_size, list(range(len(dataset))), num_workers, False)
    if num_workers:
        next(iter(loader))  # start the workers outside the timing
    start = time.perf_counter()
    count = sum(len(batch["index"]) for batch in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", type=int, default=384, help="generated image size")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_toy_dataset(root, classes=6, images=args.images, size=args.size, seed=0)
        samples = open_layout(root).samples("train") + open_layout(root).samples("val")
        step = get_task("toy", "4-1", num_classes=6).step(1)
        lut = step.label_lut(step.new_labels, fill=0)
        ours = SegmentationDataset(samples, lut, TrainTransform(args.crop), seed=0)
        baseline = PerPixelRemapDataset(
            samples, lut, TrainTransform(args.crop), seed=0, keep_labels=step.new_labels
        )
        reference = PerPixelRemapDataset(
            samples, lut, ReferenceStyleTransform(args.crop), seed=0, keep_labels=step.new_labels
        )
        # Same numbers: for an ascending task, masking and channel mapping agree.
        assert torch.equal(ours[0]["label"], baseline[0]["label"])

        rows = []
        for workers in args.workers:
            ours_ips = images_per_second(ours, workers)
            base_ips = images_per_second(baseline, workers)
            ref_ips = images_per_second(reference, workers)
            rows.append(
                {"workers": workers, "ours": ours_ips, "per_pixel": base_ips, "reference": ref_ips}
            )

    print(
        f"{len(samples)} images of {args.size}px, train transform to {args.crop}px crops, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        "img/s: ours | ours with a per-pixel Python remap | reference-style loader "
        "(PIL resize, CPU normalisation, per-pixel remap)"
    )
    print(f"{'workers':>7} {'ours':>8} {'per-pixel':>10} {'x':>6} {'reference':>10} {'x':>6}")
    for r in rows:
        a, b = r["ours"] / r["per_pixel"], r["ours"] / r["reference"]
        print(
            f"{r['workers']:>7} {r['ours']:>8.1f} {r['per_pixel']:>10.2f} {a:>5.1f}x "
            f"{r['reference']:>10.2f} {b:>5.1f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
