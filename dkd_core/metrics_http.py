"""`/metrics` over HTTP for one registry: consistent snapshots, and knowing when Prometheus read.

`ScrapeServer` serves a `CollectorRegistry` from a daemon thread, the way
prometheus_client's `start_http_server` does, with two additions that
`metrics.TrainingMetrics` needs:

- every scrape holds a lock that the writer also takes, so one scrape never
  shows half of an update (an iteration with the previous learning rate);
- it notes when scrapes happen, so a finishing step can wait until Prometheus
  has read its final figures before the process exits (`wait_for_scrape_after`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger("dkd_core.metrics")

# How long to wait for the next scrape, in observed scrape intervals, and its bounds.
SCRAPE_WAIT_INTERVALS = 2.5
SCRAPE_WAIT_MIN_SECONDS = 1.0
SCRAPE_WAIT_MAX_SECONDS = 120.0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


class ScrapeServer:
    """Serves `registry` under `lock` (the lock its writer holds while updating it)."""

    def __init__(self, registry: CollectorRegistry, lock: threading.Lock) -> None:
        self._registry = registry
        self._lock = lock
        self._scraped = threading.Condition(lock)
        self._scrape_times: list[float] = []  # time.monotonic() of the last scrapes
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._server is not None

    def start(self, port: int, addr: str) -> int:
        """Listen on `addr` (IPv4 or IPv6, "::" for both) and `port` (0: a free one); the port."""
        if self._server is not None:
            raise RuntimeError(f"metrics already served on port {self._server.server_port}")

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

        self._server = make_server(addr, port, self._app(), Server, _QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self._server.server_port

    def _app(self) -> Callable:
        metrics_app = make_wsgi_app(self._registry)

        def app(environ: dict, start_response: Callable) -> Any:
            with self._lock:
                body = metrics_app(environ, start_response)
                if environ.get("REQUEST_METHOD") == "GET":
                    self._scrape_times = [*self._scrape_times[-9:], time.monotonic()]
                    self._scraped.notify_all()
            return body

        return app

    def wait_for_scrape_after(
        self, moment: float, max_seconds: float = SCRAPE_WAIT_MAX_SECONDS
    ) -> bool:
        """Wait until a scrape after `moment` (time.monotonic()); True once there was one.

        Returns False at once when nothing ever scraped (nobody is watching);
        else waits up to 2.5 of the observed scrape intervals (at least 1 s, at
        most `max_seconds`).
        """
        with self._lock:
            times = self._scrape_times
            if self._server is None or not times:
                return False
            interval = times[-1] - times[-2] if len(times) > 1 else max_seconds
            waited = min(
                max_seconds, max(SCRAPE_WAIT_MIN_SECONDS, SCRAPE_WAIT_INTERVALS * interval)
            )
            deadline = time.monotonic() + waited
            while self._scrape_times[-1] <= moment:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("the final metrics were not scraped within %.0f s", waited)
                    return False
                self._scraped.wait(left)
            return True

    def close(self) -> None:
        """Stop serving and free the port. Safe to call twice."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
