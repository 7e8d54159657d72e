"""ResNet backbones with dilation, in torchvision's parameter layout (docs/method.md §3).

Module and parameter names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`,
`layer2.0.downsample.0`, ...) so that ImageNet weights saved by torchvision load
by key, with no renaming. There is no CPU build of torchvision, so the layers
are written here.

Output stride 16 dilates the last stage, output stride 8 the last two, the way
DeepLab does: the first block of a dilated stage keeps the previous dilation and
drops its stride; the following blocks use the new dilation.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dkd_core.errors import DKDError

# Backbone BN momentum (docs/method.md §5): running statistics move slowly, as in the reference.
BACKBONE_BN_MOMENTUM = 0.01


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34); dilation allowed, unlike torchvision's."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, dilation: int, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 with 4x expansion (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, dilation: int, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class BackboneSpec:
    block: type[BasicBlock] | type[Bottleneck]
    blocks_per_stage: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    stem_width: int

    def __post_init__(self) -> None:
        # A stage's first block is always built (it carries the stride and the
        # downsample), so a count of 0 would quietly build 1.
        if any(n < 1 for n in self.blocks_per_stage):
            raise ValueError(f"every stage needs at least one block, got {self.blocks_per_stage}")


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 64),
    "resnet50": BackboneSpec(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet101": BackboneSpec(Bottleneck, (3, 4, 23, 3), (64, 128, 256, 512), 64),
    # For tests and the toy benchmark: one block per stage, 16-32-64-128 channels.
    "tiny": BackboneSpec(BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), 16),
}

# Which stages (2, 3, 4) trade their stride for dilation, per output stride.
_DILATED_STAGES = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


class ResNet(nn.Module):
    """ResNet trunk without the classifier: images [N, 3, H, W] -> features [N, C, H/os, W/os]."""

    def __init__(self, spec: BackboneSpec, output_stride: int = 16):
        super().__init__()
        if output_stride not in _DILATED_STAGES:
            raise DKDError(
                f"output_stride must be one of {sorted(_DILATED_STAGES)}, got {output_stride}"
            )
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, spec.stem_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        self._in_channels, self._dilation = spec.stem_width, 1
        dilated = (False, *_DILATED_STAGES[output_stride])
        for i, (n, width, dilate) in enumerate(
            zip(spec.blocks_per_stage, spec.widths, dilated, strict=True)
        ):
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", self._make_stage(spec.block, width, n, stride, dilate))
        self.out_channels = self._in_channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.momentum = BACKBONE_BN_MOMENTUM

    def _make_stage(self, block, width: int, n: int, stride: int, dilate: bool) -> nn.Sequential:
        first_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_channels = width * block.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        blocks = [block(self._in_channels, width, stride, first_dilation, downsample)]
        blocks += [block(out_channels, width, 1, self._dilation, None) for _ in range(1, n)]
        self._in_channels = out_channels
        return nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def build_backbone(name: str, output_stride: int = 16) -> ResNet:
    if name not in BACKBONES:
        raise DKDError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return ResNet(BACKBONES[name], output_stride)


# torch.save's legacy (pre-zip) files open with this pickled number (torch.serialization).
_LEGACY_TORCH_HEADER = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def _in_torch_save_format(path: Path) -> bool:
    """A zip archive (torch.save since PyTorch 1.6) or a legacy torch.save file."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(len(_LEGACY_TORCH_HEADER)) == _LEGACY_TORCH_HEADER


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file: safetensors, or a PyTorch file read without pickle code.

    A PyTorch file is read with `weights_only=True`, so a file that carries
    arbitrary Python objects is refused rather than executed.
    """
    path = Path(path)
    if not path.is_file():
        raise DKDError(f"weight file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise DKDError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the weights-only unpickler stopped
        if not _in_torch_save_format(path):  # random bytes, a plain pickle: nothing was run
            raise DKDError(
                f"{path}: not a readable PyTorch weight file (not written by torch.save)"
            ) from None
        # A torch.save file the weights-only unpickler refused: it holds more than tensors.
        raise DKDError(
            f"{path} holds Python objects besides tensors (pickled code) and was not loaded: "
            "loading it could run that code. If you trust its source, convert it once in an "
            "isolated environment (torch.load(..., weights_only=False), then "
            "safetensors.torch.save_file of its state_dict) and pass the .safetensors file"
        ) from None
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DKDError(f"{path}: not a readable PyTorch weight file ({first_line})") from None
    for key in ("state_dict", "model"):  # common wrappers around the tensors
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DKDError(
            f"{path}: expected a dict of tensors (a state_dict), got {type(obj).__name__}"
        )
    return obj


def match_state_dict(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str, layout: str
) -> None:
    """Raise a DKDError naming keys that are missing, unexpected or of the wrong shape."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise DKDError(
            f"{source}: does not match {layout}; missing {len(missing)} keys {missing[:5]}, "
            f"unexpected {len(unexpected)} keys {unexpected[:5]}"
        )
    for key, value in given.items():
        if value.shape != expected[key].shape:
            raise DKDError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[key].shape)}"
            )


def load_imagenet_weights(backbone: ResNet, path: str | Path) -> None:
    """Load ImageNet weights saved in torchvision's layout (e.g. resnet101-63fe2227.pth).

    Only the trunk is used: the `fc.` classifier keys are dropped. Any other
    missing or unexpected key, or a shape mismatch, is an error naming the key.
    """
    state = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    layout = "this backbone's torchvision layout (was the file made for another ResNet depth?)"
    match_state_dict(backbone.state_dict(), state, str(path), layout)
    backbone.load_state_dict(state, strict=True)
