"""Qualitative results: a step's predictions of a fixed set of test images, as palette PNGs.

The images are chosen once per run, the same for every step: from step 0's
test images (which every later step's test set contains, since a test image is
one holding any class seen so far), greedily the one that adds the most classes
not yet shown, ties to the one with more classes, then to the smaller id. Their
labels are read in the dataset's label space, so the choice does not depend on
the step.

Each image is shown as the evaluation sees it (the test transform of the
step's config: docs/method.md §2) and predicted with the evaluation's own rule,
`predict_from_logits` on the model's logits of the normalised image
(docs/method.md §3, as `train.evaluate_model` does). Beside the step's
checkpoint, in `eval/samples/`:

    <id>.png         the prediction, dataset labels in the palette (mode P)
    <id>_label.png   the step's test label (unseen classes as the test set has them,
                     255 = ignored), same palette
    <id>_image.png   the evaluated view of the image (RGB)
    index.json       ids, step, palette, class names by label, the rule; written last

The palette is the standard VOC colour map (`data.voc_palette`) for every
dataset, ADE20K included: it gives each of the 256 label values its own colour.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dkd_core import distributed
from dkd_core.checkpoint import open_model_checkpoint
from dkd_core.config import config_from_dict
from dkd_core.data import normalize, voc_palette
from dkd_core.data.dataset import IGNORE
from dkd_core.data.splits import class_presence, manifest_step
from dkd_core.errors import DKDError
from dkd_core.locations import cache_dir, parent, run_manifest_uri
from dkd_core.model.deeplab import predict_from_logits
from dkd_core.step_data import step_data, task_of
from dkd_core.storage import join, open_store

#: How many images the evaluate component and `report --run` predict by default.
DEFAULT_COUNT = 6
INDEX_FILE = "index.json"
PALETTE_NAME = "voc"
RULE = (
    "argmax of sigmoid over the class channels; background where none is > 0.5 "
    "(docs/method.md §3, the evaluation's rule)"
)


def samples_folder(checkpoint: str) -> str:
    """`eval/samples/` beside the step whose final checkpoint is `checkpoint`."""
    return join(parent(checkpoint), "eval", "samples")


def choose_ids(ids: Sequence[str], presence: np.ndarray, count: int) -> list[str]:
    """`count` of `ids` covering as many classes as possible (see the module's docstring).

    presence: bool [len(ids), 256], [i, v] = label v occurs in image i; background
    (0) and ignore (255) do not count as classes.
    """
    if count < 0:
        raise DKDError(f"sample count must be >= 0, got {count}")
    classes = presence.copy()  # [N, 256]
    classes[:, [0, IGNORE]] = False
    rank = {i: r for r, i in enumerate(sorted(range(len(ids)), key=lambda i: ids[i]))}
    covered = np.zeros(classes.shape[1], dtype=bool)
    chosen: list[int] = []
    for _ in range(min(count, len(ids))):
        best = max(
            (i for i in rank if i not in chosen),
            key=lambda i: (int((classes[i] & ~covered).sum()), int(classes[i].sum()), -rank[i]),
        )
        chosen.append(best)
        covered |= classes[best]
    return [ids[i] for i in chosen]


def palette_png(labels: np.ndarray) -> bytes:
    """uint8 [H, W] dataset labels -> PNG bytes, mode P with the VOC palette."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(voc_palette().ravel().tolist())
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _rgb_png(image: torch.Tensor) -> bytes:
    """uint8 [3, H, W] -> PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(out, format="PNG")
    return out.getvalue()


def channels_to_labels(channels: np.ndarray, channel_to_label: Sequence[int]) -> np.ndarray:
    """uint8 [H, W] channel values -> dataset labels; 255 (ignore) stays 255."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[: len(channel_to_label)] = np.asarray(channel_to_label, dtype=np.uint8)
    return np.take(lut, channels)


@torch.no_grad()
def predict(model: torch.nn.Module, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [3, H, W] -> channel prediction int64 [H, W], exactly as the evaluation predicts."""
    model.eval()
    logits = model(normalize(image.unsqueeze(0).to(device))).logits  # [1, 1 + C, H, W]
    return predict_from_logits(logits)[0].cpu()


def write_samples(
    checkpoint: str,
    manifest: str | None = None,
    count: int = DEFAULT_COUNT,
    overrides: Sequence[str] = (),
) -> str:
    """Predict `count` fixed test images with the checkpoint; returns the samples folder URI."""
    info = distributed.DistInfo(0, 1, 0, torch.device("cpu"))
    model, meta, _ = open_model_checkpoint(checkpoint, cache_dir("checkpoints"), info.device)
    if "config" not in meta or "step" not in meta:
        raise DKDError(f"{checkpoint}: metadata has no training config/step; cannot pick its data")
    config = config_from_dict(meta["config"], list(overrides), source=str(checkpoint))
    step = task_of(config).step(meta["step"])
    manifest = manifest or run_manifest_uri(config.run.output)
    data = step_data(config, step, manifest, info, read_only=True)
    base_ids = list(manifest_step(data.manifest, 0).test)
    by_id = {s.id: i for i, s in enumerate(data.test.samples)}
    missing = [i for i in base_ids if i not in by_id]
    if missing:
        raise DKDError(
            f"{manifest}: step 0's test images {missing[:3]} are not in step {step.index}'s "
            "test set; expected every step to test the images of step 0"
        )
    base = [data.test.samples[by_id[i]] for i in base_ids]
    presence = class_presence([s.label for s in base], progress=False)
    ids = choose_ids(base_ids, presence, count)
    folder = samples_folder(checkpoint)
    store = open_store(folder)
    for sample_id in ids:
        item = data.test[by_id[sample_id]]
        channels = predict(model, item["image"], info.device).numpy().astype(np.uint8)
        prediction = channels_to_labels(channels, step.channel_to_label)
        label = channels_to_labels(item["label"].numpy(), step.channel_to_label)
        store.write_bytes(join(folder, f"{sample_id}.png"), palette_png(prediction))
        store.write_bytes(join(folder, f"{sample_id}_label.png"), palette_png(label))
        store.write_bytes(join(folder, f"{sample_id}_image.png"), _rgb_png(item["image"]))
    layout_names = dict(zip(step.channel_to_label, data.channel_names, strict=True))
    store.write_json(
        join(folder, INDEX_FILE),
        {
            "ids": ids,
            "step": step.index,
            "palette": PALETTE_NAME,
            "class_names": {str(k): v for k, v in layout_names.items()},
            "rule": RULE,
            "whole_image": config.data.whole_image_eval,
        },
    )
    return folder


def ensure_samples(
    checkpoint: str,
    manifest: str | None = None,
    count: int = DEFAULT_COUNT,
    recompute: bool = False,
) -> str | None:
    """`write_samples` unless the step has its samples already (its index.json) and not
    `recompute`; the folder written, or None when nothing was predicted."""
    index = join(samples_folder(checkpoint), INDEX_FILE)
    if not recompute and open_store(index).exists(index):
        return None
    return write_samples(checkpoint, manifest, count)
