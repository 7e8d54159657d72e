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
from safetensors import SafetensorError, safe_open
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
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
    except SafetensorError as e:  # its I/O errors (a full disk) come as this type
        raise DKDError(f"{path}: cannot be written ({_first_line(e)})") from None
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
    path = verified_payload(Path(directory), meta["training_tensors"])
    try:
        return load_file(str(path))
    except Exception as e:
        raise DKDError(f"{path}: not a valid safetensors file ({_first_line(e)})") from None


# Bounds on an architecture read from meta.json, checked before anything is allocated
# (ADE20K, the largest benchmark, has 150 classes; the reference ASPP has 256 channels).
MAX_CLASSES = 1024
MAX_ASPP_CHANNELS = 4096


def _architecture(meta: dict[str, Any], meta_path: Path) -> dict[str, Any]:
    """meta.json's `model` section, every field checked for type and range."""
    from dkd_core.model.resnet import BACKBONES

    arch = meta.get("model")
    if not isinstance(arch, dict):
        raise DKDError(f"{meta_path}: 'model' must be a mapping, got {arch!r}")
    for key in ("classes_per_step", "backbone", "output_stride", "aspp_channels", "dropout"):
        if key not in arch:
            raise DKDError(f"{meta_path}: model.{key} is missing")
    heads = arch["classes_per_step"]
    if (
        not isinstance(heads, list)
        or not heads
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in heads)
        or sum(heads) > MAX_CLASSES
    ):
        raise DKDError(
            f"{meta_path}: model.classes_per_step must be a list of class counts >= 1 "
            f"(at most {MAX_CLASSES} in all), got {heads!r}"
        )
    if arch["backbone"] not in BACKBONES:
        raise DKDError(
            f"{meta_path}: model.backbone must be one of {sorted(BACKBONES)}, "
            f"got {arch['backbone']!r}"
        )
    if arch["output_stride"] not in (8, 16) or isinstance(arch["output_stride"], bool):
        raise DKDError(
            f"{meta_path}: model.output_stride must be 8 or 16, got {arch['output_stride']!r}"
        )
    channels = arch["aspp_channels"]
    if (
        not isinstance(channels, int)
        or isinstance(channels, bool)
        or not 1 <= channels <= MAX_ASPP_CHANNELS
    ):
        raise DKDError(
            f"{meta_path}: model.aspp_channels must be an integer in 1..{MAX_ASPP_CHANNELS}, "
            f"got {channels!r}"
        )
    dropout = arch["dropout"]
    if not isinstance(dropout, int | float) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise DKDError(f"{meta_path}: model.dropout must be a number in [0, 1), got {dropout!r}")
    return arch


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a safetensors file, from its header (no data read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except Exception as e:  # SafetensorError and friends: a header that lies or is cut short
        raise DKDError(f"{path}: not a valid safetensors file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_fit(weights_path: Path, model: DeepLabV3, stored: dict[str, list[int]]) -> None:
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - stored.keys())
    unexpected = sorted(stored.keys() - expected.keys())
    wrong = [k for k in sorted(expected.keys() & stored.keys()) if expected[k] != stored[k]]
    if missing or unexpected or wrong:
        details = [f"missing {missing[:3]}"] if missing else []
        details += [f"unexpected {unexpected[:3]}"] if unexpected else []
        details += [
            f"{k} is {stored[k]} in the file, {expected[k]} in the architecture" for k in wrong[:3]
        ]
        raise DKDError(
            f"{weights_path}: the weights do not fit the architecture in its meta.json "
            f"(model.classes_per_step {list(model.classes_per_step)}): {'; '.join(details)}"
        )


def load_model_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[DeepLabV3, dict[str, Any]]:
    """Rebuild the model from `meta.json`, verify the payload's checksum, load the weights.

    The architecture's fields and the tensor shapes in the safetensors header are
    checked before any tensor is allocated.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    arch = _architecture(meta, directory / META_FILE)
    weights_path = verified_payload(directory, meta["weights"])
    stored = _tensor_shapes(weights_path)
    model = DeepLabV3(
        classes_per_step=arch["classes_per_step"],
        backbone=arch["backbone"],
        output_stride=arch["output_stride"],
        aspp_channels=arch["aspp_channels"],
        dropout=arch["dropout"],
    )
    _check_fit(weights_path, model, stored)
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except Exception as e:
        raise DKDError(f"{weights_path}: not a valid safetensors file ({_first_line(e)})") from None
    model.load_state_dict(state, strict=True)
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
