"""Loss terms of docs/method.md §4 against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dkd_core.errors import DKDError
from dkd_core.losses import (
    LossWeights,
    ac_loss,
    channel_bce,
    distillation_loss,
    dkd_losses,
    mbce_loss,
)
from dkd_core.model import SegmentationOutput
from dkd_core.tasks import get_task


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(x: float, t: float, pos_weight: float = 1.0) -> float:
    """-[pw * t * log σ(x) + (1 - t) * log(1 - σ(x))], one element."""
    return -(pos_weight * t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_channel_bce_is_per_channel_mean_summed_over_channels():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 4, 5, 6), torch.rand(3, 4, 5, 6)
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert_close(channel_bce(logits, target), expected.mean(dim=(0, 2, 3)).sum())


def test_mbce_hand_computed_with_pos_weight():
    # New classes are channels 3 and 4; [N=1, 2 channels, H=1, W=2].
    new_logits = t([[[[0.0, 2.0]], [[-1.0, 1.0]]]])
    labels = torch.tensor([[[3, 255]]])  # pixel 0: first new class; pixel 1: ignore
    got = mbce_loss(new_logits, labels, first_new_channel=3, pos_weight=2.0)
    channel_3 = (bce(0.0, 1, 2.0) + bce(2.0, 0)) / 2  # ignore pixels are negatives
    channel_4 = (bce(-1.0, 0) + bce(1.0, 0)) / 2
    assert got.item() == pytest.approx(channel_3 + channel_4, rel=1e-6)


def test_mbce_background_and_old_labels_are_negatives():
    new_logits = t([[[[0.3, -0.7, 1.1]]]])
    labels = torch.tensor([[[0, 2, 5]]])  # background, an old class, the new class (channel 5)
    got = mbce_loss(new_logits, labels, first_new_channel=5, pos_weight=1.0)
    expected = (bce(0.3, 0) + bce(-0.7, 0) + bce(1.1, 1)) / 3
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ac_hand_computed():
    aux = t([[[[0.5, -2.0], [3.0, 0.0]]]])
    expected = (bce(0.5, 0) + bce(-2.0, 0) + bce(3.0, 0) + bce(0.0, 0)) / 4
    assert ac_loss(aux).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_hand_computed_and_teacher_gets_no_gradient():
    student = t([[[[0.5, -1.0]], [[2.0, 0.0]]]]).requires_grad_()
    teacher = t([[[[0.0, 2.0]], [[-3.0, 1.0]]]]).requires_grad_()
    got = distillation_loss(student, teacher)
    expected = (bce(0.5, sig(0.0)) + bce(-1.0, sig(2.0))) / 2
    expected += (bce(2.0, sig(-3.0)) + bce(0.0, sig(1.0))) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)
    got.backward()
    assert student.grad is not None and teacher.grad is None


def toy_outputs():
    """Step 1 of toy 2-1: 2 old classes (channels 1, 2) and 1 new (channel 3); [N=1, H=1, W=2]."""
    student = SegmentationOutput(
        logits=t([[[[-1.0, 0.5]], [[0.2, -0.4]], [[1.5, 0.1]], [[-0.3, 0.8]]]]),
        pos=t([[[[0.7]], [[1.2]], [[0.4]]]]),
        neg=t([[[[-0.9]], [[-0.1]], [[-1.3]]]]),
    )
    teacher = SegmentationOutput(
        logits=t([[[[-2.0, 0.0]], [[0.6, -1.0]], [[2.0, -0.5]]]]),
        pos=t([[[[0.5]], [[1.0]]]]),
        neg=t([[[[-1.5]], [[0.0]]]]),
    )
    labels = torch.tensor([[[3, 0]]])
    return student, teacher, labels


def test_dkd_losses_every_term_and_the_weighted_total():
    student, teacher, labels = toy_outputs()
    step = get_task("toy", "2-1", num_classes=3).step(1)
    weights = LossWeights(mbce=1.0, kd=5.0, dkd_pos=5.0, dkd_neg=5.0, ac=1.0, pos_weight=3.0)
    terms = dkd_losses(student, teacher, labels, step, weights)

    expected = {
        "mbce": (bce(-0.3, 1, 3.0) + bce(0.8, 0)) / 2,
        "ac": (bce(-1.0, 0) + bce(0.5, 0)) / 2,
        "kd": (bce(0.2, sig(0.6)) + bce(-0.4, sig(-1.0))) / 2
        + (bce(1.5, sig(2.0)) + bce(0.1, sig(-0.5))) / 2,
        "dkd_pos": bce(0.7, sig(0.5)) + bce(1.2, sig(1.0)),
        "dkd_neg": bce(-0.9, sig(-1.5)) + bce(-0.1, sig(0.0)),
    }
    assert set(terms) == {*expected, "total"}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-6), name
    total = (
        expected["mbce"]
        + expected["ac"]
        + 5 * (expected["kd"] + expected["dkd_pos"] + expected["dkd_neg"])
    )
    assert terms["total"].item() == pytest.approx(total, rel=1e-6)

    # Weights are configurable: switching a term off removes it from the total only.
    no_kd = dkd_losses(student, teacher, labels, step, LossWeights(kd=0.0, pos_weight=3.0))
    assert no_kd["kd"].item() == pytest.approx(expected["kd"], rel=1e-6)
    assert no_kd["total"].item() == pytest.approx(total - 5 * expected["kd"], rel=1e-6)


def test_step0_has_only_mbce_and_ac():
    step = get_task("toy", "2-1", num_classes=3).step(0)
    logits = t([[[[0.1, -0.2]], [[1.0, -1.0]], [[0.5, 2.0]]]])
    labels = torch.tensor([[[2, 1]]])
    terms = dkd_losses(SegmentationOutput(logits), None, labels, step, LossWeights(pos_weight=2.0))
    assert set(terms) == {"mbce", "ac", "total"}
    mbce = (bce(1.0, 0) + bce(-1.0, 1, 2.0)) / 2 + (bce(0.5, 1, 2.0) + bce(2.0, 0)) / 2
    assert terms["mbce"].item() == pytest.approx(mbce, rel=1e-6)
    assert terms["total"].item() == pytest.approx(mbce + terms["ac"].item(), rel=1e-6)


def test_mismatched_models_are_clear_errors():
    student, teacher, labels = toy_outputs()
    step = get_task("toy", "2-1", num_classes=3).step(1)
    with pytest.raises(DKDError, match="teacher's outputs"):
        dkd_losses(student, None, labels, step, LossWeights())
    wrong_teacher = SegmentationOutput(student.logits, teacher.pos, teacher.neg)
    with pytest.raises(DKDError, match="teacher has 3 class channels"):
        dkd_losses(student, wrong_teacher, labels, step, LossWeights())
    with pytest.raises(DKDError, match="model has 3 class channels"):
        dkd_losses(student, teacher, labels, get_task("voc", "15-1").step(1), LossWeights())
