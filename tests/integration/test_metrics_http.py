"""The metrics endpoint over real HTTP: scrape, parse, then free the port."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dkd_core.metrics import TrainingMetrics

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`/metrics` as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_serve_scrape_and_close_frees_the_port():
    m = TrainingMetrics("http-run", "voc:15-5s", 3)
    port = m.serve(port=0, addr="127.0.0.1")
    assert port > 0
    try:
        m.set_plan(100)
        m.observe_iteration(
            iteration=10, epoch=0, seconds=0.25, samples=16,
            losses={"mbce": 0.75, "total": 1.5}, learning_rates={"backbone": 0.001},
            data_wait_seconds=0.005,
        )  # fmt: skip
        m.observe_evaluation(60.0, None, 60.0, None, 90.0)
        values = scrape(port)
    finally:
        m.close()

    run = (("ciss_step", "3"), ("run", "http-run"), ("task", "voc:15-5s"))

    def at(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted((*run, *labels.items()))))]

    assert at("dkd_iteration") == 10
    assert at("dkd_progress_ratio") == pytest.approx(0.1)
    assert at("dkd_samples_per_second") == pytest.approx(64.0)
    assert at("dkd_loss", term="mbce") == 0.75
    assert at("dkd_loss", term="total") == 1.5
    assert at("dkd_learning_rate", group="backbone") == 0.001
    assert at("dkd_step_duration_seconds_count") == 1
    assert at("dkd_eval_miou", group="all") == 60.0
    assert ("dkd_eval_miou", tuple(sorted((*run, ("group", "new"))))) not in values

    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    with socket.socket() as s:  # nothing listens any more: the port can be bound again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT only
        s.bind(("127.0.0.1", port))
        s.listen()
    m.close()  # a second close is harmless
