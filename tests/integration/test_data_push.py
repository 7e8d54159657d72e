"""`data push`: what training reads goes up in parallel; a killed push finishes on the next
run, and a second push uploads nothing (moto's S3 server, tests/s3_server.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dkd_core.cli import main
from dkd_core.data import make_toy_dataset
from dkd_core.errors import DKDError
from dkd_core.prepare.push import push_dataset, s3_etag, training_files
from dkd_core.storage import open_store, sync_dataset
from tests.s3_server import S3Endpoint, s3

pytestmark = pytest.mark.integration
FIXTURES = (s3,)


@pytest.fixture
def voc_like(tmp_path: Path) -> Path:
    """A tiny VOC-layout dataset plus folders training never reads."""
    root = tmp_path / "VOC2012"
    make_toy_dataset(root, classes=3, images=10, size=16, seed=0)
    for unread in ("Annotations/toy_00000.xml", "SegmentationObject/toy_00000.png"):
        (root / unread).parent.mkdir(parents=True)
        (root / unread).write_text("not read by training")
    return root


def _keys(s3: S3Endpoint, prefix: str) -> dict[str, str]:
    return {
        o.object_name[len(prefix) :]: o.etag
        for o in s3.client().list_objects(s3.bucket, prefix=prefix, recursive=True)
    }


def test_push_uploads_what_training_reads_and_a_second_push_nothing(s3, voc_like, tmp_path):
    dest = s3.uri("shared/VOC2012")
    first = push_dataset(voc_like, dest, workers=4, progress=False)
    keys = _keys(s3, "shared/VOC2012/")
    assert sorted(keys) == training_files(voc_like)
    assert "class_names.txt" in keys and "ImageSets/Segmentation/val.txt" in keys
    assert not any(k.startswith(("Annotations", "SegmentationObject")) for k in keys)
    assert first.uploaded == first.files == len(keys) == 10 * 2 + 3  # pairs, 2 lists, names
    for rel, etag in keys.items():  # the ETag the push compares with is the server's
        assert etag.strip('"') == s3_etag(voc_like / rel)

    def refuse(local, uri):
        raise AssertionError(f"uploaded {uri} again")

    second = push_dataset(voc_like, dest, workers=4, progress=False, upload=refuse)
    assert (second.uploaded, second.skipped) == (0, first.files)
    # training reads the pushed prefix like any dataset
    mirrored = sync_dataset(dest, tmp_path / "cache", progress=False)
    assert training_files(mirrored) == training_files(voc_like)


def test_a_changed_file_of_the_same_size_is_uploaded_again(s3, voc_like):
    dest = s3.uri("VOC2012")
    push_dataset(voc_like, dest, progress=False)
    names = voc_like / "class_names.txt"
    text = names.read_text()
    names.write_text(text.replace("background", "BACKGROUND"))  # same size, other bytes
    sent: list[str] = []
    store = open_store(dest)

    def record(local, uri):
        sent.append(uri)
        store.upload_file(local, uri)

    result = push_dataset(voc_like, dest, progress=False, upload=record)
    assert sent == [s3.uri("VOC2012/class_names.txt")] and result.uploaded == 1


def test_a_killed_push_finishes_on_the_next_run(s3, voc_like):
    dest = s3.uri("VOC2012")
    store = open_store(dest)
    done = 0
    lock = threading.Lock()

    def dies_after_five(local, uri):
        nonlocal done
        with lock:
            if done == 5:
                raise KeyboardInterrupt  # as a Ctrl-C or a lost pod would stop it
            done += 1
        store.upload_file(local, uri)

    with pytest.raises(KeyboardInterrupt):
        push_dataset(voc_like, dest, workers=1, progress=False, upload=dies_after_five)
    assert len(_keys(s3, "VOC2012/")) == 5
    rest = push_dataset(voc_like, dest, workers=3, progress=False)
    assert (rest.uploaded, rest.skipped) == (rest.files - 5, 5)
    assert sorted(_keys(s3, "VOC2012/")) == training_files(voc_like)


def test_multipart_etag_matches_the_server(s3, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    part = 5 * 1024 * 1024
    s3.client().fput_object(s3.bucket, "big.bin", str(big), part_size=part)
    etag = open_store(s3.uri("big.bin")).stat(s3.uri("big.bin")).etag
    assert etag.strip('"') == s3_etag(big, part) and etag.strip('"').endswith("-3")
    assert s3_etag(big, part) != s3_etag(big)  # one part: a plain MD5


def test_cli_push_and_bad_input(s3, voc_like, capsys):
    assert main(["data", "push", str(voc_like), s3.uri("d"), "--workers", "2"]) == 0
    assert "uploaded: 23" in capsys.readouterr().out
    assert main(["data", "push", str(voc_like), s3.uri("d")]) == 0
    assert "uploaded: 0, skipped: 23" in capsys.readouterr().out
    assert main(["data", "push", str(voc_like), "/tmp/not-s3"]) == 2
    assert "expected an s3:// or minio:// prefix" in capsys.readouterr().err
    (voc_like / "JPEGImages" / "toy_00003.jpg").unlink()
    assert main(["data", "push", str(voc_like), s3.uri("e")]) == 2
    err = capsys.readouterr().err
    assert "toy_00003.jpg: file not found" in err and err.count("\n") == 1
    assert _keys(s3, "e/") == {}  # checked before anything goes up


def test_workers_must_be_positive(s3, voc_like):
    with pytest.raises(DKDError, match="--workers 0"):
        push_dataset(voc_like, s3.uri("d"), workers=0)
