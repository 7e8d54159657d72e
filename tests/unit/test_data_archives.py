"""Official archives -> the dataset folder `data.root` names (dkd_core.prepare.archives)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from dkd_core.data.layout import open_layout
from dkd_core.errors import DKDError, user_message
from dkd_core.prepare import archives as archives_module
from dkd_core.prepare.archives import (
    OFFICIAL_COUNTS,
    Prepared,
    prepare_ade,
    prepare_voc,
    staging_folder,
    verify_counts,
)
from tests.dataset_archives import make_ade_zip, make_voc_archives, voc_ids


@pytest.fixture(scope="module")
def voc_files(tmp_path_factory) -> dict[str, Path]:
    train, val = voc_ids(12, 4)
    return make_voc_archives(tmp_path_factory.mktemp("voc-archives"), train, val)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_voc_layout_holds_only_what_training_reads(voc_files, tmp_path):
    dest = tmp_path / "VOC2012"
    prepared = prepare_voc(voc_files, dest, official=False, progress=False)
    assert prepared.counts == {"train": 12, "val": 4}
    train, val = voc_ids(12, 4)
    assert _tree(dest) == {
        *(f"JPEGImages/{i}.jpg" for i in train + val),
        *(f"SegmentationClassAug/{i}.png" for i in train),
        *(f"SegmentationClass/{i}.png" for i in val),
        "ImageSets/Segmentation/train_aug.txt",
        "ImageSets/Segmentation/val.txt",
    }
    layout = open_layout(dest)
    assert layout.format == "voc"
    assert {s.label.parent.name for s in layout.samples("val")} == {"SegmentationClass"}
    assert (dest / "ImageSets/Segmentation/train_aug.txt").read_bytes() == voc_files[
        "train_aug.txt"
    ].read_bytes()
    assert not staging_folder(dest).exists()


def test_ade_layout(tmp_path):
    zip_path = make_ade_zip(tmp_path / "archives", train=5, val=2)
    dest = tmp_path / "ADEChallengeData2016"
    prepared = prepare_ade({zip_path.name: zip_path}, dest, official=False, progress=False)
    assert prepared.counts == {"train": 5, "val": 2}
    layout = open_layout(dest)
    assert layout.format == "ade" and layout.class_names[1] == "class1"
    assert "sceneCategories.txt" not in _tree(dest)  # training does not read it
    assert len(_tree(dest)) == 2 * 7 + 1


def test_official_counts_are_checked(voc_files, tmp_path):
    with pytest.raises(DKDError, match="12 train samples, the official archives give 10,582"):
        prepare_voc(voc_files, tmp_path / "VOC2012", official=True, progress=False)
    assert not (tmp_path / "VOC2012").exists() and not staging_folder(tmp_path / "VOC2012").exists()
    verify_counts(Prepared(tmp_path, "ade", dict(OFFICIAL_COUNTS["ade"])), "x")
    with pytest.raises(DKDError, match="1,999 val samples, the official archives give 2,000"):
        verify_counts(Prepared(tmp_path, "ade", {"train": 20_210, "val": 1_999}), "x")


@pytest.mark.parametrize("name", ["VOCtrainval_11-May-2012.tar", "SegmentationClassAug.zip"])
def test_a_truncated_archive_is_one_line_and_leaves_nothing(voc_files, tmp_path, name):
    files = dict(voc_files)
    cut = tmp_path / name
    data = voc_files[name].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    files[name] = cut
    dest = tmp_path / "VOC2012"
    with pytest.raises(DKDError) as raised:
        prepare_voc(files, dest, official=False, progress=False)
    message = user_message(raised.value)
    assert message.startswith(f"{cut}: damaged or truncated archive") and "\n" not in message
    assert "run the same command again" in message
    assert not dest.exists() and not staging_folder(dest).exists()


def test_a_missing_label_is_named(voc_files, tmp_path):
    files = dict(voc_files)
    aug = tmp_path / "train_aug.txt"
    aug.write_text(
        voc_files["train_aug.txt"].read_text() + "/JPEGImages/2011_1.jpg /x/2011_1.png\n"
    )
    files["train_aug.txt"] = aug
    with pytest.raises(DKDError, match=r"JPEGImages/2011_1.jpg: file not found"):
        prepare_voc(files, tmp_path / "VOC2012", official=False, progress=False)
    assert not (tmp_path / "VOC2012").exists()


def test_the_wrong_archive_says_so(voc_files, tmp_path):
    files = dict(voc_files, **{"SegmentationClassAug.zip": make_ade_zip(tmp_path, 1, 1)})
    with pytest.raises(DKDError, match=r"ADEChallengeData2016\.zip: holds no file matching"):
        prepare_voc(files, tmp_path / "VOC2012", official=False, progress=False)


def test_destination_with_files_is_refused_before_extracting(voc_files, tmp_path):
    dest = tmp_path / "VOC2012"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(DKDError, match="already holds files"):
        prepare_voc(voc_files, dest, official=False, progress=False)
    assert (dest / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_voc(voc_files, empty, official=False, progress=False)
    assert (empty / "JPEGImages").is_dir()


def test_a_full_disk_is_one_line_and_frees_the_staging_folder(voc_files, tmp_path, monkeypatch):
    calls = 0
    real = shutil.copyfileobj

    def fills_up(source, target, length=0):
        nonlocal calls
        calls += 1
        if calls == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target, length)

    monkeypatch.setattr(archives_module.shutil, "copyfileobj", fills_up)
    dest = tmp_path / "VOC2012"
    with pytest.raises(DKDError) as raised:
        prepare_voc(voc_files, dest, official=False, progress=False)
    assert "no space left on device" in str(raised.value) and str(tmp_path) in str(raised.value)
    assert not dest.exists() and not staging_folder(dest).exists()


def test_a_stale_staging_folder_is_started_over(voc_files, tmp_path):
    dest = tmp_path / "VOC2012"
    staging_folder(dest).mkdir()
    (staging_folder(dest) / "JPEGImages").mkdir()
    (staging_folder(dest) / "JPEGImages" / "half.jpg").write_bytes(b"\xff")
    prepare_voc(voc_files, dest, official=False, progress=False)
    assert not (dest / "JPEGImages" / "half.jpg").exists()


def test_a_tar_cut_between_two_members_is_truncated(voc_files, tmp_path):
    import tarfile

    with tarfile.open(voc_files["VOCtrainval_11-May-2012.tar"]) as tar:
        members = tar.getmembers()
    end = members[-1].offset_data + members[-1].size  # the last member's data, no end marker
    cut = tmp_path / "VOCtrainval_11-May-2012.tar"
    cut.write_bytes(voc_files[cut.name].read_bytes()[: -(-end // 512) * 512])
    with pytest.raises(DKDError, match="no end-of-archive marker"):
        prepare_voc(
            dict(voc_files, **{cut.name: cut}), tmp_path / "d", official=False, progress=False
        )
