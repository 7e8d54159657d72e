"""The models, batches and training iteration the correctness and throughput stages share.

The task is VOC 15-1: step 0 has one head of 15 classes, step 1 adds one class
and a frozen teacher (the step-0 model), as `dkd_core.train` builds them. The
weights are random, with BN statistics measured on a calibration batch: without
that, eval-mode BN (frozen from step 1 on) leaves a random ResNet-101's
activations growing block after block, far beyond what trained weights give,
and fp16 would overflow for a reason no real run has.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from dkd_core.data import normalize
from dkd_core.losses import LossWeights, dkd_losses
from dkd_core.model import DeepLabV3
from dkd_core.tasks import TaskStep, get_task

CALIBRATION_IMAGES = 4  # BN statistics are measured on these (not on the batch under test)


def task_step(index: int) -> TaskStep:
    return get_task("voc", "15-1", setting="overlap").step(index)


def fixed_batch(
    batch: int, size: int, step: TaskStep, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch on CPU: uint8 images [N, 3, S, S] and channel-space labels [N, S, S].

    Images are smooth random fields with a brightness and contrast of their own,
    so that, as with photographs, image-level statistics (ASPP's pooling branch)
    vary across the batch; white noise would make them all alike. Labels are
    blocks of 1/8 of the side holding background, the step's new channels and
    ignore (255).
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 8, 8, generator=g) - 0.5
    fine = torch.rand(batch, 3, max(1, size // 4), max(1, size // 4), generator=g) - 0.5
    brightness = torch.rand(batch, 1, 1, 1, generator=g)
    contrast = 0.2 + 0.8 * torch.rand(batch, 1, 1, 1, generator=g)
    field = F.interpolate(coarse, size=size, mode="bilinear") + 0.3 * F.interpolate(
        fine, size=size, mode="bilinear"
    )  # [N, 3, S, S]
    images = ((brightness + contrast * field).clamp(0, 1) * 255).round().to(torch.uint8)
    # As a training set gives them (SPEC §2): old classes are background at step t.
    values = torch.tensor([0, *range(1 + step.num_old, 1 + step.num_old + step.num_new), 255])
    coarse_labels = values[torch.randint(0, len(values), (batch, 1, 8, 8), generator=g)]
    labels = F.interpolate(coarse_labels.float(), size=(size, size), mode="nearest")[:, 0]
    return images, labels.long()


@torch.no_grad()
def calibrate_bn(model: nn.Module, images: torch.Tensor) -> None:
    """Set every BN's running statistics to this batch's (cumulative average of one pass)."""
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    model(images)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    model.train(was_training)


def build_step_models(
    settings, step_index: int, images: torch.Tensor, seed: int = 0
) -> tuple[DeepLabV3, DeepLabV3 | None]:
    """Student (and, from step 1, the frozen teacher) on `images`' device, in training mode."""
    step = task_step(step_index)
    torch.manual_seed(seed)
    model = DeepLabV3(
        step.classes_per_step[:1], settings.backbone, settings.output_stride,
        settings.aspp_channels,
    ).to(images.device)  # fmt: skip
    calibration, _ = fixed_batch(CALIBRATION_IMAGES, images.shape[-1], step, seed=seed + 1000)
    calibrate_bn(model, normalize(calibration.to(images.device)))
    teacher = None
    if step_index > 0:
        teacher = model.as_teacher()
        model.add_step(step.num_new)  # initialised from the auxiliary classifier
        model.freeze_bn()
    model.train()
    return model, teacher


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype)


def forward_losses(
    student: nn.Module,
    teacher: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    step: TaskStep,
    dtype: torch.dtype | None,
):
    """What one iteration of `dkd_core.train` computes before backward: (outputs, teacher's, terms).

    images: normalised float [N, 3, S, S]; labels: [N, S, S] in channel space.
    """
    with autocast(images.device, dtype):
        outputs = student(images, decompose=teacher is not None)
        teacher_outputs = None
        if teacher is not None:
            with torch.no_grad():
                teacher_outputs = teacher(images, decompose=True)
        terms = dkd_losses(outputs, teacher_outputs, labels, step, LossWeights())
    return outputs, teacher_outputs, terms
