"""Exemplar memory for DKD-M (docs/method.md §2): a few old-step images replayed at step t.

Before step t > 0, `mem_size` images are picked, class-balanced over the old
classes, from candidates with known (pseudo-)label sets:
- step 1: the train images of step 0 with the base classes they contain;
- step t > 1: the previous step's memory (with its label sets) plus the train
  images of step t-1, whose label sets are their C_{t-1} labels plus the old
  classes the step t-1 model predicts with sigmoid >= 0.9 on background pixels
  (`data.memory_pseudo_labels=untrained` labels with an untrained model instead,
  as the authors' code does; see `memory_labeller`).
The chosen ids and their label sets are written to the step's memory.json
(`step_data.exemplar_memory`; reused on resume, read by step t+1). Memory images join the step's train
set with the same label masking as the others (only C_t is kept), so they
serve distillation and as negatives for the new classes, as in the reference.

The reference computes label sets on randomly cropped training views; we use
whole images (labels) and the evaluation view (predictions), which is
deterministic and does not lose classes to a crop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from dkd_core import distributed
from dkd_core.data import EvalTransform, SegmentationDataset, eval_loader, normalize
from dkd_core.data.layout import Sample
from dkd_core.data.splits import class_presence, select_memory
from dkd_core.errors import DKDError
from dkd_core.model import DeepLabV3
from dkd_core.tasks import TaskStep

log = logging.getLogger("dkd_core.memory")

# Background pixels the old model claims with at least this confidence become pseudo-labels.
PSEUDO_LABEL_THRESHOLD = 0.9
# `data.memory_pseudo_labels`: the model that pseudo-labels (see `memory_labeller`).
PSEUDO_LABEL_MODELS = ("teacher", "untrained")


def ground_truth_label_sets(
    samples: Sequence[Sample], labels: Sequence[int], num_workers: int = 0
) -> dict[str, set[int]]:
    """For each image, which of `labels` its label PNG contains (one vectorised pass each)."""
    presence = class_presence([s.label for s in samples], num_workers, progress=False)
    wanted = np.asarray(sorted(labels), dtype=np.int64)
    return {
        s.id: set(wanted[presence[i, wanted]].tolist()) for i, s in enumerate(samples)
    }  # fmt: skip


@torch.no_grad()
def pseudo_label_sets(
    model: DeepLabV3,
    samples: Sequence[Sample],
    step: TaskStep,
    crop_size: int,
    info: distributed.DistInfo,
) -> dict[str, set[int]]:
    """Label sets of step `step`'s train images: their C_t labels plus confident predictions.

    `model` labels (`memory_labeller`); predictions count only on background
    pixels with sigmoid >= 0.9 (docs/method.md §2). Each process handles every
    world_size-th image; the results are gathered on all processes.
    """
    lut = step.label_lut(step.new_labels, fill=0)  # keep C_t, the rest is background
    dataset = SegmentationDataset(samples, lut, EvalTransform(crop_size))
    loader = eval_loader(dataset, 1, info.rank, info.world_size, num_workers=0)
    to_label = torch.tensor(step.channel_to_label, device=info.device)  # channel -> dataset label
    model.eval()
    local: dict[str, set[int]] = {}
    for batch in loader:
        logits = model(normalize(batch["image"].to(info.device))).logits  # [1, 1 + C, H, W]
        labels = batch["label"].to(info.device).long()  # [1, H, W] channel space
        score, channel = logits[:, 1:].sigmoid().max(dim=1)  # [1, H, W]
        confident = (labels == 0) & (score >= PSEUDO_LABEL_THRESHOLD)
        labels = torch.where(confident, channel + 1, labels)
        present = labels[labels != 255].unique()
        found = {int(x) for x in to_label[present[present > 0]].tolist()}
        local[samples[int(batch["index"][0])].id] = found
    gathered = distributed.all_gather_objects(local)
    return {k: v for part in gathered for k, v in part.items()}


def check_labeller_choice(choice: str) -> None:
    if choice not in PSEUDO_LABEL_MODELS:
        raise DKDError(
            f"data.memory_pseudo_labels: expected one of {', '.join(PSEUDO_LABEL_MODELS)}, "
            f"got {choice!r}"
        )


def memory_labeller(
    choice: str, teacher: DeepLabV3, pretrained: str | None, seed: int
) -> DeepLabV3:
    """The model whose confident predictions become the memory's pseudo-labels.

    "teacher": the previous step's final model, as the method describes it.
    "untrained": the authors' code builds the previous step's model, samples the
    memory with it, and only then loads the trained weights; so its pseudo-labels
    come from the ImageNet backbone with freshly initialised ASPP and heads. This
    rebuilds that model (same architecture, `pretrained` backbone, initialised
    under `seed` without touching the global random state).
    """
    check_labeller_choice(choice)
    if choice == "teacher":
        return teacher
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        untrained = DeepLabV3(
            teacher.classes_per_step,
            teacher.backbone_name,
            teacher.output_stride,
            teacher.aspp.out_channels,
            dropout=teacher.aspp.dropout.p,
            pretrained_backbone=pretrained,
        )
    device = next(teacher.parameters()).device
    return untrained.to(device).eval()


def select(
    label_sets: Mapping[str, set[int]], old_labels: Sequence[int], mem_size: int, seed: int
) -> list[str]:
    ids = sorted(label_sets)
    return select_memory(ids, {i: label_sets[i] for i in ids}, old_labels, mem_size, seed)
