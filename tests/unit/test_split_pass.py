"""The split pass around the rules: worker pool, progress bars, input checksum, error lines."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from dkd_core.data import splits
from dkd_core.data.splits import (
    build_manifest,
    build_or_load_manifest,
    class_presence,
    manifest_from_reference_npy,
    read_manifest,
    select_memory,
    write_manifest,
)
from dkd_core.errors import DKDError
from dkd_core.tasks import get_task
from tests.unit.test_splits import _write_label


def labels(folder: Path, n: int) -> list[Path]:
    """n 8x8 label PNGs; image i holds background and class 1 + i % 3."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"l{i:02d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        _write_label(path, (0, 1 + i % 3), palette=False)
    return paths


class RecordingPool:
    """Stands in for ProcessPoolExecutor: records how it is asked to run, runs in-process."""

    calls: ClassVar[list[dict]] = []

    def __init__(self, **kwargs):
        self.call = dict(kwargs)
        RecordingPool.calls.append(self.call)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, *iterables, **kwargs):
        self.call.update(kwargs)
        return map(fn, *iterables)


@pytest.fixture
def pool(monkeypatch):
    RecordingPool.calls = []
    monkeypatch.setattr(splits, "ProcessPoolExecutor", RecordingPool)
    return RecordingPool.calls


def test_no_worker_processes_unless_asked(tmp_path, pool):
    paths = labels(tmp_path, 3)
    class_presence(paths, progress=False)
    build_manifest(get_task("toy", "joint", num_classes=3), ["a", "b"], paths[:2], ["c"],
                   paths[2:], progress=False)  # fmt: skip
    build_or_load_manifest(get_task("toy", "joint", num_classes=3), ["a"], paths[:1], ["c"],
                           paths[2:], tmp_path / "m.json", progress=False)  # fmt: skip
    assert pool == []


@pytest.mark.parametrize(("n", "workers"), [(3, 2), (9, 1), (40, 2)])
def test_the_pool_has_the_workers_asked_for_and_integer_chunks(tmp_path, pool, n, workers):
    paths = labels(tmp_path, n)
    presence = class_presence(paths, num_workers=workers, progress=False)
    assert [call["max_workers"] for call in pool] == [workers]
    chunksize = pool[0]["chunksize"]  # Executor.map takes an integer >= 1
    assert isinstance(chunksize, int) and chunksize >= 1
    assert [np.flatnonzero(row).tolist() for row in presence] == [[0, 1 + i % 3] for i in range(n)]


def test_progress_bars_name_their_pass_unit_and_count(tmp_path, capsys):
    paths = labels(tmp_path, 3)
    class_presence(paths)  # progress is on by default
    err = capsys.readouterr().err
    assert "class presence" in err and "3/3" in err and "img" in err
    task = get_task("toy", "joint", num_classes=3)
    build_manifest(task, ["a", "b"], paths[:2], ["c"], paths[2:])
    err = capsys.readouterr().err
    assert "label checksums" in err and "2/2" in err and "file" in err
    build_or_load_manifest(task, ["a", "b"], paths[:2], ["c"], paths[2:], tmp_path / "m.json")
    assert "label checksums" in capsys.readouterr().err
    build_manifest(task, ["a", "b"], paths[:2], ["c"], paths[2:], progress=False)
    assert capsys.readouterr().err == ""


def test_inputs_checksum_is_the_digest_of_sorted_id_and_file_hashes(tmp_path):
    paths = labels(tmp_path, 3)
    task = get_task("toy", "joint", num_classes=3)
    manifest = build_manifest(task, ["b", "a"], paths[:2], ["c"], paths[2:], progress=False)
    files = {"b": paths[0], "a": paths[1]}
    pairs = sorted((i, hashlib.sha256(p.read_bytes()).hexdigest()) for i, p in files.items())
    payload = json.dumps(pairs, separators=(",", ":")).encode()
    assert manifest["inputs"]["train"] == {
        "count": 2,
        "sha256": hashlib.sha256(payload).hexdigest(),
    }


def test_bad_label_values_name_the_first_file_and_count_the_others(tmp_path):
    task = get_task("toy", "joint", num_classes=2)
    good, bad1, bad2 = tmp_path / "good.png", tmp_path / "bad1.png", tmp_path / "bad2.png"
    _write_label(good, (0, 2), palette=False)
    _write_label(bad1, (0, 7), palette=False)
    _write_label(bad2, (0, 9), palette=False)
    with pytest.raises(DKDError) as error:
        build_manifest(task, ["g", "x", "y"], [good, bad1, bad2], ["g"], [good], progress=False)
    assert str(error.value) == (
        f"{bad1}: label values [7] are not classes of this dataset; "
        "expected 0 (background), 255 (ignore) and 1..2 (1 more labels too)"
    )


def test_label_value_k_plus_1_is_refused_and_k_accepted(tmp_path):
    task = get_task("toy", "joint", num_classes=3)
    top, over = tmp_path / "top.png", tmp_path / "over.png"
    _write_label(top, (0, 3), palette=False)
    _write_label(over, (0, 4), palette=False)
    build_manifest(task, ["t"], [top], ["t"], [top], progress=False)
    with pytest.raises(DKDError, match=r"over\.png: label values \[4\] are not classes"):
        build_manifest(task, ["t", "o"], [top, over], ["t"], [top], progress=False)


def test_write_manifest_creates_missing_folders(tmp_path):
    target = tmp_path / "a" / "b" / "manifest.json"
    write_manifest({"x": 1}, target)
    assert json.loads(target.read_text()) == {"x": 1}


def test_a_failed_write_leaves_no_temporary_file_and_raises_its_own_error(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def no_replace(src, dst):
        raise PermissionError("read-only volume")

    monkeypatch.setattr(splits.os, "replace", no_replace)
    with pytest.raises(PermissionError, match="read-only volume"):
        write_manifest({"x": 1}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    assert target.read_text() == "old"

    def no_open(*args, **kwargs):  # fails before the temporary file exists
        raise PermissionError("no space")

    monkeypatch.setattr(splits, "open", no_open, raising=False)
    with pytest.raises(PermissionError, match="no space"):
        write_manifest({"x": 1}, target)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: [], r"the manifest must be a JSON object, got list"),
        (
            lambda m: {k: v for k, v in m.items() if k != "format"},
            r"the manifest is missing required key 'format'",
        ),
        (lambda m: {**m, "inputs": []}, r"'inputs' must be a JSON object, got list"),
        (
            lambda m: {**m, "steps": "abc"},
            r"'steps' must be a list with one entry per task step \(3\)",
        ),
        (
            lambda m: {**m, "task": {**m["task"], "steps": [[1, True], [3], [4]]}},
            r"'task\.steps' must",
        ),
        (lambda m: {**m, "task": {**m["task"], "steps": [["1"], [3], [4]]}}, r"'task\.steps' must"),
    ],
)
def test_read_manifest_refuses_malformed_manifests(tmp_path, edit, message):
    paths = labels(tmp_path / "l", 2)
    task = get_task("toy", "2-1", num_classes=4)
    manifest = build_manifest(task, ["a"], paths[:1], ["b"], paths[1:], progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(edit(json.loads(json.dumps(manifest)))))
    with pytest.raises(DKDError, match=rf"bad\.json: {message}"):
        read_manifest(bad)


def test_reference_list_ids_come_from_the_first_column(tmp_path):
    task = get_task("toy", "joint", num_classes=2)
    lines = ["/JPEGImages/a1.jpg /SegmentationClassAug/b1.png"]  # ids differ on purpose
    for split in ("train", "val", "test"):
        np.save(tmp_path / f"overlap_joint_{split}_00.npy", np.array(lines))
    manifest = manifest_from_reference_npy(task, tmp_path)
    assert manifest["steps"][0]["train"] == ["a1"]


def test_manifests_are_read_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    paths = labels(tmp_path / "l", 2)
    task = get_task("toy", "joint", num_classes=3)
    manifest = build_manifest(task, ["café"], paths[:1], ["b"], paths[1:], progress=False)
    path = tmp_path / "m.json"  # raw UTF-8, as another tool may write it
    path.write_bytes(json.dumps(manifest, ensure_ascii=False).encode("utf-8"))
    # A Latin-1 locale: what open() uses when no encoding is given.
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "latin-1")
    assert read_manifest(path)["steps"][0]["train"] == ["café"]


def test_memory_takes_every_candidate_when_there_is_room():
    # Shared candidates are taken by whichever class comes first; the other class then
    # takes its next candidate, never skipping one (whatever the seeded order).
    candidate_labels = {"a": {1, 2}, "b": {1, 2}, "c": {1}, "d": {2}, "e": {1, 2}, "f": {2}}
    for seed in range(20):
        chosen = select_memory(list(candidate_labels), candidate_labels, [1, 2], 6, seed=seed)
        assert sorted(chosen) == sorted(candidate_labels), seed


def test_the_progress_bar_counts_labels_decoded_by_workers(tmp_path, pool, capsys):
    class_presence(labels(tmp_path, 3), num_workers=2)
    assert "3/3" in capsys.readouterr().err
