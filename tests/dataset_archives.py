"""Small stand-ins for the official dataset archives: the official names and internal layouts.

- `VOCtrainval_11-May-2012.tar`: `VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,
  ImageSets/Segmentation,Annotations,SegmentationObject}` (the base folder torchvision's
  torchvision/datasets/voc.py names for the 2012 tar);
- `SegmentationClassAug.zip`: `SegmentationClassAug/<id>.png`, with the `__MACOSX/` copies
  zips made on macOS carry;
- `train_aug.txt`: `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png` lines, the format
  the authors' loader splits (github.com/cvlab-yonsei/DKD, data_loader/dataset.py);
- `ADEChallengeData2016.zip`: `ADEChallengeData2016/{images,annotations}/{training,validation}/`,
  `objectInfo150.txt` and `sceneCategories.txt`.

Images are 8x8 JPEGs; labels hold one class per image, so every step of a task finds some.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 8


def _jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG")
    return out.getvalue()


def _label(cls: int) -> bytes:
    label = np.zeros((SIZE, SIZE), dtype=np.uint8)
    label[2:6, 2:6] = cls
    label[0, :] = 255  # an ignore border, as VOC's labels have
    out = io.BytesIO()
    Image.fromarray(label, mode="L").save(out, format="PNG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def voc_ids(train: int, val: int) -> tuple[list[str], list[str]]:
    ids = [f"2007_{i:06d}" for i in range(train + val)]
    return ids[:train], ids[train:]


def make_voc_archives(folder: Path, train_ids: list[str], val_ids: list[str]) -> dict[str, Path]:
    """The three VOC files in `folder`; class of the i-th id: i mod 20 + 1."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = train_ids + val_ids
    cls = {i: n % 20 + 1 for n, i in enumerate(ids)}
    tar_path = folder / "VOCtrainval_11-May-2012.tar"
    base = "VOCdevkit/VOC2012"
    with tarfile.open(tar_path, "w") as tar:
        for n, i in enumerate([*ids, "2012_999999"]):  # and an image no list names
            _add(tar, f"{base}/JPEGImages/{i}.jpg", _jpeg(n))
            _add(tar, f"{base}/Annotations/{i}.xml", b"<annotation/>")
        for i in val_ids + train_ids[:2]:  # VOC's own labels: val and part of train
            _add(tar, f"{base}/SegmentationClass/{i}.png", _label(cls[i]))
            _add(tar, f"{base}/SegmentationObject/{i}.png", _label(1))
        _add(
            tar,
            f"{base}/ImageSets/Segmentation/val.txt",
            "".join(f"{i}\n" for i in val_ids).encode(),
        )
        _add(tar, f"{base}/ImageSets/Segmentation/train.txt", f"{train_ids[0]}\n".encode())
    zip_path = folder / "SegmentationClassAug.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for i in ids:
            zf.writestr(f"SegmentationClassAug/{i}.png", _label(cls[i]))
        zf.writestr(f"__MACOSX/SegmentationClassAug/._{ids[0]}.png", b"resource fork")
    aug = folder / "train_aug.txt"
    aug.write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in train_ids)
    )
    return {p.name: p for p in (tar_path, zip_path, aug)}


def make_ade_zip(folder: Path, train: int, val: int) -> Path:
    """`ADEChallengeData2016.zip` in `folder`; class of the n-th image: n mod 150 + 1."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ADEChallengeData2016.zip"
    base = "ADEChallengeData2016"
    rows = "".join(f"{k}\t0.01\t1\t1\tclass{k}, synonym\n" for k in range(1, 151))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{base}/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n" + rows)
        zf.writestr(f"{base}/sceneCategories.txt", "ADE_train_00000001 bathroom\n")
        for split, folder_name, count in (("train", "training", train), ("val", "validation", val)):
            for n in range(count):
                name = f"ADE_{split}_{n + 1:08d}"
                zf.writestr(f"{base}/images/{folder_name}/{name}.jpg", _jpeg(n))
                zf.writestr(f"{base}/annotations/{folder_name}/{name}.png", _label(n % 150 + 1))
    return path
