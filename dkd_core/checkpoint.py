"""Self-describing model checkpoints: `model.safetensors` + `meta.json` in one folder.

The metadata names the architecture (enough to rebuild the model), and may
carry the task, the step, the label -> channel table, the resolved config and
metrics. It holds the payload's sha256 and size and is written last, so a
reader that finds `meta.json` finds a complete payload; the checksum is
verified on every load. Both files are written atomically (temporary file,
fsync, rename), so an interrupted write never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dkd_core.checkpoint_format import (
    FORMAT_VERSION,
    META_FILE,
    TRAINING_FILE,
    WEIGHTS_FILE,
    ChecksumMismatchError,
    InvalidCheckpointError,
    parse_meta,
    payload_entries,
    sha256_file,
    verified_payload,
)
from dkd_core.errors import DKDError
from dkd_core.model import DeepLabV3
from dkd_core.storage import fetch_checkpoint, is_remote, local_path, upload_checkpoint
from dkd_core.storage.store import atomic_path

log = logging.getLogger("dkd_core.checkpoint")

__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "TRAINING_FILE",
    "WEIGHTS_FILE",
    "ChecksumMismatchError",
    "InvalidCheckpointError",
    "load_model_checkpoint",
    "load_training_tensors",
    "open_model_checkpoint",
    "parse_meta",
    "payload_entries",
    "publish_model_checkpoint",
    "read_meta",
    "save_model_checkpoint",
    "sha256_file",
    "verified_payload",
]


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def save_model_checkpoint(
    directory: str | Path,
    model: DeepLabV3,
    meta: dict[str, Any],
    training_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the weights (and training-state tensors), then the metadata with checksums last.

    `training_tensors` (optimizer buffers, RNG states) go to their own file so
    that a final checkpoint, which has none, stays a plain model. Returns the folder.
    """
    directory = Path(directory)
    created = not directory.exists()
    try:
        full_meta = {"format_version": FORMAT_VERSION, **meta, "model": model.config()}
        full_meta["weights"] = _write_tensors(directory / WEIGHTS_FILE, model.state_dict())
        if training_tensors is not None:
            full_meta["training_tensors"] = _write_tensors(
                directory / TRAINING_FILE, training_tensors
            )
        text = json.dumps(full_meta, indent=2, sort_keys=True) + "\n"
        with atomic_path(directory / META_FILE) as tmp:
            tmp.write_text(text)
    except BaseException:
        if created:  # e.g. a full disk: no folder without a meta.json stays behind
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        raise DKDError(f"{meta_path} does not exist: {directory} is not a complete checkpoint")
    meta = parse_meta(meta_path.read_bytes(), str(meta_path))
    if "model" not in meta:
        raise DKDError(f"{meta_path}: missing key 'model'")
    return meta


def load_training_tensors(directory: str | Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The verified training-state tensors of a periodic checkpoint."""
    if "training_tensors" not in meta:
        raise DKDError(f"{directory}: checkpoint holds no training state")
    return load_file(str(verified_payload(Path(directory), meta["training_tensors"])))


def load_model_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[DeepLabV3, dict[str, Any]]:
    """Rebuild the model from `meta.json`, verify the payload's checksum, load the weights."""
    directory = Path(directory)
    meta = read_meta(directory)
    weights_path = verified_payload(directory, meta["weights"])
    arch = meta["model"]
    try:
        model = DeepLabV3(
            classes_per_step=arch["classes_per_step"],
            backbone=arch["backbone"],
            output_stride=arch["output_stride"],
            aspp_channels=arch["aspp_channels"],
            dropout=arch["dropout"],
        )
    except KeyError as e:
        raise DKDError(f"{directory / META_FILE}: model.{e.args[0]} is missing") from e
    state = load_file(str(weights_path), device=str(map_location))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DKDError(
            f"{weights_path}: weights do not fit the architecture in its metadata; "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.to(map_location), meta


# -- checkpoints at URIs (s3://, minio:// or local) ---------------------------------------


def publish_model_checkpoint(
    uri: str,
    model: DeepLabV3,
    meta: dict[str, Any],
    training_tensors: dict[str, torch.Tensor] | None = None,
    scratch: Path | None = None,
) -> int:
    """Save a checkpoint at `uri`; returns its size in bytes.

    A local URI is written in place. For S3 the folder is written to `scratch`
    first and uploaded payloads first, meta.json last (`storage.upload_checkpoint`).
    """
    if not is_remote(uri):
        directory = save_model_checkpoint(local_path(uri), model, meta, training_tensors)
        return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    if scratch is None:
        raise ValueError("publishing to S3 needs a local scratch folder")
    directory = Path(tempfile.mkdtemp(dir=scratch, prefix="checkpoint-"))
    try:
        save_model_checkpoint(directory, model, meta, training_tensors)
        upload_checkpoint(directory, uri)
        return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def open_model_checkpoint(
    uri: str, cache: Path, map_location: str | torch.device = "cpu"
) -> tuple[DeepLabV3, dict[str, Any], Path]:
    """Load the checkpoint at `uri` (downloaded once into `cache` when remote, checksums verified).

    Returns the model, its metadata and the local folder (for training-state tensors).
    """
    local = fetch_checkpoint(uri, cache)
    try:
        model, meta = _load_verified(local, map_location)
    except ChecksumMismatchError as e:
        if not is_remote(uri):
            raise
        # The cached copy was damaged after it was verified (disk, a stray write): once more.
        log.warning("%s; downloading %s again", e, uri)
        local = fetch_checkpoint(uri, cache, refresh=True)
        model, meta = _load_verified(local, map_location)
    return model, meta, local


def _load_verified(
    local: Path, map_location: str | torch.device
) -> tuple[DeepLabV3, dict[str, Any]]:
    """The model of a local checkpoint folder, after every payload's checksum (training state too)."""
    model, meta = load_model_checkpoint(local, map_location)
    for entry in payload_entries(meta):
        if entry["file"] != meta["weights"]["file"]:
            verified_payload(local, entry)
    return model, meta
