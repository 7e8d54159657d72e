"""Training with the dataset and every artifact in S3 (moto here; a real MinIO with
DKD_TEST_S3_ENDPOINT): a killed step resumes from S3 and ends with the same weights."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dkd_core.hold_for_tests import HOLD_FILE_ENV
from dkd_core.storage import (
    checkpoint_complete,
    fetch_checkpoint,
    join,
    latest_checkpoint,
    open_store,
)
from tests.integration.conftest import CONFIGS
from tests.s3_server import S3Endpoint, s3

FIXTURES = (s3,)  # imported so that pytest finds the fixture in this module
pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]


def upload_tree(local: Path, uri: str) -> None:
    store = open_store(uri)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            store.upload_file(path, join(uri, path.relative_to(local).as_posix()))


class Training:
    """`python -m dkd_core train` in a subprocess; its log goes to a file (no pipe to fill)."""

    def __init__(self, args: list[str], cache: Path, workdir: Path, hold_file: Path | None = None):
        env = {**os.environ, "DKD_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
        if hold_file is not None:  # waits at the iteration the file names (for a kill)
            env[HOLD_FILE_ENV] = str(hold_file)
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        config = str(CONFIGS / "toy.yaml")
        self.log = cache.parent / f"{cache.name}-{len(list(cache.parent.glob('*.log')))}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dkd_core", "train", "--config", config, *args],
                cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def wait(self) -> int:
        return self.proc.wait(timeout=600)

    def output(self) -> str:
        return self.log.read_text()[-3000:]


def weights(uri: str, cache: Path) -> dict[str, torch.Tensor]:
    return load_file(str(fetch_checkpoint(uri, cache) / "model.safetensors"))


def test_toy_steps_in_s3_resume_after_kill(toy_root: Path, tmp_path: Path, s3: S3Endpoint):
    data_uri = s3.uri("datasets/toy")
    upload_tree(toy_root, data_uri)
    workdir = tmp_path / "work"  # the processes' cwd: nothing may be written here
    workdir.mkdir()

    def overrides(run: str) -> list[str]:
        return [
            f"data.root={data_uri}", f"run.output={s3.uri(run)}", "data.num_workers=0",
            "data.batch_size=8", "data.eval_batch_size=8", "model.aspp_channels=32",
            "optim.epochs=3", "train.checkpoint_every=4", "train.progress=false",
            "train.metrics_port=-1",
        ]  # fmt: skip

    step0 = ["--step", "0"]
    reference = Training([*step0, *overrides("run-a")], tmp_path / "cache-a", workdir)
    assert reference.wait() == 0, reference.output()

    hold_file = tmp_path / "hold"  # held after its first periodic checkpoint, however fast
    hold_file.write_text("4")
    interrupted = Training([*step0, *overrides("run-b")], tmp_path / "cache-b", workdir, hold_file)
    periodic = s3.uri("run-b/step_0/periodic")
    deadline = time.time() + 600  # a failure guard only: the step waits at iteration 4
    while time.time() < deadline and interrupted.proc.poll() is None:
        latest = latest_checkpoint(periodic)
        if latest is not None and checkpoint_complete(latest):
            break
        time.sleep(0.1)
    os.kill(interrupted.proc.pid, signal.SIGKILL)
    interrupted.wait()
    assert latest_checkpoint(periodic) is not None, "killed before any periodic checkpoint"
    final_b = s3.uri("run-b/step_0/checkpoint")
    assert not checkpoint_complete(final_b), "the run finished before it could be killed"

    # A fresh cache, as in a new pod: everything comes back from S3.
    resumed = Training([*step0, *overrides("run-b")], tmp_path / "cache-c", workdir)
    assert resumed.wait() == 0, resumed.output()
    assert "resumed step 0 from s3://" in resumed.log.read_text(), resumed.output()

    a = weights(s3.uri("run-a/step_0/checkpoint"), tmp_path / "verify")
    b = weights(final_b, tmp_path / "verify")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    store = open_store(s3.uri())
    assert store.exists(s3.uri("run-b/step_0/eval/metrics.json"))
    assert store.exists(s3.uri("run-b/step_0/train_log.jsonl"))
    assert store.exists(s3.uri("run-b/split/manifest.json"))
    assert not store.list(periodic), "periodic checkpoints are removed after the final one"

    # The incremental step takes its teacher from S3 as well.
    step1 = Training(["--step", "1", *overrides("run-b")], tmp_path / "cache-c", workdir)
    assert step1.wait() == 0, step1.output()
    assert checkpoint_complete(s3.uri("run-b/step_1/checkpoint"))
    assert list(workdir.iterdir()) == [], "files were written outside the cache"
