"""`python -m dkd_core data fetch voc|ade DEST`: the official archives -> a dataset folder or prefix.

Sources: the official URLs below, `--mirror URL` (`URL/<archive name>`), or `--archives
DIR` (archives already on disk, no download). Downloads go through `dkd_core.download`
(resumed with HTTP Range after an interruption, a progress bar, verified before they
take their name) into `$DKD_CACHE/archives/`, where they are kept.

Checksums: only sums a public source states are pinned, each with its source beside
it. The VOC tar's MD5 is torchvision's and the ADE20K zip's SHA-1 gluon-cv's; no public
source states a sum (or an exact size) for `SegmentationClassAug.zip` or
`train_aug.txt`, so their sha256 is recorded at the first download (in
`$DKD_CACHE/archives/SHA256SUMS`, `sha256sum`'s format) and checked on later ones.
`--checksums FILE` (also `sha256sum`'s format) replaces the sums of the archives it
names, for a mirror that repackages them; the official sample counts are then not
checked, since the archives may not be the official ones.

DEST is a folder (extracted beside it, verified, then moved there: `archives`) or an
s3:// / minio:// prefix (extracted into `$DKD_CACHE/prepared/`, then pushed with
`push.push_dataset` and the local copy removed).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dkd_core.download import file_digests
from dkd_core.errors import DKDError
from dkd_core.locations import cache_dir
from dkd_core.prepare import PUSH_WORKERS
from dkd_core.prepare.archives import (
    ADE_ZIP,
    VOC_AUG_ZIP,
    VOC_TAR,
    VOC_TRAIN_AUG,
    Prepared,
    check_destination,
    prepare_ade,
    prepare_voc,
)
from dkd_core.prepare.push import push_dataset, training_files
from dkd_core.storage.store import atomic_output
from dkd_core.storage.stores import open_store
from dkd_core.storage.uris import is_remote, local_path


@dataclass(frozen=True)
class Archive:
    """One file of a dataset: its official URL and the checksum a public source states."""

    name: str
    url: str
    md5: str | None = None
    sha1: str | None = None
    pinned_by: str | None = None  # where the sum is stated; None: no public source states one


ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "voc": (
        Archive(
            VOC_TAR,
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            md5="6cd6e144f989b92b3379bac3b3de84fd",
            pinned_by="github.com/pytorch/vision torchvision/datasets/voc.py, "
            "DATASET_YEAR_DICT['2012']",
        ),
        # The two links of the authors' README (github.com/cvlab-yonsei/DKD, "Datasets");
        # `dl=1` asks Dropbox for the file rather than its web page (unchecked from here).
        Archive(
            VOC_AUG_ZIP, "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1"
        ),
        Archive(
            VOC_TRAIN_AUG,
            "https://github.com/cvlab-yonsei/DKD/releases/download/v1.0/train_aug.txt",
        ),
    ),
    "ade": (
        Archive(
            ADE_ZIP,
            "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
            sha1="219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
            pinned_by="github.com/dmlc/gluon-cv scripts/datasets/ade20k.py, _AUG_DOWNLOAD_URLS",
        ),
    ),
}
RECORDED_SUMS = "SHA256SUMS"
_SUM_LINE = re.compile(r"^(?P<sum>[0-9a-fA-F]{64}) [ *](?P<name>.+)$")


def read_checksums(path: Path) -> dict[str, str]:
    """{file name: sha256} of a file in `sha256sum`'s format (`<sum>  <name>`, or ` *<name>`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DKDError(f"--checksums {path}: cannot read it ({e})") from None
    sums = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _SUM_LINE.match(line.rstrip("\r"))
        if not match:
            raise DKDError(
                f"{path}:{lineno}: expected '<sha256>  <file name>' as sha256sum writes it"
            )
        sums[Path(match["name"]).name] = match["sum"].lower()
    return sums


def _write_checksums(path: Path, sums: dict[str, str]) -> None:
    with atomic_output(path) as f:
        f.write("".join(f"{s}  {name}\n" for name, s in sorted(sums.items())).encode())


def _complete(folder: Path, dataset: str) -> bool:
    """Whether `folder` holds a whole dataset of that format (every listed file present)."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return False
    try:
        training_files(folder, dataset)
    except DKDError:
        return False
    return True


def _archive_url(archive: Archive, mirror: str | None) -> str:
    return f"{mirror.rstrip('/')}/{archive.name}" if mirror else archive.url


def _check_inputs(dataset: str, dest: str, mirror: str | None, archives: str | None) -> None:
    """Everything that can be wrong before the first byte is downloaded."""
    if dataset not in ARCHIVES:
        raise DKDError(f"data fetch {dataset!r}: expected one of {', '.join(ARCHIVES)}")
    if mirror and not re.match(r"^https?://[^/]", mirror):
        raise DKDError(f"--mirror {mirror!r}: expected an http:// or https:// URL")
    if mirror and archives:
        raise DKDError("--mirror and --archives: give one (where to download, or what is on disk)")
    if archives:
        missing = [a.name for a in ARCHIVES[dataset] if not (Path(archives) / a.name).is_file()]
        if missing:
            raise DKDError(f"--archives {archives}: {', '.join(missing)} not found there")
    if is_remote(dest):
        open_store(dest).list_info(dest, recursive=False)  # a missing bucket or bad keys: now
    else:
        check_destination(local_path(dest))


def _obtain(
    archive: Archive,
    mirror: str | None,
    archives: str | None,
    override: dict[str, str],
    recorded: dict[str, str],
    progress: bool,
) -> tuple[Path, str]:
    """The verified local file of `archive` and its sha256; new sums are added to `recorded`."""
    from dkd_core.download import download

    expected = override.get(archive.name)
    pinned = expected is None and bool(archive.md5 or archive.sha1)
    if archives:
        path = Path(archives) / archive.name
    else:
        url = _archive_url(archive, mirror)
        path = cache_dir("archives") / archive.name
        download(
            url, path, progress=progress,
            sha256=expected or (None if pinned else recorded.get(archive.name)),
            md5=archive.md5 if expected is None else None,
        )  # fmt: skip
    algorithms = ["sha256"] + [a for a in ("md5", "sha1") if pinned and getattr(archive, a)]
    actual = file_digests(path, *algorithms)
    if expected is not None:
        checks = [("sha256", expected, "--checksums")]
    elif pinned:
        checks = [(a, getattr(archive, a), archive.pinned_by) for a in algorithms[1:]]
    else:
        checks = [("sha256", recorded.get(archive.name), "recorded at its first download")]
    for algorithm, want, source in checks:
        if want is not None and actual[algorithm] != want.lower():
            raise DKDError(
                f"{path}: {algorithm} {actual[algorithm]} is not {want} ({source}); delete it "
                "and run the same command again to download it anew (a mirror that "
                "repackages the archives needs --checksums FILE)"
            )
    if expected is None and not pinned:
        recorded.setdefault(archive.name, actual["sha256"])
    return path, actual["sha256"]


def fetch_dataset(
    dataset: str,
    dest: str,
    *,
    mirror: str | None = None,
    archives: str | None = None,
    checksums: str | None = None,
    workers: int = PUSH_WORKERS,
    progress: bool = True,
) -> dict:
    """Fetch `dataset` ("voc" or "ade") into the folder or s3:// prefix `dest`; a summary.

    A folder that holds the complete dataset already is left as it is, without a download.
    """
    if not is_remote(dest) and _complete(local_path(dest), dataset):
        return {"dataset": dataset, "dest": dest, "status": "already there"}
    _check_inputs(dataset, dest, mirror, archives)
    override = read_checksums(Path(checksums)) if checksums else {}
    record_file = cache_dir("archives") / RECORDED_SUMS
    recorded = read_checksums(record_file) if record_file.is_file() else {}
    known = dict(recorded)
    files, sums = {}, {}
    try:
        for archive in ARCHIVES[dataset]:
            files[archive.name], sums[archive.name] = _obtain(
                archive, mirror, archives, override, recorded, progress
            )
    finally:
        if recorded != known:
            _write_checksums(record_file, recorded)

    official = not override
    prepare = prepare_voc if dataset == "voc" else prepare_ade
    summary: dict = {"dataset": dataset, "dest": dest, "official_counts_checked": official}
    if is_remote(dest):
        local = cache_dir("prepared") / dataset
        if local.exists():
            shutil.rmtree(local)
        prepared: Prepared = prepare(files, local, official=official, progress=progress)
        pushed = push_dataset(local, dest, workers=workers, format=dataset, progress=progress)
        shutil.rmtree(local)
        summary.update(uploaded=pushed.uploaded, skipped=pushed.skipped)
    else:
        prepared = prepare(files, local_path(dest), official=official, progress=progress)
    summary.update(prepared.counts)
    summary["sha256"] = sums
    return summary
