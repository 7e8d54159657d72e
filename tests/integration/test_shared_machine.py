"""A toy step trains to the same bytes alone and beside CPU-bound processes.

The thread count of a training process decides the order of CPU float reductions
(1 and 2 threads give other weights on the toy step), so a local run's chains must
train with the count of a one-chain run however many run beside them
(`dkd_core.sharing`); the load itself must change nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from dkd_core.checkpoint import read_meta
from dkd_core.sharing import apply_threads
from dkd_core.train import train_step
from pipelines.local import machine_share

from .conftest import CONFIGS, toy_config


def _train(toy_root: Path, out: Path, env: dict[str, str], monkeypatch) -> tuple[str, int]:
    """Step 0 with the thread count a task of that environment applies: (sha256, threads)."""
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        threads = apply_threads()
        config = toy_config(toy_root, out, "train.max_iterations=6", "train.progress=false")
        checkpoint = train_step(config, 0)
    return read_meta(checkpoint)["weights"]["sha256"], threads


def test_same_weights_alone_and_beside_busy_processes(toy_root, tmp_path, monkeypatch) -> None:
    before = torch.get_num_threads()
    for name in ("DKD_CPU_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    alone = machine_share(CONFIGS / "toy.yaml", {}, chains=1)
    beside = machine_share(CONFIGS / "toy.yaml", {}, chains=3)
    busy = [
        # Niced: CPU-bound, yet they leave the test the cores it needs to end in seconds.
        subprocess.Popen([sys.executable, "-c", "import os; os.nice(19)\nwhile True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        loaded = _train(
            toy_root, tmp_path / "beside", beside.env(beside.concurrent - 1), monkeypatch
        )
    finally:
        for process in busy:
            process.kill()
            process.wait()
    try:
        quiet = _train(toy_root, tmp_path / "alone", alone.env(0), monkeypatch)
    finally:
        torch.set_num_threads(before)
    assert loaded == quiet
