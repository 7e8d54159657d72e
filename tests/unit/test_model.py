"""DeepLabV3: decomposition, auxiliary classifier, growth, frozen BN, parameter groups (docs/method.md §3, §5, §6)."""

import argparse
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dkd_core.config import ModelConfig
from dkd_core.errors import DKDError
from dkd_core.model import DeepLabV3, build_backbone, load_imagenet_weights, predict_from_logits
from dkd_core.model.resnet import BACKBONE_BN_MOMENTUM


def tiny(classes=(4, 1), **kw) -> DeepLabV3:
    torch.manual_seed(0)
    return DeepLabV3(classes, backbone="tiny", output_stride=8, aspp_channels=32, **kw)


def features_of(model: DeepLabV3, images: torch.Tensor) -> torch.Tensor:
    return model.aspp(model.backbone(images))


def test_output_shapes_and_channel_layout():
    model = tiny((4, 1, 2)).eval()
    out = model(torch.randn(2, 3, 64, 48), decompose=True)
    assert out.logits.shape == (2, 1 + 7, 64, 48)  # channel 0 = auxiliary
    assert out.pos.shape == out.neg.shape == (2, 7, 8, 6)  # output stride 8
    assert model(torch.randn(1, 3, 64, 48)).pos is None


@pytest.mark.parametrize(
    "name,output_stride,channels",
    [("tiny", 8, 128), ("tiny", 16, 128), ("resnet18", 16, 512), ("resnet18", 8, 512)],
)
def test_backbone_output_stride(name, output_stride, channels):
    backbone = build_backbone(name, output_stride).eval()
    assert backbone(torch.randn(1, 3, 64, 96)).shape == (
        1,
        channels,
        64 // output_stride,
        96 // output_stride,
    )


def test_resnet101_structure():
    backbone = build_backbone("resnet101", 16)
    assert backbone.out_channels == 2048
    assert len(backbone.layer3) == 23
    # Output stride 16: the last stage keeps stride 1 and dilates by 2 (first block keeps 1).
    assert backbone.layer4[0].conv2.stride == (1, 1) and backbone.layer4[0].conv2.dilation == (1, 1)
    assert backbone.layer4[1].conv2.dilation == (2, 2)
    assert backbone.layer3[0].conv2.stride == (2, 2)
    assert all(
        m.momentum == BACKBONE_BN_MOMENTUM
        for m in backbone.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )


def test_decomposition_sums_to_the_feature_resolution_logit():
    model = tiny((4, 2)).eval()
    images = torch.randn(2, 3, 64, 64)
    out = model(images, decompose=True)
    features = features_of(model, images)
    weight = torch.cat([h.weight for h in model.step_heads])
    bias = torch.cat([h.bias for h in model.step_heads])
    logit_small = F.conv2d(features, weight, bias)  # [N, C, h, w]
    assert_close(out.pos + out.neg + bias.view(1, -1, 1, 1), logit_small, atol=1e-5, rtol=0)
    # The positive term is sum(max(w, 0) * f), the negative sum(min(w, 0) * f).
    assert_close(out.pos, F.conv2d(features, weight.clamp(min=0)), atol=1e-5, rtol=0)
    assert_close(out.neg, F.conv2d(features, weight.clamp(max=0)), atol=1e-5, rtol=0)
    assert (features >= 0).all() and (out.pos >= 0).all() and (out.neg <= 0).all()
    # Logits at input size are the bilinear upsampling of [aux, classes] at feature size.
    aux = F.conv2d(features, model.aux_head.weight, model.aux_head.bias)
    expected = F.interpolate(
        torch.cat([aux, logit_small], 1), size=(64, 64), mode="bilinear", align_corners=False
    )
    assert_close(out.logits, expected, atol=1e-5, rtol=0)
    # decompose=False gives the same logits.
    assert_close(model(images).logits, out.logits, atol=1e-5, rtol=0)


def test_auxiliary_classifier_sends_no_gradient_into_the_trunk():
    model = tiny()
    out = model(torch.randn(2, 3, 64, 64))
    out.logits[:, 0].sum().backward()
    assert model.aux_head.weight.grad.abs().sum() > 0
    trunk = [*model.backbone.parameters(), *model.aspp.parameters()]
    assert all(p.grad is None or not p.grad.any() for p in trunk)
    # A real class channel does reach the trunk.
    model.zero_grad()
    model(torch.randn(2, 3, 64, 64)).logits[:, 1].sum().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_new_heads_start_as_copies_of_the_auxiliary_classifier():
    model = tiny((4,))
    with torch.no_grad():
        model.aux_head.weight.normal_()
        model.aux_head.bias.fill_(-3.25)
    model.add_step(3)
    assert model.classes_per_step == (4, 3)
    new = model.step_heads[-1]
    for i in range(3):
        assert_close(new.weight[i], model.aux_head.weight[0])
        assert_close(new.bias[i], model.aux_head.bias[0])
    # So each new class's logit equals the auxiliary logit at the start of the step.
    out = model.eval()(torch.randn(1, 3, 64, 64))
    for c in range(5, 8):
        assert_close(out.logits[:, c], out.logits[:, 0])
    # With ac switched off the new head is Kaiming-initialised instead.
    model.add_step(2, init_from_auxiliary=False)
    assert not torch.equal(model.step_heads[-1].weight[0], model.aux_head.weight[0])


def test_teacher_is_a_frozen_copy():
    model = tiny()
    teacher = model.as_teacher()
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    model.add_step(1)
    assert teacher.classes_per_step == (4, 1) and model.classes_per_step == (4, 1, 1)


def test_frozen_bn_keeps_running_statistics_through_a_training_step():
    model = tiny()
    model.add_step(1)
    model.freeze_bn()
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert not model.aspp.dropout.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameter_groups(lr=0.1, weight_decay=1e-4), momentum=0.9)
    loss = model(torch.randn(4, 3, 64, 64) * 3 + 1).logits.square().mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for name, value in before.items():
        is_bn = (
            any(s in name for s in ("running_", "num_batches", "bn")) or ".downsample.1." in name
        )
        if is_bn:
            assert torch.equal(after[name], value), f"{name} changed under frozen BN"
    assert not torch.equal(after["backbone.conv1.weight"], before["backbone.conv1.weight"])
    assert not torch.equal(after["step_heads.1.weight"], before["step_heads.1.weight"])


def test_train_mode_without_frozen_bn_updates_running_statistics():
    model = tiny().train()
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64) + 2)
    assert not torch.equal(model.backbone.bn1.running_mean, before)


def _group(groups, name):
    return next(g for g in groups if g["name"] == name)


def test_parameter_groups_step0():
    model = tiny((4,))
    groups = model.parameter_groups(lr=1e-3, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["backbone", "aspp", "classifiers"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2, 1e-2])
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-4, 1e-4]
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(_group(groups, "backbone")["params"]) == ids(model.backbone.parameters())
    assert ids(_group(groups, "aspp")["params"]) == ids(model.aspp.parameters())
    heads = [*model.aux_head.parameters(), *model.step_heads.parameters()]
    assert ids(_group(groups, "classifiers")["params"]) == ids(heads)
    # Every parameter in exactly one group; BN included at step 0.
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())


def test_parameter_groups_step1_with_frozen_bn():
    model = tiny((4,))
    model.add_step(1)
    model.freeze_bn()
    groups = model.parameter_groups(lr=1e-4, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["backbone", "aspp", "old_classifiers", "new_classifier"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3, 1e-3, 1e-3])
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0, 0.0, 1e-4]
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    convs = lambda m: [  # noqa: E731
        p for mod in m.modules() if isinstance(mod, torch.nn.Conv2d) for p in mod.parameters()
    ]
    # Frozen BN parameters are left out; convolutions stay.
    assert ids(_group(groups, "backbone")["params"]) == ids(convs(model.backbone))
    assert ids(_group(groups, "aspp")["params"]) == ids(convs(model.aspp))
    old = [*model.aux_head.parameters(), *model.step_heads[0].parameters()]
    assert ids(_group(groups, "old_classifiers")["params"]) == ids(old)
    assert ids(_group(groups, "new_classifier")["params"]) == ids(model.step_heads[1].parameters())


def test_predict_applies_the_sigmoid_threshold_rule():
    # [1, 1 + 3, 1, 4]: aux channel ignored; pixel 0 all below 0.5 -> background;
    # pixel 1 class 2 wins; pixel 2 saturated tie between classes 1 and 3 -> first;
    # pixel 3 exactly at 0.5 (logit 0) -> background.
    logits = torch.tensor(
        [
            [
                [[9.0, 9.0, 9.0, 9.0]],
                [[-1.0, 0.5, 40.0, 0.0]],
                [[-2.0, 2.0, -5.0, -1.0]],
                [[-0.5, 1.0, 50.0, -3.0]],
            ]
        ]
    )
    assert predict_from_logits(logits).tolist() == [[[0, 2, 1, 0]]]


def test_channels_last_gives_the_same_logits():
    model = tiny().eval()
    images = torch.randn(2, 3, 64, 64)
    expected = model(images, decompose=True)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(images.to(memory_format=torch.channels_last), decompose=True)
    assert_close(out.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert_close(out.pos, expected.pos, atol=1e-5, rtol=1e-5)


def test_imagenet_weights_load_by_torchvision_key(tmp_path):
    source = build_backbone("resnet18", 16)
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in source.state_dict().items()
    }
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    model = DeepLabV3((4,), backbone="resnet18", pretrained_backbone=tmp_path / "resnet18.pth")
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key

    with pytest.raises(DKDError, match=r"missing \d+ keys"):
        load_imagenet_weights(build_backbone("resnet50", 16), tmp_path / "resnet18.pth")
    with pytest.raises(DKDError, match="does not exist"):
        load_imagenet_weights(source, tmp_path / "nope.pth")


def test_weight_files_with_pickled_objects_are_refused(tmp_path):
    # Any class outside torch's weights-only allow-list stands in for malicious code.
    payload = argparse.Namespace(command="rm -rf /")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": payload}, tmp_path / "evil.pth")
    with pytest.raises(DKDError) as error:
        load_imagenet_weights(build_backbone("tiny", 8), tmp_path / "evil.pth")
    message = str(error.value)
    assert "\n" not in message, "one line, not PyTorch's advice"
    assert f"{tmp_path / 'evil.pth'} holds Python objects besides tensors" in message
    assert "was not loaded" in message and "safetensors.torch.save_file" in message
    assert "WeightsUnpickler" not in message and "Weights only load failed" not in message


def test_bad_classes_per_step():
    with pytest.raises(DKDError, match="classes_per_step"):
        DeepLabV3((4, 0), backbone="tiny")
    with pytest.raises(DKDError, match="unknown backbone"):
        DeepLabV3((4,), backbone="resnet7")
    with pytest.raises(DKDError, match="output_stride"):
        DeepLabV3((4,), backbone="tiny", output_stride=4)


def test_defaults_are_the_model_configs():
    # One source of truth: building from an empty config gives DeepLabV3's defaults.
    defaults = {name: p.default for name, p in inspect.signature(DeepLabV3).parameters.items()}
    config = ModelConfig()
    assert defaults["backbone"] == config.backbone == "resnet101"
    assert defaults["output_stride"] == config.output_stride == 16
    assert defaults["aspp_channels"] == config.aspp_channels == 256
    assert defaults["classes_per_step"] == (15, 1)  # VOC 15-1's first two steps
    assert defaults["pretrained_backbone"] is None
    # ASPP dropout 0.1, as in DeepLabV3; training builds the model with this default.
    model = DeepLabV3((4,), backbone="tiny")
    assert model.aspp.dropout.p == 0.1 and model.config()["dropout"] == 0.1


def test_new_heads_are_created_on_the_models_device():
    # The meta device stands in for a GPU: a head left on the CPU would show.
    model = tiny((4,)).to("meta")
    model.add_step(2, init_from_auxiliary=False)
    model.add_step(1)
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_new_heads_without_ac_start_kaiming_normal():
    model = tiny((4,))
    model.add_step(512, init_from_auxiliary=False)  # [512, 32, 1, 1]: enough values for a std
    weight = model.step_heads[-1].weight
    # He et al.: std sqrt(2 / fan_in); PyTorch's own default would be 1 / sqrt(3 fan_in).
    assert weight.std().item() == pytest.approx((2 / 32) ** 0.5, rel=0.05)


def test_predict_just_above_one_half_is_foreground():
    # sigmoid(0.1) = 0.525: above the 0.5 threshold by less than a tenth of it.
    logits = torch.tensor([[[[0.0, 0.0]], [[0.1, -0.1]], [[-4.0, -4.0]]]])  # [1, 1 + 2, 1, 2]
    assert predict_from_logits(logits).tolist() == [[[1, 0]]]


def test_freeze_bn_takes_effect_at_once():
    model = tiny().train()
    model.freeze_bn()  # no train() call after it
    assert all(
        not m.training
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.Dropout)
    )
    assert model.backbone.conv1.training  # the rest stays in training mode
