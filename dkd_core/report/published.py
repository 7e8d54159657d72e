"""The authors' published DKD results, shown beside ours for the paper's benchmarks.

Two sources, both of Baek et al., "Decomposed Knowledge Distillation for
Class-Incremental Semantic Segmentation", NeurIPS 2022 (docs/method.md §9):

- the README of the authors' code (github.com/cvlab-yonsei/DKD at commit fb4693f,
  README.md, "Testing"): hIoU and mIoU of all classes after the last step of the
  checkpoints they released, DKD and DKD-M, VOC overlapped (19-1, 15-5, 15-1,
  10-1, 5-3) and disjoint (19-1, 15-5, 15-1), ADE20K overlapped (100-50, 100-10,
  50-50). Every cell of those tables is here, as printed.
- the paper's tables: old / new / all mIoU after the last step, means of five
  runs. Only the figures below were carried over; the paper itself could not be
  read again where this table was last completed (no access to arxiv.org), so no
  further paper figures were added and these four rows were not re-checked.

Values are percent. Keys are (dataset, task name, setting) as in a
checkpoint's meta.json `task`.
"""

from __future__ import annotations

from dataclasses import dataclass

README = "authors' README (github.com/cvlab-yonsei/DKD), final step"
PAPER = "authors' paper (NeurIPS 2022), final step, mean of 5 runs"


@dataclass(frozen=True)
class Published:
    """One published row: which source, which method, and the figures it gives."""

    source: str
    method: str
    old: float | None = None
    new: float | None = None
    all: float | None = None
    hiou: float | None = None


def _readme(hiou: float, all_: float, method: str = "DKD") -> Published:
    return Published(README, method, hiou=hiou, all=all_)


def _paper(method: str, old: float, new: float, all_: float) -> Published:
    return Published(PAPER, method, old=old, new=new, all=all_)


def _m(hiou: float, all_: float) -> Published:
    return _readme(hiou, all_, "DKD-M")


# README rows in the README's order: DKD, then DKD-M ("hIoU / mIoU_all" of each cell).
PUBLISHED: dict[tuple[str, str, str], tuple[Published, ...]] = {
    ("voc", "19-1", "overlap"): (_readme(56.95, 76.13), _m(68.14, 77.04)),
    ("voc", "15-5", "overlap"): (_readme(67.17, 73.95), _m(68.96, 74.84)),
    ("voc", "15-1", "overlap"): (
        _readme(57.46, 70.50),
        _m(64.09, 72.95),
        _paper("DKD", 78.1, 42.7, 69.7),
        _paper("DKD-M", 78.8, 52.3, 72.5),
    ),
    ("voc", "10-1", "overlap"): (
        _readme(57.21, 60.43),
        _m(64.89, 66.20),
        _paper("DKD", 73.1, 46.5, 60.4),
    ),
    ("voc", "5-3", "overlap"): (_readme(61.32, 58.98), _m(65.02, 63.32)),
    ("voc", "19-1", "disjoint"): (_readme(57.98, 75.90), _m(67.12, 76.84)),
    ("voc", "15-5", "disjoint"): (_readme(64.35, 72.21), _m(65.04, 72.53)),
    ("voc", "15-1", "disjoint"): (_readme(54.21, 68.48), _m(60.32, 70.78)),
    ("ade", "100-50", "overlap"): (_readme(29.42, 35.55), _m(29.45, 35.58)),
    ("ade", "100-10", "overlap"): (
        _readme(26.79, 34.53),
        _m(27.44, 34.83),
        _paper("DKD", 41.6, 19.5, 34.3),
    ),
    ("ade", "50-50", "overlap"): (_readme(34.77, 34.39), _m(34.78, 34.39)),
}


def published_for(dataset: str, task: str, setting: str) -> tuple[Published, ...]:
    """The published rows of a benchmark; empty for any other task (the toy, a custom one)."""
    return PUBLISHED.get((dataset, task, setting), ())
