"""The DKD objective (docs/method.md §4).

Every term is binary cross-entropy with logits, averaged over batch and pixels
for each channel and then summed over channels — i.e. the sum over all
elements divided by N·H·W. `old` channels are the classes learned before the
current step, `new` channels those of the current step. Soft targets come from
the frozen previous-step model (the teacher), through a sigmoid.

| term    | prediction                        | target                              |
|---------|-----------------------------------|-------------------------------------|
| mbce    | new-class logits                  | one-hot of the label, pos_weight    |
| ac      | auxiliary logit                   | 0                                   |
| kd      | old-class logits                  | sigmoid(teacher logits)             |
| dkd_pos | positive terms of old classes     | sigmoid(teacher positive terms)     |
| dkd_neg | negative terms of old classes     | sigmoid(teacher negative terms)     |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dkd_core.config import LossWeights  # defaults live with the rest of the config
from dkd_core.errors import DKDError
from dkd_core.model import SegmentationOutput
from dkd_core.tasks import TaskStep

TERMS = ("mbce", "kd", "dkd_pos", "dkd_neg", "ac")
__all__ = ["TERMS", "LossWeights", "channel_bce", "dkd_losses"]


def channel_bce(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE-with-logits, mean over batch and pixels per channel, summed over channels.

    logits, target: [N, C, H, W]. Equal to `bce(reduction="none").mean((0, 2, 3)).sum()`,
    computed without materialising the per-channel means.
    """
    n, _, h, w = logits.shape
    total = F.binary_cross_entropy_with_logits(
        logits.float(), target.float(), pos_weight=pos_weight, reduction="sum"
    )
    return total / (n * h * w)


def mbce_loss(
    new_logits: torch.Tensor, labels: torch.Tensor, first_new_channel: int, pos_weight: float
) -> torch.Tensor:
    """BCE of the new classes against the one-hot label (docs/method.md §4).

    new_logits: [N, |C_t|, H, W]; labels: [N, H, W] in channel space, where the
    new classes are channels first_new_channel .. first_new_channel + |C_t| - 1.
    Background, ignore (255) and any other label are negatives for every new class.
    """
    num_new = new_logits.shape[1]
    channels = torch.arange(first_new_channel, first_new_channel + num_new, device=labels.device)
    target = labels.unsqueeze(1) == channels.view(1, -1, 1, 1)  # [N, |C_t|, H, W]
    weight = torch.full((num_new, 1, 1), float(pos_weight), device=new_logits.device)
    return channel_bce(new_logits, target, pos_weight=weight)


def ac_loss(aux_logits: torch.Tensor) -> torch.Tensor:
    """The auxiliary classifier learns to say "no" everywhere (docs/method.md §4). aux_logits: [N, 1, H, W]."""
    return channel_bce(aux_logits, torch.zeros_like(aux_logits))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """BCE of student values against the teacher's sigmoid (kd, dkd_pos, dkd_neg). [N, C, H, W]."""
    return channel_bce(student, teacher.detach().float().sigmoid())


def dkd_losses(
    outputs: SegmentationOutput,
    teacher_outputs: SegmentationOutput | None,
    labels: torch.Tensor,
    step: TaskStep,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """All terms of docs/method.md §4 for one batch, unweighted, plus the weighted "total".

    outputs: the student's forward (with `decompose=True` at t > 0).
    teacher_outputs: the teacher's forward with `decompose=True`; None at step 0.
    labels: [N, H, W] in channel space (the task's label -> channel table applied).
    Step 0 yields mbce and ac; later steps add kd, dkd_pos and dkd_neg.
    """
    logits = outputs.logits  # [N, 1 + C, H, W]
    n_old, n_new = step.num_old, step.num_new
    if logits.shape[1] != 1 + n_old + n_new:
        raise DKDError(
            f"model has {logits.shape[1] - 1} class channels, step {step.index} of "
            f"{step.task_name} needs {n_old + n_new} ({n_old} old + {n_new} new)"
        )
    terms = {
        "mbce": mbce_loss(logits[:, 1 + n_old :], labels, 1 + n_old, weights.pos_weight),
        "ac": ac_loss(logits[:, :1]),
    }
    if step.index > 0:
        if teacher_outputs is None or outputs.pos is None or teacher_outputs.pos is None:
            raise DKDError(
                "steps after 0 need the teacher's outputs and decomposed terms of both models "
                "(forward with decompose=True)"
            )
        if teacher_outputs.logits.shape[1] != 1 + n_old:
            raise DKDError(
                f"teacher has {teacher_outputs.logits.shape[1] - 1} class channels, "
                f"expected the {n_old} old classes of step {step.index}"
            )
        terms["kd"] = distillation_loss(logits[:, 1 : 1 + n_old], teacher_outputs.logits[:, 1:])
        terms["dkd_pos"] = distillation_loss(outputs.pos[:, :n_old], teacher_outputs.pos)
        terms["dkd_neg"] = distillation_loss(outputs.neg[:, :n_old], teacher_outputs.neg)
    terms["total"] = sum(getattr(weights, name) * value for name, value in terms.items())
    return terms
