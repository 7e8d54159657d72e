"""`sync_dataset`: a local mirror of a dataset prefix in S3, refreshed incrementally."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from dkd_core.errors import DKDError
from dkd_core.storage.s3 import S3Store
from dkd_core.storage.store import ObjectInfo, atomic_output
from dkd_core.storage.stores import open_store
from dkd_core.storage.transfers import parallel_transfers
from dkd_core.storage.uris import S3_SCHEME, folder_key, is_remote, local_path, split_s3_uri

log = logging.getLogger("dkd_core.storage")

SYNC_INDEX = ".dkd-sync.json"
SYNC_WORKERS = 8


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
    base_uri = f"{S3_SCHEME}{bucket}/{folder_key(key)}"
    root = Path(cache_dir) / bucket / folder_key(key)
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
    index_path = root / SYNC_INDEX
    transfers = [
        (info, partial(store._download, info.uri, root / info.uri[len(base_uri) :],
                       progress=False, fsync=False))
        for info in objects
    ]  # fmt: skip
    done = parallel_transfers(
        transfers, workers=SYNC_WORKERS, desc=f"sync {base_uri}", progress=progress
    )
    for count, info in enumerate(done, start=1):
        index[info.uri[len(base_uri) :]] = [info.size, info.etag]
        if count % 256 == 0:  # a killed pod keeps most of its progress
            _write_sync_index(index_path, index)


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
    with atomic_output(path, fsync=False) as f:
        f.write(text.encode("utf-8"))
