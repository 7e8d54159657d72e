"""Training steps end to end on the toy dataset (tiny backbone, 64 px, CPU)."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dkd_core.checkpoint import load_model_checkpoint, read_meta
from dkd_core.errors import DKDError
from dkd_core.hold_for_tests import HOLD_FILE_ENV
from dkd_core.train import train_step
from tests.integration.conftest import CONFIGS, interrupt_before_final_checkpoint, toy_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]


def test_base_step_then_incremental_step(toy_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dkd_core.progress")
    config = toy_config(toy_root, tmp_path / "run")
    step0 = train_step(config, 0)
    # Progress lines: the first logged iteration (log_every 10) and the last, loss and ETA.
    lines = [r.getMessage() for r in caplog.records if r.name == "dkd_core.progress"]
    assert re.fullmatch(
        r"step 0: iteration 10/(\d+) \(\d+%\), loss \d+\.\d{4}, .* it/s, ETA .+", lines[0]
    )
    total = int(re.search(r"/(\d+) ", lines[0]).group(1))
    assert re.fullmatch(
        rf"step 0: iteration {total}/{total} \(100%\), loss \d+\.\d{{4}}, .* it/s, done in .+",
        lines[-1],
    )
    model0, meta0 = load_model_checkpoint(step0)
    assert model0.classes_per_step == (4,)
    assert meta0["step"] == 0 and meta0["config"]["data"]["root"] == str(toy_root)
    assert set(meta0["metrics"]) >= {"miou_all", "miou_old", "iou"}
    assert (tmp_path / "run" / "split" / "manifest.json").is_file()

    step1 = train_step(config, 1)
    model1, meta1 = load_model_checkpoint(step1)
    assert model1.classes_per_step == (4, 1)
    assert meta1["channel_to_label"] == [0, 1, 2, 3, 4, 5]
    metrics = json.loads((tmp_path / "run" / "step_1" / "eval" / "metrics.json").read_text())
    assert metrics["miou_new"] is not None and len(metrics["iou"]) == 6
    # The old head was trained further, the BN statistics were not (frozen from step 1).
    state0, state1 = model0.state_dict(), model1.state_dict()
    assert torch.equal(state0["backbone.bn1.running_mean"], state1["backbone.bn1.running_mean"])
    assert not torch.equal(state0["step_heads.0.weight"], state1["step_heads.0.weight"])
    # Running the same command again is a no-op: the step is complete.
    assert train_step(config, 1) == step1


def test_step_without_previous_checkpoint_is_a_clear_error(toy_root, tmp_path):
    config = toy_config(toy_root, tmp_path / "run")
    with pytest.raises(DKDError, match="needs step 0's final checkpoint"):
        train_step(config, 1)
    assert not (tmp_path / "run" / "step_1" / "checkpoint").exists()


def test_non_finite_loss_stops_with_a_clear_error(toy_root, tmp_path):
    config = toy_config(toy_root, tmp_path / "run", "optim.lr=1e12")
    with pytest.raises(DKDError, match="non-finite loss"):
        train_step(config, 0)


def run_cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dkd_core", *args], cwd=REPO, env=env, capture_output=True,
        text=True, **kw,
    )  # fmt: skip


def cli_overrides(toy_root, output) -> list[str]:
    return [
        f"data.root={toy_root}", f"run.output={output}", "data.num_workers=0",
        "data.batch_size=8", "data.eval_batch_size=8", "model.aspp_channels=32",
    ]  # fmt: skip


def test_bad_input_exits_non_zero_with_a_clear_message(toy_root, tmp_path):
    config = str(CONFIGS / "toy.yaml")
    result = run_cli("train", "--config", config, "--step", "0", "optim.lrr=1")
    assert result.returncode == 2 and "unknown key 'optim.lrr'" in result.stderr
    missing = ["data.root=" + str(tmp_path / "nope"), f"run.output={tmp_path / 'run'}"]
    result = run_cli("train", "--config", config, "--step", "0", *missing)
    assert result.returncode == 2 and str(tmp_path / "nope") in result.stderr
    assert not (tmp_path / "run" / "step_0" / "checkpoint").exists()
    result = run_cli("train", "--config", config, "--step", "7", *cli_overrides(toy_root, tmp_path))
    assert result.returncode == 2 and "valid steps: 0..2" in result.stderr


def test_resume_after_kill_gives_the_same_weights(toy_root, tmp_path):
    """kill -9 after a periodic checkpoint; the same command resumes and ends identical."""
    base = ["train", "--config", str(CONFIGS / "toy.yaml"), "--step", "0"]
    common = ["optim.epochs=3", "train.checkpoint_every=4", "train.log_every=1"]

    reference = run_cli(*base, *cli_overrides(toy_root, tmp_path / "a"), *common, timeout=600)
    assert reference.returncode == 0, reference.stderr

    run_dir = tmp_path / "b"
    args = [*base, *cli_overrides(toy_root, run_dir), *common]
    hold_file = tmp_path / "hold"  # held after its first periodic checkpoint, however fast
    hold_file.write_text("4")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dkd_core", *args], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1", HOLD_FILE_ENV: str(hold_file)},
    )  # fmt: skip
    periodic = run_dir / "step_0" / "periodic"
    deadline = time.time() + 600  # a failure guard only: the step waits at iteration 4
    while not list(periodic.glob("iter_*/meta.json")) and time.time() < deadline:
        assert proc.poll() is None, "exited before its first periodic checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(periodic.glob("iter_*/meta.json")), "no periodic checkpoint before the kill"
    assert not (run_dir / "step_0" / "checkpoint" / "meta.json").exists(), "finished too early"

    resumed = run_cli(*args, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed step 0" in resumed.stderr
    a = load_file(str(tmp_path / "a" / "step_0" / "checkpoint" / "model.safetensors"))
    b = load_file(str(run_dir / "step_0" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (
        read_meta(run_dir / "step_0" / "checkpoint")["metrics"]
        == read_meta(tmp_path / "a" / "step_0" / "checkpoint")["metrics"]
    )


def test_a_corrupted_periodic_checkpoint_is_refused(toy_root, tmp_path, monkeypatch):

    config = toy_config(toy_root, tmp_path / "run", "train.checkpoint_every=2")

    interrupt_before_final_checkpoint(monkeypatch, config)
    latest = sorted((tmp_path / "run" / "step_0" / "periodic").glob("iter_*"))[-1]
    weights = latest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DKDError, match="checksum mismatch"):
        train_step(config, 0)


def test_exemplar_memory_through_two_incremental_steps(toy_root, tmp_path):
    """DKD-M: step 1 replays step-0 images chosen by ground truth, step 2 by pseudo-labels."""
    from dkd_core.data.splits import manifest_step, read_manifest

    def read_memory(path):
        record = json.loads(path.read_text())
        return {**record, "label_sets": {k: set(v) for k, v in record["label_sets"].items()}}

    config = toy_config(toy_root, tmp_path / "run", "data.memory_size=4")
    for t in range(3):
        train_step(config, t)
    manifest = read_manifest(tmp_path / "run" / "split" / "manifest.json")
    step0_train = set(manifest_step(manifest, 0).train)
    memory1 = read_memory(tmp_path / "run" / "step_1" / "memory.json")
    assert len(memory1["memory"]) == 4 and set(memory1["memory"]) <= step0_train
    # Class-balanced: four base classes, one image for each.
    chosen_sets = [memory1["label_sets"][i] for i in memory1["memory"]]
    assert all(s <= {1, 2, 3, 4} for s in chosen_sets)
    assert set().union(*chosen_sets) == {1, 2, 3, 4}

    memory2 = read_memory(tmp_path / "run" / "step_2" / "memory.json")
    candidates = step0_train | set(manifest_step(manifest, 1).train)
    assert len(memory2["memory"]) == 4 and set(memory2["memory"]) <= candidates
    assert all(memory2["label_sets"][i] <= {1, 2, 3, 4, 5} for i in memory2["memory"])
