"""The toy pipeline end to end under kfp.local, with two seeds: one split, then per seed three
steps trained and evaluated, and one report that aggregates the seeds."""

import contextlib
import io
import json
import re
import statistics
from pathlib import Path

import pytest

from dkd_core.errors import DKDError
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
    "train.log_every=2",  # a logged loss on the progress lines of the short steps too
]
SEEDS = [1, 2]


@pytest.fixture(scope="module")
def toy_run(toy_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("pipeline")
    mp = pytest.MonkeyPatch()
    mp.setenv("DKD_CACHE", str(output / "cache"))  # the task processes inherit it
    printed = io.StringIO()  # what the run prints (kfp.local writes to sys.stdout)
    try:
        with contextlib.redirect_stdout(printed):
            run = run_local(config_path("toy"), toy_root, output, ["epochs=2"], FAST, seeds="1,2")
        yield run, output, printed.getvalue()
    finally:
        mp.undo()


def test_every_step_of_every_seed_leaves_its_own_checkpoint(toy_run):
    run, output, _ = toy_run
    history = json.loads((run.report_dir / "history.json").read_text())
    assert list(history) == ["1", "2"]  # {seed: that chain's steps}, in the order of the seeds
    folders = set()
    for seed in SEEDS:
        steps = history[str(seed)]
        assert [s["step"] for s in steps] == [0, 1, 2] and {s["seed"] for s in steps} == {seed}
        for t, entry in enumerate(steps):
            model = Path(entry["checkpoint"])
            assert model.is_relative_to(output / "kfp")  # the Model artifact, written by the job
            # each seed's chain is one loop iteration, with its own folders
            assert re.search(r"/for-loop-\d+-iteration-[01]/train-step(-\d)?/model$", str(model))
            folders.add(model.parent)
            assert (model / "model.safetensors").is_file()
            meta = json.loads((model / "meta.json").read_text())
            assert meta["step"] == t and meta["model"]["classes_per_step"] == [4, 1, 1][: t + 1]
            assert meta["config"]["train"]["seed"] == seed  # the seed is in the checkpoint
            assert meta["config"]["optim"]["epochs"] == 2  # the pipeline parameter reached the job
            assert meta["config"]["model"]["aspp_channels"] == 32  # and the overrides
            assert (model.parent / "config.yaml").is_file()
            assert (model.parent / "eval" / "metrics.json").is_file()
    assert len(folders) == 6  # no two steps, of one seed or two, share a folder (or a lease)
    # One split for both seeds, outside the loop's iteration folders.
    assert len(list((output / "kfp").glob("*/split-data/manifest"))) == 1
    assert not list((output / "kfp").glob("*/for-loop-*/split-data"))


def test_the_report_aggregates_the_seeds(toy_run):
    run, _, _ = toy_run
    summary = json.loads((run.report_dir / "summary.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == SEEDS == run.seeds
    per_seed = [r["steps"] for r in summary["runs"]]
    for t, row in enumerate(summary["aggregate"]):
        assert row["seeds"] == SEEDS
        for key in ("old", "all"):
            values = [steps[t][key] for steps in per_seed]
            assert row[key]["values"] == values and row[key]["n"] == 2
            assert row[key]["mean"] == pytest.approx(statistics.fmean(values))
            assert row[key]["std"] == pytest.approx(statistics.stdev(values))
            assert summary["steps"][t][key] == pytest.approx(statistics.fmean(values))
    # Two seeds are two different runs: different weights, so different test results.
    assert per_seed[0] != per_seed[1]
    assert per_seed[0][0]["all"] != per_seed[1][0]["all"]


def test_metrics_are_sane(toy_run):
    run, _, _ = toy_run
    assert [r["step"] for r in run.steps] == [0, 1, 2]
    for r in run.steps:
        for key in ("old", "all"):
            assert 0 <= r[key] <= 100
    assert run.steps[0]["new"] is None and run.steps[0]["hiou"] is None
    for r in run.steps[1:]:
        assert isinstance(r["new"], float) and 0 <= r["new"] <= 100
    history = json.loads((run.report_dir / "history.json").read_text())
    for steps in history.values():
        assert len(steps[-1]["confusion"]) == len(steps[-1]["channel_names"]) == 7


def test_report_files_embed_the_plots(toy_run):
    run, _, _ = toy_run
    html = run.html.read_text()
    # Per step, heatmap, forgetting, loss curves, throughput and the evaluate steps' samples.
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 6
    assert "Qualitative results" in html and "Provenance" in html
    assert run.markdown.read_text().startswith("# DKD toy 4-1")
    for name in ("miou_steps.png", "per_class_iou.png", "forgetting.png", "training_loss.png",
                 "throughput.png", "samples.png", "summary.json"):  # fmt: skip
        assert (run.report_dir / name).is_file(), name
    # Found from the history's checkpoint URIs: every step's train log, provenance, samples.
    assert json.loads((run.report_dir / "summary.json").read_text())["notes"] == []
    assert Path(run.artifacts["report"]).read_text() == html  # the pipeline's output artifact


def test_run_summary_lists_steps_and_task_times(toy_run):
    run, _, _ = toy_run
    chains = {f"{task} (seed {seed})" for task in ("train-step", "train-step-3", "evaluate-3")
              for seed in SEEDS}  # fmt: skip
    assert {"split-data", "report", *chains} <= set(run.task_seconds)
    text = format_run(run)
    assert "mean ± sample std over 2 seeds (1, 2)" in text and str(run.html) in text
    assert re.search(r"^   2  mean  +\d+\.\d\d ± +\d+\.\d\d ", text, re.M)


def test_the_run_shows_progress_lines_not_the_executors_logs(toy_run):
    _, _, printed = toy_run
    for seed in SEEDS:  # the two chains run at once: each line names its seed
        for step in (0, 1, 2):
            line = rf"\[seed {seed}\] .*step {step}: iteration"
            assert re.search(rf"{line} \d+/\d+ \(\d+%\), loss \d", printed)
            assert re.search(rf"{line} (\d+)/\1 \(100%\), .*done in ", printed)
    assert "Executing task" in printed and "finished with status" in printed
    assert "step 0: " in printed and " train images, " in printed  # what split-data prints
    # Neither the KFP executor's logs, its input's JSON, kfp.local's artifact dumps, nor
    # the refreshes of tqdm bars (the tasks' stderr is a pipe, not a terminal).
    noises = ("[KFP Executor", "executor_input", '"parameterValues"', "outputs:", "uri='")
    for noise in (*noises, "class presence", "label checksums", "it/s]"):
        assert noise not in printed
    assert len(printed.splitlines()) < 300  # < 150 per seed


def test_a_failing_task_shows_its_whole_output(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DKDError, match="local pipeline run failed"):
        run_local(config_path("toy"), empty, tmp_path / "out", ["epochs=1"], FAST)
    printed = capsys.readouterr().out
    assert "--- the task failed (exit code 1); its whole output: ---" in printed
    failed = printed.split("its whole output: ---", 1)[1]
    assert "[KFP Executor" in failed and "Got executor_input:" in failed
    error = "cannot detect the dataset format"  # the component's error, shown as it came
    assert error in printed.split("--- the task failed", 1)[0] and error in failed
