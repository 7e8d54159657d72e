"""Tests for dkd_core.data.splits: class presence, per-step splits, manifests, memory (docs/method.md §2).

The fixture writes tiny label PNGs whose class content is chosen by hand; every
expected split below is written out image by image from the docs/method.md §2 rules, not
computed by the code under test.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dkd_core.data import splits
from dkd_core.data.splits import (
    StepSplit,
    build_manifest,
    build_or_load_manifest,
    class_presence,
    derive_splits,
    manifest_from_reference_npy,
    manifest_step,
    read_manifest,
    select_memory,
    write_manifest,
)
from dkd_core.errors import DKDError
from dkd_core.tasks import get_task

# Toy task "2-1" with K=4: step 0 learns (1, 2), step 1 (3,), step 2 (4,).
# Label values present in each image (0 background, 255 ignore).
TRAIN_LABELS: dict[str, tuple[int, ...]] = {
    "t00": (0,),  # background only
    "t01": (0, 1),
    "t02": (0, 2),
    "t03": (0, 1, 2),
    "t04": (0, 1, 3),  # step-0 class + future class 3
    "t05": (0, 3),
    "t06": (255, 3),  # only ignore + a new class of step 1
    "t07": (0, 2, 4),  # step-0 class + future class 4
    "t08": (0, 3, 4),  # step-1 class + future class 4
    "t09": (0, 4),
    "t10": (255,),  # ignore only
    "t11": (0, 1, 2, 3, 4),  # everything
}
VAL_LABELS: dict[str, tuple[int, ...]] = {
    "v00": (0,),
    "v01": (0, 1),
    "v02": (0, 2, 3),
    "v03": (0, 3),
    "v04": (255, 4),
    "v05": (0, 1, 4),
    "v06": (255,),
    "v07": (0, 2),
}

# Expected train ids per step, written out from docs/method.md §2.
EXPECTED_TRAIN = {
    "overlap": [
        ("t01", "t02", "t03", "t04", "t07", "t11"),  # any of 1, 2
        ("t04", "t05", "t06", "t08", "t11"),  # any of 3
        ("t07", "t08", "t09", "t11"),  # any of 4
    ],
    "disjoint": [
        ("t01", "t02", "t03"),  # t04, t07, t11 hold future classes 3/4
        ("t04", "t05", "t06"),  # t08, t11 hold future class 4
        ("t07", "t08", "t09", "t11"),  # nothing is future at the last step
    ],
}
EXPECTED_VAL = [
    ("v01", "v02", "v05", "v07"),  # any of 1, 2
    ("v02", "v03"),  # 3
    ("v04", "v05"),  # 4
]
EXPECTED_TEST = [
    ("v01", "v02", "v05", "v07"),  # any of 1, 2
    ("v01", "v02", "v03", "v05", "v07"),  # any of 1, 2, 3
    ("v01", "v02", "v03", "v04", "v05", "v07"),  # any of 1..4
]


def _write_label(path: Path, labels: tuple[int, ...], palette: bool) -> None:
    """8x8 label PNG: filled with the first label, one pixel per further label."""
    arr = np.full((8, 8), labels[0], dtype=np.uint8)
    for k, label in enumerate(labels[1:], start=1):
        arr[k, (3 * k) % 8] = label
    img = Image.fromarray(arr)
    if palette:  # a VOC-style palette image: the pixel values are palette indices
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        assert img.mode == "P"
    img.save(path)


def _write_set(folder: Path, table: dict[str, tuple[int, ...]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image_id, labels) in enumerate(table.items()):
        path = folder / f"{image_id}.png"
        _write_label(path, labels, palette=i % 2 == 1)
        paths.append(path)
    return paths


def _table(table: dict[str, tuple[int, ...]]) -> np.ndarray:
    expected = np.zeros((len(table), 256), dtype=bool)
    for row, labels in enumerate(table.values()):
        expected[row, list(labels)] = True
    return expected


@pytest.fixture
def data(tmp_path: Path) -> dict:
    return {
        "train_ids": list(TRAIN_LABELS),
        "train_paths": _write_set(tmp_path / "train", TRAIN_LABELS),
        "val_ids": list(VAL_LABELS),
        "val_paths": _write_set(tmp_path / "val", VAL_LABELS),
    }


def _build(task, data: dict, **kwargs) -> dict:
    return build_manifest(
        task,
        data["train_ids"],
        data["train_paths"],
        data["val_ids"],
        data["val_paths"],
        progress=False,
        **kwargs,
    )


# --------------------------------------------------------------------------- class_presence


def test_class_presence_matches_hand_table(data: dict) -> None:
    presence = class_presence(data["train_paths"], progress=False)
    assert presence.dtype == bool and presence.shape == (12, 256)
    np.testing.assert_array_equal(presence, _table(TRAIN_LABELS))
    # A few rows spelled out.
    assert np.flatnonzero(presence[6]).tolist() == [3, 255]
    assert np.flatnonzero(presence[10]).tolist() == [255]
    assert np.flatnonzero(presence[11]).tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(
        class_presence(data["val_paths"], progress=False), _table(VAL_LABELS)
    )


def test_class_presence_parallel_same_order(data: dict) -> None:
    paths = data["train_paths"] + data["val_paths"]
    serial = class_presence(paths, num_workers=0, progress=False)
    parallel = class_presence(paths, num_workers=2, progress=False)
    np.testing.assert_array_equal(parallel, serial)
    np.testing.assert_array_equal(serial, np.vstack([_table(TRAIN_LABELS), _table(VAL_LABELS)]))


def test_class_presence_empty_and_progress(tmp_path: Path, data: dict) -> None:
    assert class_presence([], progress=False).shape == (0, 256)
    assert class_presence(data["val_paths"][:1], progress=True).shape == (1, 256)


def test_class_presence_rgb_label_is_an_error(tmp_path: Path, data: dict) -> None:
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (8, 8), (128, 0, 0)).save(rgb)
    with pytest.raises(DKDError, match=r"rgb\.png.*single-channel.*mode RGB"):
        class_presence([data["train_paths"][0], rgb], progress=False)
    with pytest.raises(DKDError, match=r"rgb\.png"):
        class_presence([rgb, *data["train_paths"]], num_workers=2, progress=False)


def test_class_presence_missing_and_unreadable_files(tmp_path: Path, data: dict) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(DKDError, match=r"nope\.png: label file not found"):
        class_presence([*data["train_paths"], missing], progress=False)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png")
    with pytest.raises(DKDError, match=r"garbage\.png: cannot read label image"):
        class_presence([garbage], progress=False)


def test_class_presence_wide_labels(tmp_path: Path) -> None:
    ok, bad = tmp_path / "ok16.png", tmp_path / "bad16.png"
    Image.fromarray(np.array([[0, 7], [255, 7]], dtype=np.uint16)).save(ok)
    Image.fromarray(np.array([[0, 300]], dtype=np.uint16)).save(bad)
    assert np.flatnonzero(class_presence([ok], progress=False)[0]).tolist() == [0, 7, 255]
    with pytest.raises(DKDError, match=r"bad16\.png: label values must lie in 0\.\.255"):
        class_presence([bad], progress=False)


def test_class_presence_rejects_bad_num_workers(data: dict) -> None:
    with pytest.raises(DKDError, match="num_workers"):
        class_presence(data["train_paths"], num_workers=-1, progress=False)


# --------------------------------------------------------------------------- derive_splits


@pytest.mark.parametrize("setting", ["overlap", "disjoint"])
def test_derive_splits_image_by_image(setting: str) -> None:
    task = get_task("toy", "2-1", setting=setting, num_classes=4)
    result = derive_splits(
        task, list(TRAIN_LABELS), _table(TRAIN_LABELS), list(VAL_LABELS), _table(VAL_LABELS)
    )
    assert [s.step for s in result] == [0, 1, 2]
    assert [s.new_labels for s in result] == [(1, 2), (3,), (4,)]
    assert [s.old_labels for s in result] == [(), (1, 2), (1, 2, 3)]
    for t, split in enumerate(result):
        assert split.train == EXPECTED_TRAIN[setting][t], (setting, t)
        assert split.val == EXPECTED_VAL[t], (setting, t)
        assert split.test == EXPECTED_TEST[t], (setting, t)
    # Images with only background or only ignore are never used.
    for split in result:
        assert not {"t00", "t10", "v00", "v06"} & {*split.train, *split.val, *split.test}


def test_derive_splits_sorts_ids_regardless_of_input_order() -> None:
    task = get_task("toy", "2-1", setting="overlap", num_classes=4)
    order = [11, 3, 0, 7, 1, 9, 5, 2, 10, 4, 8, 6]
    ids = [list(TRAIN_LABELS)[i] for i in order]
    presence = _table(TRAIN_LABELS)[order]
    val_ids, val_presence = list(VAL_LABELS)[::-1], _table(VAL_LABELS)[::-1]
    result = derive_splits(task, ids, presence, val_ids, val_presence)
    assert [s.train for s in result] == EXPECTED_TRAIN["overlap"]
    assert [s.test for s in result] == EXPECTED_TEST


def test_derive_splits_disjoint_drops_labels_outside_the_task() -> None:
    # A value that is no class of the task (7) counts as "not seen": disjoint drops the image.
    task = get_task("toy", "2-1", setting="disjoint", num_classes=4)
    presence = np.zeros((2, 256), dtype=bool)
    presence[0, [0, 1]] = True
    presence[1, [0, 1, 7]] = True
    result = derive_splits(task, ["a", "b"], presence, [], np.zeros((0, 256), dtype=bool))
    assert result[0].train == ("a",)
    assert result[2].train == ()


def test_derive_splits_input_errors() -> None:
    task = get_task("toy", "2-1", num_classes=4)
    empty = np.zeros((0, 256), dtype=bool)
    with pytest.raises(
        DKDError, match=r"train_presence: expected a bool array of shape \(2, 256\)"
    ):
        derive_splits(task, ["a", "b"], np.zeros((3, 256), dtype=bool), [], empty)
    with pytest.raises(DKDError, match="train_presence"):
        derive_splits(task, ["a"], np.zeros((1, 256), dtype=np.uint8), [], empty)
    with pytest.raises(DKDError, match=r"train ids: image ids must be unique; duplicated: \['a'\]"):
        derive_splits(task, ["a", "a"], np.zeros((2, 256), dtype=bool), [], empty)


# --------------------------------------------------------------------------- manifest


def test_build_manifest_content(data: dict) -> None:
    task = get_task("toy", "2-1", setting="disjoint", num_classes=4)
    manifest = _build(task, data)
    assert manifest["format"] == "dkd-split-manifest"
    assert manifest["version"] == 1
    assert manifest["task"] == {
        "dataset": "toy",
        "name": "2-1",
        "setting": "disjoint",
        "num_classes": 4,
        "steps": [[1, 2], [3], [4]],
    }
    assert manifest["inputs"]["train"]["count"] == 12
    assert manifest["inputs"]["val"]["count"] == 8
    assert len(manifest["inputs"]["train"]["sha256"]) == 64
    assert manifest["class_image_counts"] == {
        "train": {"1": 4, "2": 4, "3": 5, "4": 4},  # t01 t03 t04 t11 / t02 t03 t07 t11 / ...
        "val": {"1": 2, "2": 2, "3": 2, "4": 2},
    }
    assert manifest["steps"][1] == {
        "step": 1,
        "new_labels": [3],
        "old_labels": [1, 2],
        "train": ["t04", "t05", "t06"],
        "val": ["v02", "v03"],
        "test": ["v01", "v02", "v03", "v05", "v07"],
    }


def test_manifest_is_byte_identical(tmp_path: Path, data: dict) -> None:
    task = get_task("toy", "2-1", num_classes=4)
    first, second, moved = tmp_path / "a.json", tmp_path / "out" / "b.json", tmp_path / "c.json"
    write_manifest(_build(task, data), first)
    write_manifest(_build(task, data, num_workers=2), second)
    assert first.read_bytes() == second.read_bytes()
    # Same labels elsewhere, listed in another order: still the same bytes (no paths, no times).
    shutil.copytree(tmp_path / "train", tmp_path / "copy" / "train")
    shutil.copytree(tmp_path / "val", tmp_path / "copy" / "val")
    reordered = {
        "train_ids": data["train_ids"][::-1],
        "train_paths": [tmp_path / "copy" / "train" / f"{i}.png" for i in data["train_ids"][::-1]],
        "val_ids": data["val_ids"][::-1],
        "val_paths": [tmp_path / "copy" / "val" / f"{i}.png" for i in data["val_ids"][::-1]],
    }
    write_manifest(_build(task, reordered), moved)
    assert moved.read_bytes() == first.read_bytes()
    text = first.read_text()
    assert str(tmp_path) not in text
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1) + "\n"
    # No temporary files are left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.json"]


def test_read_manifest_round_trip_and_manifest_step(tmp_path: Path, data: dict) -> None:
    task = get_task("toy", "2-1", setting="overlap", num_classes=4)
    manifest = _build(task, data)
    path = tmp_path / "m.json"
    write_manifest(manifest, path)
    loaded = read_manifest(path)
    assert loaded == manifest
    step2 = manifest_step(loaded, 2)
    assert step2 == StepSplit(
        step=2,
        new_labels=(4,),
        old_labels=(1, 2, 3),
        train=("t07", "t08", "t09", "t11"),
        val=("v04", "v05"),
        test=("v01", "v02", "v03", "v04", "v05", "v07"),
    )
    assert manifest_step(loaded, 0).train == EXPECTED_TRAIN["overlap"][0]
    for bad in (3, -1, "1"):
        with pytest.raises(DKDError, match=r"step .* toy 2-1; valid steps: 0, 1, 2"):
            manifest_step(loaded, bad)  # type: ignore[arg-type]


def _corrupt(path: Path, manifest: dict, edit) -> Path:
    broken = json.loads(json.dumps(manifest))
    edit(broken)
    path.write_text(json.dumps(broken))
    return path


def test_read_manifest_errors(tmp_path: Path, data: dict) -> None:
    manifest = _build(get_task("toy", "2-1", num_classes=4), data)
    bad = tmp_path / "bad.json"
    with pytest.raises(DKDError, match=r"bad\.json: split manifest not found"):
        read_manifest(bad)
    bad.write_text("{not json")
    with pytest.raises(DKDError, match=r"bad\.json: not a readable JSON"):
        read_manifest(bad)
    _corrupt(bad, manifest, lambda m: m.pop("steps"))
    with pytest.raises(DKDError, match=r"bad\.json: the manifest is missing required key 'steps'"):
        read_manifest(bad)
    _corrupt(bad, manifest, lambda m: m["task"].pop("setting"))
    with pytest.raises(DKDError, match=r"bad\.json: 'task' is missing required key 'setting'"):
        read_manifest(bad)
    _corrupt(bad, manifest, lambda m: m["steps"][1].pop("test"))
    with pytest.raises(DKDError, match=r"bad\.json: 'steps\[1\]' is missing required key 'test'"):
        read_manifest(bad)
    _corrupt(bad, manifest, lambda m: m.update(format="something-else"))
    with pytest.raises(DKDError, match=r"bad\.json: format is 'something-else', expected"):
        read_manifest(bad)
    _corrupt(bad, manifest, lambda m: m.update(version=2))
    with pytest.raises(DKDError, match=r"bad\.json: unsupported manifest version 2, expected 1"):
        read_manifest(bad)
    _corrupt(bad, manifest, lambda m: m["steps"][2].update(new_labels=[3]))
    with pytest.raises(DKDError, match=r"'steps\[2\]' labels do not match 'task.steps'"):
        read_manifest(bad)
    _corrupt(bad, manifest, lambda m: m["steps"][0].update(train=[1, 2]))
    with pytest.raises(DKDError, match=r"'steps\[0\].train' must be a list of image id strings"):
        read_manifest(bad)


def test_build_manifest_input_errors(tmp_path: Path, data: dict) -> None:
    task = get_task("toy", "2-1", num_classes=4)
    with pytest.raises(DKDError, match="val: expected one label path per image id"):
        build_manifest(task, [], [], data["val_ids"][:2], data["val_paths"], progress=False)
    missing = tmp_path / "train" / "gone.png"
    with pytest.raises(DKDError, match=r"gone\.png: label file not found"):
        build_manifest(task, ["gone"], [missing], [], [], progress=False)


def _cached(task, data: dict, cache: Path) -> dict:
    return build_or_load_manifest(
        task,
        data["train_ids"],
        data["train_paths"],
        data["val_ids"],
        data["val_paths"],
        cache_path=cache,
        progress=False,
    )


def test_build_or_load_manifest_cache(
    tmp_path: Path, data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("toy", "2-1", num_classes=4)
    cache = tmp_path / "cache" / "splits.json"
    calls: list[int] = []
    real = splits.class_presence

    def counting(paths, num_workers=0, progress=True, image_paths=None):
        calls.append(len(paths))
        return real(paths, num_workers, progress, image_paths)

    monkeypatch.setattr(splits, "class_presence", counting)
    built = _cached(task, data, cache)
    assert calls == [12, 8]
    assert read_manifest(cache) == built
    cache_bytes = cache.read_bytes()

    def fail(*args, **kwargs):
        raise AssertionError("class_presence must not run on a cache hit")

    monkeypatch.setattr(splits, "class_presence", fail)
    assert _cached(task, data, cache) == built
    assert cache.read_bytes() == cache_bytes

    # A changed label file invalidates the cache: t00 now holds class 1.
    _write_label(data["train_paths"][0], (0, 1), palette=False)
    monkeypatch.setattr(splits, "class_presence", counting)
    calls.clear()
    rebuilt = _cached(task, data, cache)
    assert calls == [12, 8]
    assert rebuilt["steps"][0]["train"] == ["t00", "t01", "t02", "t03", "t04", "t07", "t11"]
    assert rebuilt["inputs"]["train"] != built["inputs"]["train"]
    assert rebuilt["inputs"]["val"] == built["inputs"]["val"]
    assert read_manifest(cache) == rebuilt

    # Another task (same labels) rebuilds too; so does an unreadable cache file.
    calls.clear()
    disjoint = _cached(get_task("toy", "2-1", setting="disjoint", num_classes=4), data, cache)
    assert calls == [12, 8]
    assert disjoint["steps"][1]["train"] == ["t04", "t05", "t06"]
    cache.write_text("garbage")
    calls.clear()
    assert _cached(task, data, cache) == rebuilt
    assert calls == [12, 8]


# --------------------------------------------------------------------------- reference .npy


def _save_reference(folder: Path, task, manifest: dict, voc_train_lines: bool) -> None:
    """Write a manifest's steps in the authors' per-step .npy formats."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in manifest["steps"]:
        for split in ("train", "val", "test"):
            ids = entry[split]
            if split == "train" and voc_train_lines:
                ids = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids]
            name = f"{task.setting}_{task.name}_{split}_{entry['step']:02d}.npy"
            np.save(folder / name, np.array(ids))


def test_manifest_from_reference_npy_voc_format(tmp_path: Path) -> None:
    task = get_task("toy", "2-1", setting="overlap", num_classes=4)
    ref = tmp_path / "ref"
    ref.mkdir()
    train_lines = {
        0: [
            "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png",
            "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png",
        ],
        1: ["/JPEGImages/2008_000008.jpg /SegmentationClassAug/2008_000008.png"],
        2: [],
    }
    val_ids = {0: ["2007_000129", "2007_000033"], 1: ["2007_000033"], 2: ["2007_000042"]}
    for t in range(3):
        np.save(ref / f"overlap_2-1_train_{t:02d}.npy", np.array(train_lines[t]))
        np.save(ref / f"overlap_2-1_val_{t:02d}.npy", np.array(val_ids[t]))
        np.save(ref / f"overlap_2-1_test_{t:02d}.npy", np.array(val_ids[t][:1]))
    manifest = manifest_from_reference_npy(task, ref)
    assert manifest["inputs"] == {"source": "reference-npy"}
    assert "class_image_counts" not in manifest
    assert manifest_step(manifest, 0) == StepSplit(
        0,
        (1, 2),
        (),
        ("2007_000032", "2007_000039"),
        ("2007_000033", "2007_000129"),
        ("2007_000129",),
    )
    assert manifest_step(manifest, 1).train == ("2008_000008",)
    assert manifest_step(manifest, 2).train == ()
    # Written and read back like any manifest.
    write_manifest(manifest, tmp_path / "ref.json")
    assert read_manifest(tmp_path / "ref.json") == manifest


def test_manifest_from_reference_npy_matches_derived(tmp_path: Path, data: dict) -> None:
    # Plain ids (ADE style) everywhere, and VOC train lines: both give our own splits back.
    for setting in ("overlap", "disjoint"):
        task = get_task("toy", "2-1", setting=setting, num_classes=4)
        ours = _build(task, data)
        for voc in (False, True):
            folder = tmp_path / f"{setting}-{voc}"
            _save_reference(folder, task, ours, voc_train_lines=voc)
            assert manifest_from_reference_npy(task, folder)["steps"] == ours["steps"]


def test_manifest_from_reference_npy_errors(tmp_path: Path, data: dict) -> None:
    task = get_task("toy", "2-1", setting="overlap", num_classes=4)
    _save_reference(tmp_path, task, _build(task, data), voc_train_lines=True)
    (tmp_path / "overlap_2-1_test_02.npy").unlink()
    with pytest.raises(DKDError, match=r"overlap_2-1_test_02\.npy: reference split file not found"):
        manifest_from_reference_npy(task, tmp_path)
    np.save(tmp_path / "overlap_2-1_test_02.npy", np.array(["a", None], dtype=object))
    with pytest.raises(DKDError, match=r"overlap_2-1_test_02\.npy: .*needs pickle"):
        manifest_from_reference_npy(task, tmp_path)
    np.save(tmp_path / "overlap_2-1_test_02.npy", np.arange(3))
    with pytest.raises(DKDError, match=r"test_02\.npy: expected a 1-d array of strings"):
        manifest_from_reference_npy(task, tmp_path)
    np.save(tmp_path / "overlap_2-1_test_02.npy", np.array(["x", "/a/x.png"]))
    with pytest.raises(DKDError, match=r"test_02\.npy: image ids must be unique"):
        manifest_from_reference_npy(task, tmp_path)


# --------------------------------------------------------------------------- select_memory

# Old classes 1, 2, 3: six images of class 1, six of class 2, two of class 3, and two
# images that hold no old class (never selectable).
MEMORY_LABELS: dict[str, set[int]] = (
    {f"a{i}": {0, 1} for i in range(6)}
    | {f"b{i}": {0, 2} for i in range(6)}
    | {"c0": {3}, "c1": {0, 3, 255}, "z0": {0}, "z1": {0, 4}}
)
# The one old class of each selectable candidate.
MEMORY_CLASS = {
    i: min(labels & {1, 2, 3}) for i, labels in MEMORY_LABELS.items() if labels & {1, 2, 3}
}


def _memory(mem_size: int, seed: int = 1) -> list[str]:
    return select_memory(list(MEMORY_LABELS), MEMORY_LABELS, [1, 2, 3], mem_size, seed)


def test_select_memory_is_class_balanced() -> None:
    for seed in range(5):
        six = _memory(6, seed)
        assert Counter(MEMORY_CLASS[i] for i in six) == {1: 2, 2: 2, 3: 2}
        nine = Counter(MEMORY_CLASS[i] for i in _memory(9, seed))
        # Class 3 runs out after two; the other two share the rest as evenly as possible.
        assert nine[3] == 2 and sorted((nine[1], nine[2])) == [3, 4]
        # Every round visits each class once: the first three picks cover all old classes.
        assert {MEMORY_CLASS[i] for i in six[:3]} == {1, 2, 3}


def test_select_memory_size_uniqueness_and_candidates() -> None:
    for mem_size in (0, 1, 5, 9, 14):
        selected = _memory(mem_size)
        assert len(selected) == mem_size
        assert len(set(selected)) == mem_size
        assert set(selected) <= set(MEMORY_LABELS) - {"z0", "z1"}
    # Asking for more than can be taken returns every candidate holding an old class.
    everything = _memory(100)
    assert sorted(everything) == sorted(set(MEMORY_LABELS) - {"z0", "z1"})


def test_select_memory_deterministic_and_follows_seeded_shuffle() -> None:
    assert _memory(9, seed=3) == _memory(9, seed=3)
    assert len({tuple(_memory(9, seed)) for seed in range(6)}) > 1
    # Contract: candidates are shuffled by default_rng(seed).permutation, then the class
    # order is the same generator's next permutation; each class takes its images in
    # shuffled order.
    candidates = list(MEMORY_LABELS)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        shuffled = [candidates[i] for i in rng.permutation(len(candidates))]
        class_order = [[1, 2, 3][i] for i in rng.permutation(3)]
        selected = _memory(8, seed)
        assert [MEMORY_CLASS[i] for i in selected[:3]] == class_order
        for c in (1, 2, 3):
            mine = [i for i in selected if MEMORY_CLASS[i] == c]
            assert mine == [i for i in shuffled if MEMORY_CLASS.get(i) == c][: len(mine)]


def test_select_memory_multi_label_candidates_never_duplicate() -> None:
    labels = {f"m{i}": {1, 2} for i in range(5)} | {"x": {2}}
    selected = select_memory(list(labels), labels, [1, 2], 6, seed=0)
    assert sorted(selected) == sorted(labels)
    assert select_memory(list(labels), labels, [1, 2], 4, seed=0) == selected[:4]
    assert select_memory(list(labels), labels, [], 4, seed=0) == []


def test_select_memory_accepts_presence_array() -> None:
    candidates = list(MEMORY_LABELS)
    presence = np.zeros((len(candidates), 256), dtype=bool)
    for row, image_id in enumerate(candidates):
        presence[row, list(MEMORY_LABELS[image_id])] = True
    for seed in (0, 7):
        assert select_memory(candidates, presence, [1, 2, 3], 9, seed) == _memory(9, seed)


def test_select_memory_errors() -> None:
    with pytest.raises(DKDError, match=r"no label set for candidates \['q'\]"):
        select_memory(["a0", "q"], MEMORY_LABELS, [1], 1, seed=0)
    with pytest.raises(DKDError, match="mem_size must be a non-negative integer"):
        select_memory(["a0"], MEMORY_LABELS, [1], -1, seed=0)
    with pytest.raises(DKDError, match="memory candidates: image ids must be unique"):
        select_memory(["a0", "a0"], MEMORY_LABELS, [1], 1, seed=0)
    with pytest.raises(DKDError, match="candidate_labels: expected a bool array"):
        select_memory(["a0"], np.zeros((2, 256), dtype=bool), [1], 1, seed=0)


def _write_pair(
    folder: Path, name: str, label: np.ndarray, image_size: tuple[int, int]
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    label_path, image_path = folder / f"{name}.png", folder / f"{name}.jpg"
    Image.fromarray(label.astype(np.uint8), mode="L").save(label_path)
    Image.new("RGB", image_size).save(image_path)
    return label_path, image_path


def test_the_split_pass_rejects_label_values_outside_the_classes(tmp_path):
    task = get_task("toy", "2-1", num_classes=3)
    good, _ = _write_pair(tmp_path, "a", np.array([[0, 1], [2, 255]]), (2, 2))
    bad, _ = _write_pair(tmp_path, "b", np.array([[0, 1], [9, 3]]), (2, 2))
    with pytest.raises(DKDError) as error:
        build_manifest(task, ["a", "b"], [good, bad], ["a"], [good], progress=False)
    assert str(error.value) == (
        f"{bad}: label values [9] are not classes of this dataset; "
        "expected 0 (background), 255 (ignore) and 1..3"
    )


def test_the_split_pass_rejects_an_image_of_another_size_than_its_label(tmp_path):
    label, image = _write_pair(tmp_path, "a", np.array([[0, 1, 2], [3, 0, 0]]), (4, 2))
    with pytest.raises(DKDError, match=r"label is 3x2 but image .*a\.jpg is 4x2"):
        splits.class_presence([label], image_paths=[image], progress=False)
