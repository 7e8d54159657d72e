"""Per-step data splits and exemplar memory for class-incremental segmentation (docs/method.md §2).

For step t with new labels N = C_t and old labels O = C_0..C_{t-1} (docs/method.md §2):

- train: every train image whose mask holds at least one pixel of N. In the
  disjoint setting an image is also dropped if its mask holds any label outside
  O ∪ N ∪ {0, 255} (a future class); the overlapped setting keeps it.
- val (model selection): val-split images containing any class of N.
- test (reported numbers): val-split images containing any class of O ∪ N.

These are the image sets of the authors' code and of the MiB/PLOP/SSUL
codebases. Every rule is a boolean column selection over a per-image class
presence table (`class_presence`), so the label PNGs are decoded once for all
steps. The result is stored in a deterministic JSON manifest (no timestamps,
no absolute paths) whose input checksums let a cache tell when labels changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dkd_core.data.labels import NUM_LABEL_VALUES, read_label
from dkd_core.errors import DKDError
from dkd_core.tasks import Task

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "NUM_LABEL_VALUES",
    "StepSplit",
    "build_manifest",
    "build_or_load_manifest",
    "class_presence",
    "derive_splits",
    "manifest_from_reference_npy",
    "manifest_step",
    "read_manifest",
    "select_memory",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "dkd-split-manifest"
MANIFEST_VERSION = 1
# Label PNGs hold uint8 values: 0 background, 1..K classes, 255 ignore (docs/method.md §1).
BACKGROUND, IGNORE = 0, 255
SPLITS = ("train", "val", "test")

_TASK_KEYS = ("dataset", "name", "setting", "num_classes", "steps")
_STEP_KEYS = ("step", "new_labels", "old_labels", *SPLITS)


@dataclass(frozen=True)
class StepSplit:
    """The image ids of one step (docs/method.md §2); every id tuple is sorted."""

    step: int
    new_labels: tuple[int, ...]
    old_labels: tuple[int, ...]
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: plain lists, JSON-serialisable."""
        return {
            "step": self.step,
            "new_labels": list(self.new_labels),
            "old_labels": list(self.old_labels),
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
        }


# --------------------------------------------------------------------------- presence


def _label_presence(path: str | Path, image_path: str | Path | None = None) -> np.ndarray:
    """Bool [256]: which label values occur in one label PNG (one vectorised bincount).

    With `image_path`, the image's size (read from its header, not decoded) must
    be the label's: a mismatch would otherwise stop training mid-epoch.
    """
    label = read_label(path)  # [H, W]
    if image_path is not None:
        try:
            with Image.open(image_path) as image:
                width, height = image.size
        except FileNotFoundError:
            raise DKDError(f"{image_path}: image file not found") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DKDError(f"{image_path}: cannot read image ({exc})") from None
        if (height, width) != label.shape:
            raise DKDError(
                f"{path}: label is {label.shape[1]}x{label.shape[0]} but image {image_path} "
                f"is {width}x{height} (width x height)"
            )
    return np.bincount(label.ravel(), minlength=NUM_LABEL_VALUES) > 0


def _presence_of_pair(pair: tuple[str, str | None]) -> np.ndarray:
    return _label_presence(*pair)


def class_presence(
    label_paths: Sequence[Path],
    num_workers: int = 0,
    progress: bool = True,
    image_paths: Sequence[Path] | None = None,
) -> np.ndarray:
    """One pass over label PNGs: bool [num_images, 256], [i, v] = value v occurs in image i.

    Labels are read as palette indices (`np.asarray(Image.open(p))`, mode L or P);
    an RGB label or a missing file is a `DKDError` naming the file. With
    `image_paths` (one per label) each image's size is checked against its
    label's. With `num_workers > 0` the images are decoded in that many
    processes; rows keep the input order either way.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DKDError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    paths = [str(p) for p in label_paths]
    images = [str(p) for p in image_paths] if image_paths is not None else [None] * len(paths)
    if len(images) != len(paths):
        raise DKDError(f"expected one image per label, got {len(images)} and {len(paths)}")
    pairs = list(zip(paths, images, strict=True))
    presence = np.zeros((len(paths), NUM_LABEL_VALUES), dtype=bool)
    if not paths:
        return presence
    bar = tqdm(total=len(paths), desc="class presence", unit="img", disable=not progress)
    with bar:
        if num_workers == 0:
            rows: Iterable[np.ndarray] = map(_presence_of_pair, pairs)
            for i, row in enumerate(rows):
                presence[i] = row
                bar.update()
        else:
            # Chunks amortise inter-process traffic; ~8 chunks per worker keeps them balanced.
            chunksize = max(1, len(paths) // (num_workers * 8))
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                for i, row in enumerate(pool.map(_presence_of_pair, pairs, chunksize=chunksize)):
                    presence[i] = row  # Executor.map yields results in input order
                    bar.update()
    return presence


# --------------------------------------------------------------------------- splits


def _label_mask(labels: Iterable[int]) -> np.ndarray:
    """Bool [256] column selector for the given label values."""
    mask = np.zeros(NUM_LABEL_VALUES, dtype=bool)
    mask[list(labels)] = True
    return mask


def _check_ids(ids: Sequence[str], what: str) -> list[str]:
    ids = list(ids)
    bad = [i for i in ids if not isinstance(i, str) or not i]  # None included
    if bad:
        raise DKDError(f"{what}: image ids must be non-empty strings, got {bad[0]!r}")
    _check_unique(ids, what)
    return ids


def _check_unique(ids: Sequence[str], what: str) -> None:
    duplicated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicated:
        raise DKDError(f"{what}: image ids must be unique; duplicated: {duplicated[:5]}")


def _check_presence(presence: np.ndarray, num_ids: int, what: str) -> np.ndarray:
    presence = np.asarray(presence)
    if presence.dtype != bool or presence.shape != (num_ids, NUM_LABEL_VALUES):
        raise DKDError(
            f"{what}: expected a bool array of shape ({num_ids}, {NUM_LABEL_VALUES}) "
            f"(one row per image id), got {presence.dtype} {presence.shape}"
        )
    return presence


def _select(ids: Sequence[str], keep: np.ndarray) -> tuple[str, ...]:
    """The ids whose row is kept, sorted."""
    return tuple(sorted(ids[i] for i in np.flatnonzero(keep)))


def derive_splits(
    task: Task,
    train_ids: Sequence[str],
    train_presence: np.ndarray,
    val_ids: Sequence[str],
    val_presence: np.ndarray,
) -> list[StepSplit]:
    """The train/val/test image ids of every step of `task` (docs/method.md §2).

    `*_presence[i]` is the class presence row (`class_presence`) of `*_ids[i]`.
    """
    train_ids = _check_ids(train_ids, "train ids")
    val_ids = _check_ids(val_ids, "val ids")
    train_presence = _check_presence(train_presence, len(train_ids), "train_presence")
    val_presence = _check_presence(val_presence, len(val_ids), "val_presence")

    splits = []
    for step in task:
        new = _label_mask(step.new_labels)
        seen = _label_mask(step.seen_labels)
        # docs/method.md §2: train keeps images holding at least one pixel of a new class ...
        train_keep = train_presence[:, new].any(axis=1)
        if task.setting == "disjoint":
            # ... and, disjoint only, drops those holding a future class:
            # any label outside O ∪ N ∪ {0, 255}.
            allowed = seen.copy()
            allowed[[BACKGROUND, IGNORE]] = True
            train_keep &= ~train_presence[:, ~allowed].any(axis=1)
        splits.append(
            StepSplit(
                step=step.index,
                new_labels=step.new_labels,
                old_labels=step.old_labels,
                train=_select(train_ids, train_keep),
                # docs/method.md §2: val = val-split images with any new class; test = any seen class.
                val=_select(val_ids, val_presence[:, new].any(axis=1)),
                test=_select(val_ids, val_presence[:, seen].any(axis=1)),
            )
        )
    return splits


# --------------------------------------------------------------------------- manifest


def _task_dict(task: Task) -> dict[str, Any]:
    return {
        "dataset": task.dataset,
        "name": task.name,
        "setting": task.setting,
        "num_classes": task.num_classes,
        "steps": [list(labels) for labels in task.steps],
    }


def _sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                digest.update(chunk)
    except FileNotFoundError:
        raise DKDError(f"{path}: label file not found") from None
    except OSError as exc:
        raise DKDError(f"{path}: cannot read label file ({exc})") from None
    return digest.hexdigest()


def _check_inputs(ids: Sequence[str], paths: Sequence[Path], split: str) -> list[str]:
    ids = _check_ids(ids, f"{split} ids")
    if len(ids) != len(paths):
        raise DKDError(
            f"{split}: expected one label path per image id, got {len(ids)} ids "
            f"and {len(paths)} label paths"
        )
    return ids


def _inputs_checksum(ids: Sequence[str], paths: Sequence[Path], progress: bool) -> dict[str, Any]:
    """{"count", "sha256"}: a digest of the sorted (id, label file sha256) pairs.

    It depends only on the ids and the label bytes (never on paths or times), so
    a cached manifest stays valid when the data moves and goes stale when a
    label changes.
    """
    files = tqdm(paths, desc="label checksums", unit="file", disable=not progress)
    pairs = sorted(zip(ids, (_sha256_file(Path(p)) for p in files), strict=True))
    payload = json.dumps(pairs, separators=(",", ":")).encode()
    return {"count": len(pairs), "sha256": hashlib.sha256(payload).hexdigest()}


def _class_image_counts(presence: np.ndarray, num_classes: int) -> dict[str, int]:
    counts = presence[:, 1 : num_classes + 1].sum(axis=0)
    return {str(label): int(n) for label, n in enumerate(counts, start=1)}


def _manifest(
    task: Task, inputs: dict[str, Any], splits: Sequence[StepSplit], **extra: Any
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "task": _task_dict(task),
        "inputs": inputs,
        **extra,
        "steps": [split.to_dict() for split in splits],
    }


def _build(
    task: Task,
    inputs: dict[str, Any],
    train_ids: list[str],
    train_label_paths: Sequence[Path],
    val_ids: list[str],
    val_label_paths: Sequence[Path],
    num_workers: int,
    progress: bool,
    train_image_paths: Sequence[Path] | None = None,
    val_image_paths: Sequence[Path] | None = None,
) -> dict[str, Any]:
    train_presence = class_presence(train_label_paths, num_workers, progress, train_image_paths)
    val_presence = class_presence(val_label_paths, num_workers, progress, val_image_paths)
    for presence, paths in ((train_presence, train_label_paths), (val_presence, val_label_paths)):
        _check_label_values(presence, paths, task.num_classes)
    splits = derive_splits(task, train_ids, train_presence, val_ids, val_presence)
    counts = {
        "train": _class_image_counts(train_presence, task.num_classes),
        "val": _class_image_counts(val_presence, task.num_classes),
    }
    return _manifest(task, inputs, splits, class_image_counts=counts)


def _check_label_values(
    presence: np.ndarray, label_paths: Sequence[Path], num_classes: int
) -> None:
    """Every label value is background, ignore or a class 1..K (docs/method.md §1): checked here, in
    seconds, rather than by the DataLoader in the middle of training."""
    allowed = np.zeros(NUM_LABEL_VALUES, dtype=bool)  # [256]
    allowed[[BACKGROUND, IGNORE, *range(1, num_classes + 1)]] = True
    bad_rows = np.flatnonzero((presence & ~allowed).any(axis=1))
    if bad_rows.size:
        row = int(bad_rows[0])
        values = np.flatnonzero(presence[row] & ~allowed).tolist()
        more = f" ({bad_rows.size - 1} more labels too)" if bad_rows.size > 1 else ""
        raise DKDError(
            f"{label_paths[row]}: label values {values} are not classes of this dataset; "
            f"expected 0 (background), 255 (ignore) and 1..{num_classes}{more}"
        )


def build_manifest(
    task: Task,
    train_ids: Sequence[str],
    train_label_paths: Sequence[Path],
    val_ids: Sequence[str],
    val_label_paths: Sequence[Path],
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The split manifest of `task`: every step's image ids, input checksums, class counts.

    `*_label_paths[i]` is the label PNG of `*_ids[i]`. The same inputs always give
    the same manifest (and, through `write_manifest`, the same bytes).
    """
    train_ids = _check_inputs(train_ids, train_label_paths, "train")
    val_ids = _check_inputs(val_ids, val_label_paths, "val")
    inputs = {
        "train": _inputs_checksum(train_ids, train_label_paths, progress),
        "val": _inputs_checksum(val_ids, val_label_paths, progress),
    }
    return _build(
        task, inputs, train_ids, train_label_paths, val_ids, val_label_paths, num_workers, progress
    )


def build_or_load_manifest(
    task: Task,
    train_ids: Sequence[str],
    train_label_paths: Sequence[Path],
    val_ids: Sequence[str],
    val_label_paths: Sequence[Path],
    cache_path: Path,
    num_workers: int = 0,
    progress: bool = True,
    train_image_paths: Sequence[Path] | None = None,
    val_image_paths: Sequence[Path] | None = None,
) -> dict[str, Any]:
    """The manifest cached at `cache_path` if its task and input checksums match, else a new one.

    Only the label checksums are computed on a cache hit (cheap next to decoding
    every PNG); a missing, unreadable or stale cache is rebuilt and written to
    `cache_path`. A build checks every label value, and every image's size
    against its label's when `*_image_paths` are given.
    """
    cache_path = Path(cache_path)
    train_ids = _check_inputs(train_ids, train_label_paths, "train")
    val_ids = _check_inputs(val_ids, val_label_paths, "val")
    inputs = {
        "train": _inputs_checksum(train_ids, train_label_paths, progress),
        "val": _inputs_checksum(val_ids, val_label_paths, progress),
    }
    if cache_path.exists():
        try:
            cached = read_manifest(cache_path)
        except DKDError as exc:
            log.warning("rebuilding split manifest: %s", exc)
        else:
            if cached["task"] == _task_dict(task) and cached["inputs"] == inputs:
                return cached
            log.info("split manifest %s is stale (task or labels changed); rebuilding", cache_path)
    manifest = _build(
        task, inputs, train_ids, train_label_paths, val_ids, val_label_paths, num_workers,
        progress, train_image_paths, val_image_paths,
    )  # fmt: skip
    write_manifest(manifest, cache_path)
    return manifest


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode("utf-8")


def write_manifest(manifest: Mapping[str, Any], path: Path) -> None:
    """Write `manifest` as sorted-key JSON, atomically (temporary file + `os.replace`).

    Identical manifests give byte-identical files; readers never see a partial file.
    """
    path = Path(path)
    data = _manifest_bytes(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name: several writers (pods on a shared volume) may race on the same cache.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _require(obj: Any, keys: Iterable[str], where: str, path: Path) -> None:
    if not isinstance(obj, dict):
        raise DKDError(f"{path}: {where} must be a JSON object, got {type(obj).__name__}")
    for key in keys:
        if key not in obj:
            raise DKDError(f"{path}: {where} is missing required key {key!r}")


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def read_manifest(path: Path) -> dict[str, Any]:
    """Read a split manifest, checking its format, version and required keys."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DKDError(f"{path}: split manifest not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DKDError(f"{path}: not a readable JSON split manifest ({exc})") from None
    _require(manifest, ("format", "version"), "the manifest", path)
    if manifest["format"] != MANIFEST_FORMAT:
        raise DKDError(f"{path}: format is {manifest['format']!r}, expected {MANIFEST_FORMAT!r}")
    if manifest["version"] != MANIFEST_VERSION:
        raise DKDError(
            f"{path}: unsupported manifest version {manifest['version']!r}, "
            f"expected {MANIFEST_VERSION}"
        )
    _require(manifest, ("task", "inputs", "steps"), "the manifest", path)
    _require(manifest["task"], _TASK_KEYS, "'task'", path)
    _require(manifest["inputs"], (), "'inputs'", path)
    task_steps = manifest["task"]["steps"]
    if not isinstance(task_steps, list) or not all(_is_int_list(s) for s in task_steps):
        raise DKDError(f"{path}: 'task.steps' must be a list of label lists")
    steps = manifest["steps"]
    if not isinstance(steps, list) or len(steps) != len(task_steps):
        raise DKDError(
            f"{path}: 'steps' must be a list with one entry per task step ({len(task_steps)})"
        )
    old: list[int] = []
    for t, entry in enumerate(steps):
        _require(entry, _STEP_KEYS, f"'steps[{t}]'", path)
        if entry["step"] != t:
            raise DKDError(f"{path}: 'steps[{t}].step' is {entry['step']!r}, expected {t}")
        if entry["new_labels"] != task_steps[t] or entry["old_labels"] != old:
            raise DKDError(
                f"{path}: 'steps[{t}]' labels do not match 'task.steps': expected "
                f"new_labels {task_steps[t]} and old_labels {old}"
            )
        for split in SPLITS:
            ids = entry[split]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise DKDError(f"{path}: 'steps[{t}].{split}' must be a list of image id strings")
        old = old + task_steps[t]
    return manifest


def manifest_step(manifest: Mapping[str, Any], step: int) -> StepSplit:
    """Step `step` of a manifest (as from `read_manifest` or `build_manifest`)."""
    steps = manifest["steps"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(steps):
        task = manifest.get("task", {})
        raise DKDError(
            f"step {step!r} is not in the split manifest of task "
            f"{task.get('dataset')} {task.get('name')}; valid steps: "
            f"{', '.join(str(t) for t in range(len(steps)))}"
        )
    entry = steps[step]
    return StepSplit(
        step=int(entry["step"]),
        new_labels=tuple(entry["new_labels"]),
        old_labels=tuple(entry["old_labels"]),
        train=tuple(entry["train"]),
        val=tuple(entry["val"]),
        test=tuple(entry["test"]),
    )


# --------------------------------------------------------------------------- reference lists


def _reference_ids(path: Path) -> tuple[str, ...]:
    """Image ids of one of the authors' split files, sorted.

    Each entry is an image id ("2007_000033", "ADE_train_00000001") or, for VOC
    train, a train_aug.txt line "/JPEGImages/x.jpg /SegmentationClassAug/x.png":
    the id is the basename, without extension, of the first column.
    """
    if not path.is_file():
        raise DKDError(
            f"{path}: reference split file not found; expected one "
            "<setting>_<task>_{train,val,test}_<step:02d>.npy per step"
        )
    try:
        entries = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DKDError(
            f"{path}: not a plain numpy string array (it needs pickle or is corrupt: {exc})"
        ) from None
    except OSError as exc:
        raise DKDError(f"{path}: cannot read reference split file ({exc})") from None
    if not isinstance(entries, np.ndarray):
        raise DKDError(f"{path}: expected a single .npy array, got {type(entries).__name__}")
    if entries.size == 0:  # np.save(np.array([])) stores an empty float array
        return ()
    if entries.ndim != 1 or entries.dtype.kind not in "US":
        raise DKDError(
            f"{path}: expected a 1-d array of strings, got {entries.dtype} {entries.shape}"
        )
    ids = []
    for i, entry in enumerate(entries.tolist()):
        text = entry.decode() if isinstance(entry, bytes) else entry
        columns = text.split()
        if not columns:
            raise DKDError(f"{path}: entry {i} is empty; expected an image id or list line")
        ids.append(PurePosixPath(columns[0]).stem)
    _check_unique(ids, str(path))
    return tuple(sorted(ids))


def manifest_from_reference_npy(task: Task, folder: Path) -> dict[str, Any]:
    """A manifest from the authors' published per-step lists (`data/voc`, `data/ade`).

    Reads `<setting>_<name>_{train,val,test}_<step:02d>.npy` for every step of
    `task` from `folder`. The result has the shape of `build_manifest`'s, with
    `inputs = {"source": "reference-npy"}` and no class counts.
    """
    folder = Path(folder)
    splits = []
    for step in task:
        ids = {
            split: _reference_ids(
                folder / f"{task.setting}_{task.name}_{split}_{step.index:02d}.npy"
            )
            for split in SPLITS
        }
        splits.append(
            StepSplit(
                step.index, step.new_labels, step.old_labels, ids["train"], ids["val"], ids["test"]
            )
        )
    return _manifest(task, {"source": "reference-npy"}, splits)


# --------------------------------------------------------------------------- memory


def select_memory(
    candidates: Sequence[str],
    candidate_labels: Mapping[str, Iterable[int]] | np.ndarray,
    old_labels: Sequence[int],
    mem_size: int,
    seed: int,
) -> list[str]:
    """Class-balanced exemplar memory for DKD-M (docs/method.md §2); ids in selection order.

    `candidate_labels` gives each candidate's (pseudo-)label set: a mapping id ->
    labels, or a presence array [len(candidates), 256] aligned with `candidates`.
    The candidates are shuffled with `np.random.default_rng(seed)`; then, over
    the old classes in a random order (same generator), round-robin: each class
    takes the next not-yet-taken candidate (in shuffled order) that contains it,
    until `mem_size` are taken or no class can take any more.
    """
    candidates = _check_ids(candidates, "memory candidates")
    if isinstance(mem_size, bool) or not isinstance(mem_size, int) or mem_size < 0:
        raise DKDError(f"mem_size must be a non-negative integer, got {mem_size!r}")
    classes = list(dict.fromkeys(int(c) for c in old_labels))
    if isinstance(candidate_labels, np.ndarray):
        presence = _check_presence(candidate_labels, len(candidates), "candidate_labels")
        label_sets = [set(np.flatnonzero(row).tolist()) for row in presence]
    else:
        missing = [c for c in candidates if c not in candidate_labels]
        if missing:
            raise DKDError(f"candidate_labels has no label set for candidates {missing[:5]}")
        label_sets = [{int(v) for v in candidate_labels[c]} for c in candidates]

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(candidates))
    class_order = [classes[i] for i in rng.permutation(len(classes))]

    # One queue per old class: the candidates containing it, in shuffled order.
    queues: dict[int, list[int]] = {c: [] for c in classes}
    for idx in order.tolist():
        for c in label_sets[idx]:
            if c in queues:
                queues[c].append(idx)
    pointers = dict.fromkeys(classes, 0)
    taken = np.zeros(len(candidates), dtype=bool)
    selected: list[str] = []
    while len(selected) < mem_size:
        took_any = False
        for c in class_order:
            queue, ptr = queues[c], pointers[c]
            while ptr < len(queue) and taken[queue[ptr]]:
                ptr += 1  # taken earlier for another class
            if ptr < len(queue):
                taken[queue[ptr]] = True
                selected.append(candidates[queue[ptr]])
                ptr += 1
                took_any = True
            pointers[c] = ptr
            if len(selected) == mem_size:
                break
        if not took_any:
            break
    return selected
