"""One interface over where artifacts live: local paths and S3 (MinIO) URIs.

In the cluster every training step runs in its own pods, so checkpoints, split
manifests, datasets and reports live in an S3 server (MinIO); on a laptop they
live in folders. Code that reads or writes an artifact takes a URI and calls
`open_store(uri)`:

- `s3://bucket/key/prefix` goes through the `minio` SDK. The endpoint and the
  keys come from the environment only (`S3Config.from_env`); the secret never
  appears in a repr, a log line or an error message.
- a path, or `file:///path`, is a local file. Local writes are atomic
  (temporary file, fsync, rename).

S3 calls are retried on transient failures (connection refused or reset,
timeouts, HTTP 5xx, SlowDown ...) with exponential backoff for at most
`S3_RETRY_SECONDS`; permanent failures (a missing bucket, rejected credentials,
an unresolvable endpoint) raise a `DKDError` at once that names the endpoint,
bucket and key and says what to fix. The minio client's own urllib3 retries are
switched off so that this module's loop is the only one retrying.

On top of the stores:

- `upload_checkpoint` / `fetch_checkpoint` / `checkpoint_complete` /
  `latest_checkpoint` move checkpoint folders (see `dkd_core.checkpoint`) so
  that `meta.json` is published last and every fetched payload is verified
  against the sha256 in it. Fetched payloads are cached by content hash: a
  teacher is downloaded once per pod.
- `sync_dataset` mirrors a dataset prefix into a local cache and downloads
  only what changed since the last sync.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from tqdm import tqdm

from dkd_core.checkpoint import (
    META_FILE,
    InvalidCheckpointError,
    parse_meta,
    payload_entries,
    sha256_file,
    verified_payload,
)
from dkd_core.errors import DKDError

log = logging.getLogger(__name__)

T = TypeVar("T")

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
MiB = 1 << 20
PART_SIZE = 64 * MiB  # multipart part size for uploads
PROGRESS_THRESHOLD = 64 * MiB  # downloads above this size show a progress bar
SYNC_INDEX = ".dkd-sync.json"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SYNC_WORKERS = 8
DEFAULT_RETRY_SECONDS = 60.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0

CREDENTIAL_VARS = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY/MINIO_SECRET_KEY)"
ENDPOINT_EXAMPLE = "http://minio.minio.svc.cluster.local:9000, https://s3.example.org or minio:9000"

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


class ObjectNotFoundError(DKDError, FileNotFoundError):
    """The object or file a URI names does not exist (also a `FileNotFoundError`)."""


# --------------------------------------------------------------------------- URIs


# Kubeflow Pipelines names its artifacts minio://bucket/key (also behind SeaweedFS since KFP
# 2.15); it is the same S3 API at the configured endpoint.
S3_SCHEMES = (S3_SCHEME, "minio://")


def is_remote(uri: str) -> bool:
    """Whether `uri` names an S3 object or prefix (`s3://...`, or KFP's `minio://...`)."""
    return str(uri).lower().startswith(S3_SCHEMES)


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI or path with exactly one `/` between them.

    Works the same for `s3://bucket/prefix`, `file:///dir` and plain paths; the
    scheme of `uri` is kept. Empty parts are skipped and an absolute part does
    not discard what precedes it (unlike `os.path.join`).
    """
    uri = str(uri)
    pieces = [p.strip("/") for p in parts if p and p.strip("/")]
    if not pieces:
        return uri
    if uri.endswith("/"):
        return uri + "/".join(pieces)
    return uri + "/" + "/".join(pieces) if uri else "/".join(pieces)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty."""
    if not is_remote(uri):
        raise DKDError(f"{uri!r} is not an S3 URI: expected s3://bucket/key")
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    if not bucket:
        raise DKDError(f"{uri!r} names no bucket: expected s3://bucket/key")
    return bucket, key


def local_path(uri: str | Path) -> Path:
    """The local path of a plain path or a `file://` URI (`file:///abs`, `file://localhost/abs`).

    The path is taken literally (no percent-decoding).
    """
    text = str(uri)
    if text.lower().startswith(FILE_SCHEME):
        text = text[len(FILE_SCHEME) :]
        if text.startswith("localhost/"):
            text = text[len("localhost") :]
        return Path(text)
    if is_remote(text):
        raise DKDError(f"{text!r} is an S3 URI, not a local path")
    scheme = _SCHEME.match(text)
    if scheme:
        raise DKDError(
            f"{text!r}: unsupported URI scheme {scheme.group(0)!r}; "
            "use s3://bucket/key, file:///path or a plain path"
        )
    return Path(text)


def _folder_key(key: str) -> str:
    """An S3 key used as a folder: "" stays "", otherwise exactly one trailing slash."""
    key = key.strip("/")
    return key + "/" if key else ""


# ------------------------------------------------------------------------ config


def _env_flag(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, bool] | None:
    """The first of `names` that is set, parsed as a boolean, or None if none is set."""
    for name in names:
        raw = env.get(name, "").strip()
        if not raw:
            continue
        value = raw.lower()
        if value in ("true", "1", "yes", "on"):
            return name, True
        if value in ("false", "0", "no", "off"):
            return name, False
        raise DKDError(f"{name}={raw!r}: expected true or false")
    return None


@dataclass(frozen=True)
class S3Config:
    """Where the S3 server is and how to sign requests; read from the environment.

    `secret_key` is left out of repr() and str(), so logging a config (or an
    exception holding one) never shows it.
    """

    endpoint: str  # host:port, no scheme
    secure: bool
    access_key: str
    secret_key: str = field(repr=False)
    region: str | None = None
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    endpoint_var: str = "S3_ENDPOINT"  # which variable the endpoint came from, for messages

    @property
    def url(self) -> str:
        """The endpoint as a URL, e.g. `http://minio:9000`: safe to show."""
        return ("https://" if self.secure else "http://") + self.endpoint

    def __str__(self) -> str:
        return f"S3 endpoint {self.url} (access key {self.access_key})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Config:
        """Read the configuration from `env` (default: `os.environ`).

        Endpoint: `S3_ENDPOINT` or `MINIO_ENDPOINT`, as `http://host:port`,
        `https://host:port` or `host:port`. TLS: the URL's scheme, or for a bare
        `host:port` `S3_SECURE`/`MINIO_SECURE` (default false). Keys:
        `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` or
        `MINIO_ACCESS_KEY`/`MINIO_SECRET_KEY`. Region (optional): `S3_REGION` or
        `AWS_REGION`. Retry budget: `S3_RETRY_SECONDS` (default 60).
        """
        env = os.environ if env is None else env
        endpoint_var = next((n for n in ("S3_ENDPOINT", "MINIO_ENDPOINT") if env.get(n)), None)
        if endpoint_var is None:
            raise DKDError(
                "S3 URIs need the S3 server's address: set S3_ENDPOINT (or MINIO_ENDPOINT), "
                f"e.g. {ENDPOINT_EXAMPLE}"
            )
        endpoint, secure = _parse_endpoint(endpoint_var, env[endpoint_var].strip(), env)

        access_var = next(
            (n for n in ("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY") if env.get(n)), None
        )
        secret_var = next(
            (n for n in ("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY") if env.get(n)), None
        )
        # Name the variable of the family (AWS_* or MINIO_*) already in use first.
        minio_names = "MINIO" in f"{access_var}{secret_var}"
        missing = []
        if access_var is None:
            missing.append(
                "MINIO_ACCESS_KEY (or AWS_ACCESS_KEY_ID)"
                if minio_names
                else "AWS_ACCESS_KEY_ID (or MINIO_ACCESS_KEY)"
            )
        if secret_var is None:
            missing.append(
                "MINIO_SECRET_KEY (or AWS_SECRET_ACCESS_KEY)"
                if minio_names
                else "AWS_SECRET_ACCESS_KEY (or MINIO_SECRET_KEY)"
            )
        if missing:
            raise DKDError(f"S3 URIs need credentials for {endpoint}: set {' and '.join(missing)}")
        assert access_var is not None and secret_var is not None

        region = (env.get("S3_REGION") or env.get("AWS_REGION") or "").strip() or None
        raw_retry = env.get("S3_RETRY_SECONDS", "").strip()
        try:
            retry_seconds = float(raw_retry) if raw_retry else DEFAULT_RETRY_SECONDS
        except ValueError:
            retry_seconds = -1.0
        if not retry_seconds >= 0:  # also rejects nan
            raise DKDError(f"S3_RETRY_SECONDS={raw_retry!r}: expected a number of seconds >= 0")
        return cls(
            endpoint=endpoint,
            secure=secure,
            access_key=env[access_var].strip(),
            secret_key=env[secret_var].strip(),
            region=region,
            retry_seconds=retry_seconds,
            endpoint_var=endpoint_var,
        )


def _parse_endpoint(var: str, raw: str, env: Mapping[str, str]) -> tuple[str, bool]:
    """`http(s)://host[:port]` or `host[:port]` -> ("host[:port]", secure)."""
    expected = f"set {var} to the S3 server's address, e.g. {ENDPOINT_EXAMPLE}"
    if "://" in raw:
        parts = urlsplit(raw)
        shown = f"{parts.scheme}://{parts.hostname or ''}"  # never echo a user:password@
        if parts.username or parts.password:
            raise DKDError(
                f"{var}={shown}...: the endpoint must not hold credentials; "
                f"put them in {CREDENTIAL_VARS}"
            )
        if parts.scheme.lower() not in ("http", "https"):
            raise DKDError(f"{var}={raw!r}: the scheme must be http or https; {expected}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise DKDError(f"{var}={raw!r}: no path is allowed after host:port; {expected}")
        netloc, secure = parts.netloc, parts.scheme.lower() == "https"
    else:
        netloc = raw.rstrip("/")
        if "/" in netloc:
            raise DKDError(f"{var}={raw!r}: no path is allowed after host:port; {expected}")
        flag = _env_flag(env, ("S3_SECURE", "MINIO_SECURE"))
        secure = flag[1] if flag else False
    try:
        check = urlsplit("//" + netloc)
        host, _ = check.hostname, check.port  # .port raises ValueError for a bad port
    except ValueError:
        host = None
    if not host or any(c.isspace() for c in netloc):
        raise DKDError(f"{var}={raw!r} is not a valid host:port; {expected}")
    return netloc, secure


# ------------------------------------------------------------------------- stores


@dataclass(frozen=True)
class ObjectInfo:
    """One object (or file) found by `Store.stat` or `Store.list_info`."""

    uri: str
    size: int
    etag: str | None = None  # S3 ETag; None for local files


class Store(abc.ABC):
    """Read, write, list and delete artifacts by URI; `LocalStore` or `S3Store`.

    Listing treats the prefix as a folder: `list("s3://b/run")` lists the keys
    under `run/`, not `run2/...`. Non-recursive listings also return the
    immediate sub-folders, as URIs that end with `/`.
    """

    @abc.abstractmethod
    def stat(self, uri: str) -> ObjectInfo | None:
        """Size (and etag) of the object at `uri`, or None if there is none."""

    @abc.abstractmethod
    def read_bytes(self, uri: str) -> bytes:
        """The object's bytes; `ObjectNotFoundError` if it does not exist."""

    @abc.abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Create or replace the object; readers see the old or the new bytes, never a mix."""

    @abc.abstractmethod
    def upload_file(self, local: Path, uri: str) -> None:
        """Copy a local file to `uri`."""

    @abc.abstractmethod
    def download_file(self, uri: str, local: Path, *, progress: bool = True) -> str:
        """Copy the object to the local file `local` atomically; returns its sha256 (hex).

        The checksum is computed while the bytes are written, at no extra read.
        A progress bar is shown for objects over 64 MiB when `progress` is true.
        """

    @abc.abstractmethod
    def list_info(self, prefix_uri: str, recursive: bool = True) -> list[ObjectInfo]:
        """The objects under the folder `prefix_uri`, sorted by URI (folders: size 0)."""

    @abc.abstractmethod
    def delete(self, uri: str) -> None:
        """Remove one object; no error if it does not exist."""

    @abc.abstractmethod
    def delete_prefix(self, prefix_uri: str) -> None:
        """Remove every object under the folder `prefix_uri`."""

    def exists(self, uri: str) -> bool:
        """Whether an object (a file, not a folder) exists at `uri`."""
        return self.stat(uri) is not None

    def list(self, prefix_uri: str, recursive: bool = True) -> list[str]:
        """Full URIs of the objects under the folder `prefix_uri`, sorted."""
        return [info.uri for info in self.list_info(prefix_uri, recursive)]

    def read_text(self, uri: str) -> str:
        data = self.read_bytes(uri)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DKDError(f"{uri}: not UTF-8 text ({e})") from e

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def read_json(self, uri: str) -> Any:
        text = self.read_text(uri)
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DKDError(f"{uri}: not valid JSON ({e})") from e

    def write_json(self, uri: str, obj: Any) -> None:
        """Write `obj` as JSON with sorted keys and an indent of 2 (stable, diffable)."""
        self.write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _atomic_output(path: Path, fsync: bool = True) -> Iterator[IO[bytes]]:
    """Yield a temporary file next to `path` that replaces `path` once the block succeeds.

    On any error the temporary file is removed and `path` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_stream(
    source: Iterator[bytes], target: IO[bytes], total: int, label: str, progress: bool
) -> str:
    """Write the chunks of `source` to `target`; return their sha256 (hex)."""
    digest = hashlib.sha256()
    show = progress and total > PROGRESS_THRESHOLD
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not show
    ) as bar:
        for chunk in source:
            target.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _file_chunks(path: Path, chunk_size: int = 4 * MiB) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


class LocalStore(Store):
    """Plain files; `file://` URIs and paths. Writes are atomic (tmp, fsync, rename)."""

    def __repr__(self) -> str:
        return "LocalStore()"

    def stat(self, uri: str) -> ObjectInfo | None:
        path = local_path(uri)
        return ObjectInfo(str(uri), path.stat().st_size) if path.is_file() else None

    def read_bytes(self, uri: str) -> bytes:
        path = local_path(uri)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ObjectNotFoundError(f"{path} does not exist (or is not a file)") from e

    def write_bytes(self, uri: str, data: bytes) -> None:
        with _atomic_output(local_path(uri)) as f:
            f.write(data)

    def upload_file(self, local: Path, uri: str) -> None:
        self._copy(Path(local), local_path(uri), progress=False)

    def download_file(self, uri: str, local: Path, *, progress: bool = True) -> str:
        return self._copy(local_path(uri), Path(local), progress=progress)

    def _copy(self, source: Path, target: Path, progress: bool, fsync: bool = True) -> str:
        if not source.is_file():
            raise ObjectNotFoundError(f"{source} does not exist (or is not a file)")
        if target.exists() and target.samefile(source):
            return sha256_file(source)
        with _atomic_output(target, fsync=fsync) as f:
            return _copy_stream(
                _file_chunks(source), f, source.stat().st_size, source.name, progress
            )

    def list_info(self, prefix_uri: str, recursive: bool = True) -> list[ObjectInfo]:
        root = local_path(prefix_uri)
        if not root.is_dir():
            return []
        found: list[ObjectInfo] = []
        children = root.rglob("*") if recursive else root.iterdir()
        for path in children:
            rel = path.relative_to(root).as_posix()
            if path.is_file():
                found.append(ObjectInfo(join(str(prefix_uri), rel), path.stat().st_size))
            elif path.is_dir() and not recursive:
                found.append(ObjectInfo(join(str(prefix_uri), rel) + "/", 0))
        return sorted(found, key=lambda info: info.uri)

    def delete(self, uri: str) -> None:
        path = local_path(uri)
        if path.is_dir():
            raise DKDError(f"{path} is a folder: use delete_prefix to remove a folder")
        path.unlink(missing_ok=True)

    def delete_prefix(self, prefix_uri: str) -> None:
        root = local_path(prefix_uri)
        if root.resolve() == Path(root.resolve().anchor):
            raise DKDError(f"refusing to delete the filesystem root ({prefix_uri!r})")
        if root.is_dir():
            shutil.rmtree(root)


def _s3_http_client() -> urllib3.PoolManager:
    """urllib3 pool without retries of its own (our loop retries) and with bounded timeouts."""
    return urllib3.PoolManager(
        retries=urllib3.Retry(total=0),
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
        maxsize=2 * SYNC_WORKERS,
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
                with _atomic_output(local, fsync=fsync) as f:
                    return _copy_stream(response.stream(MiB), f, total, Path(key).name, progress)
            finally:
                response.close()
                response.release_conn()

        return self._call("download", bucket, key, attempt)

    def list_info(self, prefix_uri: str, recursive: bool = True) -> list[ObjectInfo]:
        bucket, key = split_s3_uri(prefix_uri)
        prefix = _folder_key(key)

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
        prefix = _folder_key(key)
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


_LOCAL = LocalStore()
_S3_STORES: dict[S3Config, S3Store] = {}
_S3_LOCK = threading.Lock()


def open_store(uri: str) -> Store:
    """The store for `uri`: `S3Store` for `s3://`, `LocalStore` for paths and `file://`.

    The S3 configuration is read from the environment on every call; one client
    (with its connection pool) is kept per distinct configuration.
    """
    if not is_remote(uri):
        local_path(uri)  # rejects unsupported schemes
        return _LOCAL
    split_s3_uri(uri)
    config = S3Config.from_env()
    with _S3_LOCK:
        store = _S3_STORES.get(config)
        if store is None:
            store = _S3_STORES[config] = S3Store(config)
        return store


# ------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class _Meta:
    """A checkpoint's meta.json: its exact bytes, its content and the payloads it names."""

    data: bytes
    content: dict[str, Any]
    payloads: list[dict[str, Any]]  # each {"file", "sha256", "bytes"}


def _parse_meta(data: bytes, where: str) -> _Meta:
    content = parse_meta(data, where)
    return _Meta(data, content, payload_entries(content))


def _read_meta(uri: str, store: Store) -> _Meta | None:
    """The meta.json of the checkpoint at `uri`, or None if there is none."""
    meta_uri = join(uri, META_FILE)
    try:
        return _parse_meta(store.read_bytes(meta_uri), meta_uri)
    except ObjectNotFoundError:
        return None


def _read_local_meta(directory: Path) -> _Meta:
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise DKDError(f"{meta_path} does not exist: {directory} is not a complete checkpoint")
    return _parse_meta(meta_path.read_bytes(), str(meta_path))


def _store_for(uri: str, store: Store | None) -> Store:
    return store if store is not None else open_store(uri)


def upload_checkpoint(local_dir: Path, uri: str, store: Store | None = None) -> None:
    """Publish the checkpoint folder `local_dir` at `uri`: payloads first, meta.json last.

    A reader therefore never finds a meta.json without its payloads. An
    existing meta.json at `uri` is removed before anything else, so while a
    checkpoint is replaced readers see no checkpoint rather than an old
    meta.json beside new payloads. The local payloads are checked against
    meta.json first: a corrupt checkpoint is never published.
    """
    local_dir = Path(local_dir)
    store = _store_for(uri, store)
    meta = _read_local_meta(local_dir)
    for entry in meta.payloads:
        verified_payload(local_dir, entry)
    if not is_remote(uri) and local_path(uri).resolve() == local_dir.resolve():
        return  # already in place
    store.delete(join(uri, META_FILE))
    for entry in meta.payloads:
        store.upload_file(local_dir / entry["file"], join(uri, entry["file"]))
    store.write_bytes(join(uri, META_FILE), meta.data)


def checkpoint_complete(uri: str, store: Store | None = None) -> bool:
    """Whether `uri` holds a valid meta.json and every payload it names, with the right size.

    Sizes only: checksums are verified by `fetch_checkpoint` and on load.
    """
    store = _store_for(uri, store)
    try:
        meta = _read_meta(uri, store)
    except InvalidCheckpointError as e:
        log.warning("%s is not a usable checkpoint: %s", uri, e)
        return False
    if meta is None:
        return False
    for entry in meta.payloads:
        info = store.stat(join(uri, entry["file"]))
        if info is None or info.size != entry["bytes"]:
            return False
    return True


def fetch_checkpoint(uri: str, cache_dir: Path, store: Store | None = None) -> Path:
    """A local, verified checkpoint folder for the checkpoint at `uri`.

    Local URIs are verified (sha256 of every payload) and returned as they are.
    For S3, meta.json is read and each payload downloaded to
    `cache_dir/<sha256>/<file>` unless it is already there; a download enters
    the cache only once its sha256 matches meta.json. The folder returned,
    `cache_dir/checkpoints/<sha256 of meta.json>/`, holds meta.json and hard
    links to (or copies of) the payloads; fetching it again downloads nothing.
    """
    store = _store_for(uri, store)
    if not is_remote(uri):
        directory = local_path(uri)
        local_meta = _read_local_meta(directory)
        for entry in local_meta.payloads:
            verified_payload(directory, entry)
        return directory

    meta = _read_meta(uri, store)
    if meta is None:
        raise ObjectNotFoundError(
            f"{join(uri, META_FILE)} does not exist: {uri} is not a (complete) checkpoint"
        )
    cache_dir = Path(cache_dir)
    final = cache_dir / "checkpoints" / hashlib.sha256(meta.data).hexdigest()
    if _assembled(final, meta.payloads):
        return final

    blobs = [_cached_payload(uri, entry, cache_dir, store) for entry in meta.payloads]
    staging = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    try:
        for blob in blobs:
            try:
                os.link(blob, staging / blob.name)
            except OSError:  # another filesystem, or no hard links
                shutil.copyfile(blob, staging / blob.name)
        (staging / META_FILE).write_bytes(meta.data)
        if final.exists() and not _assembled(final, meta.payloads):
            shutil.rmtree(final)  # a damaged earlier assembly
        try:
            os.replace(staging, final)
        except OSError:
            if not _assembled(final, meta.payloads):  # else another process was faster
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _assembled(folder: Path, payloads: list[dict[str, Any]]) -> bool:
    if not (folder / META_FILE).is_file():
        return False
    for entry in payloads:
        path = folder / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
    return True


def _cached_payload(uri: str, entry: Mapping[str, Any], cache_dir: Path, store: Store) -> Path:
    """`cache_dir/<sha256>/<file>`, downloaded and verified unless it is already cached."""
    blob = cache_dir / entry["sha256"] / entry["file"]
    if blob.is_file() and blob.stat().st_size == entry["bytes"]:
        return blob  # it entered the cache only after its checksum matched
    source = join(uri, entry["file"])
    unverified = blob.parent / f".{blob.name}.{uuid.uuid4().hex[:8]}.unverified"
    try:
        actual = store.download_file(source, unverified)
        if actual != entry["sha256"]:
            raise DKDError(
                f"{source}: checksum mismatch (sha256 {actual}, {join(uri, META_FILE)} says "
                f"{entry['sha256']}): the object is corrupt or was replaced; upload the "
                "checkpoint again"
            )
        os.replace(unverified, blob)
    finally:
        unverified.unlink(missing_ok=True)
    return blob


def latest_checkpoint(prefix_uri: str, store: Store | None = None) -> str | None:
    """The URI of the complete checkpoint `<prefix>/<name>` with the largest iteration.

    Candidates are the folders directly under `prefix_uri` that hold a
    meta.json; the winner has the largest `meta["training"]["iteration"]`
    (ties: the later name), whatever the names or the listing order. A
    meta.json whose payloads are missing or have the wrong size is never
    picked. None if there is no complete checkpoint.
    """
    store = _store_for(prefix_uri, store)
    sizes = {info.uri: info.size for info in store.list_info(prefix_uri, recursive=True)}
    base = str(prefix_uri).rstrip("/") + "/"
    best: tuple[int, str] | None = None
    for uri in sorted(sizes):
        name, _, file = uri[len(base) :].partition("/") if uri.startswith(base) else ("", "", "")
        if not name or file != META_FILE:
            continue
        folder = base + name
        try:
            meta = _read_meta(folder, store)
        except InvalidCheckpointError as e:
            log.warning("skipping %s: %s", folder, e)
            continue
        if meta is None:
            continue  # deleted since the listing
        if any(sizes.get(join(folder, e["file"])) != e["bytes"] for e in meta.payloads):
            log.info("skipping %s: its payloads are missing or incomplete", folder)
            continue
        iteration = (meta.content.get("training") or {}).get("iteration")
        if not isinstance(iteration, int) or isinstance(iteration, bool):
            log.info("skipping %s: meta.json has no training.iteration", folder)
            continue
        if best is None or (iteration, folder) > best:
            best = (iteration, folder)
    return best[1] if best else None


# ----------------------------------------------------------------------- datasets


def sync_dataset(uri: str, cache_dir: Path, progress: bool = True) -> Path:
    """A local folder holding the dataset at `uri`.

    A local URI is returned as a `Path`. `s3://bucket/prefix/` is mirrored into
    `cache_dir/<bucket>/<prefix>/` with `SYNC_WORKERS` parallel downloads and a
    progress bar over files. An index in that folder (`.dkd-sync.json`:
    key -> [size, etag]) records what was downloaded, so a later call downloads
    only new or changed objects, and removes the local copies of objects
    deleted from the bucket.
    """
    if not is_remote(uri):
        return local_path(uri)
    store = open_store(uri)
    assert isinstance(store, S3Store)
    bucket, key = split_s3_uri(uri)
    base_uri = f"{S3_SCHEME}{bucket}/{_folder_key(key)}"
    root = Path(cache_dir) / bucket / _folder_key(key)
    root_resolved = root.resolve()

    remote: dict[str, ObjectInfo] = {}
    for info in store.list_info(base_uri, recursive=True):
        rel = info.uri[len(base_uri) :]
        if rel.endswith("/") or rel == SYNC_INDEX:
            continue  # folder markers; the name of our own index
        if not (root / rel).resolve().is_relative_to(root_resolved):
            raise DKDError(f"{info.uri}: the key leads out of the dataset folder; not syncing it")
        remote[rel] = info
    if not remote:
        raise DKDError(
            f"{base_uri} at {store.config.url} holds no objects: upload the dataset there "
            "or fix the dataset URI"
        )

    index_path = root / SYNC_INDEX
    index = _read_sync_index(index_path)
    for rel in sorted(set(index) - set(remote)):  # deleted upstream
        (root / rel).unlink(missing_ok=True)
        del index[rel]

    def up_to_date(rel: str, info: ObjectInfo) -> bool:
        path = root / rel
        return (
            index.get(rel) == [info.size, info.etag]
            and path.is_file()
            and path.stat().st_size == info.size
        )

    todo = sorted(rel for rel, info in remote.items() if not up_to_date(rel, info))
    log.info("sync %s: %d objects, %d to download", base_uri, len(remote), len(todo))
    try:
        _download_all(store, [remote[rel] for rel in todo], root, base_uri, index, progress)
    finally:
        _write_sync_index(index_path, index)
    return root


def _download_all(
    store: S3Store,
    objects: list[ObjectInfo],
    root: Path,
    base_uri: str,
    index: dict[str, list[Any]],
    progress: bool,
) -> None:
    """Download `objects` with a small thread pool; record each finished one in `index`.

    The first failure cancels the downloads that have not started and is raised.
    """
    if not objects:
        return
    index_path = root / SYNC_INDEX
    with (
        tqdm(total=len(objects), unit="file", desc=f"sync {base_uri}", disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=SYNC_WORKERS, thread_name_prefix="dkd-sync") as pool,
    ):
        futures = {
            pool.submit(
                store._download,
                info.uri,
                root / info.uri[len(base_uri) :],
                progress=False,
                fsync=False,
            ): info
            for info in objects
        }
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()
                info = futures[future]
                index[info.uri[len(base_uri) :]] = [info.size, info.etag]
                bar.update(1)
                if done % 256 == 0:  # a killed pod keeps most of its progress
                    _write_sync_index(index_path, index)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _read_sync_index(path: Path) -> dict[str, list[Any]]:
    try:
        objects = json.loads(path.read_text())["objects"]
        return {str(rel): list(entry) for rel, entry in objects.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s is unreadable; every object will be downloaded again", path)
        return {}


def _write_sync_index(path: Path, index: Mapping[str, list[Any]]) -> None:
    text = json.dumps({"objects": dict(index)}, indent=2, sort_keys=True) + "\n"
    with _atomic_output(path, fsync=False) as f:
        f.write(text.encode("utf-8"))
