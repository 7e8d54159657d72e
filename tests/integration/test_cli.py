"""The command line as a user meets it: toy-data, split, evaluate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dkd_core.train import train_step
from tests.integration.conftest import CONFIGS, toy_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dkd_core", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def test_toy_data_command(tmp_path):
    result = cli("toy-data", str(tmp_path / "toy"), "--images", "40", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["classes"] == 6 and summary["train"] + summary["val"] == 40
    assert len(list((tmp_path / "toy" / "JPEGImages").glob("*.jpg"))) == 40


def test_split_command_prints_per_step_counts(toy_root, tmp_path):
    args = [f"data.root={toy_root}", f"run.output={tmp_path / 'run'}"]
    result = cli("split", "--config", str(CONFIGS / "toy.yaml"), *args, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    manifest = json.loads((tmp_path / "run" / "split" / "manifest.json").read_text())
    assert summary["manifest"] == str(tmp_path / "run" / "split" / "manifest.json")
    assert [s["step"] for s in summary["steps"]] == [0, 1, 2]
    assert [s["train"] for s in summary["steps"]] == [len(s["train"]) for s in manifest["steps"]]


def test_evaluate_command_reproduces_the_step_metrics(toy_root, tmp_path):
    checkpoint = train_step(toy_config(toy_root, tmp_path / "run"), 0)
    result = cli("evaluate", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "m.json"))
    assert result.returncode == 0, result.stderr
    assert "mIoU all" in result.stdout and "disc" in result.stdout  # class names shown
    metrics = json.loads((tmp_path / "m.json").read_text())
    saved = json.loads((tmp_path / "run" / "step_0" / "eval" / "metrics.json").read_text())
    assert metrics["miou_all"] == pytest.approx(saved["miou_all"], abs=1e-6)

    # With 32-px centre crops of the 64-px images, --whole-image counts 4x the pixels.
    def counted(*flags: str) -> int:
        out = tmp_path / f"eval{len(flags)}.json"
        args = ["--checkpoint", str(checkpoint), "--output", str(out), *flags]
        result = cli("evaluate", *args, "data.crop_size=32")
        assert result.returncode == 0, result.stderr
        return sum(map(sum, json.loads(out.read_text())["confusion"]))

    crops, whole = counted(), counted("--whole-image")
    assert 3.5 * crops < whole <= 4 * crops * 1.05

    missing = cli("evaluate", "--checkpoint", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a complete checkpoint" in missing.stderr


def test_imported_reference_splits_are_used_not_rebuilt(toy_root, tmp_path):
    """`split --reference-npy` imports the authors' lists; training keeps using them."""
    import numpy as np

    from dkd_core.data import open_layout
    from dkd_core.locations import run_manifest_uri
    from dkd_core.step_data import run_manifest, task_of

    config = toy_config(toy_root, tmp_path / "run")
    task = task_of(config)
    npy = tmp_path / "npy"
    npy.mkdir()
    for t in range(task.num_steps):  # deliberately tiny lists, unlike what the data would give
        for split in ("train", "val", "test"):
            ids = np.array([f"toy_{t:05d}", f"toy_{t + 10:05d}"])
            np.save(npy / f"overlap_4-1_{split}_{t:02d}.npy", ids)
    args = [f"data.root={toy_root}", f"run.output={tmp_path / 'run'}"]
    result = cli("split", "--config", str(CONFIGS / "toy.yaml"), *args, "--reference-npy", str(npy))
    assert result.returncode == 0, result.stderr
    uri = run_manifest_uri(str(tmp_path / "run"))
    layout = open_layout(toy_root)
    manifest = run_manifest(config, task, layout.samples("train"), layout.samples("val"), uri)
    assert manifest["inputs"] == {"source": "reference-npy"}
    assert manifest["steps"][1]["train"] == ["toy_00001", "toy_00011"]


@pytest.mark.slow  # two training steps and a report: about a minute on 2 cores
def test_report_command_on_a_trained_run(toy_root, tmp_path, capsys):
    """`train` records provenance beside each step; `report --run` predicts the samples it
    lacks and reports everything it finds beside the checkpoints."""
    run = tmp_path / "run"
    overrides = [
        f"data.root={toy_root}", f"run.output={run}", "data.num_workers=0",
        "data.batch_size=8", "data.eval_batch_size=8", "optim.epochs=1",
        "train.checkpoint_every=0", "model.aspp_channels=32", "train.metrics_port=-1",
        "train.progress=false", "train.log_every=1",  # every iteration: throughput counts all
    ]  # fmt: skip
    # Step 0's training predicts its samples where its data is; step 1 is told not to.
    for step, samples in ((0, "2"), (1, "0")):
        trained = cli("train", "--config", str(CONFIGS / "toy.yaml"), "--step", str(step),
                      "--samples", samples, *overrides)  # fmt: skip
        assert trained.returncode == 0, trained.stderr
        record = json.loads((run / f"step_{step}" / "provenance.json").read_text())
        assert record["hardware"]["device"] == "cpu" and record["images_per_second"] > 0
    assert (run / "step_0" / "eval" / "samples" / "index.json").is_file()
    assert not (run / "step_1" / "eval" / "samples").exists()
    result = cli("report", "--run", str(run), "--samples", "2", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["samples_computed"] == 1 and printed["steps"] == 2  # step 1's only
    ids = [json.loads((run / f"step_{t}" / "eval" / "samples" / "index.json").read_text())["ids"]
           for t in (0, 1)]  # fmt: skip
    assert ids[0] == ids[1] and len(ids[0]) == 2
    report = run / "report"
    for name in ("miou_steps.png", "per_class_iou.png", "forgetting.png", "training_loss.png",
                 "throughput.png", "samples.png", "report.html", "report.md"):  # fmt: skip
        assert (report / name).is_file(), name
    summary = json.loads((report / "summary.json").read_text())
    assert summary["task"] == {"dataset": "toy", "name": "4-1", "setting": "overlap"}
    assert summary["notes"] == []  # nothing missing
    assert {p["model_sha256"] is not None for p in summary["provenance"]} == {True}
    assert "kd" in summary["training"][run.name][1]["final_loss"]
    # Computed once: a second report finds the samples and predicts nothing.
    from dkd_core.cli import main

    assert main(["report", "--run", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples_computed"] == 0
