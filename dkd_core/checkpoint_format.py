"""The on-disk format of a checkpoint folder, without torch: file names and `meta.json`.

A checkpoint folder holds `model.safetensors` (and, for a periodic
checkpoint, `training.safetensors`) plus `meta.json`, which names every
payload with its sha256 and size and is written last. Both the storage layer
(which moves folders between S3 and the local cache) and `checkpoint` (which
builds models from them) read the format from here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dkd_core.errors import DKDError

WEIGHTS_FILE = "model.safetensors"
TRAINING_FILE = "training.safetensors"
META_FILE = "meta.json"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class InvalidCheckpointError(DKDError):
    """A meta.json that is not a checkpoint's metadata."""


class ChecksumMismatchError(DKDError):
    """A payload whose sha256 differs from the one its meta.json records."""


def parse_meta(data: bytes, where: str) -> dict[str, Any]:
    """The content of a meta.json; `InvalidCheckpointError` naming `where` if it is none."""
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidCheckpointError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or "weights" not in meta:
        raise InvalidCheckpointError(
            f"{where}: missing key 'weights'; not a checkpoint's meta.json"
        )
    for entry in payload_entries(meta):
        name = entry["file"]
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise InvalidCheckpointError(f"{where}: payload name {name!r} is not a plain file name")
        digest, size = entry["sha256"], entry["bytes"]
        if not isinstance(digest, str) or len(digest) != 64:
            raise InvalidCheckpointError(
                f"{where}: the sha256 of {name} must be 64 hex digits, got {digest!r}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidCheckpointError(
                f"{where}: the size of {name} must be a number of bytes, got {size!r}"
            )
    weights = meta["weights"]
    if not isinstance(weights, dict) or not {"file", "sha256", "bytes"} <= weights.keys():
        raise InvalidCheckpointError(
            f"{where}: 'weights' must be a mapping with file, sha256 and bytes, got {meta['weights']!r}"
        )
    step = meta.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise InvalidCheckpointError(f"{where}: 'step' must be an integer >= 0, got {step!r}")
    return meta


def payload_entries(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The payload files a meta.json names: entries {"file", "sha256", "bytes"}."""
    return [
        dict(value)
        for value in meta.values()
        if isinstance(value, dict) and {"file", "sha256", "bytes"} <= value.keys()
    ]


def verified_payload(directory: Path, entry: dict[str, Any]) -> Path:
    """The payload file a meta.json entry names, after checking its sha256."""
    path = directory / entry["file"]
    if not path.is_file():
        raise DKDError(f"{path} does not exist, but {directory / META_FILE} names it")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ChecksumMismatchError(
            f"{path}: checksum mismatch (sha256 {actual}, metadata says {entry['sha256']}); "
            "the file is corrupt or was replaced"
        )
    return path
