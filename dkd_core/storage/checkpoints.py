"""Checkpoint folders at URIs: publish, fetch (verified, cached), completeness, the newest.

A checkpoint folder (see `dkd_core.checkpoint_format`) is published payloads
first and `meta.json` last, and every fetched payload is verified against the
sha256 in its meta.json. Fetched payloads are cached by content hash: a
teacher is downloaded once per pod.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dkd_core.checkpoint_format import (
    META_FILE,
    InvalidCheckpointError,
    parse_meta,
    payload_entries,
    sha256_file,
    verified_payload,
)
from dkd_core.errors import DKDError
from dkd_core.storage.store import ObjectInfo, ObjectNotFoundError, Store, atomic_output
from dkd_core.storage.stores import open_store
from dkd_core.storage.uris import is_remote, join, local_path

log = logging.getLogger("dkd_core.storage")


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


def verify_checkpoint(uri: str, verified_cache: Path, store: Store | None = None) -> bool:
    """Whether `uri` holds a final checkpoint whose every payload matches its sha256.

    False when there is no meta.json (nothing was published there). A meta.json
    whose payloads are missing, of the wrong size or of the wrong checksum is a
    `DKDError` naming the file: something damaged the checkpoint after it was
    published. Each verification is remembered in `verified_cache` by the
    payload's identity (local: path, size, mtime_ns, inode; S3: URI, size,
    etag), so a payload is read only once until it changes.
    """
    store = _store_for(uri, store)
    meta = _read_meta(uri, store)
    if meta is None:
        return False
    meta_uri = join(uri, META_FILE)
    for entry in meta.payloads:
        payload_uri = join(uri, entry["file"])
        info = store.stat(payload_uri)
        if info is None:
            raise DKDError(f"{payload_uri} does not exist, but {meta_uri} names it")
        if info.size != entry["bytes"]:
            raise DKDError(
                f"{payload_uri}: {info.size} bytes, but {meta_uri} says {entry['bytes']}; "
                "the checkpoint is damaged"
            )
        actual = _payload_sha256(payload_uri, info, Path(verified_cache), store)
        if actual != entry["sha256"]:
            raise DKDError(
                f"{payload_uri}: checksum mismatch (sha256 {actual}, {meta_uri} says "
                f"{entry['sha256']}); the checkpoint is damaged"
            )
    return True


def _payload_sha256(uri: str, info: ObjectInfo, verified_cache: Path, store: Store) -> str:
    """The sha256 of the object at `uri`, computed once per identity of the object."""
    if is_remote(uri):
        identity = f"s3 {uri} {info.size} {info.etag}"
    else:
        st = local_path(uri).resolve().stat()
        identity = f"file {local_path(uri).resolve()} {st.st_size} {st.st_mtime_ns} {st.st_ino}"
    record = verified_cache / hashlib.sha256(identity.encode()).hexdigest()
    try:
        cached = record.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    if is_remote(uri):
        verified_cache.mkdir(parents=True, exist_ok=True)
        scratch = verified_cache / f".{record.name}.{uuid.uuid4().hex[:8]}.download"
        try:
            actual = store.download_file(uri, scratch, progress=False)
        finally:
            scratch.unlink(missing_ok=True)
    else:
        actual = sha256_file(local_path(uri))
    with atomic_output(record, fsync=False) as f:
        f.write(actual.encode())
    return actual


def fetch_checkpoint(
    uri: str, cache_dir: Path, store: Store | None = None, refresh: bool = False
) -> Path:
    """A local, verified checkpoint folder for the checkpoint at `uri`.

    Local URIs are verified (sha256 of every payload) and returned as they are.
    For S3, meta.json is read and each payload downloaded to
    `cache_dir/<sha256>/<file>` unless it is already there; a download enters
    the cache only once its sha256 matches meta.json. The folder returned,
    `cache_dir/checkpoints/<sha256 of meta.json>/`, holds meta.json and hard
    links to (or copies of) the payloads; fetching it again downloads nothing.
    `refresh` discards the cached copy first (it was found damaged) and downloads again.
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
    if refresh:
        shutil.rmtree(final, ignore_errors=True)
        for entry in meta.payloads:
            (cache_dir / entry["sha256"] / entry["file"]).unlink(missing_ok=True)
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
