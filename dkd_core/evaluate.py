"""Segmentation metrics for class-incremental evaluation (docs/method.md §7).

Predictions and labels are in channel space: channel 0 is background, channels
1..S are the classes seen so far in the order they were learned, and 255 is
"ignore". A confusion matrix (rows = target, columns = prediction) is
accumulated on the device and reduced to IoU, mIoU of the old / new groups,
their harmonic mean (hIoU) and pixel / class accuracies, all in percent, as the
reference implementation reports them.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from dkd_core.errors import DKDError

__all__ = ["SegmentationMetrics", "SegmentationReport"]


class _Step(Protocol):
    classes_per_step: tuple[int, ...]


def _classes_per_step(step: _Step) -> tuple[int, ...]:
    counts = tuple(step.classes_per_step)
    if not counts or any(not isinstance(n, int) or n <= 0 for n in counts):
        raise DKDError(
            f"classes_per_step must be a non-empty tuple of positive ints, got {counts!r}"
        )
    return counts


@dataclass(frozen=True)
class SegmentationReport:
    """Metrics of one evaluation pass; every value is in percent (docs/method.md §7)."""

    iou: tuple[float, ...]
    class_accuracy: tuple[float, ...]
    miou_all: float
    miou_old: float
    miou_new: float | None
    hiou: float | None
    pixel_accuracy: float
    pixel_accuracy_old: float
    pixel_accuracy_new: float | None
    mean_class_accuracy: float
    old_channels: tuple[int, ...]
    new_channels: tuple[int, ...]
    # Pixel counts, rows = target channel, columns = predicted channel.
    confusion: tuple[tuple[int, ...], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain floats, lists and None: safe for `json.dumps`."""
        return {
            k: [list(r) if isinstance(r, tuple) else r for r in v] if isinstance(v, tuple) else v
            for k, v in asdict(self).items()
        }

    def format_table(self, class_names: Sequence[str] | None = None) -> str:
        """A summary block, then one line per channel; new channels are marked '*'."""
        n = len(self.iou)
        if class_names is not None and len(class_names) < n:
            raise DKDError(
                f"class_names needs a name for each of the {n} channels, got {len(class_names)}"
            )

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:6.2f}"

        names = [
            class_names[c]
            if class_names is not None
            else ("background" if c == 0 else f"class {c}")
            for c in range(n)
        ]
        width = max(len(name) for name in names) + 2
        lines = [
            f"mIoU old  {fmt(self.miou_old)}   ({len(self.old_channels)} channels)",
            f"mIoU new  {fmt(self.miou_new)}   ({len(self.new_channels)} channels)",
            f"mIoU all  {fmt(self.miou_all)}",
            f"hIoU      {fmt(self.hiou)}",
            f"pixel acc {fmt(self.pixel_accuracy)}   (old {fmt(self.pixel_accuracy_old)}, "
            f"new {fmt(self.pixel_accuracy_new)})",
            "",
            f"{'ch':>4}  {'class':<{width}} {'IoU':>6}  {'acc':>6}",
        ]
        new = set(self.new_channels)
        for c, name in enumerate(names):
            mark = "*" if c in new else " "
            lines.append(
                f"{c:>4}{mark} {name:<{width}} {fmt(self.iou[c])}  {fmt(self.class_accuracy[c])}"
            )
        lines.append("(* = class added after step 0)")
        return "\n".join(lines)


class SegmentationMetrics:
    """Confusion matrix accumulated on the device, mergeable across ranks (docs/method.md §7).

    `confusion` is int64 [num_channels, num_channels], rows = target, columns =
    prediction. Distributed evaluation all-reduces it by summation.
    """

    def __init__(
        self,
        num_channels: int,
        old_channels: Sequence[int],
        new_channels: Sequence[int] = (),
        device: torch.device | str | None = None,
        ignore_index: int = 255,
    ) -> None:
        if not isinstance(num_channels, int) or num_channels < 1:
            raise DKDError(f"num_channels must be a positive int, got {num_channels!r}")
        if 0 <= ignore_index < num_channels:
            raise DKDError(f"ignore_index {ignore_index} must lie outside [0, {num_channels})")
        old = tuple(operator.index(c) for c in old_channels)
        new = tuple(operator.index(c) for c in new_channels)
        if not old:
            raise DKDError("old_channels must name at least one channel (background, usually)")
        bad = [c for c in old + new if not 0 <= c < num_channels]
        if bad:
            raise DKDError(f"channels {bad} are outside [0, {num_channels})")
        if len(set(old + new)) != len(old) + len(new):
            raise DKDError(f"old {old} and new {new} channel groups must not overlap or repeat")
        self.num_channels = num_channels
        self.old_channels = old
        self.new_channels = new
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_channels, num_channels, dtype=torch.int64, device=device)

    @classmethod
    def for_test(cls, step: _Step, device: torch.device | str | None = None) -> SegmentationMetrics:
        """docs/method.md §7 test grouping: old = background + base classes, new = all later classes."""
        counts = _classes_per_step(step)
        n = 1 + sum(counts)
        return cls(n, range(counts[0] + 1), range(counts[0] + 1, n), device=device)

    @classmethod
    def for_validation(
        cls, step: _Step, device: torch.device | str | None = None
    ) -> SegmentationMetrics:
        """Reference validation grouping: old = background, new = the current step's classes."""
        counts = _classes_per_step(step)
        n = 1 + sum(counts)
        return cls(n, (0,), range(n - counts[-1], n), device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of integer predictions and labels (same shape) to the matrix."""
        if pred.shape != target.shape:
            raise DKDError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must match")
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise DKDError(f"{name} must be an integer tensor of channel ids, got {t.dtype}")
        device = self.confusion.device
        pred = pred.reshape(-1).to(device=device, dtype=torch.int64)
        target = target.reshape(-1).to(device=device, dtype=torch.int64)
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        n = self.num_channels
        out_of_range = (target < 0) | (target >= n) | (pred < 0) | (pred >= n)
        if out_of_range.any():  # the only host sync; a hit means a label-mapping bug
            i = int(out_of_range.nonzero()[0, 0])
            raise DKDError(
                f"target {int(target[i])} / pred {int(pred[i])} outside [0, {n}) "
                f"(and not ignore_index {self.ignore_index}): label-to-channel mapping bug?"
            )
        counts = torch.bincount(target * n + pred, minlength=n * n)
        self.confusion += counts.view(n, n)

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Add `other`'s counts into this one (same size and grouping); returns self."""
        mine = (self.num_channels, self.old_channels, self.new_channels, self.ignore_index)
        theirs = (other.num_channels, other.old_channels, other.new_channels, other.ignore_index)
        if mine != theirs:
            raise DKDError(
                f"cannot merge metrics (num_channels, old, new, ignore_index) {theirs} "
                f"into {mine}: they must be equal"
            )
        self.confusion += other.confusion.to(self.confusion.device)
        return self

    def reset(self) -> None:
        """Zero the confusion matrix."""
        self.confusion.zero_()

    def compute(self) -> SegmentationReport:
        """Reduce the matrix to the docs/method.md §7 metrics, following the reference exactly.

        A channel with an empty union (or empty row) scores 0 and still counts
        in the means, as in the reference.
        """
        conf = self.confusion.detach().to("cpu", torch.float64)
        tp = conf.diagonal()
        rows, cols = conf.sum(dim=1), conf.sum(dim=0)
        union = rows + cols - tp
        iou = 100 * torch.where(union > 0, tp / union.clamp(min=1), 0.0)
        acc = 100 * torch.where(rows > 0, tp / rows.clamp(min=1), 0.0)
        old, new = list(self.old_channels), list(self.new_channels)
        both = old + new

        def ratio(num: torch.Tensor, den: torch.Tensor) -> float:
            return 100 * float(num) / float(den) if float(den) > 0 else 0.0

        miou_old = float(iou[old].mean())
        miou_new = float(iou[new].mean()) if new else None
        hiou = None
        if miou_new is not None:
            total = miou_old + miou_new
            hiou = 2 * miou_old * miou_new / total if total > 0 else 0.0
        return SegmentationReport(
            iou=tuple(iou.tolist()),
            class_accuracy=tuple(acc.tolist()),
            miou_all=float(iou[both].mean()),
            miou_old=miou_old,
            miou_new=miou_new,
            hiou=hiou,
            pixel_accuracy=ratio(tp.sum(), conf.sum()),
            pixel_accuracy_old=ratio(tp[old].sum(), rows[old].sum()),
            pixel_accuracy_new=ratio(tp[new].sum(), rows[new].sum()) if new else None,
            mean_class_accuracy=float(acc[both].mean()),
            old_channels=self.old_channels,
            new_channels=self.new_channels,
            confusion=tuple(tuple(row) for row in self.confusion.cpu().tolist()),
        )
