"""Prometheus training metrics: names, values, labels, bounded labels, no-op mode, push, run id."""

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

from dkd_core.errors import DKDError
from dkd_core.metrics import (
    CONST_LABELS,
    DEFAULT_PORT,
    FINAL_METRIC_NAMES,
    LOSS_TERMS,
    LR_GROUPS,
    METRIC_NAMES,
    TrainingMetrics,
    metrics_port,
    resolve_run_id,
)

RUN_LABELS = {"run": "r1", "run_id": "kfp-1", "task": "voc:15-1", "ciss_step": "2"}
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


def observe_iteration(m: TrainingMetrics, iteration: int = 50, **changes) -> None:
    kwargs = dict(
        iteration=iteration, epoch=1, samples=24, learning_rates=LRS,
        data_wait_seconds=0.125, compute_seconds=0.375,
    )  # fmt: skip
    m.observe_iteration(**{**kwargs, **changes})


def observe_everything(m: TrainingMetrics) -> None:
    m.set_info(backbone="resnet101", world_size=2)
    m.set_plan(200)
    observe_iteration(m, losses=LOSSES)
    m.observe_checkpoint(1.5, 123_456)
    m.observe_gpu_memory()
    m.observe_evaluation(70.0, 40.0, 62.5, 50.9, 91.25)
    m.finish(iterations=200, checkpoint_bytes=654_321)


def new(run: str = "r1", step: int = 2, **kwargs) -> TrainingMetrics:
    return TrainingMetrics(run, "kfp-1", "voc:15-1", step, **kwargs)


@pytest.fixture
def metrics() -> TrainingMetrics:
    m = new()
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
    assert value(metrics, "dkd_samples_total") == 24
    observe_iteration(metrics, 51)
    assert value(metrics, "dkd_samples_total") == 48  # a counter: PromQL's rate() gives samples/s
    for term, loss in LOSSES.items():
        assert value(metrics, "dkd_loss", term=term) == loss
    for group, lr in LRS.items():
        assert value(metrics, "dkd_learning_rate", group=group) == lr
    assert value(metrics, "dkd_epoch") == 1
    assert value(metrics, "dkd_iteration") == 51
    assert value(metrics, "dkd_iterations_planned") == 200
    assert value(metrics, "dkd_progress_ratio") == pytest.approx(51 / 200)
    # Each phase in its own histogram; the iteration is data wait + compute.
    assert value(metrics, "dkd_iteration_duration_seconds_count") == 2
    assert value(metrics, "dkd_iteration_duration_seconds_sum") == 1.0
    assert value(metrics, "dkd_iteration_duration_seconds_bucket", le="0.5") == 2
    assert value(metrics, "dkd_iteration_duration_seconds_bucket", le="0.25") == 0
    assert value(metrics, "dkd_dataloader_wait_seconds_sum") == 0.25
    assert value(metrics, "dkd_compute_seconds_sum") == 0.75
    assert value(metrics, "dkd_compute_seconds_bucket", le="0.25") == 0


def test_losses_change_only_when_observed(metrics):
    observe_iteration(metrics, 51)
    assert value(metrics, "dkd_loss", term="total") == 1.0
    observe_iteration(metrics, 52, losses={"mbce": 0.25, "total": 0.5})
    assert value(metrics, "dkd_loss", term="total") == 0.5
    with pytest.raises(ValueError, match="loss term"):
        observe_iteration(metrics, 53, losses={"total": 1.0, "image_42": 0.1})
    assert value(metrics, "dkd_loss", term="total") == 0.5
    assert value(metrics, "dkd_iteration") == 52  # nothing of the rejected call was recorded


def test_checkpoint_buckets_resolve_fast_saves():
    m = new()
    m.observe_checkpoint(0.02, 10)
    assert value(m, "dkd_checkpoint_save_seconds_bucket", le="0.025") == 1
    assert value(m, "dkd_checkpoint_save_seconds_bucket", le="0.01") == 0


def test_no_gauge_is_named_like_a_counter(metrics):
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name


def test_checkpoint_evaluation_final_and_info_values(metrics):
    assert value(metrics, "dkd_checkpoint_save_seconds_sum") == 1.5
    assert value(metrics, "dkd_checkpoint_bytes") == 123_456
    assert value(metrics, "dkd_checkpoints_saved_total") == 1
    metrics.observe_checkpoint(0.5, 1000)
    assert value(metrics, "dkd_checkpoints_saved_total") == 2
    assert value(metrics, "dkd_checkpoint_bytes") == 1000
    expected = {"old": 0.70, "new": 0.40, "all": 0.625, "hiou": 0.509}  # ratios, not percent
    for group, miou in expected.items():
        assert value(metrics, "dkd_eval_miou_ratio", group=group) == pytest.approx(miou)
    assert value(metrics, "dkd_eval_pixel_accuracy_ratio") == 0.9125
    assert value(metrics, "dkd_info", backbone="resnet101", world_size="2") == 1
    assert value(metrics, "dkd_final_iterations") == 200
    assert value(metrics, "dkd_final_checkpoint_bytes") == 654_321
    for term, loss in LOSSES.items():
        assert value(metrics, "dkd_final_loss", term=term) == loss


def test_the_final_registry_holds_the_final_figures_only(metrics):
    text = generate_latest(metrics.final_registry).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == set(FINAL_METRIC_NAMES)
    assert set(FINAL_METRIC_NAMES) < set(METRIC_NAMES)


def test_histograms_and_counter_start_at_zero_and_optional_series_start_unset():
    m = new()
    assert value(m, "dkd_iteration_duration_seconds_count") == 0
    assert value(m, "dkd_samples_total") == 0
    assert value(m, "dkd_checkpoints_saved_total") == 0
    names = {s.name for s in samples(m)}
    assert not names & {"dkd_loss", "dkd_learning_rate", "dkd_progress_ratio", *FINAL_METRIC_NAMES}


def test_gpu_memory_is_unset_on_cpu_and_set_under_cuda(monkeypatch):
    m = new()
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
    m = new(step=0)
    m.observe_evaluation(75.0, None, 75.0, None, 93.0)
    groups = {s.labels["group"] for s in samples(m) if s.name == "dkd_eval_miou_ratio"}
    assert groups == {"old", "all"}


def test_progress_is_unset_without_a_plan():
    m = new()
    observe_iteration(m, 3, learning_rates={})
    assert "dkd_progress_ratio" not in {s.name for s in samples(m)}


def test_unknown_learning_rate_groups_are_rejected_before_recording():
    m = new()
    with pytest.raises(ValueError, match="learning-rate group"):
        observe_iteration(m, 1, learning_rates={"head": 0.1})
    assert value(m, "dkd_iteration_duration_seconds_count") == 0
    assert "dkd_learning_rate" not in {s.name for s in samples(m)}


def test_label_sets_match_the_model_and_losses():
    assert {"mbce", "kd", "dkd_pos", "dkd_neg", "ac", "total"} == LOSS_TERMS
    assert {"backbone", "aspp", "classifiers", "old_classifiers", "new_classifier"} == LR_GROUPS


def test_disabled_instance_is_a_no_op_and_exposes_nothing():
    m = new(enabled=False)
    observe_everything(m)
    observe_iteration(m, losses={"bogus": 1.0})
    assert generate_latest(m.registry) == b""
    assert generate_latest(m.final_registry) == b""
    assert m.serve(0, "127.0.0.1") == 0
    assert m.push("http://127.0.0.1:1") is False
    assert m.delete_pushed("http://127.0.0.1:1") is False
    assert m.wait_for_scrape() is False
    m.close()


def test_two_instances_in_one_process_do_not_collide():
    a = new("run-a", 1)
    b = new("run-b", 1)
    a.observe_checkpoint(1.0, 10)
    b.observe_checkpoint(1.0, 20)
    b.observe_checkpoint(1.0, 30)
    for m, run, saved, nbytes in ((a, "run-a", 1, 10), (b, "run-b", 2, 30)):
        mine = [s for s in samples(m) if s.name.startswith("dkd_checkpoint")]
        assert {s.labels["run"] for s in mine} == {run}
        by_name = {s.name: s.value for s in mine}
        assert by_name["dkd_checkpoints_saved_total"] == saved
        assert by_name["dkd_checkpoint_bytes"] == nbytes


def test_run_id_is_the_environment_s_else_the_recorded_one_else_new(monkeypatch):
    monkeypatch.setenv("DKD_RUN_ID", "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b")
    assert resolve_run_id("old") == "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
    monkeypatch.delenv("DKD_RUN_ID")
    assert resolve_run_id("old") == "old"
    first, second = resolve_run_id(None), resolve_run_id(None)
    assert first != second and len(first) == 12
    monkeypatch.setenv("DKD_RUN_ID", "a/b")
    with pytest.raises(DKDError, match=r"DKD_RUN_ID: expected 1 to 128 letters.*got 'a/b'"):
        resolve_run_id(None)


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

    do_PUT = do_POST = do_DELETE = _record

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


def grouping(path: str) -> dict[str, str]:
    """The grouping key of a /metrics/job/dkd/<label>/<value>/... path (values URL-quoted)."""
    prefix, _, key = path.partition("/metrics/job/dkd/")
    assert prefix == ""
    parts = [unquote(part) for part in key.split("/")]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def test_push_replaces_the_step_group_with_the_final_figures_only(
    metrics, pushgateway, monkeypatch
):
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    url = f"http://127.0.0.1:{pushgateway.server_port}"
    assert metrics.push(url) is True
    [(method, path, body)] = pushgateway.requests
    assert method == "PUT"  # PUT replaces every series of the group
    assert grouping(path) == RUN_LABELS
    text = body.decode()
    assert (
        'dkd_eval_miou_ratio{ciss_step="2",group="all",run="r1",run_id="kfp-1",task="voc:15-1"}'
        " 0.625" in text
    )
    pushed = {f.name for f in text_string_to_metric_families(text)}
    assert pushed == set(FINAL_METRIC_NAMES)  # no live gauge: a finished step never looks alive


def test_delete_pushed_deletes_the_step_group_with_its_namespace(pushgateway, monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    url = f"http://127.0.0.1:{pushgateway.server_port}"
    assert new().delete_pushed(url) is True
    [(method, path, _)] = pushgateway.requests
    assert method == "DELETE"
    assert grouping(path) == {"namespace": "team-a", **RUN_LABELS}


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


def test_wait_for_scrape_returns_at_once_when_nobody_scrapes():
    m = new()
    m.serve(0, "127.0.0.1")
    try:
        m.finish(iterations=1, checkpoint_bytes=1)
        assert m.wait_for_scrape(max_seconds=60) is False  # never scraped: nobody is watching
    finally:
        m.close()
