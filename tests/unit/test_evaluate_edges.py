"""Metrics at their edges: exact table text, integer counts, devices, wide channel ids (docs/method.md §7)."""

from __future__ import annotations

import pytest
import torch

from dkd_core.errors import DKDError
from dkd_core.evaluate import SegmentationMetrics
from dkd_core.tasks import get_task


def small_report():
    """Channels 0, 1 old; 2 new. Targets [0, 0, 1, 2], predictions [0, 1, 1, 2]."""
    metrics = SegmentationMetrics(3, old_channels=[0, 1], new_channels=[2])
    metrics.update(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]))
    return metrics.compute()


def test_format_table_exact_text():
    table = small_report().format_table(["bg", "cat", "dog"])
    assert table.splitlines() == [
        "mIoU old   50.00   (2 channels)",
        "mIoU new  100.00   (1 channels)",
        "mIoU all   66.67",
        "hIoU       66.67",
        "pixel acc  75.00   (old  66.67, new 100.00)",
        "",
        "  ch  class    IoU     acc",
        "   0  bg     50.00   50.00",
        "   1  cat    50.00  100.00",
        "   2* dog   100.00  100.00",
        "(* = class added after step 0)",
    ]
    default = small_report().format_table().splitlines()
    assert default[7:10] == [
        "   0  background    50.00   50.00",
        "   1  class 1       50.00  100.00",
        "   2* class 2      100.00  100.00",
    ]


def test_format_table_of_step_0_shows_dashes_and_needs_every_name():
    metrics = SegmentationMetrics(2, old_channels=[0, 1])
    metrics.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    report = metrics.compute()
    lines = report.format_table(["bg", "cat"]).splitlines()
    assert lines[1] == "mIoU new  -   (0 channels)"
    assert lines[3] == "hIoU      -"
    assert lines[4] == "pixel acc 100.00   (old 100.00, new -)"
    assert report.format_table(["bg", "cat", "extra"]).splitlines()[7:] == lines[7:]
    with pytest.raises(DKDError, match="needs a name for each of the 2 channels, got 1"):
        report.format_table(["bg"])


def test_confusion_counts_are_int64_on_the_requested_device():
    step = get_task("voc", "15-1").step(2)
    for metrics in (
        SegmentationMetrics(3, old_channels=[0], device="meta"),
        SegmentationMetrics.for_test(step, device="meta"),
        SegmentationMetrics.for_validation(step, device="meta"),
    ):
        assert metrics.confusion.device.type == "meta"
        assert metrics.confusion.dtype == torch.int64
    assert SegmentationMetrics(3, old_channels=[0]).confusion.dtype == torch.int64
    report = small_report()
    assert all(isinstance(v, int) for row in report.confusion for v in row)


def test_uint8_labels_with_many_channels_do_not_overflow():
    # VOC at the last step: 21 channels; target * 21 + pred exceeds 255.
    metrics = SegmentationMetrics.for_test(get_task("voc", "15-1").step(5))
    target = torch.tensor([20, 20, 19, 0], dtype=torch.uint8)
    pred = torch.tensor([20, 19, 19, 0], dtype=torch.uint8)
    metrics.update(pred, target)
    assert int(metrics.confusion[20, 20]) == 1 and int(metrics.confusion[20, 19]) == 1
    assert int(metrics.confusion[19, 19]) == 1 and int(metrics.confusion.sum()) == 3 + 1


def test_one_pixel_classes_and_default_ignore_index():
    metrics = SegmentationMetrics(3, old_channels=[0, 1], new_channels=[2])
    # One pixel of class 2, right: union 1, IoU 100. 255 is ignored by default.
    metrics.update(torch.tensor([2, 0, 1]), torch.tensor([2, 255, 255]))
    report = metrics.compute()
    assert report.iou == (0.0, 0.0, 100.0)
    assert report.class_accuracy == (0.0, 0.0, 100.0)
    assert report.miou_new == 100.0 and report.miou_old == 0.0 and report.hiou == 0.0


def test_hiou_is_zero_when_old_and_new_are_both_zero():
    metrics = SegmentationMetrics(3, old_channels=[0], new_channels=[1, 2])
    metrics.update(torch.tensor([1, 0]), torch.tensor([0, 1]))
    report = metrics.compute()
    assert (report.miou_old, report.miou_new, report.hiou) == (0.0, 0.0, 0.0)
    assert report.pixel_accuracy == 0.0


def test_the_first_out_of_range_value_is_named():
    metrics = SegmentationMetrics(4, old_channels=[0])
    with pytest.raises(DKDError, match="target 5 / pred 0"):
        metrics.update(torch.tensor([0, 0, 0]), torch.tensor([1, 5, 7]))


def test_an_ignore_index_inside_the_channels_is_refused():
    with pytest.raises(DKDError, match="ignore_index 0 must lie outside"):
        SegmentationMetrics(3, old_channels=[1], ignore_index=0)
    with pytest.raises(DKDError, match="ignore_index 2 must lie outside"):
        SegmentationMetrics(3, old_channels=[1], ignore_index=2)
    SegmentationMetrics(3, old_channels=[1], ignore_index=3)  # just outside: fine
    SegmentationMetrics(1, old_channels=[0])  # a single channel is a valid size


@pytest.mark.parametrize(
    ("pred", "target", "bad"),
    [([0, -1], [0, 1], "pred -1"), ([0, 4], [0, 1], "pred 4"), ([0, 1], [0, 4], "target 4")],
)
def test_values_just_outside_the_channels_are_refused(pred, target, bad):
    metrics = SegmentationMetrics(4, old_channels=[0, 1])
    with pytest.raises(DKDError, match=bad):
        metrics.update(torch.tensor(pred), torch.tensor(target))
    assert int(metrics.confusion.sum()) == 0


def test_hiou_of_tiny_but_nonzero_means():
    # Each class: one right pixel out of 599 in its union -> IoU 0.167%, old + new < 1.
    target = torch.tensor([0] * 200 + [1] * 400)
    pred = torch.tensor([0] + [1] * 199 + [1] + [0] * 399)
    metrics = SegmentationMetrics(2, old_channels=[0], new_channels=[1])
    metrics.update(pred, target)
    report = metrics.compute()
    assert report.miou_old == pytest.approx(100 / 599)
    assert report.miou_new == pytest.approx(100 / 599)
    assert report.hiou == pytest.approx(100 / 599)
