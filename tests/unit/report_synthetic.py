"""Synthetic runs for the report tests: run folders laid out as training writes them.

`write_run` writes, per step, `eval/metrics.json` (evaluate's fields),
`checkpoint/meta.json` (task, config with the seed, model sha256),
`train_log.jsonl`, `provenance.json` and optionally `eval/samples/` (palette
PNGs and index.json as `dkd_core.samples` writes them). IoUs fall with the
steps after a class is learned, so forgetting is positive and known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dkd_core.samples import INDEX_FILE, palette_png


def names(count: int) -> list[str]:
    return ["background"] + [f"class_{i:03d}" for i in range(1, count)]


def iou(channel: int, learned: int, step: int, seed: int, forgetting: float = 6.0) -> float:
    """Learned at 80 - channel % 7, minus `forgetting` points per later step, plus the seed."""
    return 80.0 - channel % 7 - forgetting * (step - learned) + seed


def step_metrics(
    classes_per_step: list[int], step: int, seed: int = 0, forgetting: float = 6.0
) -> dict:
    sizes = np.cumsum([1 + classes_per_step[0], *classes_per_step[1:]])  # channels per step
    width = int(sizes[step])
    added = [int(np.searchsorted(sizes, c, side="right")) for c in range(width)]
    values = [iou(c, added[c], step, seed, forgetting) for c in range(width)]
    base = int(sizes[0])
    old = float(np.mean(values[:base]))
    new = float(np.mean(values[base:])) if step else None
    return {
        "miou_old": old, "miou_new": new, "miou_all": float(np.mean(values)),
        "hiou": 2 * old * new / (old + new) if new else None, "pixel_accuracy": 90.0,
        "iou": values, "channel_names": names(width)[:width],
        "new_channels": list(range(base, width)), "confusion": [],
    }  # fmt: skip


def write_run(
    root: Path, classes_per_step: list[int], seed: int = 1, task=("ade", "100-10", "overlap"),
    samples: int = 0, train_log: bool = True, loss_terms=("total", "mbce", "ac", "kd"),
    forgetting: float = 6.0,
) -> Path:  # fmt: skip
    rng = np.random.default_rng(seed)
    for t in range(len(classes_per_step)):
        folder = root / f"step_{t}"
        (folder / "eval").mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint").mkdir(exist_ok=True)
        metrics = step_metrics(classes_per_step, t, seed, forgetting)
        (folder / "eval" / "metrics.json").write_text(json.dumps(metrics))
        meta = {
            "task": dict(zip(("dataset", "name", "setting"), task, strict=True)), "step": t,
            "config": {"train": {"seed": seed}, "optim": {"lr": 0.01 if t == 0 else 0.001}},
            "weights": {"file": "model.safetensors", "sha256": f"{t:064x}", "bytes": 1},
        }  # fmt: skip
        (folder / "checkpoint" / "meta.json").write_text(json.dumps(meta))
        if train_log:
            lines = [
                {"iteration": i, "lr": 0.01 * (1 - i / 100),
                 **{k: float(1.0 / i + 0.01 * rng.random()) for k in loss_terms}}
                for i in range(10, 101, 10)
            ]  # fmt: skip
            (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        provenance = {
            "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:10:00+00:00",
            "wall_seconds": 600.0 + t, "images_per_second": 12.5 + t, "git_revision": "abc123",
            "hardware": {"host": "node-1", "gpus": ["NVIDIA H100"] * 4, "world_size": 4,
                         "torch": "2.13.0", "cuda": "12.6", "cpu_count": 64},
        }  # fmt: skip
        (folder / "provenance.json").write_text(json.dumps(provenance))
        if samples:
            _write_samples(folder / "eval" / "samples", samples, len(metrics["iou"]), rng)
    return root


def _write_samples(folder: Path, count: int, channels: int, rng) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"img_{i:03d}" for i in range(count)]
    for sample_id in ids:
        label = np.zeros((48, 64), dtype=np.uint8)
        label[8:30, 10:40] = rng.integers(1, channels)
        label[0:2] = 255
        image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        (folder / f"{sample_id}.png").write_bytes(palette_png(label))
        (folder / f"{sample_id}_label.png").write_bytes(palette_png(label))
        from PIL import Image

        Image.fromarray(image).save(folder / f"{sample_id}_image.png")
    index = {"ids": ids, "class_names": {str(c): n for c, n in enumerate(names(channels))}}
    (folder / INDEX_FILE).write_text(json.dumps(index))
