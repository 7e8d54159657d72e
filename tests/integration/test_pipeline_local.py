"""The toy pipeline end to end under kfp.local: split, three steps trained and evaluated, report."""

import json
import re
from pathlib import Path

import pytest

from pipelines import config_path
from pipelines.local import format_run, run_local

pytestmark = pytest.mark.integration

#: Seconds instead of minutes: few iterations, a narrow ASPP, no loader workers, no exporter.
FAST = [
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.num_workers=0",
    "model.aspp_channels=32",
    "train.metrics_port=-1",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def toy_run(toy_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("pipeline")
    mp = pytest.MonkeyPatch()
    mp.setenv("DKD_CACHE", str(output / "cache"))  # the task processes inherit it
    try:
        yield run_local(config_path("toy"), toy_root, output, ["epochs=2"], FAST), output
    finally:
        mp.undo()


def test_every_step_leaves_a_complete_checkpoint(toy_run):
    run, output = toy_run
    history = json.loads((run.report_dir / "history.json").read_text())
    assert [s["step"] for s in history] == [0, 1, 2]
    models = [Path(s["checkpoint"]) for s in history]
    assert len(set(models)) == 3
    for t, model in enumerate(models):
        assert model.is_relative_to(output / "kfp")  # the Model artifact, written by the job
        assert (model / "model.safetensors").is_file()
        meta = json.loads((model / "meta.json").read_text())
        assert meta["step"] == t and meta["model"]["classes_per_step"] == [4, 1, 1][: t + 1]
        assert meta["config"]["optim"]["epochs"] == 2  # the pipeline parameter reached the job
        assert meta["config"]["model"]["aspp_channels"] == 32  # and the overrides
        assert (model.parent / "config.yaml").is_file()
        assert (model.parent / "eval" / "metrics.json").is_file()


def test_metrics_are_sane(toy_run):
    run, _ = toy_run
    assert [r["step"] for r in run.steps] == [0, 1, 2]
    for r in run.steps:
        for key in ("old", "all"):
            assert 0 <= r[key] <= 100
    assert run.steps[0]["new"] is None and run.steps[0]["hiou"] is None
    for r in run.steps[1:]:
        assert isinstance(r["new"], float) and 0 <= r["new"] <= 100
    history = json.loads((run.report_dir / "history.json").read_text())
    assert len(history[-1]["confusion"]) == len(history[-1]["channel_names"]) == 7


def test_report_files_embed_the_plots(toy_run):
    run, _ = toy_run
    html = run.html.read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 2
    assert run.markdown.read_text().startswith("# DKD toy 4-1")
    for name in ("miou_steps.png", "per_class_iou.png", "summary.json"):
        assert (run.report_dir / name).is_file()
    assert Path(run.artifacts["report"]).read_text() == html  # the pipeline's output artifact


def test_run_summary_lists_steps_and_task_times(toy_run):
    run, _ = toy_run
    assert {"split-data", "train-step", "train-step-3", "evaluate-3", "report"} <= set(
        run.task_seconds
    )
    text = format_run(run)
    assert "step    old    new    all   hIoU" in text and str(run.html) in text
