"""Tests for dkd_core.data: dataset layouts, docs/method.md §2 transforms, the step dataset and loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dkd_core.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    ResumableSampler,
    Sample,
    SegmentationDataset,
    TrainTransform,
    eval_loader,
    make_loader,
    normalize,
    open_layout,
    random_resized_crop_params,
    train_loader,
)
from dkd_core.errors import DKDError
from dkd_core.tasks import get_task

# --------------------------------------------------------------------------- helpers


def write_image(path: Path, size: tuple[int, int] = (8, 8), colour: int = 100) -> None:
    """An RGB JPEG of `size` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (colour, colour // 2, 255 - colour)).save(path)


def write_label(path: Path, label: np.ndarray, mode: str = "P") -> None:
    """A label PNG holding `label` (uint8 [H, W]) as palette indices (P) or grey values (L)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8))  # mode L
    if mode == "P":
        img.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    assert img.mode == mode
    img.save(path)


def make_voc(root: Path, train: list[str], val: list[str], two_columns: bool = False) -> None:
    for i in sorted({*train, *val}):
        write_image(root / "JPEGImages" / f"{i}.jpg")
        write_label(root / "SegmentationClassAug" / f"{i}.png", np.zeros((8, 8)))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for name, ids in (("train_aug.txt", train), ("val.txt", val)):
        if two_columns:
            lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids]
        else:
            lines = ids
        (lists / name).write_text("\n".join(lines) + "\n")


def make_ade(root: Path) -> None:
    for folder, ids in (
        ("training", ["ADE_train_2", "ADE_train_1"]),
        ("validation", ["ADE_val_1"]),
    ):
        for i in ids:
            write_image(root / "images" / folder / f"{i}.jpg")
            write_label(root / "annotations" / folder / f"{i}.png", np.zeros((8, 8)), "L")


def make_palette(root: Path, **overrides: object) -> None:
    config: dict[str, object] = {
        "classes": ["background", "cat", "dog"],
        "images": "imgs",
        "labels": "masks",
        "image_suffix": ".png",
        "label_suffix": "_mask.png",
        "splits": {"train": "lists/train.txt", "val": "lists/val.txt"},
        "unseen_test_label": 255,
    }
    config.update(overrides)
    config = {k: v for k, v in config.items() if v is not None}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(config))
    for i in ("x1", "x2", "y1"):
        write_image(root / "imgs" / f"{i}.png")
        write_label(root / "masks" / f"{i}_mask.png", np.zeros((8, 8)))
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "train.txt").write_text("x2\nx1\n\n")
    (root / "lists" / "val.txt").write_text("y1\n")


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("two_columns", [False, True])
def test_voc_layout(tmp_path: Path, two_columns: bool) -> None:
    make_voc(
        tmp_path, train=["2008_000002", "2007_000001"], val=["2007_000005"], two_columns=two_columns
    )
    layout = open_layout(tmp_path)
    assert layout.format == "voc"
    assert layout.root == tmp_path.resolve()
    assert layout.unseen_test_label == 0
    assert layout.num_classes == 20
    assert layout.class_names[0] == "background"
    assert layout.class_names[15] == "person"
    assert layout.class_names[20] == "tvmonitor"
    train = layout.samples("train")
    assert [s.id for s in train] == ["2007_000001", "2008_000002"]
    root = tmp_path.resolve()
    assert train[0] == Sample(
        "2007_000001",
        root / "JPEGImages" / "2007_000001.jpg",
        root / "SegmentationClassAug" / "2007_000001.png",
    )
    assert all(s.image.is_absolute() and s.label.is_absolute() for s in train)
    assert [s.id for s in layout.samples("val")] == ["2007_000005"]
    assert layout.samples("val")[0].label.parent.name == "SegmentationClassAug"


def test_voc_layout_val_labels_class_names_override(tmp_path: Path) -> None:
    make_voc(tmp_path, train=["a"], val=["b"])
    write_label(tmp_path / "SegmentationClass" / "b.png", np.zeros((8, 8)))
    (tmp_path / "class_names.txt").write_text("background\ndisc\nsquare\n")
    layout = open_layout(tmp_path, "voc")
    assert layout.class_names == ("background", "disc", "square")
    assert layout.num_classes == 2
    assert layout.samples("val")[0].label == tmp_path.resolve() / "SegmentationClass" / "b.png"
    assert layout.samples("train")[0].label.parent.name == "SegmentationClassAug"


def test_ade_layout(tmp_path: Path) -> None:
    make_ade(tmp_path)
    layout = open_layout(tmp_path)
    assert layout.format == "ade"
    assert layout.unseen_test_label == 255
    assert layout.num_classes == 150
    assert layout.class_names[0] == "other"
    assert layout.class_names[150] == "class 150"
    train = layout.samples("train")
    assert [s.id for s in train] == ["ADE_train_1", "ADE_train_2"]
    root = tmp_path.resolve()
    assert train[0].image == root / "images" / "training" / "ADE_train_1.jpg"
    assert train[0].label == root / "annotations" / "training" / "ADE_train_1.png"
    assert [s.id for s in layout.samples("val")] == ["ADE_val_1"]

    (tmp_path / "objectInfo150.txt").write_text(
        "Idx\tRatio\tTrain\tVal\tName\n"
        "1\t0.1576\t11664\t1172\twall\n"
        "2\t0.1072\t6046\t612\tbuilding, edifice\n"
        "3\t0.0878\t8265\t796\tsky\n"
    )
    assert open_layout(tmp_path).class_names == ("other", "wall", "building", "sky")


def test_palette_layout(tmp_path: Path) -> None:
    make_palette(tmp_path)
    layout = open_layout(tmp_path)
    assert layout.format == "palette"
    assert layout.class_names == ("background", "cat", "dog")
    assert layout.num_classes == 2
    assert layout.unseen_test_label == 255
    root = tmp_path.resolve()
    assert layout.samples("train") == [
        Sample("x1", root / "imgs" / "x1.png", root / "masks" / "x1_mask.png"),
        Sample("x2", root / "imgs" / "x2.png", root / "masks" / "x2_mask.png"),
    ]
    assert [s.id for s in layout.samples("val")] == ["y1"]


def test_palette_layout_defaults(tmp_path: Path) -> None:
    make_palette(tmp_path, unseen_test_label=None)
    assert open_layout(tmp_path).unseen_test_label == 0


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DKDError, match=r"nowhere.*dataset root not found"):
        open_layout(tmp_path / "nowhere")
    with pytest.raises(DKDError, match=r"cannot detect.*dataset\.yaml.*ImageSets/Segmentation"):
        open_layout(tmp_path)
    with pytest.raises(DKDError, match="unknown dataset format 'coco'"):
        open_layout(tmp_path, "coco")

    voc = tmp_path / "voc"
    make_voc(voc, train=["a", "b"], val=["c"])
    layout = open_layout(voc)
    with pytest.raises(DKDError, match="unknown split 'test'"):
        layout.samples("test")
    (voc / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DKDError, match=r"JPEGImages/b\.jpg: file not found.*train_aug\.txt"):
        layout.samples("train")
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DKDError, match=r"val\.txt: split list file not found"):
        layout.samples("val")


def test_palette_yaml_errors(tmp_path: Path) -> None:
    make_palette(tmp_path / "unknown", colour_map="voc")
    with pytest.raises(DKDError, match=r"dataset\.yaml: unknown key 'colour_map'"):
        open_layout(tmp_path / "unknown")
    make_palette(tmp_path / "missing", labels=None)
    with pytest.raises(DKDError, match=r"dataset\.yaml: missing required key 'labels'"):
        open_layout(tmp_path / "missing")
    make_palette(tmp_path / "splits", splits={"train": "lists/train.txt"})
    with pytest.raises(DKDError, match=r"'splits' must map exactly 'train' and 'val'"):
        open_layout(tmp_path / "splits")


# --------------------------------------------------------------------------- random resized crop


def test_random_resized_crop_deterministic() -> None:
    a = [random_resized_crop_params(200, 150, rng=np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    draws = {random_resized_crop_params(200, 150, rng=np.random.default_rng(s)) for s in range(20)}
    assert len(draws) > 15


def test_random_resized_crop_bounds() -> None:
    width, height = 200, 150
    rng = np.random.default_rng(0)
    boxes = np.array([random_resized_crop_params(width, height, rng=rng) for _ in range(1000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    fraction = w * h / (width * height)
    ratio = w / h
    # Rounding to whole pixels moves area and ratio a little past the sampled bounds.
    assert fraction.min() >= 0.5 - 0.02 and fraction.max() <= 1.0
    assert ratio.min() >= 3 / 4 - 0.02 and ratio.max() <= 4 / 3 + 0.02
    # Accepted draws have scale uniform in [0.5, 1] (scale > 1 never fits): both ends occur.
    assert (fraction < 0.55).mean() > 0.05 and (fraction > 0.9).mean() > 0.05
    assert 0.65 < fraction.mean() < 0.85
    assert (ratio < 0.8).any() and (ratio > 1.25).any()


@pytest.mark.parametrize(
    ("width", "height", "box"),
    [
        (100, 50, (0, 16, 50, 67)),  # too wide: h = 50, w = round(50 * 4/3) = 67, centred
        (30, 100, (30, 0, 40, 30)),  # too tall: w = 30, h = round(30 / (3/4)) = 40, centred
        (40, 36, (0, 0, 36, 40)),  # ratio within range: the whole image
    ],
)
def test_random_resized_crop_fallback(width: int, height: int, box: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    assert random_resized_crop_params(width, height, scale=(5, 6), rng=rng) == box


# --------------------------------------------------------------------------- transforms


def test_train_transform_shapes_and_label_values() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    label = np.zeros((30, 40), dtype=np.uint8)
    label[5:20, 10:30] = 3
    label[::7, :] = 255
    transform = TrainTransform(16)
    for seed in range(20):
        img_t, lab = transform(image, label, np.random.default_rng(seed))
        assert img_t.shape == (3, 16, 16) and img_t.dtype == torch.uint8
        assert lab.shape == (16, 16) and lab.dtype == np.uint8
        assert set(np.unique(lab).tolist()) <= {0, 3, 255}
    # A palette label image works the same way.
    pil_label = Image.fromarray(label)
    pil_label.putpalette(list(range(256)) * 3)
    _, lab = transform(image, pil_label, np.random.default_rng(0))
    assert set(np.unique(lab).tolist()) <= {0, 3, 255}


def test_train_transform_flip_keeps_image_and_label_aligned() -> None:
    # Left half black / label 1, right half white / label 2; the crop is the whole image.
    rgb = np.zeros((20, 20, 3), dtype=np.uint8)
    rgb[:, 10:] = 255
    label = np.ones((20, 20), dtype=np.uint8)
    label[:, 10:] = 2
    transform = TrainTransform(10, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = 0
    for seed in range(400):
        img_t, lab = transform(Image.fromarray(rgb), label, np.random.default_rng(seed))
        left_is_white = bool(img_t[0, 0, 0] > 0)
        assert left_is_white == (lab[0, 0] == 2)
        assert set(lab[:, 0].tolist()) == {lab[0, 0]} and lab[0, 0] != lab[0, -1]
        flipped += int(left_is_white)
    assert 0.43 < flipped / 400 < 0.57


def test_normalisation_of_constant_image() -> None:
    colour = (10, 128, 250)
    image = Image.new("RGB", (24, 18), colour)
    label = np.zeros((18, 24), dtype=np.uint8)
    expected = torch.tensor(
        [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    )
    for transform in (TrainTransform(12), EvalTransform(12), EvalTransform(12, whole_image=True)):
        img_t, _ = transform(image, label, np.random.default_rng(1))
        assert img_t.dtype == torch.uint8
        assert (img_t == torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)).all()
        batch = normalize(img_t.unsqueeze(0))  # [1, 3, H, W], as the training loop does
        assert batch.dtype == torch.float32
        assert torch.allclose(batch[0], expected.view(3, 1, 1).expand_as(img_t), atol=1e-5)


def test_train_resize_is_close_to_pil_bilinear() -> None:
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    image = small.resize((96, 96), Image.Resampling.BICUBIC)  # smooth, like a photo
    label = np.zeros((96, 96), dtype=np.uint8)
    transform = TrainTransform(64, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0)
    img_t, _ = transform(image, label, np.random.default_rng(0))
    pil = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR)).astype(int)
    ours = img_t.permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - pil).mean() < 0.5 and np.abs(ours - pil).max() <= 8


def test_eval_transform_resize_and_centre_crop() -> None:
    # 100x50 (W x H): shorter side 50 -> 512, so 1024x512, then columns 256..767 kept.
    label = np.tile((np.arange(100) // 10).astype(np.uint8), (50, 1))  # [50, 100] column bands
    image = Image.fromarray(np.zeros((50, 100, 3), dtype=np.uint8))
    img_t, lab = EvalTransform(512)(image, label)
    assert img_t.shape == (3, 512, 512) and lab.shape == (512, 512) and lab.dtype == np.uint8
    # Nearest: output column c samples source column floor((c + 256 + 0.5) * 100 / 1024).
    source_x = np.floor((np.arange(512) + 256 + 0.5) * 100 / 1024).astype(int)
    np.testing.assert_array_equal(lab, np.tile(source_x // 10, (512, 1)))
    assert lab[0, 0] == 2 and lab[0, -1] == 7

    # Portrait: 50x100 -> 512x1024, rows 256..767 kept.
    img_t, lab = EvalTransform(512)(image.transpose(Image.Transpose.TRANSPOSE), label.T.copy())
    assert img_t.shape == (3, 512, 512)
    np.testing.assert_array_equal(lab, np.tile(source_x // 10, (512, 1)).T)


def test_eval_transform_whole_image() -> None:
    rng = np.random.default_rng(3)
    label = rng.integers(0, 5, (50, 100), dtype=np.uint8)
    image = Image.fromarray(rng.integers(0, 256, (50, 100, 3), dtype=np.uint8))
    img_t, lab = EvalTransform(512, whole_image=True)(image, label)
    assert img_t.shape == (3, 50, 100)
    np.testing.assert_array_equal(lab, label)


def test_transform_errors() -> None:
    image = Image.new("RGB", (8, 8))
    with pytest.raises(DKDError, match="sizes differ"):
        EvalTransform(8)(image, np.zeros((8, 9), dtype=np.uint8))
    with pytest.raises(DKDError, match="crop_size must be a positive integer"):
        TrainTransform(0)


# --------------------------------------------------------------------------- dataset


def _sample(tmp_path: Path, name: str, label: np.ndarray, mode: str = "P") -> Sample:
    image_path = tmp_path / f"{name}.jpg"
    h, w = label.shape
    rng = np.random.default_rng(len(name))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image_path)
    label_path = tmp_path / f"{name}.png"
    if mode == "RGB":
        Image.fromarray(np.stack([label] * 3, axis=-1)).save(label_path)
    else:
        write_label(label_path, label, mode)
    return Sample(name, image_path, label_path)


def _quadrants(values: tuple[int, int, int, int]) -> np.ndarray:
    label = np.zeros((8, 8), dtype=np.uint8)
    label[:4, :4], label[:4, 4:], label[4:, :4], label[4:, 4:] = values
    return label


def test_dataset_lut_remap(tmp_path: Path) -> None:
    step = get_task("voc", "15-1").step(1)  # old 1..15, new 16
    train_lut = step.label_lut(step.new_labels, 0)
    sample = _sample(tmp_path, "a", _quadrants((16, 3, 255, 0)))
    dataset = SegmentationDataset([sample], train_lut, EvalTransform(8, whole_image=True))
    assert len(dataset) == 1
    item = dataset[0]
    assert item["index"] == 0
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.uint8
    assert item["label"].dtype == torch.uint8
    # label 16 -> channel 16, label 3 (old, not kept at train time) -> 0, 255 -> 255.
    np.testing.assert_array_equal(item["label"].numpy(), _quadrants((16, 0, 255, 0)))

    # Test-style LUT of step 0 on ADE-like labels: unseen label 16 -> 255, seen 3 -> 3.
    step0 = get_task("voc", "15-1").step(0)
    test_lut = step0.label_lut(step0.seen_labels, 255)
    dataset = SegmentationDataset([sample], test_lut, EvalTransform(8, whole_image=True))
    np.testing.assert_array_equal(dataset[0]["label"].numpy(), _quadrants((255, 3, 255, 0)))


def test_dataset_rejects_rgb_label(tmp_path: Path) -> None:
    sample = _sample(tmp_path, "rgb_label", _quadrants((1, 2, 3, 0)), mode="RGB")
    lut = np.arange(256, dtype=np.uint8)
    dataset = SegmentationDataset([sample], lut, EvalTransform(8, whole_image=True))
    with pytest.raises(
        DKDError, match=r"rgb_label\.png: a label PNG must be single-channel.*mode RGB"
    ):
        dataset[0]


def test_dataset_rejects_unknown_label_values(tmp_path: Path) -> None:
    sample = _sample(tmp_path, "bad_values", _quadrants((1, 7, 9, 255)), mode="L")
    lut = np.arange(256, dtype=np.uint8)
    ok = SegmentationDataset([sample], lut, EvalTransform(8, whole_image=True))
    assert ok[0]["label"].shape == (8, 8)
    dataset = SegmentationDataset(
        [sample], lut, EvalTransform(8, whole_image=True), allowed_labels={1, 2}
    )
    with pytest.raises(DKDError, match=r"bad_values\.png: label values \[7, 9\]"):
        dataset[0]
    with pytest.raises(DKDError, match="label_lut must be a uint8 array"):
        SegmentationDataset([sample], np.arange(256), EvalTransform(8))


def test_dataset_augmentation_depends_on_seed_epoch_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [
        _sample(tmp_path, name, rng.integers(0, 4, (24, 32), dtype=np.uint8)) for name in "ab"
    ]
    lut = np.arange(256, dtype=np.uint8)
    dataset = SegmentationDataset(samples, lut, TrainTransform(12), seed=5)
    first = dataset[0]
    again = dataset[0]
    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["label"], again["label"])
    dataset.set_epoch(1)
    assert dataset.epoch == 1
    assert not torch.equal(dataset[0]["image"], first["image"])
    dataset.set_epoch(0)
    assert torch.equal(dataset[0]["image"], first["image"])
    other_seed = SegmentationDataset(samples, lut, TrainTransform(12), seed=6)
    assert not torch.equal(other_seed[0]["image"], first["image"])


def test_loader_order_and_epochs(tmp_path: Path) -> None:
    samples = [_sample(tmp_path, f"s{i}", np.zeros((8, 8), dtype=np.uint8)) for i in range(10)]
    dataset = SegmentationDataset(samples, np.arange(256, dtype=np.uint8), EvalTransform(8))

    def order(loader, sampler, epoch: int, start: int = 0) -> list[int]:
        sampler.set_epoch(epoch, start)
        return [i for batch in loader for i in batch["index"].tolist()]

    assert [int(i) for b in eval_loader(dataset, 4, 0, 1, 0) for i in b["index"]] == list(range(10))
    loader, sampler = train_loader(dataset, 4, rank=0, world_size=1, seed=3, num_workers=0)
    e0, e1 = order(loader, sampler, 0), order(loader, sampler, 1)
    assert len(e0) == 8 and len(set(e0)) == 8  # whole batches only: two of 4
    assert e0 != e1
    fresh, fresh_sampler = train_loader(dataset, 4, rank=0, world_size=1, seed=3, num_workers=0)
    assert order(fresh, fresh_sampler, 1) == e1  # a function of (seed, epoch): resumable
    assert order(fresh, fresh_sampler, 1, start=1) == e1[4:]  # mid-epoch start skips batches


def test_ranks_split_each_global_batch(tmp_path: Path) -> None:
    samples = [_sample(tmp_path, f"r{i}", np.zeros((8, 8), dtype=np.uint8)) for i in range(10)]
    dataset = SegmentationDataset(samples, np.arange(256, dtype=np.uint8), EvalTransform(8))
    single = list(ResumableSampler(10, 4, rank=0, world_size=1, seed=3))
    rank0 = list(ResumableSampler(10, 2, rank=0, world_size=2, seed=3))
    rank1 = list(ResumableSampler(10, 2, rank=1, world_size=2, seed=3))
    # Global batch b of the two ranks holds the same images as batch b of one process.
    for b in range(2):
        assert set(rank0[2 * b : 2 * b + 2] + rank1[2 * b : 2 * b + 2]) == set(
            single[4 * b : 4 * b + 4]
        )
    with pytest.raises(DKDError, match="fewer than one global batch"):
        ResumableSampler(len(dataset), 8, rank=0, world_size=2, seed=0)


def test_persistent_workers_see_set_epoch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [
        _sample(tmp_path, f"w{i}", rng.integers(0, 3, (16, 16), dtype=np.uint8)) for i in range(2)
    ]
    dataset = SegmentationDataset(samples, np.arange(256, dtype=np.uint8), TrainTransform(8))
    loader = make_loader(dataset, 2, [0, 1], num_workers=1, drop_last=False)
    assert loader.persistent_workers
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        (batch,) = list(loader)
        expected = torch.stack([dataset[i]["image"] for i in range(2)])  # in-process, same epoch
        assert torch.equal(batch["image"], expected)


def test_split_pass_and_dataset_read_labels_alike(tmp_path: Path) -> None:
    """One reader: a label the split pass accepts trains, one it refuses fails in both."""
    from dkd_core.data.splits import class_presence

    values = np.array([[0, 3], [255, 3]], dtype=np.uint16)
    wide = tmp_path / "wide.png"
    Image.fromarray(values.astype(np.uint16)).save(wide)  # 16-bit grayscale, values <= 255
    image = tmp_path / "wide.jpg"
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(image)
    sample = Sample("wide", image, wide)
    assert np.flatnonzero(class_presence([wide], progress=False)[0]).tolist() == [0, 3, 255]
    dataset = SegmentationDataset([sample], np.arange(256, dtype=np.uint8), EvalTransform(2))
    np.testing.assert_array_equal(dataset[0]["label"].numpy(), values)

    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(DKDError, match="single-channel"):
        class_presence([rgb], progress=False)
    rgb_set = SegmentationDataset(
        [Sample("rgb", image, rgb)], np.arange(256, dtype=np.uint8), EvalTransform(2)
    )
    with pytest.raises(DKDError, match="single-channel"):
        rgb_set[0]
