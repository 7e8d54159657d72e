"""Class-incremental tasks: which labels are learned at each step (docs/method.md §1, §2).

A task splits a dataset's K classes (labels 1..K; 0 is background, 255 ignore)
into steps. Step t learns the new classes C_t; C_0..C_{t-1} are old. The model's
output channels follow the task's class order: channel 0 is background and
channel k is the k-th seen label, so the label -> channel mapping is always an
explicit table, never "label minus offset" (docs/method.md §1), which keeps shuffled
class orders correct.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from dkd_core.errors import DKDError

# Classes per built-in dataset, excluding background (label 0); 255 = ignore (docs/method.md §1).
DATASET_NUM_CLASSES = {"voc": 20, "ade": 150}
SETTINGS = ("overlap", "disjoint")

# Custom datasets: labels 1..K and channels 0..K must fit in uint8 without reaching 255.
_MAX_CUSTOM_CLASSES = 254
_ASCENDING_NAME = re.compile(r"([1-9][0-9]*)-([1-9][0-9]*)")

Steps = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class TaskStep:
    """Step t of a task: its new labels C_t and old labels C_0..C_{t-1} (docs/method.md §1, §2)."""

    dataset: str
    task_name: str
    setting: str
    index: int
    new_labels: tuple[int, ...]
    old_labels: tuple[int, ...]
    classes_per_step: tuple[int, ...]

    @property
    def num_old(self) -> int:
        """Number of old classes (background not counted)."""
        return len(self.old_labels)

    @property
    def num_new(self) -> int:
        return len(self.new_labels)

    @property
    def num_seen(self) -> int:
        return self.num_old + self.num_new

    @property
    def seen_labels(self) -> tuple[int, ...]:
        """Old then new labels, in channel order."""
        return self.old_labels + self.new_labels

    @property
    def channel_to_label(self) -> tuple[int, ...]:
        """Dataset label of each output channel; channel 0 is background (label 0)."""
        return (0, *self.seen_labels)

    @property
    def label_to_channel(self) -> dict[int, int]:
        """Output channel of background (0) and of every seen label."""
        return {label: channel for channel, label in enumerate(self.channel_to_label)}

    @property
    def old_channels(self) -> tuple[int, ...]:
        return tuple(range(1, self.num_old + 1))

    @property
    def new_channels(self) -> tuple[int, ...]:
        return tuple(range(self.num_old + 1, self.num_seen + 1))

    def label_lut(self, keep_labels: Iterable[int], fill: int) -> np.ndarray:
        """Lookup table that remaps a label image in one vectorised op: `lut[label_png]` (docs/method.md §2).

        Background (0) stays 0, ignore (255) stays 255, each label of `keep_labels`
        becomes its output channel and every other value becomes `fill`. Train
        labels keep the new labels with fill 0; test labels keep the seen labels
        with fill 0 (VOC) or 255 (ADE20K).
        """
        if isinstance(fill, bool) or not isinstance(fill, int | np.integer) or not 0 <= fill <= 255:
            raise DKDError(f"label_lut fill must be an integer in 0..255, got {fill!r}")
        to_channel = self.label_to_channel
        lut = np.full(256, fill, dtype=np.uint8)
        lut[0], lut[255] = 0, 255
        for label in keep_labels:
            if label == 0 or label not in to_channel:
                raise DKDError(
                    f"label_lut keep label {label!r} is not a seen label of {self.dataset} "
                    f"{self.task_name} step {self.index}; seen labels: {list(self.seen_labels)}"
                )
            lut[label] = to_channel[label]
        return lut


@dataclass(frozen=True)
class Task:
    """A class-incremental task: the labels learned at each step, in channel order (docs/method.md §1)."""

    dataset: str
    name: str
    setting: str
    num_classes: int
    steps: Steps

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise DKDError(
                f"unknown setting {self.setting!r}; valid settings: {', '.join(SETTINGS)}"
            )
        _check_partition(self.dataset, self.name, self.num_classes, self.steps)

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def classes_per_step(self) -> tuple[int, ...]:
        return tuple(len(labels) for labels in self.steps)

    @property
    def label_order(self) -> tuple[int, ...]:
        """All labels in channel order: the steps concatenated."""
        return tuple(label for labels in self.steps for label in labels)

    def step(self, t: int) -> TaskStep:
        """Step `t` (0-based): its new labels C_t and old labels C_0..C_{t-1}."""
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.num_steps:
            raise DKDError(
                f"step {t!r} does not exist in task {self.dataset} {self.name}; "
                f"valid steps: 0..{self.num_steps - 1}"
            )
        return TaskStep(
            dataset=self.dataset,
            task_name=self.name,
            setting=self.setting,
            index=t,
            new_labels=self.steps[t],
            old_labels=tuple(label for labels in self.steps[:t] for label in labels),
            classes_per_step=self.classes_per_step[: t + 1],
        )

    def __iter__(self) -> Iterator[TaskStep]:
        """Iterate over the steps in order."""
        return (self.step(t) for t in range(self.num_steps))


def _ascending_steps(num_classes: int, base: int, increment: int) -> Steps:
    """The "B-I" rule: step 0 learns 1..B, then consecutive groups of I up to K (docs/method.md §1)."""
    first = tuple(range(1, base + 1))
    later = (tuple(range(s, s + increment)) for s in range(base + 1, num_classes + 1, increment))
    return (first, *later)


def _check_partition(dataset: str, name: str, num_classes: int, steps: Steps) -> None:
    """Every label 1..K must be learned at exactly one step, and no step may be empty."""
    labels = sorted(label for step in steps for label in step)
    if not steps or any(not step for step in steps) or labels != list(range(1, num_classes + 1)):
        raise DKDError(
            f"task {dataset} {name}: steps {steps} do not partition labels 1..{num_classes} "
            "(each label exactly once, no empty step)"
        )


# Shuffled VOC 15-1 class orders published with the reference implementation (docs/method.md §1).
_VOC_15_1_SHUFFLED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "b": ((12, 9, 20, 7, 15, 8, 14, 16, 5, 19, 4, 1, 13, 2, 11), (17, 3, 6, 18, 10)),
    "c": ((13, 19, 15, 17, 9, 8, 5, 20, 4, 3, 10, 11, 18, 16, 7), (12, 14, 6, 1, 2)),
    "d": ((15, 3, 2, 12, 14, 18, 20, 16, 11, 1, 19, 8, 10, 7, 17), (6, 5, 13, 9, 4)),
    "e": ((7, 5, 3, 9, 13, 12, 14, 19, 10, 2, 1, 4, 16, 8, 17), (15, 18, 6, 11, 20)),
    "f": ((7, 13, 5, 11, 9, 2, 15, 12, 14, 3, 20, 1, 16, 4, 18), (8, 6, 10, 19, 17)),
    "g": ((7, 5, 9, 1, 15, 18, 14, 3, 20, 10, 4, 19, 11, 17, 16), (12, 8, 6, 2, 13)),
    "h": ((12, 9, 19, 6, 4, 10, 5, 18, 14, 15, 16, 3, 8, 7, 11), (13, 2, 20, 17, 1)),
    "i": ((13, 10, 15, 8, 7, 19, 4, 3, 16, 12, 14, 11, 5, 20, 6), (2, 18, 9, 17, 1)),
    "j": ((1, 14, 9, 5, 2, 15, 8, 20, 6, 16, 18, 7, 11, 10, 19), (3, 4, 17, 12, 13)),
    "k": ((16, 13, 1, 11, 12, 18, 6, 14, 5, 3, 7, 9, 20, 19, 15), (4, 2, 10, 8, 17)),
    "l": ((10, 7, 6, 19, 16, 8, 17, 1, 14, 4, 9, 3, 15, 11, 12), (2, 18, 20, 13, 5)),
    "m": ((18, 4, 14, 17, 12, 10, 7, 3, 9, 1, 8, 15, 6, 13, 2), (5, 11, 20, 16, 19)),
    "n": ((5, 4, 13, 18, 14, 10, 19, 15, 7, 9, 3, 2, 8, 16, 20), (1, 12, 11, 6, 17)),
    "o": ((9, 12, 13, 18, 7, 1, 15, 17, 10, 8, 4, 5, 20, 16, 6), (14, 19, 11, 2, 3)),
    "p": ((9, 12, 13, 18, 2, 11, 15, 17, 10, 8, 4, 5, 20, 16, 6), (14, 19, 1, 7, 3)),
    "q": ((3, 14, 13, 18, 2, 11, 15, 17, 10, 8, 4, 5, 20, 16, 6), (12, 19, 1, 7, 9)),
    "r": ((3, 14, 13, 1, 2, 11, 15, 17, 7, 8, 4, 5, 9, 16, 19), (12, 6, 18, 10, 20)),
    "s": ((3, 14, 6, 1, 2, 11, 12, 17, 7, 20, 4, 5, 9, 16, 19), (15, 13, 18, 10, 8)),
    "t": ((3, 15, 13, 1, 2, 11, 18, 17, 7, 20, 8, 5, 9, 16, 19), (14, 6, 12, 10, 4)),
    "u": ((3, 15, 13, 14, 6, 11, 18, 17, 7, 20, 8, 4, 9, 16, 10), (1, 2, 12, 19, 5)),
    "v": ((1, 2, 12, 14, 6, 19, 18, 17, 5, 20, 8, 4, 9, 16, 10), (3, 15, 13, 11, 7)),
    "w": ((1, 2, 12, 14, 13, 19, 18, 7, 11, 20, 8, 4, 9, 16, 10), (3, 15, 6, 5, 17)),
}


def _named_steps(name: str, num_classes: int) -> Steps:
    """Steps of "joint" or an ascending "B-I" name; the name must already be valid."""
    if name == "joint":
        return (tuple(range(1, num_classes + 1)),)
    base, increment = (int(part) for part in name.split("-"))
    return _ascending_steps(num_classes, base, increment)


# Named tasks of the built-in datasets (docs/method.md §1), checked to partition 1..K at import.
_NAMED_TASKS: dict[str, dict[str, Steps]] = {
    "voc": {
        name: _named_steps(name, 20)
        for name in ("19-1", "15-5", "15-1", "10-1", "5-3", "10-5", "10-10", "joint")
    }
    | {
        f"15-1_{key}": (base, *((label,) for label in later))
        for key, (base, later) in _VOC_15_1_SHUFFLED.items()
    },
    "ade": {
        name: _named_steps(name, 150) for name in ("100-50", "100-10", "100-5", "50-50", "joint")
    },
}
for _dataset, _tasks in _NAMED_TASKS.items():
    for _name, _steps in _tasks.items():
        _check_partition(_dataset, _name, DATASET_NUM_CLASSES[_dataset], _steps)


def list_tasks(dataset: str) -> tuple[str, ...]:
    """Names of the named tasks of a built-in dataset ("voc" or "ade")."""
    if dataset not in _NAMED_TASKS:
        raise DKDError(
            f"dataset {dataset!r} has no named tasks; built-in datasets: {', '.join(_NAMED_TASKS)}"
        )
    return tuple(_NAMED_TASKS[dataset])


def get_task(
    dataset: str, name: str, setting: str = "overlap", num_classes: int | None = None
) -> Task:
    """Look up a task (docs/method.md §1).

    Built-in datasets ("voc", "ade") accept only their named tasks. Any other
    (lower-case) dataset is custom: `num_classes` K is required and the name
    must be "joint" or "B-I" with B < K and (K - B) divisible by I.
    """
    if dataset != dataset.lower() or not dataset:
        raise DKDError(f"dataset names are non-empty and lower-case, got {dataset!r}")
    if setting not in SETTINGS:
        raise DKDError(f"unknown setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    if dataset in _NAMED_TASKS:
        expected = DATASET_NUM_CLASSES[dataset]
        if num_classes is not None and num_classes != expected:
            raise DKDError(
                f"dataset {dataset!r} has {expected} classes, got num_classes={num_classes!r}"
            )
        if name not in _NAMED_TASKS[dataset]:
            raise DKDError(
                f"unknown task {name!r} for dataset {dataset!r}; "
                f"valid tasks: {', '.join(_NAMED_TASKS[dataset])}"
            )
        return Task(dataset, name, setting, expected, _NAMED_TASKS[dataset][name])

    if num_classes is None:
        raise DKDError(
            f"dataset {dataset!r} is not built-in ({', '.join(_NAMED_TASKS)}); "
            "a custom dataset needs num_classes"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise DKDError(f"num_classes must be an integer, got {num_classes!r}")
    if not 1 <= num_classes <= _MAX_CUSTOM_CLASSES:
        raise DKDError(f"num_classes must be in 1..{_MAX_CUSTOM_CLASSES}, got {num_classes}")
    if name != "joint":
        match = _ASCENDING_NAME.fullmatch(name)
        if match is None:
            raise DKDError(
                f"unknown task {name!r} for custom dataset {dataset!r}; valid tasks: 'joint' "
                "or 'B-I' (B base classes, then steps of I; B and I positive integers)"
            )
        base, increment = int(match[1]), int(match[2])
        if base >= num_classes or (num_classes - base) % increment:
            raise DKDError(
                f"task {name!r} does not fit {num_classes} classes: 'B-I' needs "
                f"B < K and K - B divisible by I (B={base}, I={increment}, K={num_classes})"
            )
    return Task(dataset, name, setting, num_classes, _named_steps(name, num_classes))
