"""Scrape /metrics over HTTP while a toy training step runs, as Prometheus would."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dkd_core.hold_for_tests import HOLD_FILE_ENV
from tests.integration.conftest import CONFIGS, interrupt_before_final_checkpoint

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float | None:
    for (n, lab), v in samples.items():
        if n == name and all(dict(lab).get(k) == x for k, x in labels.items()):
            return v
    return None


def test_metrics_are_served_during_training(toy_root, tmp_path):
    port = free_port()
    hold_file = tmp_path / "hold"  # the step waits after iteration 5 while it is scraped
    hold_file.write_text("5")
    args = [
        f"data.root={toy_root}", f"run.output={tmp_path}", "run.name=scrape-test",
        "data.num_workers=0", "data.batch_size=8", "model.aspp_channels=32",
        "optim.epochs=40", "train.log_every=1", "train.checkpoint_every=0",
        f"train.metrics_port={port}", "train.progress=false",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "dkd_core", "train", "--config", str(CONFIGS / "toy.yaml"),
         "--step", "0", *args],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "DKD_RUN_ID": "kfp-run-1",
             HOLD_FILE_ENV: str(hold_file)},
    )  # fmt: skip
    try:
        samples, deadline = {}, time.time() + 600  # a failure guard only: the step waits at 5
        while time.time() < deadline and proc.poll() is None:
            try:
                samples = scrape(port)
                if value(samples, "dkd_iteration") == 5:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert value(samples, "dkd_iteration") == 5, "the held iteration was never scraped"
    finally:
        proc.kill()
        proc.wait()
    labels = {"run": "scrape-test", "run_id": "kfp-run-1", "task": "toy:4-1", "ciss_step": "0"}
    assert value(samples, "dkd_loss", term="mbce", **labels) > 0
    assert value(samples, "dkd_loss", term="total", **labels) > 0
    assert value(samples, "dkd_loss", term="kd") is None  # step 0 has no distillation
    assert value(samples, "dkd_learning_rate", group="backbone") == pytest.approx(0.01, rel=0.2)
    assert value(samples, "dkd_learning_rate", group="aspp") == pytest.approx(0.1, rel=0.2)
    iterations = value(samples, "dkd_iteration")
    assert value(samples, "dkd_samples_total") == 8 * iterations
    assert value(samples, "dkd_iteration_duration_seconds_count") == iterations
    assert value(samples, "dkd_dataloader_wait_seconds_count") == iterations
    assert value(samples, "dkd_compute_seconds_count") == iterations
    assert 0 < value(samples, "dkd_progress_ratio") < 1
    assert value(samples, "dkd_epoch") >= 0


@pytest.fixture
def one_thread():
    """A model this small trains several times faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = ("optim.epochs=1", "data.crop_size=32", "data.batch_size=4", "model.aspp_channels=16")


def test_the_run_id_is_recorded_kept_on_resume_and_inherited_by_the_next_step(
    toy_root, tmp_path, monkeypatch, one_thread
):
    from dkd_core.checkpoint import read_meta
    from dkd_core.train import train_step
    from tests.integration.conftest import toy_config

    monkeypatch.delenv("DKD_RUN_ID", raising=False)
    config = toy_config(toy_root, tmp_path / "run", *SMALL, "train.checkpoint_every=2")

    interrupt_before_final_checkpoint(monkeypatch, config)
    periodic = sorted((tmp_path / "run" / "step_0" / "periodic").glob("iter_*"))
    generated = read_meta(periodic[-1])["run_id"]
    assert len(generated) == 12

    step0 = train_step(config, 0)  # resumes: the same identity
    assert read_meta(step0)["run_id"] == generated
    step1 = train_step(config, 1)  # the next step of the same run
    assert read_meta(step1)["run_id"] == generated

    monkeypatch.setenv("DKD_RUN_ID", "kfp-run-3")  # a pipeline run says who it is
    again = toy_config(toy_root, tmp_path / "again", *SMALL)
    assert read_meta(train_step(again, 0))["run_id"] == "kfp-run-3"


def test_checkpoint_saves_are_not_counted_as_data_loader_wait(
    toy_root, tmp_path, monkeypatch, one_thread
):
    """A clock that jumps 1000 s during each periodic save: only the save time sees it."""
    import dkd_core.train as train_module
    from dkd_core.train import train_step
    from tests.integration.conftest import toy_config

    offset = [0.0]
    real_clock = time.perf_counter
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: real_clock() + offset[0])
    real_save = train_module._save_periodic

    def slow_save(*args, **kwargs):
        real_save(*args, **kwargs)
        offset[0] += 1000.0

    monkeypatch.setattr(train_module, "_save_periodic", slow_save)
    built = []
    real_start = train_module.start_metrics
    monkeypatch.setattr(
        train_module,
        "start_metrics",
        lambda *a, **k: built.append(real_start(*a, **k)) or built[-1],
    )
    train_step(toy_config(toy_root, tmp_path / "run", *SMALL, "train.checkpoint_every=2"), 0)

    [metrics] = built
    families = {
        s.name: s.value
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in f.samples
        if not s.labels.get("le")
    }
    assert offset[0] >= 2000  # several saves happened
    assert families["dkd_dataloader_wait_seconds_sum"] < 1000
    assert families["dkd_compute_seconds_sum"] < 1000
    assert families["dkd_iteration_duration_seconds_sum"] < 1000
