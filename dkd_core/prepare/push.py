"""`python -m dkd_core data push SRC s3://bucket/prefix`: upload a dataset, in parallel, resumably.

Only what training reads goes up (`training_files`): the images and labels the split
lists name, the lists, and the class names (`class_names.txt`, `objectInfo150.txt`)
or `dataset.yaml`; not VOC's Annotations or SegmentationObject. An object already at
its key with the same size and content hash is skipped, so a push killed half way
finishes on the next run, and a second run after success uploads nothing. An S3 PUT is
atomic: a killed upload leaves no half object behind.

The content hash is the object's ETag: S3 servers (MinIO, SeaweedFS, moto) give a
single-PUT object the MD5 of its bytes, and a multipart one the MD5 of its parts' MD5s
followed by `-<parts>`. `s3_etag` computes the same from the local file with the
uploader's part size. A server whose ETags are something else (e.g. objects encrypted
with SSE-KMS) never matches, and every file is uploaded again: slower, never wrong.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from dkd_core.data.layout import SPLITS, open_layout
from dkd_core.download import file_digests
from dkd_core.errors import DKDError
from dkd_core.prepare import PUSH_WORKERS
from dkd_core.storage.s3 import PART_SIZE
from dkd_core.storage.store import ObjectInfo
from dkd_core.storage.stores import open_store
from dkd_core.storage.transfers import parallel_transfers
from dkd_core.storage.uris import S3_SCHEME, folder_key, is_remote, split_s3_uri

log = logging.getLogger("dkd_core.prepare")

# Besides the samples and their lists, the files `open_layout` reads when present.
_DESCRIPTION_FILES = ("class_names.txt", "objectInfo150.txt", "dataset.yaml")


@dataclass(frozen=True)
class PushResult:
    files: int  # files training reads
    uploaded: int
    skipped: int  # already there with the same size and content hash
    bytes_uploaded: int


def training_files(root: Path, format: str | None = None) -> list[str]:
    """The files of the dataset at `root` that training reads, as sorted POSIX paths
    relative to `root`. Every file the split lists name is checked to exist."""
    layout = open_layout(root, format)
    base = layout.root
    files: set[Path] = {base / name for name in _DESCRIPTION_FILES if (base / name).is_file()}
    for split in SPLITS:
        list_file = layout.split_files(split).list_file
        if list_file is not None:
            files.add(list_file)
        for sample in layout.samples(split):
            files.update((sample.image, sample.label))
    outside = sorted(str(p) for p in files if not p.resolve().is_relative_to(base))
    if outside:
        raise DKDError(
            f"{outside[0]}: outside the dataset folder {base}; push a self-contained folder"
        )
    return sorted(p.relative_to(base).as_posix() for p in files)


def s3_etag(path: Path, part_size: int = PART_SIZE) -> str:
    """The ETag an S3 server gives `path` uploaded with `part_size` parts (see the module doc)."""
    size = path.stat().st_size
    if size <= part_size:
        return file_digests(path, "md5")["md5"]
    parts = []
    with open(path, "rb") as f:
        while block := f.read(part_size):
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    combined = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(parts)}"


def _same(path: Path, remote: ObjectInfo | None) -> bool:
    """Whether `remote` already holds the bytes of `path` (size first: no hashing when it differs)."""
    if remote is None or remote.etag is None or remote.size != path.stat().st_size:
        return False
    return remote.etag.strip('"') == s3_etag(path)


def push_dataset(
    source: str | Path,
    dest: str,
    *,
    workers: int = PUSH_WORKERS,
    format: str | None = None,
    progress: bool = True,
    upload: Callable[[Path, str], None] | None = None,
) -> PushResult:
    """Upload the files training reads from the local dataset `source` to the prefix `dest`.

    `upload(local, uri)` is the store's `upload_file` unless given (tests and benchmarks).
    The first failed upload stops the push (uploads not yet started are cancelled) and
    is raised; what was uploaded stays, and the next run skips it.
    """
    if not is_remote(dest):
        raise DKDError(
            f"data push {dest!r}: expected an s3:// or minio:// prefix, e.g. s3://datasets/VOC2012"
        )
    if workers < 1:
        raise DKDError(f"--workers {workers}: expected at least 1")
    root = Path(source).expanduser()
    relative = training_files(root, format)
    root = root.resolve()
    bucket, key = split_s3_uri(dest)
    base = f"{S3_SCHEME}{bucket}/{folder_key(key)}"
    store = open_store(base)
    remote = {info.uri: info for info in store.list_info(base, recursive=True)}
    upload = upload or store.upload_file

    todo: list[tuple[Path, str]] = []
    for rel in relative:
        path, uri = root / rel, base + rel
        if not _same(path, remote.get(uri)):
            todo.append((path, uri))
    log.info("push %s -> %s: %d files, %d to upload", root, base, len(relative), len(todo))
    transfers = [(path, partial(upload, path, uri)) for path, uri in todo]
    done = parallel_transfers(transfers, workers=workers, desc=f"push {base}", progress=progress)
    sent = sum(path.stat().st_size for path in done)
    return PushResult(len(relative), len(todo), len(relative) - len(todo), sent)
