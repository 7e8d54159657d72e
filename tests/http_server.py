"""A local HTTP file server on 127.0.0.1 for download tests.

Serves `files` (URL path -> bytes) with `Range: bytes=N-` support, records every
request's path and Range header, and can misbehave on purpose: ignore ranges (answer
200 with the whole file), or cut the connection after `cut_after` bytes of a body.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    honour_ranges: bool = True
    cut_after: int | None = None  # bytes of a body sent before the connection drops
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"


def _handler(server: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0].lstrip("/")
            wanted = self.headers.get("Range")
            server.requests.append((path, wanted))
            data = server.files.get(path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
            if match and server.honour_ranges:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if server.cut_after is not None and len(body) > server.cut_after:
                self.wfile.write(body[: server.cut_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up early (a test that stops reading) is not an error here."""


@contextlib.contextmanager
def serve_files(files: dict[str, bytes] | None = None) -> Iterator[FileServer]:
    """A running `FileServer` on a free port of 127.0.0.1, stopped at the end."""
    state = FileServer(files=dict(files or {}))
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (for a refused connection)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
