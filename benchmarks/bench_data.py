"""Data pipeline images/s: our loader vs a per-pixel Python label remap, same images, one run.

The baseline is our dataset with one change: the label remap of SPEC §2 done
the way the authors' loader does it, a Python function applied to every pixel
(`tensor.apply_(lambda x: x if x in labels else 0)`). Everything else (reading,
decoding, random resized crop, flip, normalisation) is shared, so the ratio
isolates the remap. Images are generated at VOC-like size (default 384 px).

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

from dkd_core.data import SegmentationDataset, TrainTransform, make_loader, make_toy_dataset
from dkd_core.data.layout import open_layout
from dkd_core.tasks import get_task


class PerPixelRemapDataset(SegmentationDataset):
    """The same dataset with the reference-style per-pixel Python remap."""

    def __init__(self, *args, keep_labels, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep = set(keep_labels) | {0, 255}

    def remap(self, label: np.ndarray) -> np.ndarray:
        keep = self.keep
        t = torch.from_numpy(label.astype(np.int64))
        return t.apply_(lambda x: x if x in keep else 0).numpy().astype(np.uint8)


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
        # Same numbers: for an ascending task, masking and channel mapping agree.
        assert torch.equal(ours[0]["label"], baseline[0]["label"])

        rows = []
        for workers in args.workers:
            ours_ips = images_per_second(ours, workers)
            base_ips = images_per_second(baseline, workers)
            rows.append({"workers": workers, "ours": ours_ips, "per_pixel": base_ips})

    print(
        f"{len(samples)} images of {args.size}px, train transform to {args.crop}px crops, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'workers':>7} {'ours img/s':>11} {'per-pixel img/s':>16} {'speed-up':>9}")
    for r in rows:
        ratio = r["ours"] / r["per_pixel"]
        print(f"{r['workers']:>7} {r['ours']:>11.1f} {r['per_pixel']:>16.2f} {ratio:>8.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
