"""`LocalStore`: artifacts as plain files (paths and `file://` URIs), written atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

from dkd_core.checkpoint_format import sha256_file
from dkd_core.errors import DKDError
from dkd_core.storage.store import (
    ObjectInfo,
    ObjectNotFoundError,
    Store,
    atomic_output,
    copy_stream,
    file_chunks,
)
from dkd_core.storage.uris import join, local_path


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
        with atomic_output(local_path(uri)) as f:
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
        with atomic_output(target, fsync=fsync) as f:
            return copy_stream(file_chunks(source), f, source.stat().st_size, source.name, progress)

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
