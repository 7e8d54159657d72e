"""`data fetch`: archives with the official names and layouts, served by a local HTTP server,
into a folder and into the S3 test server; a split of the benchmark reads the result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dkd_core.cli import main
from dkd_core.errors import DKDError
from dkd_core.prepare import archives as archives_module
from dkd_core.prepare import fetch as fetch_module
from dkd_core.prepare.archives import staging_folder
from dkd_core.prepare.fetch import RECORDED_SUMS, fetch_dataset, read_checksums
from tests.dataset_archives import make_ade_zip, make_voc_archives, voc_ids
from tests.http_server import free_port, serve_files
from tests.s3_server import s3

pytestmark = pytest.mark.integration
FIXTURES = (s3,)
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def voc_files(tmp_path_factory) -> dict[str, bytes]:
    train, val = voc_ids(24, 6)
    paths = make_voc_archives(tmp_path_factory.mktemp("voc"), train, val)
    return {name: path.read_bytes() for name, path in paths.items()}


@pytest.fixture(scope="module")
def ade_files(tmp_path_factory) -> dict[str, bytes]:
    path = make_ade_zip(tmp_path_factory.mktemp("ade"), train=6, val=3)
    return {path.name: path.read_bytes()}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def sums_file(folder: Path, files: dict[str, bytes]) -> Path:
    """The archives' sums as `sha256sum` writes them (what a repackaging mirror publishes)."""
    path = folder / "SHA256SUMS.mirror"
    path.write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()))
    return path


def split_counts(config: str, root: str, output: Path, capsys) -> list[dict]:
    """Steps of the benchmark's split manifest built from the dataset at `root`."""
    config_file = REPO / "pipelines" / "configs" / f"{config}.yaml"
    args = ["split", "--config", str(config_file), f"data.root={root}", f"run.output={output}"]
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)["steps"]


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_voc_fetched_and_read_by_a_15_1_split(voc_files, tmp_path, where, request, capsys):
    dest = (
        request.getfixturevalue("s3").uri("shared/VOC2012")
        if where == "s3"
        else str(tmp_path / "VOC2012")
    )
    with serve_files(voc_files) as server:
        args = ["data", "fetch", "voc", dest, "--mirror", server.url("mirror")]
        server.files = {f"mirror/{n}": d for n, d in voc_files.items()}
        args += ["--checksums", str(sums_file(tmp_path, voc_files)), "--json"]
        assert main(args) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert (result["train"], result["val"]) == (24, 6)
    assert result["official_counts_checked"] is False  # --checksums: maybe not the official ones
    assert sorted(p for p, _ in server.requests) == sorted(f"mirror/{n}" for n in voc_files)
    steps = split_counts("voc_15-1", dest, tmp_path / "run", capsys)
    assert len(steps) == 6 and all(s["val"] + s["test"] > 0 for s in steps)
    if where == "s3":
        assert result["uploaded"] == 24 * 2 + 6 * 2 + 2
        assert not (tmp_path / "cache" / "prepared" / "voc").exists()  # pushed, then removed


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_ade_fetched_and_read_by_a_100_50_split(ade_files, tmp_path, where, request, capsys):
    dest = request.getfixturevalue("s3").uri("ADE") if where == "s3" else str(tmp_path / "ADE")
    with serve_files(ade_files) as server:
        summary = fetch_dataset(
            "ade", dest, mirror=server.url(""), checksums=str(sums_file(tmp_path, ade_files)),
            progress=False,
        )  # fmt: skip
    assert (summary["train"], summary["val"]) == (6, 3)
    steps = split_counts("ade_100-50", dest, tmp_path / "run", capsys)
    assert len(steps) == 2


def test_a_complete_folder_is_left_alone_without_network(voc_files, tmp_path):
    dest = tmp_path / "VOC2012"
    with serve_files(voc_files) as server:
        sums = str(sums_file(tmp_path, voc_files))
        fetch_dataset("voc", str(dest), mirror=server.url(""), checksums=sums, progress=False)
        server.requests.clear()
        again = fetch_dataset("voc", str(dest), mirror=server.url(""), checksums=sums)
    assert again["status"] == "already there" and server.requests == []


def test_the_pinned_md5_rejects_another_tar(voc_files, tmp_path, capsys):
    """Without --checksums the VOC tar must have torchvision's MD5: the generated one has not."""
    dest = tmp_path / "VOC2012"
    with serve_files(voc_files) as server:
        assert main(["data", "fetch", "voc", str(dest), "--mirror", server.url("")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "md5 mismatch" in err
    assert server.url("VOCtrainval_11-May-2012.tar") in err
    assert not dest.exists() and not staging_folder(dest).exists()


def test_a_wrong_sum_in_the_checksums_file(voc_files, tmp_path, capsys):
    sums = sums_file(tmp_path, voc_files)
    sums.write_text(
        sums.read_text().replace(hashlib.sha256(voc_files["train_aug.txt"]).hexdigest(), "0" * 64)
    )
    with serve_files(voc_files) as server:
        args = ["data", "fetch", "voc", str(tmp_path / "V"), "--mirror", server.url("")]
        assert main([*args, "--checksums", str(sums)]) == 2
    err = capsys.readouterr().err
    assert "train_aug.txt: sha256 mismatch" in err and err.count("\n") == 1
    assert not (tmp_path / "V").exists()


def test_a_truncated_archive_with_matching_sum_is_named(voc_files, tmp_path, capsys):
    files = dict(voc_files)
    files["SegmentationClassAug.zip"] = files["SegmentationClassAug.zip"][:-100]
    with serve_files(files) as server:
        args = ["data", "fetch", "voc", str(tmp_path / "V"), "--mirror", server.url("")]
        assert main([*args, "--checksums", str(sums_file(tmp_path, files))]) == 2
    err = capsys.readouterr().err
    assert "SegmentationClassAug.zip: damaged or truncated archive" in err
    assert err.count("\n") == 1 and not (tmp_path / "V").exists()


def test_an_interrupted_download_resumes_on_the_next_run(voc_files, tmp_path, cache):
    sums = str(sums_file(tmp_path, voc_files))
    dest = tmp_path / "VOC2012"
    with serve_files(voc_files) as server:
        server.cut_after = 4096  # every response breaks off: 4 tries in one call are not enough
        with pytest.raises(DKDError, match="run the same command again to resume"):
            fetch_dataset("voc", str(dest), mirror=server.url(""), checksums=sums, progress=False)
        partial = cache / "archives" / "VOCtrainval_11-May-2012.tar.partial"
        assert partial.stat().st_size == 4 * 4096 and not dest.exists()
        server.cut_after = None
        server.requests.clear()
        fetch_dataset("voc", str(dest), mirror=server.url(""), checksums=sums, progress=False)
    assert ("VOCtrainval_11-May-2012.tar", "bytes=16384-") in server.requests
    assert (dest / "ImageSets" / "Segmentation" / "train_aug.txt").is_file()


def test_unpinned_archives_are_recorded_then_checked(voc_files, tmp_path, cache, monkeypatch):
    """No public source states a sum for SegmentationClassAug.zip and train_aug.txt: their
    sha256 is recorded at the first download and a later download must match it."""
    tar = fetch_module.ARCHIVES["voc"][0]
    unpinned_tar = fetch_module.Archive(tar.name, tar.url)  # the generated tar is not VOC's
    monkeypatch.setitem(
        fetch_module.ARCHIVES, "voc", (unpinned_tar, *fetch_module.ARCHIVES["voc"][1:])
    )
    # without --checksums the official counts are checked: the stand-ins' here
    monkeypatch.setitem(archives_module.OFFICIAL_COUNTS, "voc", {"train": 24, "val": 6})
    with serve_files(voc_files) as server:
        summary = fetch_dataset("voc", str(tmp_path / "a"), mirror=server.url(""), progress=False)
        assert summary["official_counts_checked"] is True
        recorded = read_checksums(cache / "archives" / RECORDED_SUMS)
        assert recorded == {n: hashlib.sha256(d).hexdigest() for n, d in voc_files.items()}
        (cache / "archives" / "train_aug.txt").unlink()
        server.files["train_aug.txt"] = voc_files["train_aug.txt"] + b"\n"  # changed upstream
        with pytest.raises(DKDError, match=r"train_aug\.txt: sha256 mismatch"):
            fetch_dataset("voc", str(tmp_path / "b"), mirror=server.url(""), progress=False)
    assert not (tmp_path / "b").exists()


def test_from_archives_on_disk_and_bad_inputs(voc_files, tmp_path):
    folder = tmp_path / "archives"
    folder.mkdir()
    for name, data in voc_files.items():
        (folder / name).write_bytes(data)
    sums = str(sums_file(tmp_path, voc_files))
    summary = fetch_dataset("voc", str(tmp_path / "V"), archives=str(folder), checksums=sums)
    assert summary["train"] == 24
    (folder / "train_aug.txt").write_bytes(b"/JPEGImages/x.jpg /SegmentationClassAug/x.png\n")
    with pytest.raises(DKDError, match=r"archives/train_aug.txt: sha256 \w+ is not"):
        fetch_dataset("voc", str(tmp_path / "W"), archives=str(folder), checksums=sums)
    (folder / "train_aug.txt").unlink()
    with pytest.raises(DKDError, match=r"train_aug\.txt not found there"):
        fetch_dataset("voc", str(tmp_path / "W"), archives=str(folder))
    with pytest.raises(DKDError, match="expected an http"):
        fetch_dataset("voc", str(tmp_path / "W"), mirror="ftp://mirror")
    bad = tmp_path / "bad.sums"
    bad.write_text("abc  train_aug.txt\n")
    with pytest.raises(DKDError, match=r"bad.sums:1: expected '<sha256>  <file name>'"):
        fetch_dataset("voc", str(tmp_path / "W"), mirror="http://127.0.0.1:1", checksums=str(bad))


def test_a_404_and_a_refused_connection_are_one_line(tmp_path, capsys):
    with serve_files({}) as server:
        assert main(["data", "fetch", "ade", str(tmp_path / "A"), "--mirror", server.url("")]) == 2
    assert "ADEChallengeData2016.zip: HTTP 404" in capsys.readouterr().err
    mirror = f"http://127.0.0.1:{free_port()}"
    assert main(["data", "fetch", "ade", str(tmp_path / "A"), "--mirror", mirror]) == 2
    err = capsys.readouterr().err
    assert "connection refused" in err and err.count("\n") == 1


def test_a_missing_bucket_is_said_before_any_download(s3, tmp_path, capsys):
    with serve_files({}) as server:
        dest = f"s3://no-such-bucket-{s3.bucket}/VOC2012"
        assert main(["data", "fetch", "voc", dest, "--mirror", server.url("")]) == 2
    assert "does not exist" in capsys.readouterr().err and server.requests == []


def test_the_prepare_component_fetches_into_the_store(s3, ade_files, monkeypatch):
    """The body of the prepare pipelines' task: official archives (here stand-ins, their
    pin lifted) from a mirror, straight into the S3 prefix."""
    from components.dkd import prepare_dataset

    ade = fetch_module.ARCHIVES["ade"][0]
    monkeypatch.setitem(fetch_module.ARCHIVES, "ade", (fetch_module.Archive(ade.name, ade.url),))
    monkeypatch.setitem(archives_module.OFFICIAL_COUNTS, "ade", {"train": 6, "val": 3})
    with serve_files(ade_files) as server:
        prepare_dataset.python_func(
            dataset="ade", dataset_uri=s3.uri("shared/ADE"), mirror=server.url(""), s3_endpoint=""
        )
    keys = [
        o.object_name for o in s3.client().list_objects(s3.bucket, "shared/ADE/", recursive=True)
    ]
    assert "shared/ADE/objectInfo150.txt" in keys and len(keys) == 2 * 9 + 1
