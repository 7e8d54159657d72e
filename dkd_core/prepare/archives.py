"""Official dataset archives -> the folder `data.root` names, extracted beside it, then moved.

VOC 2012 with the SBD augmentation comes from three files: the VOC trainval tar
(`VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}`), the
augmented labels `SegmentationClassAug.zip` (`SegmentationClassAug/<id>.png`) and the
list `train_aug.txt` (`/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png` lines), the
two the authors' README links (github.com/cvlab-yonsei/DKD, README "Datasets"). The
result is the layout `dkd_core.data.layout` reads:

    JPEGImages/<id>.jpg                   the images the lists name
    SegmentationClassAug/<id>.png         train_aug labels
    SegmentationClass/<id>.png            val labels (the official ones)
    ImageSets/Segmentation/{train_aug,val}.txt

ADE20K's `ADEChallengeData2016.zip` holds `ADEChallengeData2016/{images,annotations}/
{training,validation}/` and `objectInfo150.txt` (the class names), kept as they are.

Only what training reads is kept (`push.training_files`). Members are matched by
pattern and written under names built here, so no archive entry can write outside
the folder. Everything is extracted into a hidden folder beside DEST, verified (every
id the lists name has its image and label; with the official archives, the official
counts), and only then renamed to DEST: a failure leaves no half dataset there.
"""

from __future__ import annotations

import contextlib
import errno
import re
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from dkd_core.data.layout import SPLITS, open_layout
from dkd_core.errors import DKDError
from dkd_core.prepare.push import training_files

VOC_TAR = "VOCtrainval_11-May-2012.tar"
VOC_AUG_ZIP = "SegmentationClassAug.zip"
VOC_TRAIN_AUG = "train_aug.txt"
ADE_ZIP = "ADEChallengeData2016.zip"

# The sample counts of the official archives, as the authors' README states them
# (github.com/cvlab-yonsei/DKD, README "Datasets": 10,582 + 1,449 VOC, 20,210 + 2,000 ADE20K).
OFFICIAL_COUNTS = {"voc": {"train": 10_582, "val": 1_449}, "ade": {"train": 20_210, "val": 2_000}}

# archive member -> path in the dataset folder (the pattern's `path` group).
_VOC_TAR_MEMBERS = re.compile(
    r"^VOCdevkit/VOC2012/(?P<path>JPEGImages/[^/]+\.jpg|SegmentationClass/[^/]+\.png"
    r"|ImageSets/Segmentation/val\.txt)$"
)
# The labels' folder, at the top or below other folders; not macOS's __MACOSX/ or ._ copies.
_VOC_AUG_MEMBERS = re.compile(
    r"^(?!__MACOSX/)(?:[^/]+/)*?(?P<path>SegmentationClassAug/[^/.][^/]*\.png)$"
)
_ADE_MEMBERS = re.compile(
    r"^ADEChallengeData2016/(?P<path>(?:images/(?:training|validation)/[^/]+\.jpg)"
    r"|(?:annotations/(?:training|validation)/[^/]+\.png)|objectInfo150\.txt)$"
)
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError)


@dataclass(frozen=True)
class Prepared:
    root: Path
    format: str
    counts: dict[str, int]  # split -> samples


def staging_folder(dest: Path) -> Path:
    """The hidden folder beside `dest` that an extraction fills before it becomes `dest`."""
    return dest.parent / f".{dest.name}.extracting"


def prepare_voc(
    archives: dict[str, Path], dest: Path, *, official: bool, progress: bool = True
) -> Prepared:
    """Build the VOC 2012 + SBD folder `dest` from the three files in `archives` (by name)."""
    staging = _fresh_staging(dest)
    with _cleaned_on_failure(staging):
        _extract_tar(archives[VOC_TAR], _VOC_TAR_MEMBERS, staging, progress)
        _extract_zip(archives[VOC_AUG_ZIP], _VOC_AUG_MEMBERS, staging, progress)
        lists = staging / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archives[VOC_TRAIN_AUG], lists / "train_aug.txt")
        if not (lists / "val.txt").is_file():
            raise DKDError(
                f"{archives[VOC_TAR]}: holds no VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt; "
                f"is it {VOC_TAR}? Delete it and fetch again"
            )
        return _finish(staging, dest, "voc", official)


def prepare_ade(
    archives: dict[str, Path], dest: Path, *, official: bool, progress: bool = True
) -> Prepared:
    """Build the ADE20K folder `dest` from `ADEChallengeData2016.zip`."""
    staging = _fresh_staging(dest)
    with _cleaned_on_failure(staging):
        _extract_zip(archives[ADE_ZIP], _ADE_MEMBERS, staging, progress)
        return _finish(staging, dest, "ade", official)


def verify_counts(prepared: Prepared, source: str) -> None:
    """Raise unless `prepared` holds the official archives' number of samples per split."""
    expected = OFFICIAL_COUNTS[prepared.format]
    for split in SPLITS:
        if prepared.counts[split] != expected[split]:
            raise DKDError(
                f"{source}: {prepared.counts[split]:,} {split} samples, the official archives "
                f"give {expected[split]:,}; delete the archives and fetch them again"
            )


def check_destination(dest: Path) -> None:
    """Raise unless `dest` can receive a dataset: absent, or an empty folder."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DKDError(
            f"{dest}: already holds files and is not a complete dataset; choose an empty or "
            "new folder, or remove it"
        )


# --------------------------------------------------------------------------- helpers


def _fresh_staging(dest: Path) -> Path:
    check_destination(dest)
    staging = staging_folder(dest)
    if staging.exists():  # left by a killed run: extraction starts over (archives are kept)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


@contextlib.contextmanager
def _cleaned_on_failure(staging: Path) -> Iterator[None]:
    """Remove the staging folder when the block fails; a full disk becomes one line."""
    try:
        yield
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DKDError(
                f"extracting into {staging.parent}: no space left on device; free some space "
                "and run the same command again: downloaded archives are kept"
            ) from exc
        raise


def _damaged(archive: Path, exc: BaseException) -> DKDError:
    return DKDError(
        f"{archive}: damaged or truncated archive ({type(exc).__name__}: {exc}); delete it "
        "and run the same command again to download it anew"
    )


def _write_member(source: IO[bytes], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        shutil.copyfileobj(source, f, 1 << 20)


def _extract_tar(archive: Path, pattern: re.Pattern[str], staging: Path, progress: bool) -> None:
    found = 0
    try:
        with (
            tarfile.open(archive, "r:") as tar,
            tqdm(unit="file", desc=f"extract {archive.name}", disable=not progress) as bar,
        ):
            for member in tar:
                match = pattern.match(member.name)
                if not match or not member.isfile():
                    continue
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has contents
                _write_member(source, staging / match["path"])
                found += 1
                bar.update(1)
            # tarfile stops quietly when a cut falls between two members; a whole tar ends
            # with two zero blocks after its last member (POSIX ustar's end-of-archive).
            if archive.stat().st_size < tar.offset + 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker after the last member")
    except _DAMAGED as e:
        raise _damaged(archive, e) from e
    _check_found(archive, found, pattern)


def _extract_zip(archive: Path, pattern: re.Pattern[str], staging: Path, progress: bool) -> None:
    found = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            wanted = [
                (info, match["path"])
                for info in zf.infolist()
                if not info.is_dir() and (match := pattern.match(info.filename))
            ]
            for info, path in tqdm(
                wanted, unit="file", desc=f"extract {archive.name}", disable=not progress
            ):
                with zf.open(info) as source:
                    _write_member(source, staging / path)
                found += 1
    except _DAMAGED as e:
        raise _damaged(archive, e) from e
    _check_found(archive, found, pattern)


def _check_found(archive: Path, found: int, pattern: re.Pattern[str]) -> None:
    if not found:
        raise DKDError(
            f"{archive}: holds no file matching {pattern.pattern}; is it the right archive? "
            "Delete it and fetch again"
        )


def _finish(staging: Path, dest: Path, format: str, official: bool) -> Prepared:
    """Keep only what training reads, verify, count, then move `staging` to `dest`."""
    keep = set(training_files(staging, format))  # also: every listed id has image and label
    for path in sorted(staging.rglob("*"), reverse=True):  # files before their folders
        rel = path.relative_to(staging).as_posix()
        if path.is_file() and rel not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    layout = open_layout(staging, format)
    counts = {split: len(layout.samples(split)) for split in SPLITS}
    prepared = Prepared(dest, format, counts)
    if official:
        verify_counts(prepared, str(staging))
    check_destination(dest)
    if dest.exists():
        dest.rmdir()
    staging.rename(dest)
    return prepared
