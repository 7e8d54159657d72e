"""An S3 server for tests: moto's in-process server, or a real one named by the environment.

Tests import the fixture into their module (there is no shared conftest for it):

    from tests.s3_server import s3

    FIXTURES = (s3,)  # keeps linters from calling the import unused or shadowed

`s3` (or its long name `s3_endpoint`; each works on its own) gives each test
a fresh, uniquely named bucket and points the storage environment variables
(`S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) at the server.

By default the server is moto's `ThreadedMotoServer` on 127.0.0.1 and a free
port, started once per session. It can be stopped and started again on the same
port to simulate an outage; moto keeps its state in module-level backends of
this process, so buckets and objects survive the restart.

With `DKD_TEST_S3_ENDPOINT` (and `DKD_TEST_S3_ACCESS_KEY`,
`DKD_TEST_S3_SECRET_KEY`) set, the tests run against that server instead,
e.g. a real MinIO; tests that need to stop the server are skipped there.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject

ENV_ENDPOINT = "DKD_TEST_S3_ENDPOINT"
ENV_ACCESS_KEY = "DKD_TEST_S3_ACCESS_KEY"
ENV_SECRET_KEY = "DKD_TEST_S3_SECRET_KEY"
MOTO_KEY = "testing"

# Variables of dkd_core.storage that must not leak in from the developer's shell.
_STORAGE_VARS = (
    "S3_ENDPOINT",
    "MINIO_ENDPOINT",
    "S3_SECURE",
    "MINIO_SECURE",
    "S3_REGION",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "S3_RETRY_SECONDS",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's S3 server in a thread of this process, restartable on the same port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._server = None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self._server is None:
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            server.start()
            self._server = server

    def stop(self) -> None:
        """Stop serving and close the listening socket, so that connections are refused."""
        if self._server is not None:
            self._server.stop()
            # ThreadedMotoServer.stop() leaves the socket listening (connections would
            # hang until the read timeout instead of being refused): close it.
            self._server._server.server_close()
            self._server = None


@dataclass
class S3Endpoint:
    """One test's view of the S3 server: its URL, its own bucket and the keys."""

    endpoint: str  # e.g. http://127.0.0.1:41234
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    server: MotoServer | None = field(default=None, repr=False)

    @property
    def can_restart(self) -> bool:
        """Whether `stop()`/`start()` work (moto, not a real server)."""
        return self.server is not None

    def uri(self, key: str = "") -> str:
        """`s3://<bucket>/<key>`."""
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Minio:
        """A plain minio client for setting up test data behind the store's back."""
        return _client(self.endpoint, access_key or self.access_key, secret_key or self.secret_key)

    def stop(self) -> None:
        """Take the server down (moto only): connections are refused until `start()`."""
        if self.server is None:
            pytest.skip(f"{ENV_ENDPOINT} names a real server, which the tests cannot stop")
        self.server.stop()

    def start(self) -> None:
        """Bring the server back on the same port, with its buckets and objects."""
        if self.server is None:
            pytest.skip(f"{ENV_ENDPOINT} names a real server, which the tests cannot restart")
        self.server.start()

    @contextlib.contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Within the block the server rejects unknown keys.

        moto accepts any key unless told otherwise; a real server always checks.
        """
        if self.server is None:
            yield
            return
        from moto import settings

        previous = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        try:
            yield
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = previous


def _client(endpoint: str, access_key: str, secret_key: str) -> Minio:
    parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
    http = urllib3.PoolManager(
        retries=urllib3.Retry(total=0), timeout=urllib3.Timeout(connect=5, read=60)
    )
    return Minio(
        parts.netloc,
        access_key=access_key,
        secret_key=secret_key,
        secure=parts.scheme == "https",
        http_client=http,
    )


_moto: MotoServer | None = None
_moto_lock = threading.Lock()


def session_server() -> MotoServer | None:
    """The process's moto server, started on first use; None with `DKD_TEST_S3_ENDPOINT`.

    One server serves the whole test session (every test gets its own bucket);
    it is a daemon thread and stops with the process.
    """
    global _moto
    if os.environ.get(ENV_ENDPOINT):
        return None
    with _moto_lock:
        if _moto is None:
            _moto = MotoServer()
            atexit.register(_moto.stop)
        _moto.start()  # also restarts it if a test left it stopped
        return _moto


@pytest.fixture(scope="session")
def s3_server() -> MotoServer | None:
    """The session's moto server, or None when `DKD_TEST_S3_ENDPOINT` names a real one."""
    return session_server()


def _endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Endpoint]:
    server = session_server()
    if server is None:
        endpoint = os.environ[ENV_ENDPOINT]
        access_key = os.environ.get(ENV_ACCESS_KEY, "")
        secret_key = os.environ.get(ENV_SECRET_KEY, "")
        if not (access_key and secret_key):
            pytest.fail(f"{ENV_ENDPOINT} is set: also set {ENV_ACCESS_KEY} and {ENV_SECRET_KEY}")
    else:
        endpoint = f"http://127.0.0.1:{server.port}"
        access_key = secret_key = MOTO_KEY

    for name in _STORAGE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("S3_RETRY_SECONDS", "10")  # a broken test fails in seconds, not minutes

    info = S3Endpoint(endpoint, f"dkd-test-{uuid.uuid4().hex[:12]}", access_key, secret_key)
    info.server = server
    client = info.client()
    client.make_bucket(info.bucket)
    try:
        yield info
    finally:
        if server is not None:
            server.start()  # the test may have stopped it
        objects = client.list_objects(info.bucket, recursive=True)
        errors = list(
            client.remove_objects(info.bucket, (DeleteObject(o.object_name) for o in objects))
        )
        if not errors:
            client.remove_bucket(info.bucket)


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Endpoint]:
    """A fresh bucket on the test S3 server, with the storage environment pointing at it."""
    yield from _endpoint(monkeypatch)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Endpoint]:
    """Short name of `s3_endpoint` (importable on its own)."""
    yield from _endpoint(monkeypatch)
