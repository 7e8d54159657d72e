"""`S3Store`: artifacts as S3 objects through the minio SDK, with retries.

Transient failures (connection refused or reset, timeouts, HTTP 5xx,
SlowDown ...) are retried with exponential backoff for at most
`S3_RETRY_SECONDS`; permanent failures (a missing bucket, rejected
credentials, an unresolvable endpoint) raise a `DKDError` at once that names
the endpoint, bucket and key and says what to fix. The minio client's own
urllib3 retries are switched off so that this loop is the only one retrying.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from dkd_core.errors import DKDError
from dkd_core.storage.s3_config import CREDENTIAL_VARS, ENDPOINT_EXAMPLE, S3Config
from dkd_core.storage.store import (
    MiB,
    ObjectInfo,
    ObjectNotFoundError,
    Store,
    atomic_output,
    copy_stream,
)
from dkd_core.storage.uris import S3_SCHEME, folder_key, split_s3_uri

log = logging.getLogger("dkd_core.storage")

T = TypeVar("T")

PART_SIZE = 64 * MiB  # multipart part size for uploads
POOL_CONNECTIONS = 16  # kept open per store: twice the parallel downloads of a dataset sync
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0

# S3 error codes worth another try: the server is overloaded or briefly unhealthy.
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "OperationAborted",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "SlowDownRead",
        "SlowDownWrite",
        "XMinioServerNotInitialized",
    }
)
CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
)

# Indirections so that tests can replace the clock.
_sleep = time.sleep
_monotonic = time.monotonic


def _s3_http_client() -> urllib3.PoolManager:
    """urllib3 pool without retries of its own (our loop retries) and with bounded timeouts."""
    return urllib3.PoolManager(
        retries=urllib3.Retry(total=0),
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
        maxsize=POOL_CONNECTIONS,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


def _is_transient(exc: BaseException) -> bool:
    """Whether another try may succeed: network trouble, timeouts, 5xx, throttling."""
    if isinstance(exc, DKDError):
        return False
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return exc.reason is None or _is_transient(exc.reason)
    if isinstance(exc, urllib3.exceptions.NameResolutionError):
        reason = getattr(exc, "_reason", None)
        return getattr(reason, "errno", None) == socket.EAI_AGAIN  # DNS briefly unavailable
    if isinstance(
        exc, urllib3.exceptions.SSLError | urllib3.exceptions.LocationValueError
    ):  # misconfiguration: retrying cannot help
        return False
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, S3Error):
        status = getattr(getattr(exc, "response", None), "status", None) or 0
        return exc.code in TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, InvalidResponseError):  # e.g. a proxy's HTML error page
        code = getattr(exc, "_code", 0) or 0
        return code >= 500 or code == 429
    return False


def _describe(exc: BaseException) -> str:
    """A one-line account of a client error (never holds credentials)."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return _describe(exc.reason)
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class S3Store(Store):
    """S3 objects through the minio SDK, with retries and errors that say what to fix."""

    def __init__(self, config: S3Config, client: Minio | None = None):
        self.config = config
        if client is None:
            try:
                client = Minio(
                    config.endpoint,
                    access_key=config.access_key,
                    secret_key=config.secret_key,
                    secure=config.secure,
                    region=config.region,
                    http_client=_s3_http_client(),
                )
            except ValueError as e:
                raise DKDError(
                    f"{config.endpoint_var}={config.url}: {e}; set {config.endpoint_var} to "
                    f"the S3 server's address, e.g. {ENDPOINT_EXAMPLE}"
                ) from e
        self.client = client
        self._known_buckets: set[str] = set()

    def __repr__(self) -> str:
        return f"S3Store({self.config.url})"

    # ----------------------------------------------------------------- retries

    def _call(self, op: str, bucket: str, key: str, attempt: Callable[[], T]) -> T:
        """Run `attempt`, retrying transient failures with exponential backoff.

        Gives up after `config.retry_seconds` with a `DKDError` naming the
        endpoint, bucket, key and the last error; permanent failures raise at once.
        """
        uri = f"{S3_SCHEME}{bucket}/{key}"
        start = _monotonic()
        delay = FIRST_BACKOFF
        tries = 0
        while True:
            tries += 1
            try:
                return attempt()
            except DKDError:
                raise
            except Exception as exc:
                if not _is_transient(exc):
                    raise self._permanent_error(op, bucket, key, exc) from exc
                left = self.config.retry_seconds - (_monotonic() - start)
                if left <= 0:
                    raise DKDError(
                        f"{op} {uri} at {self.config.url} still failing after {tries} "
                        f"tries in {_monotonic() - start:.1f} s "
                        f"(S3_RETRY_SECONDS={self.config.retry_seconds:g}); last error: "
                        f"{_describe(exc)}. Check that the S3 server is up and reachable "
                        f"from here, and that {self.config.endpoint_var} is right"
                    ) from exc
                wait_s = min(delay, left)
                log.warning(
                    "%s %s at %s failed (%s); retrying in %.1f s (%.0f s left)",
                    op,
                    uri,
                    self.config.url,
                    _describe(exc),
                    wait_s,
                    left,
                )
                _sleep(wait_s)
                delay = min(delay * 2, MAX_BACKOFF)

    def _permanent_error(self, op: str, bucket: str, key: str, exc: BaseException) -> DKDError:
        """The specific `DKDError` for a failure that retrying cannot fix."""
        endpoint, var = self.config.url, self.config.endpoint_var
        uri = f"{S3_SCHEME}{bucket}/{key}"
        code = getattr(exc, "code", None) if isinstance(exc, S3Error) else None
        reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        if code == "NoSuchBucket":
            return self._no_bucket_error(op, bucket, key)
        if code in CREDENTIAL_CODES:
            hint = (
                f" and that this key may access bucket {bucket!r}" if code == "AccessDenied" else ""
            )
            return DKDError(
                f"{op} {uri}: credentials rejected by {endpoint} ({code}): check "
                f"{CREDENTIAL_VARS}{hint}"
            )
        if code == "NoSuchKey":
            return ObjectNotFoundError(f"{uri} does not exist at {endpoint}")
        if isinstance(reason, urllib3.exceptions.NameResolutionError):
            return DKDError(
                f"{op} {uri}: cannot resolve the host of {var}={endpoint}: set {var} to the "
                f"S3 server's address, e.g. {ENDPOINT_EXAMPLE}"
            )
        if isinstance(reason, urllib3.exceptions.SSLError):
            return DKDError(
                f"{op} {uri}: TLS with {endpoint} failed ({reason}): if the server speaks "
                f"plain HTTP use an http:// {var} (or S3_SECURE=false)"
            )
        if isinstance(reason, urllib3.exceptions.LocationValueError):
            return DKDError(
                f"{var}={endpoint} is not a valid URL ({reason}): e.g. {ENDPOINT_EXAMPLE}"
            )
        if isinstance(exc, InvalidResponseError):
            return DKDError(
                f"{op} {uri}: {endpoint} answered with a non-S3 response ({exc}); is {var} "
                "the S3 API port and its scheme (http/https) right?"
            )
        if isinstance(exc, ValueError):  # the SDK's checks of bucket and object names
            return DKDError(
                f"{op} {uri} at {endpoint}: {exc} (bucket names are 3-63 lowercase letters, "
                "digits, dots and hyphens)"
            )
        if isinstance(exc, OSError):
            return DKDError(f"{op} {uri}: local file error: {exc}")
        return DKDError(f"{op} {uri} at {endpoint} failed: {_describe(exc)}")

    def _no_bucket_error(self, op: str, bucket: str, key: str) -> DKDError:
        return DKDError(
            f"{op} {S3_SCHEME}{bucket}/{key}: bucket {bucket!r} does not exist at "
            f"{self.config.url}: create it, e.g. with the k8s bucket job or "
            f"`mc mb <alias>/{bucket}`"
        )

    # ------------------------------------------------------------------- helpers

    def _object(self, uri: str) -> tuple[str, str]:
        bucket, key = split_s3_uri(uri)
        if not key or key.endswith("/"):
            raise DKDError(f"{uri!r} names no object: expected s3://bucket/key")
        return bucket, key

    def _check_bucket(self, bucket: str, key: str) -> None:
        """Raise the missing-bucket error if `bucket` does not exist (checked once per store).

        A HEAD on a missing object cannot tell "no such key" from "no such bucket".
        """
        if bucket in self._known_buckets:
            return
        if not self._call("check bucket", bucket, key, lambda: self.client.bucket_exists(bucket)):
            raise self._no_bucket_error("check bucket", bucket, key)
        self._known_buckets.add(bucket)

    # ----------------------------------------------------------------- the API

    def stat(self, uri: str) -> ObjectInfo | None:
        bucket, key = self._object(uri)
        try:
            st = self._call("stat", bucket, key, lambda: self.client.stat_object(bucket, key))
        except ObjectNotFoundError:
            self._check_bucket(bucket, key)
            return None
        self._known_buckets.add(bucket)
        return ObjectInfo(uri, int(st.size or 0), st.etag)

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = self._object(uri)

        def attempt() -> bytes:
            response = self.client.get_object(bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("read", bucket, key, attempt)

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = self._object(uri)
        # A part size of at least the length makes the SDK send one PUT.
        part_size = min(max(len(data), 5 * MiB), 5 * 1024 * MiB)
        self._call(
            "write",
            bucket,
            key,
            lambda: self.client.put_object(
                bucket, key, io.BytesIO(data), len(data), part_size=part_size
            ),
        )

    def upload_file(self, local: Path, uri: str) -> None:
        bucket, key = self._object(uri)
        local = Path(local)
        if not local.is_file():
            raise ObjectNotFoundError(f"upload to {uri}: {local} does not exist (or is not a file)")
        self._call(
            "upload",
            bucket,
            key,
            lambda: self.client.fput_object(bucket, key, str(local), part_size=PART_SIZE),
        )

    def download_file(self, uri: str, local: Path, *, progress: bool = True) -> str:
        return self._download(uri, Path(local), progress=progress, fsync=True)

    def _download(self, uri: str, local: Path, *, progress: bool, fsync: bool) -> str:
        bucket, key = self._object(uri)

        def attempt() -> str:
            response = self.client.get_object(bucket, key)
            try:
                total = int(response.headers.get("content-length") or 0)
                with atomic_output(local, fsync=fsync) as f:
                    return copy_stream(response.stream(MiB), f, total, Path(key).name, progress)
            finally:
                response.close()
                response.release_conn()

        return self._call("download", bucket, key, attempt)

    def list_info(self, prefix_uri: str, recursive: bool = True) -> list[ObjectInfo]:
        bucket, key = split_s3_uri(prefix_uri)
        prefix = folder_key(key)

        def attempt() -> list[ObjectInfo]:
            return [
                ObjectInfo(
                    f"{S3_SCHEME}{bucket}/{obj.object_name}",
                    0 if obj.is_dir else int(obj.size or 0),
                    None if obj.is_dir else obj.etag,
                )
                for obj in self.client.list_objects(bucket, prefix=prefix, recursive=recursive)
            ]

        found = self._call("list", bucket, prefix, attempt)
        self._known_buckets.add(bucket)
        return sorted(found, key=lambda info: info.uri)

    def delete(self, uri: str) -> None:
        bucket, key = self._object(uri)
        self._call("delete", bucket, key, lambda: self.client.remove_object(bucket, key))

    def delete_prefix(self, prefix_uri: str) -> None:
        bucket, key = split_s3_uri(prefix_uri)
        prefix = folder_key(key)
        keys = [split_s3_uri(info.uri)[1] for info in self.list_info(prefix_uri, recursive=True)]
        if not keys:
            return

        def attempt() -> list[Any]:
            return list(self.client.remove_objects(bucket, (DeleteObject(k) for k in keys)))

        errors = self._call("delete", bucket, prefix, attempt)
        if errors:
            first = errors[0]
            raise DKDError(
                f"delete {S3_SCHEME}{bucket}/{prefix} at {self.config.url}: {len(errors)} "
                f"objects were not deleted, e.g. {first.name}: {first.code} {first.message}"
            )
