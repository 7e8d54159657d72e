"""Gradient accumulation: one global batch however it is split over processes and micro-batches."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dkd_core.train as train_module
from dkd_core.checkpoint import read_meta
from dkd_core.errors import DKDError
from dkd_core.train import train_step
from tests.integration.conftest import CONFIGS, toy_config
from tests.integration.test_torchrun import overrides
from tests.integration.test_torchrun import run as torchrun_run

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]
TERMS = ("mbce", "kd", "dkd_pos", "dkd_neg", "ac", "total")


def common(toy_root: Path, output: Path) -> list[str]:
    return [*overrides(toy_root, output), "train.progress=false", "train.metrics_port=-1"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return torchrun_run(cmd, timeout=900)


def log_of(run_dir: Path, step: int) -> list[dict]:
    lines = (run_dir / f"step_{step}" / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_processes_times_micro_batches_give_the_same_step(toy_root, tmp_path):
    """Step 1 (BN frozen), global batch 8: 1 process x 4 micro-batches, 2 x 2 and 4 x 1."""
    config = ["--config", str(CONFIGS / "toy.yaml")]
    base = tmp_path / "base"
    run([sys.executable, "-m", "dkd_core", "train", *config, "--step", "0",
         *common(toy_root, base), "train.max_iterations=3"])  # fmt: skip
    step1 = ["train", *config, "--step", "1", "--teacher", str(base / "step_0" / "checkpoint")]
    step1 += ["train.max_iterations=6"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    splits = {
        "1x4": [sys.executable, "-m", "dkd_core", *step1, "data.micro_batch_size=2"],
        "2x2": [*torchrun, "--nproc_per_node=2", "-m", "dkd_core", *step1, "data.micro_batch_size=2"],
        "4x1": [*torchrun, "--nproc_per_node=4", "-m", "dkd_core", *step1, "data.micro_batch_size=0"],
    }  # fmt: skip
    for name, cmd in splits.items():
        result = run([*cmd, *common(toy_root, tmp_path / name)])
        if name != "1x4":
            assert f"replicas agree across {name[0]} processes" in result.stderr

    reference = log_of(tmp_path / "1x4", 1)
    assert [r["iteration"] for r in reference] == [1, 2, 3, 4, 5, 6]
    weights = load_file(str(tmp_path / "1x4" / "step_1" / "checkpoint" / "model.safetensors"))
    for name in ("2x2", "4x1"):
        curve = log_of(tmp_path / name, 1)
        assert [r["iteration"] for r in curve] == [r["iteration"] for r in reference]
        for x, y in zip(reference, curve, strict=True):
            assert y["lr"] == pytest.approx(x["lr"], rel=1e-12)
            for term in TERMS:
                assert y[term] == pytest.approx(x[term], rel=1e-5, abs=1e-7), (name, x, y)
        other = load_file(str(tmp_path / name / "step_1" / "checkpoint" / "model.safetensors"))
        assert other.keys() == weights.keys()
        for key in weights:
            torch.testing.assert_close(other[key], weights[key], atol=1e-5, rtol=0, msg=key)
    # The weights moved: equal because the runs agree, not because nothing trained.
    teacher = load_file(str(base / "step_0" / "checkpoint" / "model.safetensors"))
    moved = [k for k in teacher if k in weights and not torch.equal(teacher[k], weights[k])]
    assert moved


def test_a_kill_inside_an_accumulated_step_resumes_from_the_step_before(
    toy_root, tmp_path, monkeypatch
):
    """Periodic checkpoints lie on optimizer-step boundaries; the resumed run ends identical."""
    settings = ("data.micro_batch_size=4", "train.max_iterations=4", "train.log_every=1",
                "train.progress=false")  # fmt: skip
    reference_run = tmp_path / "reference"
    train_step(toy_config(toy_root, reference_run, *settings), 0)

    run_dir = tmp_path / "run"
    config = toy_config(toy_root, run_dir, *settings, "train.checkpoint_every=2")
    losses = train_module.dkd_losses
    calls = []

    def killed_in_the_third_steps_second_micro_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # 2 micro-batches per step: steps 1 and 2 done, 3 half done
            raise KeyboardInterrupt
        return losses(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "dkd_losses", killed_in_the_third_steps_second_micro_batch)
        with pytest.raises(train_module.TrainingInterrupted) as stopped:
            train_step(config, 0)
    periodic = run_dir / "step_0" / "periodic" / "iter_00000002"
    assert str(stopped.value).startswith("step 0 interrupted at iteration 2 of 4")
    training = read_meta(periodic)["training"]
    assert training["iteration"] == 2 and training["grad_scaler"] == {}  # CPU: no scaler

    train_step(config, 0)
    assert log_of(run_dir, 0) == log_of(reference_run, 0)
    a = load_file(str(reference_run / "step_0" / "checkpoint" / "model.safetensors"))
    b = load_file(str(run_dir / "step_0" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_micro_batch_that_does_not_divide_is_a_config_error(toy_root, tmp_path):
    config = toy_config(toy_root, tmp_path / "run", "data.micro_batch_size=3")
    with pytest.raises(DKDError) as error:
        train_step(config, 0)
    assert str(error.value) == (
        "data.batch_size 8 is not a multiple of processes (1) x data.micro_batch_size (3); "
        "choose a data.micro_batch_size that divides 8 (the images per process), "
        "or 0 for no accumulation"
    )
    assert not (tmp_path / "run" / "step_0" / "checkpoint").exists()
