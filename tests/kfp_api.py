"""A small stand-in for the Kubeflow Pipelines v2beta1 REST API, recording every request.

Answers what `kfp.Client` (2.17) asks while `pipelines.submit` uploads a pipeline and
starts a run: healthz, list/upload pipelines and versions, list/create experiments,
create a run. It holds what was created, so a second submit finds the pipeline it
uploaded in the namespace it was uploaded to, as the real server does.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or the raw bytes of an upload

    def __repr__(self) -> str:
        return f"{self.method} {self.path} {self.query}"


@dataclass
class FakeKFP:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    pipelines: list[dict[str, Any]] = field(default_factory=list)  # id, display_name, namespace
    experiments: list[dict[str, Any]] = field(default_factory=list)

    def calls(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    # -- the API --------------------------------------------------------------------

    def answer(self, r: Request) -> tuple[int, Any]:
        if r.path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if r.method == "GET" and r.path == f"{API}/pipelines":
            name = _filter_value(r.query.get("filter"))
            found = [
                p
                for p in self.pipelines
                if p["display_name"] == name and p["namespace"] == r.query.get("namespace", "")
            ]
            return 200, {"pipelines": found} if found else {}
        if r.method == "POST" and r.path == f"{API}/pipelines/upload":
            pipeline = {
                "pipeline_id": f"p-{len(self.pipelines) + 1}",
                "display_name": r.query["name"],
                "namespace": r.query.get("namespace", ""),
            }
            self.pipelines.append(pipeline)
            return 200, pipeline
        if r.method == "POST" and r.path == f"{API}/pipelines/upload_version":
            return 200, {"pipeline_version_id": "v-next", "pipeline_id": r.query["pipelineid"]}
        if r.method == "GET" and (m := re.fullmatch(rf"{API}/pipelines/([^/]+)/versions", r.path)):
            return 200, {"pipeline_versions": [{"pipeline_version_id": f"v-of-{m.group(1)}"}]}
        if r.method == "GET" and r.path == f"{API}/experiments":
            name = _filter_value(r.query.get("filter"))
            found = [
                e
                for e in self.experiments
                if e["display_name"] == name and e["namespace"] == r.query.get("namespace", "")
            ]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if r.method == "POST" and r.path == f"{API}/experiments":
            experiment = {**r.body, "experiment_id": f"e-{len(self.experiments) + 1}"}
            experiment.setdefault("namespace", "")
            self.experiments.append(experiment)
            return 200, experiment
        if r.method == "POST" and r.path == f"{API}/runs":
            return 200, {**r.body, "run_id": "r-1"}
        return 404, {"error": f"not implemented here: {r.method} {r.path}", "code": 5}


def _filter_value(raw: str | None) -> str | None:
    """The display_name an EQUALS filter asks for."""
    if not raw:
        return None
    predicates = json.loads(raw).get("predicates", [])
    return next(
        (
            p.get("stringValue", p.get("string_value"))
            for p in predicates
            if "display_name" in p["key"]
        ),
        None,
    )


@contextmanager
def fake_kfp() -> Iterator[FakeKFP]:
    state = FakeKFP()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            content_type = self.headers.get("Content-Type", "")
            body: Any = raw
            if raw and "json" in content_type:
                body = json.loads(raw)
            request = Request(self.command, parts.path, query, body)
            state.requests.append(request)
            status, answer = state.answer(request)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
