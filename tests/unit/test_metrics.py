"""Prometheus training metrics: names, values, labels, bounded labels, no-op mode, push."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import unquote

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from dkd_core.metrics import (
    CONST_LABELS,
    DEFAULT_PORT,
    LOSS_TERMS,
    LR_GROUPS,
    METRIC_NAMES,
    TrainingMetrics,
    metrics_port,
)

RUN_LABELS = {"run": "r1", "task": "voc:15-1", "ciss_step": "2"}
LOSSES = {"mbce": 0.5, "kd": 0.25, "dkd_pos": 0.125, "dkd_neg": 0.0625, "ac": 0.01, "total": 1.0}
LRS = {"backbone": 0.001, "aspp": 0.01, "old_classifiers": 0.01, "new_classifier": 0.01}
CUDA_ONLY = {"dkd_gpu_memory_allocated_bytes", "dkd_gpu_memory_peak_bytes"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def samples(m: TrainingMetrics) -> list[Sample]:
    """Every sample `m` exposes, through the Prometheus text format and its parser."""
    text = generate_latest(m.registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(m: TrainingMetrics, name: str, **labels: str) -> float:
    """The value of the one sample of `name` with these labels (besides run/task/ciss_step)."""
    found = [s.value for s in samples(m) if s.name == name and s.labels == {**RUN_LABELS, **labels}]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def base_name(sample_name: str) -> str:
    """The METRIC_NAMES entry a sample belongs to (histogram and _created suffixes removed)."""
    name = sample_name.removesuffix("_created")
    if name not in METRIC_NAMES and name + "_total" in METRIC_NAMES:
        return name + "_total"
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in METRIC_NAMES:
            return name.removesuffix(suffix)
    return name


def observe_everything(m: TrainingMetrics) -> None:
    m.set_info(backbone="resnet101", world_size=2)
    m.set_plan(200)
    m.observe_iteration(
        iteration=50, epoch=1, seconds=0.5, samples=24, losses=LOSSES,
        learning_rates=LRS, data_wait_seconds=0.02,
    )  # fmt: skip
    m.observe_checkpoint(1.5, 123_456)
    m.observe_gpu_memory()
    m.observe_evaluation(70.0, 40.0, 62.5, 50.9, 91.25)


@pytest.fixture
def metrics() -> TrainingMetrics:
    m = TrainingMetrics("r1", "voc:15-1", 2)
    observe_everything(m)
    return m


def test_metric_names_are_unique_and_prefixed():
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    assert all(name.startswith("dkd_") for name in METRIC_NAMES)


def test_every_metric_name_is_exposed_with_the_run_labels(metrics):
    exposed = samples(metrics)
    names = {base_name(s.name) for s in exposed}
    # On CPU the GPU gauges are declared (HELP/TYPE) but have no sample.
    expected = set(METRIC_NAMES) - (set() if torch.cuda.is_initialized() else CUDA_ONLY)
    assert names == expected, "METRIC_NAMES and the registry disagree"
    for s in exposed:
        assert {k: s.labels[k] for k in CONST_LABELS} == RUN_LABELS, s


def test_iteration_values(metrics):
    assert value(metrics, "dkd_samples_per_second") == pytest.approx(48.0)
    for term, loss in LOSSES.items():
        assert value(metrics, "dkd_loss", term=term) == loss
    for group, lr in LRS.items():
        assert value(metrics, "dkd_learning_rate", group=group) == lr
    assert value(metrics, "dkd_epoch") == 1
    assert value(metrics, "dkd_iteration") == 50
    assert value(metrics, "dkd_iterations_total_planned") == 200
    assert value(metrics, "dkd_progress_ratio") == pytest.approx(0.25)
    assert value(metrics, "dkd_step_duration_seconds_count") == 1
    assert value(metrics, "dkd_step_duration_seconds_sum") == 0.5
    assert value(metrics, "dkd_step_duration_seconds_bucket", le="0.5") == 1
    assert value(metrics, "dkd_step_duration_seconds_bucket", le="0.25") == 0
    assert value(metrics, "dkd_dataloader_wait_seconds_sum") == pytest.approx(0.02)


def test_checkpoint_evaluation_and_info_values(metrics):
    assert value(metrics, "dkd_checkpoint_save_seconds_sum") == 1.5
    assert value(metrics, "dkd_checkpoint_bytes") == 123_456
    assert value(metrics, "dkd_checkpoints_saved_total") == 1
    metrics.observe_checkpoint(0.5, 1000)
    assert value(metrics, "dkd_checkpoints_saved_total") == 2
    assert value(metrics, "dkd_checkpoint_bytes") == 1000
    expected = {"old": 70.0, "new": 40.0, "all": 62.5, "hiou": 50.9}
    for group, miou in expected.items():
        assert value(metrics, "dkd_eval_miou", group=group) == miou
    assert value(metrics, "dkd_eval_pixel_accuracy") == 91.25
    assert value(metrics, "dkd_info", backbone="resnet101", world_size="2") == 1


def test_histograms_and_counter_start_at_zero_and_optional_series_start_unset():
    m = TrainingMetrics("r1", "voc:15-1", 2)
    assert value(m, "dkd_step_duration_seconds_count") == 0
    assert value(m, "dkd_checkpoints_saved_total") == 0
    names = {s.name for s in samples(m)}
    assert not names & {"dkd_loss", "dkd_learning_rate", "dkd_eval_miou", "dkd_progress_ratio"}


def test_gpu_memory_is_unset_on_cpu_and_set_under_cuda(monkeypatch):
    m = TrainingMetrics("r1", "voc:15-1", 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    m.observe_gpu_memory()  # CPU run (or CUDA never initialised): declared, no sample
    assert not CUDA_ONLY & {s.name for s in samples(m)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 5 * 2**30)
    m.observe_gpu_memory()
    assert value(m, "dkd_gpu_memory_allocated_bytes") == 3 * 2**30
    assert value(m, "dkd_gpu_memory_peak_bytes") == 5 * 2**30


def test_step_zero_evaluation_leaves_new_and_hiou_unset():
    m = TrainingMetrics("r1", "voc:15-1", 0)
    m.observe_evaluation(75.0, None, 75.0, None, 93.0)
    groups = {s.labels["group"] for s in samples(m) if s.name == "dkd_eval_miou"}
    assert groups == {"old", "all"}


def test_progress_is_unset_without_a_plan():
    m = TrainingMetrics("r1", "voc:15-1", 2)
    m.observe_iteration(
        iteration=3, epoch=0, seconds=0.1, samples=8, losses={"total": 1.0},
        learning_rates={}, data_wait_seconds=0.0,
    )  # fmt: skip
    assert "dkd_progress_ratio" not in {s.name for s in samples(m)}


@pytest.mark.parametrize(
    ("losses", "lrs", "match"),
    [
        ({"total": 1.0, "image_42": 0.1}, {}, "loss term"),
        ({"total": 1.0}, {"head": 0.1}, "learning-rate group"),
    ],
)
def test_unknown_label_values_are_rejected_before_recording(losses, lrs, match):
    m = TrainingMetrics("r1", "voc:15-1", 2)
    with pytest.raises(ValueError, match=match):
        m.observe_iteration(
            iteration=1, epoch=0, seconds=0.1, samples=8, losses=losses,
            learning_rates=lrs, data_wait_seconds=0.0,
        )  # fmt: skip
    assert value(m, "dkd_step_duration_seconds_count") == 0
    assert "dkd_loss" not in {s.name for s in samples(m)}


def test_label_sets_match_the_model_and_losses():
    assert {"mbce", "kd", "dkd_pos", "dkd_neg", "ac", "total"} == LOSS_TERMS
    assert {"backbone", "aspp", "classifiers", "old_classifiers", "new_classifier"} == LR_GROUPS


def test_disabled_instance_is_a_no_op_and_exposes_nothing():
    m = TrainingMetrics("r1", "voc:15-1", 2, enabled=False)
    observe_everything(m)
    m.observe_iteration(
        iteration=1, epoch=0, seconds=0.1, samples=8, losses={"bogus": 1.0},
        learning_rates={}, data_wait_seconds=0.0,
    )  # fmt: skip
    assert generate_latest(m.registry) == b""
    assert m.serve(port=0) == 0
    assert m.push("http://127.0.0.1:1") is False
    m.close()


def test_two_instances_in_one_process_do_not_collide():
    a = TrainingMetrics("run-a", "voc:15-1", 1)
    b = TrainingMetrics("run-b", "voc:15-1", 1)
    a.observe_checkpoint(1.0, 10)
    b.observe_checkpoint(1.0, 20)
    b.observe_checkpoint(1.0, 30)
    for m, run, saved, nbytes in ((a, "run-a", 1, 10), (b, "run-b", 2, 30)):
        mine = [s for s in samples(m) if s.name.startswith("dkd_checkpoint")]
        assert {s.labels["run"] for s in mine} == {run}
        by_name = {s.name: s.value for s in mine}
        assert by_name["dkd_checkpoints_saved_total"] == saved
        assert by_name["dkd_checkpoint_bytes"] == nbytes


def test_metrics_port_reads_the_environment(monkeypatch):
    monkeypatch.delenv("DKD_METRICS_PORT", raising=False)
    assert metrics_port() == DEFAULT_PORT == 9400
    monkeypatch.setenv("DKD_METRICS_PORT", "9555")
    assert metrics_port() == 9555
    monkeypatch.setenv("DKD_METRICS_PORT", "nine")
    with pytest.raises(ValueError, match="DKD_METRICS_PORT"):
        metrics_port()


# -- push to a fake Pushgateway ------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Records each request's method, path and body on the server; answers 200."""

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.server.requests.append((self.command, self.path, self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST = _record

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def pushgateway() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_push_sends_every_series_grouped_by_run_task_and_step(metrics, pushgateway):
    url = f"http://127.0.0.1:{pushgateway.server_port}"
    assert metrics.push(url, job="dkd") is True
    [(method, path, body)] = pushgateway.requests
    assert method == "PUT"
    # /metrics/job/<job>/<label>/<value>/...; values are URL-quoted (they hold no "/").
    prefix, _, key = path.partition("/metrics/job/dkd/")
    assert prefix == ""
    parts = [unquote(part) for part in key.split("/")]
    assert dict(zip(parts[::2], parts[1::2], strict=True)) == RUN_LABELS
    text = body.decode()
    assert 'dkd_eval_miou{ciss_step="2",group="hiou",run="r1",task="voc:15-1"} 50.9' in text
    pushed = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert {"dkd_eval_miou", "dkd_eval_pixel_accuracy", "dkd_loss"} <= pushed


def test_push_reads_the_url_from_the_environment(metrics, pushgateway, monkeypatch):
    monkeypatch.setenv("PUSHGATEWAY_URL", f"127.0.0.1:{pushgateway.server_port}")
    assert metrics.push() is True
    assert len(pushgateway.requests) == 1


def test_push_without_url_returns_false(metrics, monkeypatch):
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    assert metrics.push() is False


def test_push_to_a_closed_port_returns_false_and_warns(metrics, caplog):
    with socket.socket() as s:  # a port that was free a moment ago, and is closed now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level("WARNING", logger="dkd_core.metrics"):
        assert metrics.push(f"http://127.0.0.1:{port}", timeout=2) is False
    assert "could not push metrics" in caplog.text
