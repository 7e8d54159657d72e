"""ResNet trunks: torchvision's layouts, dilation per output stride, initialisation, weight files."""

import argparse
import io
import math
import pickle

import pytest
import torch
from torch import nn

from dkd_core.errors import DKDError
from dkd_core.model.resnet import (
    BACKBONE_BN_MOMENTUM,
    BACKBONES,
    BackboneSpec,
    BasicBlock,
    Bottleneck,
    ResNet,
    build_backbone,
    load_imagenet_weights,
    match_state_dict,
    read_state_dict,
)

# torchvision's published parameter counts (resnet18 11,689,512; resnet50 25,557,032;
# resnet101 44,549,160) less the ImageNet classifier `fc` (512 or 2048 inputs x 1000, + 1000).
TRUNK_PARAMETERS = {
    "resnet18": 11_689_512 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
    # Stem 3*16*49 + 32; then per stage conv1 + conv2 (3x3) + downsample (1x1) + their BN:
    # 4,672 + 14,528 + 57,728 + 230,144.
    "tiny": 2_352 + 32 + 4_672 + 14_528 + 57_728 + 230_144,
}
BLOCKS_PER_STAGE = {
    "resnet18": [2, 2, 2, 2],
    "resnet50": [3, 4, 6, 3],
    "resnet101": [3, 4, 23, 3],
    "tiny": [1, 1, 1, 1],
}


def on_meta(name: str, output_stride: int = 16) -> ResNet:
    """The architecture without allocating or initialising weights (fast for ResNet-101)."""
    with torch.device("meta"):
        return build_backbone(name, output_stride)


def stages(backbone: ResNet) -> list[nn.Sequential]:
    return [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]


@pytest.mark.parametrize("name", sorted(TRUNK_PARAMETERS))
def test_torchvision_layout(name):
    backbone = on_meta(name)
    assert sum(p.numel() for p in backbone.parameters()) == TRUNK_PARAMETERS[name]
    assert [len(stage) for stage in stages(backbone)] == BLOCKS_PER_STAGE[name]
    width = 16 if name == "tiny" else 64
    expansion = 4 if name in ("resnet50", "resnet101") else 1
    assert backbone.out_channels == 8 * width * expansion
    assert set(BACKBONES) == set(TRUNK_PARAMETERS)


def test_stem_is_a_7x7_stride_2_conv_and_a_3x3_stride_2_max_pool():
    backbone = on_meta("resnet50")
    conv = backbone.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (3, 64, (7, 7))
    assert (conv.stride, conv.padding, conv.bias) == ((2, 2), (3, 3), None)
    pool = backbone.maxpool
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)


def test_downsample_is_a_1x1_conv_with_the_stage_stride():
    backbone = on_meta("resnet50", output_stride=8)
    strides = []
    for stage in stages(backbone):
        conv = stage[0].downsample[0]
        assert conv.kernel_size == (1, 1) and conv.bias is None
        strides.append(conv.stride)
        assert all(block.downsample is None for block in stage[1:])
    # Stage 1 only widens (64 -> 256 channels); stages 3 and 4 are dilated at stride 8.
    assert strides == [(1, 1), (2, 2), (1, 1), (1, 1)]
    assert on_meta("resnet18").layer1[0].downsample is None  # 64 -> 64 at stride 1


# (stride, dilation) of each block's 3x3 conv, per stage, for a 3-block-per-stage view:
# the first block of a dilated stage keeps the previous dilation and drops its stride.
@pytest.mark.parametrize(
    ("output_stride", "expected"),
    [
        (32, [[(1, 1)], [(2, 1), (1, 1)], [(2, 1), (1, 1)], [(2, 1), (1, 1)]]),
        (16, [[(1, 1)], [(2, 1), (1, 1)], [(2, 1), (1, 1)], [(1, 1), (1, 2)]]),
        (8, [[(1, 1)], [(2, 1), (1, 1)], [(1, 1), (1, 2)], [(1, 2), (1, 4)]]),
    ],
)
def test_bottleneck_stride_and_dilation_per_output_stride(output_stride, expected):
    backbone = on_meta("resnet50", output_stride)
    for stage, want in zip(stages(backbone), expected, strict=True):
        got = [(b.conv2.stride[0], b.conv2.dilation[0]) for b in stage[: len(want)]]
        assert got == want
        for block in stage:  # "same" padding everywhere; 1x1 convs never strided
            assert block.conv2.padding == block.conv2.dilation
            assert block.conv1.stride == block.conv3.stride == (1, 1)
    assert backbone.output_stride == output_stride


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_size_at_each_output_stride(output_stride):
    # 65 x 97: odd sizes, so every kernel, stride and padding shows in the output size.
    torch.manual_seed(0)
    backbone = build_backbone("tiny", output_stride).eval()
    out = backbone(torch.randn(1, 3, 65, 97))
    size = {8: (9, 13), 16: (5, 7), 32: (3, 4)}[output_stride]
    assert out.shape == (1, 128, *size)
    # BasicBlock: both 3x3 convs of a block share its dilation.
    block = backbone.layer4[0]
    dilation = {8: 2, 16: 1, 32: 1}[output_stride]
    assert block.conv1.dilation == block.conv2.dilation == (dilation, dilation)
    assert block.conv1.stride == ((2, 2) if output_stride == 32 else (1, 1))


def test_default_output_stride_is_16():
    assert build_backbone("tiny").output_stride == 16
    assert ResNet(BACKBONES["tiny"]).output_stride == 16


def test_bn_momentum_and_initialisation():
    assert BACKBONE_BN_MOMENTUM == 0.01  # running statistics move slowly (docs/method.md §5)
    torch.manual_seed(0)
    backbone = build_backbone("tiny", 16)
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.01 for m in bns)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)
    # He et al. in fan-out mode: std sqrt(2 / fan_out). A 1x1 conv from 64 to 128 channels
    # tells the modes apart (fan-in would give sqrt(2 / 64)); the stem conv as well.
    downsample = backbone.layer4[0].downsample[0].weight  # [128, 64, 1, 1]
    assert downsample.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    stem = backbone.conv1.weight  # [16, 3, 7, 7]
    assert stem.std().item() == pytest.approx(math.sqrt(2 / (16 * 49)), rel=0.1)


# -- weight files ------------------------------------------------------------------------


def test_read_state_dict_unwraps_common_wrappers(tmp_path):
    tensors = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    for wrapper in ("state_dict", "model"):
        torch.save({wrapper: tensors, "epoch": 3}, tmp_path / f"{wrapper}.pth")
        got = read_state_dict(tmp_path / f"{wrapper}.pth")
        assert set(got) == {"a", "b"} and torch.equal(got["a"], tensors["a"])
    torch.save(tensors, tmp_path / "plain.pt")
    assert set(read_state_dict(tmp_path / "plain.pt")) == {"a", "b"}


def test_read_state_dict_reads_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.arange(4.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_state_dict(tmp_path / "w.safetensors")["w"], torch.arange(4.0))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DKDError, match=r"bad\.safetensors: not a readable safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("content", [[torch.zeros(1)], {"a": torch.zeros(1), "n": 3}])
def test_read_state_dict_refuses_what_is_not_a_dict_of_tensors(tmp_path, content):
    torch.save(content, tmp_path / "w.pth")
    with pytest.raises(DKDError, match=r"w\.pth: expected a dict of tensors"):
        read_state_dict(tmp_path / "w.pth")


def test_read_state_dict_loads_gpu_saved_weights_on_the_cpu(tmp_path, monkeypatch):
    # A file whose tensors were saved from a GPU names that device; it must load on a
    # machine without one. The device tag is forged, so no GPU is needed to write it.
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"w": torch.arange(3.0)}, tmp_path / "gpu.pth")
    if torch.cuda.is_available():
        pytest.skip("the forged tag only fails to load where there is no GPU")
    got = read_state_dict(tmp_path / "gpu.pth")
    assert got["w"].device.type == "cpu" and torch.equal(got["w"], torch.arange(3.0))


def test_pickled_objects_are_refused_even_when_the_environment_allows_them(tmp_path, monkeypatch):
    evil = {"x": torch.zeros(1), "obj": argparse.Namespace(a=1)}
    torch.save(evil, tmp_path / "evil.pth")
    torch.save(evil, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # ignored by an explicit choice
    for name in ("evil.pth", "legacy.pth"):
        with pytest.raises(DKDError, match=f"{name} holds Python objects besides tensors"):
            read_state_dict(tmp_path / name)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch reads protocol 2 best
def test_a_file_not_written_by_torch_save_is_not_called_pickled_code(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    with (tmp_path / "plain.pth").open("wb") as f:
        pickle.dump({"a": 1}, f)
    for name in ("junk.pth", "plain.pth"):
        with pytest.raises(DKDError) as e:
            read_state_dict(tmp_path / name)
        assert str(e.value) == (
            f"{tmp_path / name}: not a readable PyTorch weight file (not written by torch.save)"
        )


def test_an_unreadable_weight_file_is_one_line_naming_it(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer)
    (tmp_path / "cut.pth").write_bytes(buffer.getvalue()[:300])  # a truncated download
    with pytest.raises(DKDError, match=r"cut\.pth: not a readable PyTorch weight file \(") as e:
        read_state_dict(tmp_path / "cut.pth")
    assert "\n" not in str(e.value) and "zip archive" in str(e.value)

    def fail(message):
        def load(*args, **kwargs):
            raise RuntimeError(message)

        return load

    monkeypatch.setattr(torch, "load", fail("first line\nsecond line"))
    with pytest.raises(DKDError, match=r"weight file \(first line\)$"):
        read_state_dict(tmp_path / "cut.pth")
    monkeypatch.setattr(torch, "load", fail("  "))
    with pytest.raises(DKDError, match=r"weight file \(RuntimeError\)$"):
        read_state_dict(tmp_path / "cut.pth")


def test_match_state_dict_names_missing_unexpected_and_misshapen_keys():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3)}
    match_state_dict(expected, {"a": torch.ones(2), "b": torch.ones(3)}, "f.pth", "L")
    with pytest.raises(DKDError, match=r"f\.pth: does not match L; missing 1 keys \['b'\]"):
        match_state_dict(expected, {"a": torch.ones(2)}, "f.pth", "L")
    with pytest.raises(DKDError, match=r"missing 0 keys \[\], unexpected 1 keys \['c'\]"):
        match_state_dict(expected, {**expected, "c": torch.ones(1)}, "f.pth", "L")
    with pytest.raises(DKDError, match=r"key 'b' has shape \(4,\), expected \(3,\)"):
        match_state_dict(expected, {"a": torch.ones(2), "b": torch.ones(4)}, "f.pth", "L")


def test_imagenet_weights_drop_the_classifier_and_a_ddp_prefix(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("tiny", 16)
    state = {f"module.{k}": torch.randn_like(v) if v.is_floating_point() else v
             for k, v in source.state_dict().items()}  # fmt: skip
    state["module.fc.weight"] = torch.randn(10, 128)
    torch.save(state, tmp_path / "tiny.pth")
    target = build_backbone("tiny", 16)
    load_imagenet_weights(target, tmp_path / "tiny.pth")
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[f"module.{key}"]), key
    del state["module.layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(DKDError, match=r"missing 1 keys \['layer1\.0\.conv1\.weight'\]"):
        load_imagenet_weights(target, tmp_path / "short.pth")


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_residual_blocks_add_the_shortcut_before_the_last_relu(block):
    """out = relu(F(x) + x): the residual is added, not subtracted, in both block kinds."""
    torch.manual_seed(0)
    if block == "basic":
        net = BasicBlock(8, 8, 1, 1, None).eval()
        layers = [net.conv1, net.bn1, net.relu, net.conv2, net.bn2]
    else:
        net = Bottleneck(32, 8, 1, 1, None).eval()
        layers = [net.conv1, net.bn1, net.relu, net.conv2, net.bn2, net.relu, net.conv3, net.bn3]
    x = torch.randn(2, 8 if block == "basic" else 32, 9, 9)
    with torch.no_grad():
        residual = x.clone()
        for layer in layers:
            residual = layer(residual)
        assert torch.allclose(net(x.clone()), torch.relu(residual + x), atol=1e-6)


def test_a_stage_without_blocks_is_refused():
    """The first block of a stage is always built, so 0 blocks would quietly build 1."""
    with pytest.raises(ValueError, match=r"at least one block, got \(0, 1, 1, 1\)"):
        BackboneSpec(BasicBlock, (0, 1, 1, 1), (16, 32, 64, 128), 16)


@pytest.mark.parametrize("field", ["blocks_per_stage", "widths"])
def test_a_spec_without_four_stages_is_refused(field):
    """Four stages, each with its stride/dilation: a shorter spec must not build fewer."""
    values = {"blocks_per_stage": (1, 1, 1, 1), "widths": (16, 32, 64, 128)}
    values[field] = values[field][:3]
    with pytest.raises(ValueError, match="zip"):
        ResNet(BackboneSpec(BasicBlock, values["blocks_per_stage"], values["widths"], 16))
