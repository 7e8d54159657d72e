"""Run report: step table, aggregation over seeds, comparison of methods, files."""

import json

import pytest
from PIL import Image

from dkd_core.errors import DKDError
from dkd_core.report import RunInput, aggregate, build_report

NAMES = ["background", "disc", "square", "cross"]


def step(old, new, all_, hiou, iou, new_channels=()):
    return {"miou_old": old, "miou_new": new, "miou_all": all_, "hiou": hiou, "iou": iou,
            "channel_names": NAMES[: len(iou)], "new_channels": list(new_channels)}  # fmt: skip


def test_report_table_plots_and_html(tmp_path):
    steps = [
        step(90.0, None, 90.0, None, [98.0, 90.0, 82.0]),
        step(80.5, 60.25, 75.44, 68.92, [97.0, 80.0, 64.5, 60.25], new_channels=[3]),
    ]
    files = build_report([RunInput(steps)], tmp_path / "r", title="toy")
    md = files.markdown.read_text()
    assert "| 0 | 90.00 | – | 90.00 | – |" in md
    assert "| 1 | 80.50 | 60.25 | 75.44 | 68.92 |" in md
    # The per-class table: class, the step that added it, its IoU after each step.
    assert "| cross | 1 |  | 60.25 |" in md and "| square | 0 | 82.00 | 64.50 |" in md
    for png in (files.steps_plot, files.classes_plot):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 300
    html = files.html.read_text()
    assert html.count("data:image/png;base64,") == len(files.figures) >= 3
    assert "<table>" in html and "<style>" in html
    summary = json.loads(files.summary.read_text())
    assert [r["hiou"] for r in summary["steps"]] == [None, 68.92]
    assert {"steps", "aggregate", "runs"} <= summary.keys()
    # No checkpoints: the report says what it cannot show instead of failing.
    assert any("step metrics only" in n for n in summary["notes"])


def test_missing_fields_are_named(tmp_path):
    with pytest.raises(DKDError, match="channel_names"):
        build_report([RunInput([{"miou_old": 1, "miou_all": 1, "iou": [1]}])], tmp_path)
    with pytest.raises(DKDError, match="no step metrics"):
        build_report([RunInput([])], tmp_path)


def test_missing_metrics_field_is_one_line_naming_step_and_field(tmp_path):
    good = step(90.0, None, 90.0, None, [98.0, 90.0, 82.0])
    bad = {k: v for k, v in step(80.0, 60.0, 75.0, 68.0, [1.0] * 4).items() if k != "miou_all"}
    with pytest.raises(DKDError) as error:
        build_report([RunInput([good, bad], method="DKD", seed=3)], tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "step 1" in message and "miou_all" in message and "DKD, seed 3" in message


def test_seeds_are_aggregated_as_mean_and_sample_std(tmp_path):
    def run(seed, old, all_):
        return RunInput([step(old, None, all_, None, [all_, all_])], seed=seed)

    runs = [run(1, 70.0, 60.0), run(2, 74.0, 64.0), run(3, 72.0, 68.0)]
    (row,) = aggregate(runs)
    assert row["seeds"] == [1, 2, 3]
    assert row["old"] == {"mean": 72.0, "std": 2.0, "n": 3, "values": [70.0, 74.0, 72.0]}
    assert row["all"]["mean"] == 64.0 and row["all"]["std"] == 4.0
    assert row["new"] == {"mean": None, "std": None, "n": 0, "values": [None, None, None]}
    files = build_report(runs, tmp_path, title="seeds")
    assert "| 0 | 72.00 ± 2.00 | – | 64.00 ± 4.00 | – |" in files.markdown.read_text()
    summary = json.loads(files.summary.read_text())
    assert summary["steps"] == [{"step": 0, "old": 72.0, "new": None, "all": 64.0, "hiou": None}]
    assert [r["seed"] for r in summary["runs"]] == [1, 2, 3]
    assert summary["runs"][1]["steps"][0]["old"] == 74.0


def test_methods_are_compared_and_bad_seed_groups_named(tmp_path):
    a = RunInput([step(70.0, None, 60.0, None, [60.0, 60.0])], method="FT")
    b = RunInput([step(75.0, None, 65.0, None, [65.0, 65.0])], method="DKD")
    files = build_report([a, b], tmp_path)
    md = files.markdown.read_text()
    assert "| method | step | old |" in md and "| FT | 0 | 70.00 |" in md
    assert "| DKD | 0 | 75.00 |" in md
    # One heatmap per method, numbered in the order the methods first appear.
    assert [p.name for p in files.figures if p.name.startswith("per_class")] == [
        "per_class_iou.png", "per_class_iou_2.png",
    ]  # fmt: skip
    with pytest.raises(DKDError, match="seeds \\[1, 1\\]"):
        aggregate([RunInput(a.steps, seed=1), RunInput(b.steps, seed=1)])
    longer = RunInput(a.steps * 2, seed=2)
    with pytest.raises(DKDError, match="different numbers of steps"):
        aggregate([RunInput(a.steps, seed=1), longer])
