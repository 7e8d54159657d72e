"""The `Store` interface every artifact location implements, and the helpers of its writers."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from dkd_core.errors import DKDError

MiB = 1 << 20
PROGRESS_THRESHOLD = 64 * MiB  # downloads above this size show a progress bar


class ObjectNotFoundError(DKDError, FileNotFoundError):
    """The object or file a URI names does not exist (also a `FileNotFoundError`)."""


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


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process umask.

    `mkstemp` creates 0o600 files; on a shared filesystem the other readers of a
    run (a report job, a colleague) need the mode the user's umask asks for.
    Linux shows the umask in /proc; elsewhere it is read by setting it back at once.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path` that replaces `path` once the block succeeds.

    For writers that need a file name (safetensors). On any error the temporary
    file is removed and `path` is untouched; the result has the umask's mode.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_output(path: Path, fsync: bool = True) -> Iterator[IO[bytes]]:
    """Yield a temporary file next to `path` that replaces `path` once the block succeeds
    (`atomic_path`, opened for writing)."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
        yield f


def copy_stream(
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


def file_chunks(path: Path, chunk_size: int = 4 * MiB) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk
