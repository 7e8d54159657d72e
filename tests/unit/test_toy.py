"""Tests for dkd_core.data.toy: the synthetic VOC-layout benchmark."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dkd_core.data import make_toy_dataset, open_layout, read_label, voc_palette
from dkd_core.errors import DKDError

CLASSES, IMAGES, SIZE = 6, 60, 64


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    make_toy_dataset(out, classes=CLASSES, images=IMAGES, size=SIZE, seed=0)
    return out


def folder_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def classes_in(label: np.ndarray) -> set[int]:
    return set(np.unique(label).tolist()) - {0, 255}


def test_files_and_lists(toy: Path) -> None:
    lists = toy / "ImageSets" / "Segmentation"
    train = (lists / "train_aug.txt").read_text().split()
    val = (lists / "val.txt").read_text().split()
    assert train == sorted(train) and val == sorted(val)
    assert len(val) == round(0.2 * IMAGES)
    assert not set(train) & set(val)
    ids = {p.stem for p in (toy / "JPEGImages").glob("*.jpg")}
    assert set(train) | set(val) == ids and len(ids) == IMAGES
    assert {p.stem for p in (toy / "SegmentationClassAug").glob("*.png")} == ids
    with Image.open(toy / "JPEGImages" / f"{train[0]}.jpg") as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (SIZE, SIZE)


def test_labels(toy: Path) -> None:
    layout = open_layout(toy)
    counts, seen = [], {"train": set(), "val": set()}
    for split in ("train", "val"):
        for sample in layout.samples(split):
            with Image.open(sample.label) as img:
                assert img.mode == "P" and img.size == (SIZE, SIZE)
                palette = np.array(img.getpalette()[: 256 * 3]).reshape(256, 3)
            np.testing.assert_array_equal(palette, voc_palette())
            label = read_label(sample.label)
            assert set(np.unique(label).tolist()) <= {*range(CLASSES + 1), 255}
            assert (label == 255).any()  # the ignore band along object boundaries
            counts.append(len(classes_in(label)))
            seen[split] |= classes_in(label)
    counts_arr = np.array(counts)
    assert (counts_arr >= 1).all()
    assert (counts_arr == 1).mean() > 0.6
    assert (counts_arr >= 2).sum() >= 3
    for split in ("train", "val"):
        assert seen[split] == set(range(1, CLASSES + 1)), split


def test_layout_detection(toy: Path) -> None:
    layout = open_layout(toy)
    assert layout.format == "voc"
    assert layout.class_names == (
        "background",
        "disc",
        "square",
        "triangle",
        "ring",
        "cross",
        "diamond",
    )
    assert layout.num_classes == CLASSES
    assert layout.unseen_test_label == 0


def test_voc_palette_values() -> None:
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[15].tolist() == [192, 128, 128]
    assert palette[255].tolist() == [224, 224, 192]


def test_deterministic(tmp_path: Path, toy: Path) -> None:
    out = tmp_path / "again"
    layout = make_toy_dataset(out, classes=CLASSES, images=IMAGES, size=SIZE, seed=0)
    assert layout.root == out.resolve()
    assert folder_digest(out) == folder_digest(toy)
    other = tmp_path / "other_seed"
    make_toy_dataset(other, classes=CLASSES, images=IMAGES, size=SIZE, seed=1)
    assert folder_digest(other) != folder_digest(toy)


def test_more_classes_than_shapes(tmp_path: Path) -> None:
    layout = make_toy_dataset(tmp_path, classes=8, images=16, size=32)
    assert layout.class_names[7:] == ("disc_2", "square_2")


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(DKDError, match="classes must be an integer >= 1"):
        make_toy_dataset(tmp_path, classes=0)
    with pytest.raises(DKDError, match="val_fraction must be in"):
        make_toy_dataset(tmp_path, val_fraction=1.0)
    with pytest.raises(DKDError, match="empty train or val split"):
        make_toy_dataset(tmp_path, images=2, val_fraction=0.1)


def test_an_existing_dataset_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "toy"
    make_toy_dataset(out, classes=3, images=10, size=16, seed=0)
    before = (out / "ImageSets" / "Segmentation" / "val.txt").read_text()
    with pytest.raises(DKDError, match=f"{out} already holds files .* --force"):
        make_toy_dataset(out, classes=3, images=12, size=16, seed=1)
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text() == before
    make_toy_dataset(out, classes=3, images=12, size=16, seed=1, overwrite=True)
    assert len((out / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()) > 0


def test_a_dataset_of_an_older_generator_is_recognised(tmp_path: Path) -> None:
    from dkd_core.data.toy import GENERATOR_FILE, toy_is_current

    assert not toy_is_current(tmp_path / "none")
    make_toy_dataset(tmp_path / "d", classes=3, images=6, size=16)
    assert toy_is_current(tmp_path / "d")
    (tmp_path / "d" / GENERATOR_FILE).write_text("1\n")  # another generator's images
    assert not toy_is_current(tmp_path / "d")
    (tmp_path / "d" / GENERATOR_FILE).unlink()  # made before the stamp existed
    assert not toy_is_current(tmp_path / "d")


def test_every_class_has_a_colour_of_its_own() -> None:
    from dkd_core.data.toy import _class_colours

    colours = _class_colours(6)[1:]  # [6, 3]
    gaps = np.abs(colours[:, None, :] - colours[None, :, :]).max(axis=-1)  # [6, 6]
    assert (gaps + np.eye(6)).min() > 0.5


def test_the_demo_draws_a_dataset_of_an_older_generator_again(tmp_path: Path, monkeypatch) -> None:
    import pipelines.__main__ as cli
    from dkd_core.data.toy import GENERATOR_FILE, toy_is_current

    ran: list[str] = []
    monkeypatch.setattr(cli, "DEMO_IMAGES", 12)
    monkeypatch.setattr(cli, "cmd_run", lambda args, overrides=(): ran.append(args.data) or 0)
    data = tmp_path / "toy"
    make_toy_dataset(data, classes=6, images=12, size=64, seed=0)
    (data / GENERATOR_FILE).write_text("1\n")
    label = data / "SegmentationClassAug" / "toy_00000.png"
    label.write_bytes(b"drawn by another generator")
    assert cli.main(["demo", "--data", str(data)]) == 0
    assert toy_is_current(data) and label.read_bytes() != b"drawn by another generator"
    assert ran == [str(data)]
    current = label.stat().st_mtime_ns
    assert cli.main(["demo", "--data", str(data)]) == 0  # a current dataset is kept
    assert label.stat().st_mtime_ns == current
