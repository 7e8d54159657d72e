"""Split and task inputs at their edges (docs/method.md §1, §2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dkd_core.data.splits import class_presence, derive_splits, read_manifest
from dkd_core.errors import DKDError
from dkd_core.tasks import get_task
from tests.unit.test_splits import _build, _corrupt, data  # noqa: F401 - data is a fixture


def test_class_presence_shows_progress_only_when_asked(data, capsys):  # noqa: F811
    class_presence(data["train_paths"], progress=False)
    assert capsys.readouterr().err == ""
    class_presence(data["train_paths"], progress=True)
    assert "class presence" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["", 5, None])
def test_image_ids_must_be_non_empty_strings(bad):
    task = get_task("toy", "2-1", num_classes=3)
    presence = np.zeros((2, 256), dtype=bool)
    with pytest.raises(DKDError, match="image ids must be non-empty strings"):
        derive_splits(task, ["a", bad], presence, ["v"], presence[:1])


@pytest.mark.parametrize("steps", [[{}, [3]], [[1, 2], ""], "12"])
def test_manifest_task_steps_must_be_lists_of_label_lists(tmp_path: Path, data, steps):  # noqa: F811
    manifest = _build(get_task("toy", "2-1", num_classes=4), data)
    bad = _corrupt(tmp_path / "bad.json", manifest, lambda m: m["task"].update(steps=steps))
    with pytest.raises(DKDError, match=r"'task\.steps' must be a list of label lists"):
        read_manifest(bad)
    assert json.loads(bad.read_text())["task"]["steps"] == steps


@pytest.mark.parametrize("num_classes", [1, 254])
def test_custom_datasets_of_1_and_254_classes(num_classes):
    task = get_task("tiny", "joint", num_classes=num_classes)
    assert task.steps == (tuple(range(1, num_classes + 1)),)


@pytest.mark.parametrize("num_classes", [0, 255])
def test_custom_datasets_outside_1_to_254_classes_are_refused(num_classes):
    with pytest.raises(DKDError, match=r"num_classes must be in 1\.\.254"):
        get_task("tiny", "joint", num_classes=num_classes)
