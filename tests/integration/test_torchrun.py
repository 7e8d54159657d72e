"""`torchrun --nproc_per_node=2` (gloo, CPU) against one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.conftest import CONFIGS

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]
# Step 1 freezes BN, so per-process batches give the same gradients as one full batch
# up to float summation order; the curves agree far inside this tolerance.
LOSS_RTOL = 1e-4


def overrides(toy_root: Path, output: Path) -> list[str]:
    return [
        f"data.root={toy_root}", f"run.output={output}", "data.num_workers=0",
        "data.batch_size=8", "data.eval_batch_size=8", "model.aspp_channels=32",
        "optim.epochs=4", "train.log_every=1", "train.checkpoint_every=0",
    ]  # fmt: skip


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def curve(output: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in (output / "step_1" / "train_log.jsonl").read_text().splitlines()
    ]


def test_two_processes_match_one_process(toy_root, tmp_path):
    config = ["--config", str(CONFIGS / "toy.yaml")]
    step0 = tmp_path / "base"
    run(
        [
            sys.executable,
            "-m",
            "dkd_core",
            "train",
            *config,
            "--step",
            "0",
            *overrides(toy_root, step0),
        ]
    )
    teacher = ["--teacher", str(step0 / "step_0" / "checkpoint")]
    step1 = ["train", *config, "--step", "1", *teacher]

    single = tmp_path / "single"
    run([sys.executable, "-m", "dkd_core", *step1, *overrides(toy_root, single)])
    multi = tmp_path / "multi"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = run([*torchrun, "-m", "dkd_core", *step1, *overrides(toy_root, multi)])
    assert "replicas agree across 2 processes" in result.stderr

    a, b = curve(single), curve(multi)
    assert len(a) == len(b) >= 6
    for x, y in zip(a, b, strict=True):
        assert x["iteration"] == y["iteration"] and x["lr"] == pytest.approx(y["lr"], rel=1e-12)
        for term in ("mbce", "kd", "dkd_pos", "dkd_neg", "ac", "total"):
            assert y[term] == pytest.approx(x[term], rel=LOSS_RTOL), (x["iteration"], term)

    wa = load_file(str(single / "step_1" / "checkpoint" / "model.safetensors"))
    wb = load_file(str(multi / "step_1" / "checkpoint" / "model.safetensors"))
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=1e-5, rtol=1e-4, msg=key)
    ma = json.loads((single / "step_1" / "eval" / "metrics.json").read_text())
    mb = json.loads((multi / "step_1" / "eval" / "metrics.json").read_text())
    assert mb["miou_all"] == pytest.approx(ma["miou_all"], abs=0.05)
