"""docs/datasets.md's `dataset.yaml` example and its task config are what the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from dkd_core.config import config_from_dict
from dkd_core.data.layout import open_layout
from dkd_core.tasks import get_task

DOC = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def the_block(first_line: str) -> str:
    found = [b for b in yaml_blocks() if b.startswith(first_line)]
    assert len(found) == 1, f"docs/datasets.md: one ```yaml block starting {first_line!r}"
    return found[0]


def test_the_documented_dataset_yaml_opens_as_a_palette_dataset(tmp_path):
    text = the_block("# dataset.yaml")
    (tmp_path / "dataset.yaml").write_text(text)
    described = yaml.safe_load(text)
    # The files it names, relative to the folder holding dataset.yaml.
    ids = {"train": ["a", "b"], "val": ["c"]}
    for split, names in ids.items():
        listed = tmp_path / described["splits"][split]
        listed.parent.mkdir(parents=True, exist_ok=True)
        listed.write_text("\n".join(names) + "\n")
        for name in names:
            for folder, suffix in (("images", "image_suffix"), ("labels", "label_suffix")):
                path = tmp_path / described[folder] / f"{name}{described[suffix]}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)

    layout = open_layout(tmp_path)

    assert layout.format == "palette"
    assert layout.class_names == ("background", "road", "car", "person", "bicycle")
    assert layout.num_classes == 4
    assert layout.unseen_test_label == 0
    assert [s.id for s in layout.samples("train")] == ["a", "b"]
    (val,) = layout.samples("val")
    assert val.image == tmp_path / "images" / "c.png"
    assert val.label == tmp_path / "masks" / "c.png"


def test_the_documented_task_config_is_a_generic_task_of_the_dataset():
    config = config_from_dict(yaml.safe_load(the_block("task:")))
    t = config.task
    task = get_task(t.dataset, t.name, t.setting, num_classes=t.num_classes)
    # "2-1" over 4 classes: 2 base classes, then one per step.
    assert [task.step(i).num_new for i in range(task.num_steps)] == [2, 1, 1]
    assert config.data.root == "data/streets"
