"""The method's rules at the places training and evaluation use them (docs/method.md).

Hand-built inputs reach the edges random ones never do: a probability of
exactly 0.5 (or exactly the 0.9 pseudo-label threshold), saturated sigmoids
that tie, a class absent from both prediction and target, a future class in a
training mask, an unseen class in a test mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dkd_core import distributed
from dkd_core.config import Config, load_config
from dkd_core.data.layout import Sample
from dkd_core.errors import DKDError
from dkd_core.memory import pseudo_label_sets
from dkd_core.model import SegmentationOutput
from dkd_core.step_data import step_data
from dkd_core.tasks import get_task
from dkd_core.train import evaluate_model, lr_factor

CPU = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class ScriptedModel(torch.nn.Module):
    """Returns the same logits [1, 1 + C, H, W] for every image; records its mode."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.modes: list[bool] = []

    def forward(self, images, decompose=False):
        self.modes.append(self.training)
        return SegmentationOutput(self.logits.expand(images.shape[0], -1, -1, -1))


# -- evaluation (inference rule and metrics) ----------------------------------------------------

# Toy 2-1, step 1: channels 0 (background), 1 and 2 (old), 3 (new); one row of 6 pixels.
# logits [1, 1 + 3, 1, 6]: channel 0 is the auxiliary classifier, here the most
# confident everywhere, which inference must ignore.
EVAL_LOGITS = torch.tensor(
    [
        [
            [[50.0, 50.0, 50.0, 50.0, 50.0, 50.0]],  # auxiliary
            [[-3.0, 0.0, 20.0, -4.0, -4.0, -4.0]],  # class 1
            [[-3.0, -2.0, 30.0, -4.0, -4.0, -4.0]],  # class 2
            [[-3.0, -2.0, -4.0, 2.0, 0.0, 5.0]],  # class 3 (new)
        ]
    ]
)
# pixel 0: nothing above 0.5 -> background      | target 0
# pixel 1: class 1 at exactly 0.5 -> background  | target 0
# pixel 2: classes 1 and 2 both saturate to 1.0 in float32: a tie, the first wins | target 1
# pixel 3: class 3 at 0.88                        | target 3
# pixel 4: class 3 at exactly 0.5 -> background  | target 0
# pixel 5: ignore                                 | target 255
EVAL_TARGET = torch.tensor([[[0, 0, 1, 3, 0, 255]]], dtype=torch.uint8)


def _evaluate(logits=EVAL_LOGITS, target=EVAL_TARGET):
    step = get_task("toy", "2-1", num_classes=3).step(1)
    model = ScriptedModel(logits).train()
    batch = {"image": torch.zeros(1, 3, 1, 6, dtype=torch.uint8), "label": target}
    report = evaluate_model(model, [batch], step, torch.device("cpu"))
    return model, report


def test_evaluation_applies_the_inference_rule_at_its_edges():
    _, report = _evaluate()
    # rows = target, columns = prediction: every valid pixel is right, class 2 never appears.
    assert report.confusion == ((3, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 0), (0, 0, 0, 1))
    assert report.pixel_accuracy == 100.0


def test_evaluation_counts_an_absent_class_as_iou_zero_and_background_as_old():
    _, report = _evaluate()
    assert report.iou == (100.0, 100.0, 0.0, 100.0)
    assert report.old_channels == (0, 1, 2) and report.new_channels == (3,)
    assert report.miou_old == pytest.approx(200 / 3)  # background, class 1, absent class 2
    assert report.miou_new == 100.0
    assert report.miou_all == 75.0
    assert report.hiou == pytest.approx(2 * (200 / 3) * 100 / (200 / 3 + 100))
    assert report.class_accuracy == (100.0, 100.0, 0.0, 100.0)
    assert report.mean_class_accuracy == 75.0


def test_evaluation_runs_the_model_in_eval_mode_and_restores_its_mode():
    model, _ = _evaluate()
    assert model.modes == [False] and model.training


def test_evaluation_sums_batches():
    step = get_task("toy", "2-1", num_classes=3).step(1)
    batch = {"image": torch.zeros(1, 3, 1, 6, dtype=torch.uint8), "label": EVAL_TARGET}
    report = evaluate_model(ScriptedModel(EVAL_LOGITS), [batch, batch], step, torch.device("cpu"))
    assert report.confusion == ((6, 0, 0, 0), (0, 2, 0, 0), (0, 0, 0, 0), (0, 0, 0, 2))


# -- DKD-M pseudo-labels ---------------------------------------------------------------------------


def _threshold_logit() -> float:
    """A float32 logit whose sigmoid is exactly float32(0.9), the pseudo-label threshold."""
    target = torch.tensor(0.9)
    start = torch.log(target / (1 - target)).item()
    for i in range(-200, 200):
        x = torch.tensor(start + i * 1e-7)
        if torch.sigmoid(x) == target:
            return x.item()
    raise AssertionError("no float32 logit maps exactly to 0.9")


def _sample(tmp_path: Path, name: str, label: np.ndarray) -> Sample:
    image, lab = tmp_path / f"{name}.jpg", tmp_path / f"{name}.png"
    Image.fromarray(np.zeros((*label.shape, 3), dtype=np.uint8)).save(image)
    Image.fromarray(label).save(lab)
    return Sample(name, image, lab)


def test_pseudo_labels_take_background_pixels_at_exactly_the_threshold(tmp_path):
    step = get_task("toy", "2-1", num_classes=3).step(1)  # old 1, 2; new 3
    logits = torch.full((1, 4, 4, 4), -5.0)
    at = torch.tensor(_threshold_logit())
    assert torch.sigmoid(at) == torch.tensor(0.9)
    logits[0, 1, 1, 1] = at  # class 1 at sigmoid == 0.9 on background: taken (>= 0.9)
    logits[0, 2, 2, 2] = at - 1e-3  # class 2 just under 0.9: dropped
    label = np.zeros((4, 4), dtype=np.uint8)
    sets = pseudo_label_sets(
        ScriptedModel(logits), [_sample(tmp_path, "x", label)], step, crop_size=4, info=CPU
    )
    assert sets == {"x": {1}}


# -- data of a step, as training and evaluation read it ---------------------------------------------


def _write(root: Path, folder: str, name: str, label: np.ndarray, suffix: str) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(root / folder / f"{name}{suffix}")


def _voc(root: Path, train: dict[str, list[int]], val: dict[str, list[int]]) -> None:
    """A VOC-layout dataset of 8x8 images; each label PNG holds the given labels in stripes."""
    for split in (train, val):
        for name, labels in split.items():
            label = np.repeat(np.array(labels, dtype=np.uint8), 64 // len(labels) + 1)[:64]
            label = np.sort(label).reshape(8, 8)
            Image.new("RGB", (8, 8)).save(_path(root / "JPEGImages", f"{name}.jpg"))
            Image.fromarray(label).save(_path(root / "SegmentationClassAug", f"{name}.png"))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train_aug.txt").write_text("".join(f"{n}\n" for n in train))
    (lists / "val.txt").write_text("".join(f"{n}\n" for n in val))


def _path(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


VOC_TRAIN = {
    "new_and_old": [1, 16, 255],  # 16 is VOC 15-1's class of step 1
    "new_and_future": [16, 18],  # 18 is learned at step 3
    "old_only": [1, 2],
}
VOC_VAL = {"seen_and_unseen": [0, 1, 16, 18, 255], "unseen_only": [0, 18]}


def _config(root: Path, tmp_path: Path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"data.root={root}",
            f"run.output={tmp_path / 'run'}",
            "data.crop_size=8",
            "train.progress=false",
            *overrides,
        ],
    )


@pytest.fixture
def voc_root(tmp_path) -> Path:
    root = tmp_path / "voc"
    _voc(root, VOC_TRAIN, VOC_VAL)
    return root


def _step_data(config: Config, step: int, tmp_path: Path):
    c = config.task
    task_step = get_task(c.dataset, c.name, c.setting).step(step)
    return task_step, step_data(config, task_step, str(tmp_path / "manifest.json"), CPU)


def test_voc_test_labels_of_unseen_classes_become_background(voc_root, tmp_path):
    config = _config(voc_root, tmp_path, "task.name=15-1")
    _, data = _step_data(config, 1, tmp_path)
    assert [s.id for s in data.test.samples] == ["seen_and_unseen"]  # any seen class
    label = data.test[0]["label"]  # [8, 8] channels, the eval view of an 8x8 image
    assert set(label.unique().tolist()) == {0, 1, 16, 255}  # 18 (not seen yet) -> 0
    assert data.test.label_lut[18] == 0 and data.test.label_lut[16] == 16


def test_ade_test_labels_of_unseen_classes_become_ignore(tmp_path):
    root = tmp_path / "ade"
    for folder, name, labels in (
        ("training", "ADE_train_1", [0, 5, 120]),
        ("validation", "ADE_val_1", [0, 5, 120]),
    ):
        label = np.repeat(np.array(labels, dtype=np.uint8), 22)[:64].reshape(8, 8)
        _write(root / "annotations", folder, name, label, ".png")
        Image.new("RGB", (8, 8)).save(_path(root / "images" / folder, f"{name}.jpg"))
    config = _config(root, tmp_path, "task.dataset=ade", "task.name=100-50")
    _, data = _step_data(config, 0, tmp_path)
    label = data.test[0]["label"]
    assert set(label.unique().tolist()) == {0, 5, 255}  # 120 (learned at step 1) -> 255
    assert data.test.label_lut[120] == 255


def test_train_labels_keep_only_the_new_classes(voc_root, tmp_path):
    config = _config(voc_root, tmp_path, "task.name=15-1")
    step, data = _step_data(config, 1, tmp_path)
    lut = data.train.label_lut  # what every training item goes through
    assert (lut[0], lut[16], lut[255]) == (0, 16, 255)
    assert all(lut[old] == 0 for old in step.old_labels)  # old classes -> background
    assert lut[18] == 0  # a future class -> background
    for i in range(len(data.train)):
        assert set(data.train[i]["label"].unique().tolist()) <= {0, 16, 255}


@pytest.mark.parametrize(
    "setting,expected",
    [("overlap", ["new_and_future", "new_and_old"]), ("disjoint", ["new_and_old"])],
)
def test_train_images_hold_a_new_class_and_disjoint_drops_future_classes(
    voc_root, tmp_path, setting, expected
):
    config = _config(voc_root, tmp_path, "task.name=15-1", f"task.setting={setting}")
    _, data = _step_data(config, 1, tmp_path)
    assert sorted(s.id for s in data.train.samples) == expected


# -- optimisation schedule ------------------------------------------------------------------------


def _optim(**changes) -> Config:
    return load_config(None, [f"optim.{k}={v}" for k, v in changes.items()])


def test_poly_factor_by_hand():
    config = _optim()
    assert lr_factor(config, 0, 100) == 1.0
    assert lr_factor(config, 50, 100) == pytest.approx(0.5**0.9, rel=1e-12)
    assert lr_factor(config, 99, 100) == pytest.approx(0.01**0.9, rel=1e-12)


def test_warmup_poly_factor_by_hand():
    config = _optim(schedule="warmup_poly")  # warm-up over 20% from 0.001 x lr
    assert lr_factor(config, 0, 100) == pytest.approx(1e-3, rel=1e-12)
    # Iteration 10 of a 20-iteration warm-up: halfway from 0.001 to 1, times the poly factor.
    assert lr_factor(config, 10, 100) == pytest.approx((1e-3 * 0.5 + 0.5) * 0.9**0.9, rel=1e-12)
    assert lr_factor(config, 19, 100) == pytest.approx((1e-3 * 0.05 + 0.95) * 0.81**0.9, rel=1e-12)
    assert lr_factor(config, 20, 100) == pytest.approx(0.8**0.9, rel=1e-12)  # warm-up over


def test_unknown_schedule_is_an_error():
    with pytest.raises(DKDError, match=r"optim\.schedule"):
        lr_factor(_optim(schedule="cosine"), 0, 10)


def test_defaults_are_the_methods_voc_values():
    c = Config()
    assert (c.optim.lr, c.optim.lr_incremental, c.optim.epochs) == (1e-3, 1e-4, 60)
    assert (c.optim.momentum, c.optim.nesterov, c.optim.weight_decay) == (0.9, True, 1e-4)
    assert (c.optim.schedule, c.optim.power) == ("poly", 0.9)
    assert (c.optim.warmup_fraction, c.optim.warmup_factor) == (0.2, 1e-3)
    assert (c.loss.mbce, c.loss.kd, c.loss.dkd_pos, c.loss.dkd_neg, c.loss.ac) == (1, 5, 5, 5, 1)
    assert (c.loss.pos_weight, c.loss.pos_weight_incremental) == (2.0, 1.0)
    assert (c.loss.for_step(0).pos_weight, c.loss.for_step(3).pos_weight) == (2.0, 1.0)
    assert (c.data.batch_size, c.data.crop_size, c.data.memory_size) == (32, 512, 0)
    assert (c.model.backbone, c.model.output_stride, c.model.aspp_channels) == (
        "resnet101",
        16,
        256,
    )
    assert (c.train.seed, c.train.freeze_bn_incremental) == (1, True)
    assert c.data.whole_image_eval is False
    assert (c.task.dataset, c.task.setting) == ("voc", "overlap")


# -- model structure the method fixes -------------------------------------------------------------


def test_aspp_at_output_stride_16_and_8():
    from dkd_core.model.aspp import ASPP

    aspp = ASPP(2048, 256, output_stride=16)
    assert [b.conv.kernel_size for b in aspp.branches] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert [b.conv.dilation for b in aspp.branches] == [(1, 1), (6, 6), (12, 12), (18, 18)]
    assert [b.conv.padding for b in aspp.branches] == [(0, 0), (6, 6), (12, 12), (18, 18)]
    assert aspp.pooling.conv.kernel_size == (1, 1)
    assert aspp.project.conv.in_channels == 5 * 256 and aspp.project.conv.kernel_size == (1, 1)
    assert aspp.fuse.conv.kernel_size == (3, 3) and aspp.fuse.conv.padding == (1, 1)
    assert aspp.dropout.p == 0.1 and aspp.out_channels == 256
    wide = ASPP(64, 32, output_stride=8)
    assert [b.conv.dilation for b in wide.branches[1:]] == [(12, 12), (24, 24), (36, 36)]


def test_deeplab_defaults_and_heads():
    import inspect

    from dkd_core.model import DeepLabV3

    defaults = {k: p.default for k, p in inspect.signature(DeepLabV3).parameters.items()}
    assert defaults == {
        "classes_per_step": (15, 1),  # VOC 15-1 at step 1
        "backbone": "resnet101",
        "output_stride": 16,
        "aspp_channels": 256,
        "dropout": 0.1,
        "pretrained_backbone": None,
    }
    model = DeepLabV3((3, 2), backbone="tiny", output_stride=8, aspp_channels=16)
    assert model.aspp.dropout.p == 0.1
    heads = [model.aux_head, *model.step_heads]
    assert [h.out_channels for h in heads] == [1, 3, 2]
    assert all(h.kernel_size == (1, 1) and h.bias is not None for h in heads)


def test_a_random_new_head_is_kaiming_normal():
    from dkd_core.model import DeepLabV3

    torch.manual_seed(0)
    model = DeepLabV3((2,), backbone="tiny", output_stride=8, aspp_channels=256)
    model.add_step(20, init_from_auxiliary=False)
    weight = model.step_heads[-1].weight  # [20, 256, 1, 1]: 5,120 draws
    assert weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)
    assert abs(weight.mean().item()) < 0.01
    assert not torch.equal(weight, model.aux_head.weight.expand_as(weight))


def test_a_class_just_above_one_half_is_predicted():
    from dkd_core.model import predict_from_logits

    # [1, 1 + 2, 1, 3]: sigmoid(0.01) = 0.5025, sigmoid(0) = 0.5, sigmoid(-0.01) = 0.4975.
    logits = torch.tensor([[[[9.0, 9.0, 9.0]], [[0.01, 0.0, -0.01]], [[-5.0, -5.0, -5.0]]]])
    assert predict_from_logits(logits).tolist() == [[[1, 0, 0]]]
