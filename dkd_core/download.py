"""Files fetched over HTTP(S): resumable, verified, atomic.

`download(url, dest)` streams into `dest.partial` beside `dest`. A second call after an
interruption asks the server for the rest (an HTTP Range request) and appends it when
the server answers 206; a server that ignores ranges (200) sends the whole file again.
When the transfer ends, the size and checksums given are checked and only then is the
file renamed to `dest`, so `dest` is always a whole, verified file. A `dest` that is
already there and passes the checks is returned without touching the network.

Every failure a user can meet (an HTTP error status, a refused connection, an unknown
host, a timeout, a checksum that does not match) is one `DKDError` line naming the URL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import urllib.parse
from pathlib import Path

import certifi
import urllib3
from tqdm import tqdm

from dkd_core.checkpoint_format import sha256_file
from dkd_core.errors import DKDError
from dkd_core.progress import bars_wanted
from dkd_core.storage.store import file_chunks

__all__ = ["download", "hub_hash_prefix", "sha256_file"]

log = logging.getLogger("dkd_core.download")

CONNECT_TIMEOUT = 30.0  # seconds to open a connection
READ_TIMEOUT = 120.0  # seconds without a byte from the server
CHUNK = 1 << 20
INTERRUPTED_RETRIES = 3  # a transfer cut off mid-body resumes this many times in one call

# torch.hub's rule for files named `<name>-<hex>.<ext>`: the hex digits are the start of
# the file's sha256 (torch 2.13, torch/hub.py: `HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")`,
# applied with `.search` to the URL's file name in `load_state_dict_from_url`, and checked
# in `download_url_to_file` as `digest[: len(hash_prefix)] != hash_prefix`).
HUB_HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")


def hub_hash_prefix(filename: str) -> str | None:
    """The sha256 prefix torch.hub reads from `filename` (`resnet101-63fe2227.pth` ->
    `63fe2227`), or None when the name carries none. An empty match (`name-.pth`) checks
    nothing in torch.hub either, so it is None here too."""
    match = HUB_HASH_REGEX.search(filename)
    return match.group(1) or None if match else None


def file_digests(path: Path, *names: str) -> dict[str, str]:
    """Hex digests of `path` with the hashlib algorithms `names`, in one read."""
    hashes = {name: hashlib.new(name, usedforsecurity=False) for name in names}
    for chunk in file_chunks(path):
        for h in hashes.values():
            h.update(chunk)
    return {name: h.hexdigest() for name, h in hashes.items()}


def _mismatch(
    path: Path, size: int | None, sha256: str | None, md5: str | None
) -> tuple[str, str, str] | None:
    """(what, expected, actual) of the first check `path` fails, or None if it passes all."""
    if size is not None:
        actual_size = path.stat().st_size
        if actual_size != size:
            return "size", f"{size} bytes", f"{actual_size} bytes"
    wanted = {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if wanted:
        actual = file_digests(path, *wanted)
        for name, value in wanted.items():
            if actual[name] != value:
                return name, value, actual[name]
    return None


def _pool() -> urllib3.PoolManager:
    """No retries of urllib3's own (a failure is reported, a cut transfer resumes here);
    redirects followed, as download mirrors use them."""
    return urllib3.PoolManager(
        retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


def _describe(exc: BaseException, url: str) -> str:
    """One line for a network failure; no traceback, no headers."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return _describe(exc.reason, url)
    parts = urllib.parse.urlsplit(url)
    where = parts.netloc
    if isinstance(exc, urllib3.exceptions.NameResolutionError | socket.gaierror):
        return f"cannot resolve host {parts.hostname!r} (no DNS entry, or no network)"
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
        if "refused" in str(exc).lower() or isinstance(exc, ConnectionRefusedError):
            return f"connection refused by {where} (is the server up, and the port right?)"
        return f"cannot connect to {where}: {str(exc).splitlines()[0]}"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return f"no connection to {where} within {CONNECT_TIMEOUT:g}s"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return f"{where} sent nothing for {READ_TIMEOUT:g}s"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"TLS error with {where}: {str(exc).splitlines()[0]}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return "too many redirects"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = True,
) -> Path:
    """Fetch `url` into `dest` (resuming `dest.partial`), check `size`/`sha256`/`md5`
    when given, and return `dest`. Raises a one-line `DKDError` naming `url` on failure;
    `dest` is then left as it was (never a partial or mismatching file)."""
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DKDError(f"download {url}: expected an http:// or https:// URL")
    if dest.is_file() and _mismatch(dest, size, sha256, md5) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    pool = _pool()
    for attempt in range(INTERRUPTED_RETRIES + 1):
        received_before = partial.stat().st_size if partial.exists() else 0
        try:
            _transfer(pool, url, partial, size, progress)
            break
        except _Interrupted as exc:
            grew = (partial.stat().st_size if partial.exists() else 0) > received_before
            if attempt == INTERRUPTED_RETRIES or not grew:
                raise DKDError(
                    f"download {url}: {exc}; run the same command again to resume"
                ) from None
            log.info("download %s: %s; resuming", url, exc)
    failed = _mismatch(partial, size, sha256, md5)
    if failed is not None:
        what, expected, actual = failed
        partial.unlink(missing_ok=True)
        raise DKDError(f"download {url}: {what} mismatch, expected {expected}, got {actual}")
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, dest)
    return dest


class _Interrupted(Exception):
    """The transfer stopped partway (connection dropped, a read timed out)."""


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a `Content-Range: bytes a-b/n` (or `bytes */n`) header."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _transfer(
    pool: urllib3.PoolManager, url: str, partial: Path, size: int | None, progress: bool
) -> None:
    """One request: the rest of `partial` (Range) or the whole file, appended/written."""
    offset = partial.stat().st_size if partial.exists() else 0
    if size is not None and offset > size:  # a stale partial of another file
        partial.unlink()
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = pool.request("GET", url, headers=headers, preload_content=False)
    except urllib3.exceptions.HTTPError as exc:
        raise DKDError(f"download {url}: {_describe(exc, url)}") from None
    try:
        status = response.status
        if status == 416 and offset:  # nothing after `offset`: the partial may be whole
            _, total = _content_range(response.headers.get("Content-Range"))
            if total == offset:
                return
        if status in (206, 416) and offset:
            start, _ = _content_range(response.headers.get("Content-Range"))
            if status == 416 or start != offset:  # cannot resume here: start over
                response.drain_conn()
                partial.unlink()
                return _transfer(pool, url, partial, size, progress)
            mode = "ab"
        elif status == 200:
            mode, offset = "wb", 0
        else:
            reason = f" {response.reason}" if response.reason else ""
            raise DKDError(f"download {url}: HTTP {status}{reason}")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        if size is not None and total != size:  # the server announces another file
            partial.unlink(missing_ok=True)
            raise DKDError(
                f"download {url}: size mismatch, expected {size} bytes, got {total} bytes"
            )
        if offset:
            log.info("download %s: resuming at byte %d", url, offset)
        else:  # a line in a pod's log, where no bar is drawn
            log.info("download %s (%s bytes) -> %s", url, total or "unknown", partial.parent)
        with (
            open(partial, mode) as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"download {Path(urllib.parse.urlsplit(url).path).name or url}",
                disable=not bars_wanted(progress),
            ) as bar,
        ):
            written = offset
            try:
                # read1 hands over what has arrived, so a dropped connection keeps it
                while chunk := response.read1(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
                    written += len(chunk)
                    if size is not None and written > size:
                        break  # larger than expected: the size check names it
            except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
                out.flush()
                raise _Interrupted(_describe(exc, url)) from None
    finally:
        response.release_conn()
