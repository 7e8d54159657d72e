"""The metrics endpoint over real HTTP: scrape, parse, then free the port."""

from __future__ import annotations

import socket
import threading
import time
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
    m = TrainingMetrics("http-run", "kfp-7", "voc:15-5s", 3)
    port = m.serve(0, "127.0.0.1")
    assert port > 0
    try:
        m.set_plan(100)
        m.observe_iteration(
            iteration=10, epoch=0, samples=16, learning_rates={"backbone": 0.001},
            data_wait_seconds=0.005, compute_seconds=0.245, losses={"mbce": 0.75, "total": 1.5},
        )  # fmt: skip
        m.observe_evaluation(60.0, None, 60.0, None, 90.0)
        values = scrape(port)
    finally:
        m.close()

    run = (("ciss_step", "3"), ("run", "http-run"), ("run_id", "kfp-7"), ("task", "voc:15-5s"))

    def at(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted((*run, *labels.items()))))]

    assert at("dkd_iteration") == 10
    assert at("dkd_progress_ratio") == pytest.approx(0.1)
    assert at("dkd_samples_total") == 16
    assert at("dkd_loss", term="mbce") == 0.75
    assert at("dkd_loss", term="total") == 1.5
    assert at("dkd_learning_rate", group="backbone") == 0.001
    assert at("dkd_iteration_duration_seconds_count") == 1
    assert at("dkd_eval_miou_ratio", group="all") == 0.6  # served live, not only pushed
    assert ("dkd_eval_miou_ratio", tuple(sorted((*run, ("group", "new"))))) not in values

    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    with socket.socket() as s:  # nothing listens any more: the port can be bound again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT only
        s.bind(("127.0.0.1", port))
        s.listen()
    m.close()  # a second close is harmless


def test_a_scrape_sees_every_series_of_one_iteration():
    """Observations and scrapes share a lock: iteration and learning rate always agree."""
    m = TrainingMetrics("http-run", "kfp-7", "voc:15-5s", 1)
    port = m.serve(0, "127.0.0.1")
    stop = threading.Event()

    def train() -> None:
        iteration = 0
        while not stop.is_set():
            iteration += 1
            m.observe_iteration(
                iteration=iteration, epoch=0, samples=1, learning_rates={"backbone": iteration},
                data_wait_seconds=0.0, compute_seconds=0.0,
            )  # fmt: skip

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        for _ in range(30):
            values = {name: v for (name, labels), v in scrape(port).items() if name.startswith(
                ("dkd_iteration", "dkd_learning_rate", "dkd_samples_total"))}  # fmt: skip
            if "dkd_iteration" in values:
                assert values["dkd_learning_rate"] == values["dkd_iteration"]
                assert values["dkd_samples_total"] == values["dkd_iteration"]
    finally:
        stop.set()
        trainer.join()
        m.close()


def test_wait_for_scrape_holds_until_the_final_figures_were_read():
    m = TrainingMetrics("http-run", "kfp-7", "voc:15-5s", 1)
    port = m.serve(0, "127.0.0.1")
    try:
        scrape(port)
        scrape(port)  # someone watches, at an interval of a few milliseconds (waits 1 s)
        m.finish(iterations=5, checkpoint_bytes=10)
        assert m.wait_for_scrape(max_seconds=0.5) is False  # no scrape since: gives up
        seen = []
        reader = threading.Timer(0.2, lambda: seen.append(scrape(port)))
        reader.start()
        started = time.monotonic()
        assert m.wait_for_scrape(max_seconds=30) is True
        reader.join()
        assert time.monotonic() - started < 30
        [values] = seen
        assert any(name == "dkd_final_iterations" and v == 5 for (name, _), v in values.items())
    finally:
        m.close()


def test_serves_on_an_ipv6_address_too():
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    m = TrainingMetrics("http-run", "kfp-7", "voc:15-5s", 1)
    try:
        port = m.serve(0, "::1")
    except OSError as e:
        m.close()
        pytest.skip(f"cannot bind ::1 here ({e})")
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=5) as response:
            assert b"dkd_samples_total" in response.read()
        with pytest.raises(RuntimeError, match="already served"):
            m.serve(0, "::1")
    finally:
        m.close()
