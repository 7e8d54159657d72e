"""Where a dataset's files are: image/label pairs of the train and val splits (docs/method.md §1, §2).

Three on-disk formats are understood:

- "voc": Pascal VOC 2012 with the SBD augmentation, as the authors lay it out:
  `JPEGImages/<id>.jpg`, `SegmentationClassAug/<id>.png` and the lists
  `ImageSets/Segmentation/{train_aug,val}.txt`. Val labels come from
  `SegmentationClass/` when that folder exists.
- "ade": ADE20K (SceneParsing): `images/{training,validation}/<id>.jpg` and
  `annotations/{training,validation}/<id>.png`.
- "palette": any dataset described by a `dataset.yaml` (classes, folders, suffixes, lists).

Labels are single-channel PNGs (palette indices or grayscale): 0 background,
1..K classes, 255 ignore (docs/method.md §1). Every path a split names is checked when the
split is listed, so a missing file is reported before training starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dkd_core.errors import DKDError

__all__ = [
    "ADE_UNSEEN_TEST_LABEL",
    "FORMATS",
    "SPLITS",
    "VOC_CLASS_NAMES",
    "DatasetLayout",
    "Sample",
    "SplitFiles",
    "open_layout",
]

FORMATS = ("voc", "ade", "palette")
SPLITS = ("train", "val")

VOC_CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
ADE_NUM_CLASSES = 150
# docs/method.md §2: at test time, labels of not-yet-seen classes become 0 (VOC) or 255 (ADE20K).
VOC_UNSEEN_TEST_LABEL = 0
ADE_UNSEEN_TEST_LABEL = 255
# Labels 1..K and 255 (ignore) share uint8: at most 254 classes besides background.
_MAX_CLASSES = 254

_CLASS_NAMES_FILE = "class_names.txt"
_VOC_LISTS = {"train": "train_aug.txt", "val": "val.txt"}
_ADE_FOLDERS = {"train": "training", "val": "validation"}
_PALETTE_YAML = "dataset.yaml"
_PALETTE_REQUIRED = ("classes", "images", "labels", "splits")
_PALETTE_OPTIONAL = {"image_suffix": ".jpg", "label_suffix": ".png", "unseen_test_label": 0}


@dataclass(frozen=True)
class Sample:
    """One image and its label PNG (both absolute paths)."""

    id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class SplitFiles:
    """Where one split's files are.

    `list_file` holds one id per line (or VOC's two-column lines); None means
    every `<id><image_suffix>` file in `image_dir` (ADE20K has no lists).
    """

    list_file: Path | None
    image_dir: Path
    label_dir: Path


@dataclass(frozen=True)
class DatasetLayout:
    """A dataset on disk: its class names and the samples of its train and val splits."""

    root: Path
    format: str  # "voc" | "ade" | "palette"
    class_names: tuple[str, ...]  # index = dataset label; [0] = background
    unseen_test_label: int  # docs/method.md §2: 0 for VOC and palette by default, 255 for ADE20K
    # Per-split files, as (split, files) pairs; when empty, the standard VOC/ADE20K folders.
    splits: tuple[tuple[str, SplitFiles], ...] = ()
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"

    @property
    def num_classes(self) -> int:
        """Number of classes, background not counted (labels 1..K)."""
        return len(self.class_names) - 1

    def split_files(self, split: str) -> SplitFiles:
        """The list file and folders of `split` ("train" or "val")."""
        if split not in SPLITS:
            raise DKDError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        files = dict(self.splits)
        if split in files:
            return files[split]
        if self.format == "voc":
            return _voc_split_files(self.root, split)
        if self.format == "ade":
            return _ade_split_files(self.root, split)
        raise DKDError(f"{self.root}: dataset layout ({self.format}) has no {split!r} split")

    def samples(self, split: str) -> list[Sample]:
        """The samples of `split`, sorted by id; every image and label file is checked to exist."""
        files = self.split_files(split)
        if files.list_file is None:
            ids = _ids_in_folder(files.image_dir, self.image_suffix)
        else:
            ids = _read_id_list(files.list_file)
        samples = [
            Sample(
                id=i,
                image=files.image_dir / f"{i}{self.image_suffix}",
                label=files.label_dir / f"{i}{self.label_suffix}",
            )
            for i in ids
        ]
        _check_files_exist(samples, files.list_file or files.image_dir)
        return samples


# --------------------------------------------------------------------------- listing


def _read_id_list(path: Path) -> list[str]:
    """Sorted unique ids of a list file.

    A line is an id ("2007_000032") or VOC's two columns
    ("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png"); the id
    is then the file name of the first column without its extension. Blank lines
    are skipped.
    """
    if not path.is_file():
        raise DKDError(f"{path}: split list file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DKDError(f"{path}: cannot read split list file ({exc})") from None
    ids: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        columns = line.split()
        if not columns:
            continue
        if len(columns) > 2:
            raise DKDError(
                f"{path}:{lineno}: expected an image id or two columns "
                f"'<image path> <label path>', got {len(columns)} columns"
            )
        ids.append(columns[0] if len(columns) == 1 else PurePosixPath(columns[0]).stem)
    return sorted(set(ids))


def _ids_in_folder(folder: Path, suffix: str) -> list[str]:
    if not folder.is_dir():
        raise DKDError(f"{folder}: image folder not found")
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}") if p.is_file())


def _check_files_exist(samples: list[Sample], source: Path) -> None:
    missing = [p for s in samples for p in (s.image, s.label) if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DKDError(f"{missing[0]}: file not found; it is named by {source}{more}")


def _voc_split_files(root: Path, split: str) -> SplitFiles:
    label_dir = root / "SegmentationClassAug"
    if split == "val" and (root / "SegmentationClass").is_dir():
        label_dir = root / "SegmentationClass"
    return SplitFiles(
        list_file=root / "ImageSets" / "Segmentation" / _VOC_LISTS[split],
        image_dir=root / "JPEGImages",
        label_dir=label_dir,
    )


def _ade_split_files(root: Path, split: str) -> SplitFiles:
    folder = _ADE_FOLDERS[split]
    return SplitFiles(
        list_file=None,
        image_dir=root / "images" / folder,
        label_dir=root / "annotations" / folder,
    )


# --------------------------------------------------------------------------- class names


def _check_class_names(names: list[str], source: Path) -> tuple[str, ...]:
    if len(names) < 2:
        raise DKDError(f"{source}: expected background and at least one class, got {names}")
    if len(names) - 1 > _MAX_CLASSES:
        raise DKDError(
            f"{source}: at most {_MAX_CLASSES} classes besides background, got {len(names) - 1}"
        )
    return tuple(names)


def _read_class_names_txt(path: Path) -> tuple[str, ...]:
    """`class_names.txt`: one name per line, background first; blank lines skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DKDError(f"{path}: cannot read class names ({exc})") from None
    return _check_class_names([line.strip() for line in lines if line.strip()], path)


def _read_ade_object_info(path: Path) -> tuple[str, ...]:
    """ADE20K's objectInfo150.txt: a header, then tab-separated rows ending with `Name`.

    A row's name column may list synonyms ("building, edifice"); the first is kept.
    """
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DKDError(f"{path}: cannot read class names ({exc})") from None
    names = ["other"]
    for lineno, line in enumerate(lines[1:], start=2):
        columns = line.split("\t")
        name = columns[-1].split(",")[0].strip()
        if len(columns) < 2 or not name:
            raise DKDError(f"{path}:{lineno}: expected tab-separated columns ending with a name")
        names.append(name)
    return _check_class_names(names, path)


# --------------------------------------------------------------------------- formats


def _open_voc(root: Path) -> DatasetLayout:
    names_file = root / _CLASS_NAMES_FILE
    names = _read_class_names_txt(names_file) if names_file.is_file() else VOC_CLASS_NAMES
    return DatasetLayout(root, "voc", names, VOC_UNSEEN_TEST_LABEL)


def _open_ade(root: Path) -> DatasetLayout:
    info = root / "objectInfo150.txt"
    if info.is_file():
        names = _read_ade_object_info(info)
    else:
        names = ("other", *(f"class {i}" for i in range(1, ADE_NUM_CLASSES + 1)))
    return DatasetLayout(root, "ade", names, ADE_UNSEEN_TEST_LABEL)


def _yaml_str(config: Mapping[str, Any], key: str, path: Path) -> str:
    value = config[key]
    if not isinstance(value, str) or not value:
        raise DKDError(f"{path}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _open_palette(root: Path) -> DatasetLayout:
    path = root / _PALETTE_YAML
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DKDError(f"{path}: cannot read dataset description ({exc})") from None
    if not isinstance(config, dict):
        raise DKDError(f"{path}: expected a mapping of keys, got {type(config).__name__}")
    known = (*_PALETTE_REQUIRED, *_PALETTE_OPTIONAL)
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise DKDError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(known)}")
    for key in _PALETTE_REQUIRED:
        if key not in config:
            raise DKDError(f"{path}: missing required key {key!r}")
    config = {**_PALETTE_OPTIONAL, **config}

    classes = config["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise DKDError(f"{path}: 'classes' must be a list of names (background first)")
    names = _check_class_names(classes, path)

    splits = config["splits"]
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        raise DKDError(
            f"{path}: 'splits' must map exactly 'train' and 'val' to list files, got {splits!r}"
        )
    unseen = config["unseen_test_label"]
    if isinstance(unseen, bool) or not isinstance(unseen, int) or not 0 <= unseen <= 255:
        raise DKDError(f"{path}: 'unseen_test_label' must be an integer in 0..255, got {unseen!r}")

    image_dir = root / _yaml_str(config, "images", path)
    label_dir = root / _yaml_str(config, "labels", path)
    split_files = tuple(
        (split, SplitFiles(root / _yaml_str(splits, split, path), image_dir, label_dir))
        for split in SPLITS
    )
    return DatasetLayout(
        root,
        "palette",
        names,
        unseen,
        splits=split_files,
        image_suffix=_yaml_str(config, "image_suffix", path),
        label_suffix=_yaml_str(config, "label_suffix", path),
    )


_OPENERS = {"voc": _open_voc, "ade": _open_ade, "palette": _open_palette}
# Auto-detection: the first marker found decides the format.
_MARKERS = (
    (_PALETTE_YAML, "palette"),
    ("ImageSets/Segmentation", "voc"),
    ("images/training", "ade"),
)


def open_layout(root: str | Path, format: str | None = None) -> DatasetLayout:
    """The layout of the dataset at `root`; `format` is auto-detected when None.

    Detection: `dataset.yaml` -> "palette", `ImageSets/Segmentation` -> "voc",
    `images/training` -> "ade".
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DKDError(f"{root}: dataset root not found (expected a folder)")
    if format is None:
        format = next((fmt for marker, fmt in _MARKERS if (root / marker).exists()), None)
        if format is None:
            looked_for = ", ".join(f"{marker} ({fmt})" for marker, fmt in _MARKERS)
            raise DKDError(f"{root}: cannot detect the dataset format; looked for {looked_for}")
    if format not in _OPENERS:
        raise DKDError(f"unknown dataset format {format!r}; valid formats: {', '.join(FORMATS)}")
    return _OPENERS[format](root)
