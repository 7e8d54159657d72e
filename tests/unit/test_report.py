"""Run report: table values, plots and files."""

import json

import pytest
from PIL import Image

from dkd_core.errors import DKDError
from dkd_core.report import build_report

NAMES = ["background", "disc", "square", "cross"]


def step(old, new, all_, hiou, iou, new_channels=()):
    return {"miou_old": old, "miou_new": new, "miou_all": all_, "hiou": hiou, "iou": iou,
            "channel_names": NAMES[: len(iou)], "new_channels": list(new_channels)}  # fmt: skip


def test_report_table_plots_and_html(tmp_path):
    steps = [
        step(90.0, None, 90.0, None, [98.0, 90.0, 82.0]),
        step(80.5, 60.25, 75.44, 68.92, [97.0, 80.0, 64.5, 60.25], new_channels=[3]),
    ]
    files = build_report(steps, tmp_path / "r", title="toy")
    md = files.markdown.read_text()
    assert "| 0 | 90.00 | – | 90.00 | – |" in md
    assert "| 1 | 80.50 | 60.25 | 75.44 | 68.92 |" in md
    assert "| cross * | 60.25 |" in md and "| square | 64.50 |" in md
    for png in (files.steps_plot, files.classes_plot):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 300
    assert files.html.read_text().count("data:image/png;base64,") == 2
    summary = json.loads(files.summary.read_text())
    assert [r["hiou"] for r in summary["steps"]] == [None, 68.92]


def test_missing_fields_are_named(tmp_path):
    with pytest.raises(DKDError, match="channel_names"):
        build_report([{"miou_old": 1, "miou_all": 1, "iou": [1]}], tmp_path)
    with pytest.raises(DKDError, match="no step metrics"):
        build_report([], tmp_path)
