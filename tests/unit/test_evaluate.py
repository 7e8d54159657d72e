"""Tests for dkd_core.evaluate (docs/method.md §7): confusion matrix, IoU groups, accuracies."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dkd_core.errors import DKDError
from dkd_core.evaluate import SegmentationMetrics, SegmentationReport


@dataclass(frozen=True)
class FakeStep:
    classes_per_step: tuple[int, ...]


# 4 channels: background (0), base classes 1 and 2 (old), class 3 added later (new).
# Rows = target, columns = prediction.
HAND_CONFUSION = [
    [5, 1, 0, 1],
    [1, 3, 2, 0],
    [0, 0, 4, 0],
    [2, 0, 1, 2],
]
# TP = 5, 3, 4, 2; row sums = 7, 6, 4, 5 (22 pixels); column sums = 8, 4, 7, 3.
IOU = [
    100 * 5 / (5 + 3 + 2),  # FP = 8 - 5, FN = 7 - 5
    100 * 3 / (3 + 1 + 3),  # FP = 4 - 3, FN = 6 - 3
    100 * 4 / (4 + 3 + 0),  # FP = 7 - 4, FN = 4 - 4
    100 * 2 / (2 + 1 + 3),  # FP = 3 - 2, FN = 5 - 2
]
ACC = [100 * 5 / 7, 100 * 3 / 6, 100 * 4 / 4, 100 * 2 / 5]


def pixels_from_confusion(confusion: list[list[int]], extra_ignored: int = 0):
    """Flat (pred, target) tensors whose confusion is `confusion`, plus ignored pixels."""
    targets, preds = [], []
    for t, row in enumerate(confusion):
        for p, count in enumerate(row):
            targets += [t] * count
            preds += [p] * count
    targets += [255] * extra_ignored
    preds += [0] * extra_ignored
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    return torch.tensor(preds)[order], torch.tensor(targets)[order]


def hand_metrics() -> SegmentationMetrics:
    metrics = SegmentationMetrics(4, old_channels=[0, 1, 2], new_channels=[3])
    pred, target = pixels_from_confusion(HAND_CONFUSION, extra_ignored=2)
    metrics.update(pred.view(2, 3, 4), target.view(2, 3, 4))  # 22 valid + 2 ignored
    return metrics


def test_hand_built_confusion_and_metrics():
    metrics = hand_metrics()
    assert metrics.confusion.dtype == torch.int64
    torch.testing.assert_close(metrics.confusion, torch.tensor(HAND_CONFUSION))

    report = metrics.compute()
    assert report.iou == pytest.approx(IOU)
    assert report.class_accuracy == pytest.approx(ACC)
    old = (IOU[0] + IOU[1] + IOU[2]) / 3
    new = IOU[3]
    assert report.miou_old == pytest.approx(old)
    assert report.miou_new == pytest.approx(new)
    assert report.miou_all == pytest.approx(sum(IOU) / 4)
    assert report.hiou == pytest.approx(2 * old * new / (old + new))
    assert report.pixel_accuracy == pytest.approx(100 * (5 + 3 + 4 + 2) / 22)
    assert report.pixel_accuracy_old == pytest.approx(100 * (5 + 3 + 4) / (7 + 6 + 4))
    assert report.pixel_accuracy_new == pytest.approx(100 * 2 / 5)
    assert report.mean_class_accuracy == pytest.approx(sum(ACC) / 4)
    assert report.old_channels == (0, 1, 2)
    assert report.new_channels == (3,)


def test_absent_class_counts_as_zero_in_means():
    metrics = SegmentationMetrics(3, old_channels=[0, 1], new_channels=[2])
    # Channel 2 never appears in target or prediction: its union is 0.
    metrics.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    report = metrics.compute()
    assert report.iou == pytest.approx([100 * 1 / (1 + 0 + 1), 100 * 2 / (2 + 1 + 0), 0.0])
    assert report.class_accuracy == pytest.approx([100.0, 100 * 2 / 3, 0.0])
    assert report.miou_new == 0.0
    assert report.hiou == 0.0
    assert report.pixel_accuracy_new == 0.0
    assert report.miou_all == pytest.approx((50 + 100 * 2 / 3 + 0) / 3)
    assert report.mean_class_accuracy == pytest.approx((100 + 100 * 2 / 3 + 0) / 3)


def test_ignore_index_is_skipped():
    metrics = SegmentationMetrics(2, old_channels=[0], new_channels=[1])
    metrics.update(torch.tensor([[1, 0, 1]]), torch.tensor([[255, 0, 1]]))
    torch.testing.assert_close(metrics.confusion, torch.tensor([[1, 0], [0, 1]]))

    custom = SegmentationMetrics(2, old_channels=[0], ignore_index=-1)
    custom.update(torch.tensor([1, 0]), torch.tensor([-1, 0]))
    torch.testing.assert_close(custom.confusion, torch.tensor([[1, 0], [0, 0]]))


@pytest.mark.parametrize(
    ("pred", "target", "bad"),
    [
        ([0, 1], [0, 4], "target 4"),
        ([0, 7], [0, 1], "pred 7"),
        ([0, 1], [-1, 1], "target -1"),
        ([0, -2], [0, 1], "pred -2"),
    ],
)
def test_out_of_range_values_raise(pred, target, bad):
    metrics = SegmentationMetrics(4, old_channels=[0, 1])
    with pytest.raises(DKDError, match=bad):
        metrics.update(torch.tensor(pred), torch.tensor(target))
    assert int(metrics.confusion.sum()) == 0


def test_update_rejects_bad_shapes_and_dtypes():
    metrics = SegmentationMetrics(4, old_channels=[0, 1])
    with pytest.raises(DKDError, match="must match"):
        metrics.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(DKDError, match="integer"):
        metrics.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    ("num", "old", "new", "match"),
    [
        (4, [0, 1], [1, 2], "overlap"),
        (4, [0, 4], [], "outside"),
        (4, [0], [-1], "outside"),
        (4, [], [1], "at least one"),
        (0, [0], [], "positive"),
    ],
)
def test_bad_groups_raise(num, old, new, match):
    with pytest.raises(DKDError, match=match):
        SegmentationMetrics(num, old_channels=old, new_channels=new)


def test_merge_two_halves_equals_one_pass():
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (4, 8, 8), generator=gen)
    target[0, :2] = 255
    pred = torch.randint(0, 5, (4, 8, 8), generator=gen)

    whole = SegmentationMetrics(5, old_channels=[0, 1, 2], new_channels=[3, 4])
    whole.update(pred, target)
    first = SegmentationMetrics(5, old_channels=[0, 1, 2], new_channels=[3, 4])
    second = SegmentationMetrics(5, old_channels=[0, 1, 2], new_channels=[3, 4])
    first.update(pred[:2], target[:2])
    second.update(pred[2:], target[2:])

    assert first.merge(second) is first
    torch.testing.assert_close(first.confusion, whole.confusion)
    assert first.compute() == whole.compute()


def test_merge_mismatch_raises():
    metrics = SegmentationMetrics(4, old_channels=[0, 1], new_channels=[3])
    with pytest.raises(DKDError, match="merge"):
        metrics.merge(SegmentationMetrics(5, old_channels=[0, 1], new_channels=[3]))
    with pytest.raises(DKDError, match="merge"):
        metrics.merge(SegmentationMetrics(4, old_channels=[0], new_channels=[3]))


def test_reset_zeroes_the_matrix():
    metrics = hand_metrics()
    metrics.reset()
    assert int(metrics.confusion.sum()) == 0


def test_for_test_grouping():
    metrics = SegmentationMetrics.for_test(FakeStep((15, 1, 1)))
    assert metrics.num_channels == 18
    assert metrics.confusion.shape == (18, 18)
    assert metrics.old_channels == tuple(range(16))
    assert metrics.new_channels == (16, 17)

    small = SegmentationMetrics.for_test(FakeStep((2, 1)))
    assert (small.num_channels, small.old_channels, small.new_channels) == (4, (0, 1, 2), (3,))


def test_for_validation_grouping():
    metrics = SegmentationMetrics.for_validation(FakeStep((15, 1, 1)))
    assert metrics.num_channels == 18
    assert metrics.old_channels == (0,)
    assert metrics.new_channels == (17,)

    small = SegmentationMetrics.for_validation(FakeStep((2, 1)))
    assert (small.num_channels, small.old_channels, small.new_channels) == (4, (0,), (3,))


def test_bad_step_raises():
    with pytest.raises(DKDError, match="classes_per_step"):
        SegmentationMetrics.for_test(FakeStep(()))
    with pytest.raises(DKDError, match="classes_per_step"):
        SegmentationMetrics.for_validation(FakeStep((15, 0)))


def test_step_zero_has_no_new_group():
    metrics = SegmentationMetrics.for_test(FakeStep((3,)))
    assert metrics.new_channels == ()
    pred = torch.tensor([0, 1, 2, 3, 3, 1])
    target = torch.tensor([0, 1, 2, 3, 2, 255])
    metrics.update(pred, target)
    report = metrics.compute()
    assert report.miou_new is None
    assert report.hiou is None
    assert report.pixel_accuracy_new is None
    assert report.miou_all == report.miou_old
    assert report.miou_old == pytest.approx((100 + 100 + 100 * 1 / 2 + 100 * 1 / 2) / 4)


def test_against_numpy_brute_force():
    rng = np.random.default_rng(7)
    n = 6
    target = rng.integers(0, n, size=1000)
    target[rng.random(1000) < 0.1] = 255
    pred = rng.integers(0, n, size=1000)
    pred[target == 1] = 1  # make channel 1 mostly right, so the IoUs differ

    expected = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(target, pred, strict=True):
        if t != 255:
            expected[t, p] += 1
    iou = np.zeros(n)
    acc = np.zeros(n)
    for c in range(n):
        tp = expected[c, c]
        fp = expected[:, c].sum() - tp
        fn = expected[c, :].sum() - tp
        iou[c] = 100 * tp / (tp + fp + fn) if tp + fp + fn else 0.0
        acc[c] = 100 * tp / expected[c, :].sum() if expected[c, :].sum() else 0.0
    old, new = [0, 1, 2, 3], [4, 5]

    metrics = SegmentationMetrics(n, old_channels=old, new_channels=new)
    metrics.update(torch.from_numpy(pred[:600]), torch.from_numpy(target[:600]))
    metrics.update(torch.from_numpy(pred[600:]), torch.from_numpy(target[600:]))
    np.testing.assert_array_equal(metrics.confusion.numpy(), expected)

    report = metrics.compute()
    np.testing.assert_allclose(report.iou, iou)
    np.testing.assert_allclose(report.class_accuracy, acc)
    assert report.miou_old == pytest.approx(iou[old].mean())
    assert report.miou_new == pytest.approx(iou[new].mean())
    assert report.miou_all == pytest.approx(iou.mean())
    assert report.pixel_accuracy == pytest.approx(100 * np.trace(expected) / expected.sum())
    assert report.pixel_accuracy_new == pytest.approx(
        100 * np.diag(expected)[new].sum() / expected[new].sum()
    )


def test_to_dict_is_json_serialisable():
    report = hand_metrics().compute()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["iou"] == pytest.approx(IOU)
    assert data["new_channels"] == [3]
    assert data["hiou"] == pytest.approx(report.hiou)
    assert isinstance(report, SegmentationReport)
    step0 = SegmentationMetrics(2, old_channels=[0, 1]).compute().to_dict()
    assert json.loads(json.dumps(step0))["miou_new"] is None


def test_format_table_names_and_marks_new_classes():
    report = hand_metrics().compute()
    table = report.format_table(["background", "aeroplane", "bicycle", "bird"])
    assert "aeroplane" in table and "bicycle" in table
    assert "mIoU old" in table and "hIoU" in table
    bird_line = next(line for line in table.splitlines() if "bird" in line)
    assert "*" in bird_line
    assert f"{IOU[3]:.2f}" in bird_line
    bicycle_line = next(line for line in table.splitlines() if "bicycle" in line)
    assert "*" not in bicycle_line

    default = report.format_table()
    assert "background" in default and "class 3" in default
    with pytest.raises(DKDError, match="class_names"):
        report.format_table(["background"])
