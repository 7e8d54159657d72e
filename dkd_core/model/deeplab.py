"""DeepLabV3 with one sigmoid classifier per CISS step (docs/method.md §3, §5, §6).

Output channel 0 is the auxiliary classifier, which reads the ASPP feature
detached from the graph; channels 1.. are the real classes in the order they
were learned (see `dkd_core.tasks` for the label -> channel table). There is no
background channel: background is where no class is confident (`predict`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dkd_core.errors import DKDError
from dkd_core.model.aspp import ASPP
from dkd_core.model.resnet import build_backbone, load_imagenet_weights

# ASPP and classifiers learn ten times faster than the backbone (docs/method.md §6).
HEAD_LR_MULTIPLIER = 10.0


@dataclass
class SegmentationOutput:
    """What the model returns.

    logits: [N, 1 + C, H, W] at input resolution; channel 0 = auxiliary classifier.
    pos, neg: [N, C, h, w] at feature resolution, the positive and negative parts
        of each real class's logit (docs/method.md §3); None unless asked for.
    """

    logits: torch.Tensor
    pos: torch.Tensor | None = None
    neg: torch.Tensor | None = None


def predict_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Inference rule (docs/method.md §3): argmax of sigmoid over real classes; background if none > 0.5.

    logits: [N, 1 + C, H, W] -> prediction [N, H, W] in channel space (0 = background).
    The argmax runs on probabilities, not logits: saturated sigmoids tie, and the
    reference breaks those ties by the first channel.
    """
    probs = logits[:, 1:].sigmoid()  # [N, C, H, W]
    best, channel = probs.max(dim=1)  # [N, H, W]
    return torch.where(best > 0.5, channel + 1, torch.zeros_like(channel))


class DeepLabV3(nn.Module):
    def __init__(
        self,
        classes_per_step: Sequence[int] = (15, 1),
        backbone: str = "resnet101",
        output_stride: int = 16,
        aspp_channels: int = 256,
        dropout: float = 0.1,
        pretrained_backbone: str | Path | None = None,
    ):
        super().__init__()
        if not classes_per_step or any(int(n) < 1 for n in classes_per_step):
            raise DKDError(
                f"classes_per_step must be positive counts, got {list(classes_per_step)}"
            )
        self.backbone_name = backbone
        self.output_stride = output_stride
        self.backbone = build_backbone(backbone, output_stride)
        if pretrained_backbone is not None:
            load_imagenet_weights(self.backbone, pretrained_backbone)
        self.aspp = ASPP(self.backbone.out_channels, aspp_channels, output_stride, dropout)
        self.aux_head = self._new_head(1)
        self.step_heads = nn.ModuleList(self._new_head(int(n)) for n in classes_per_step)
        self.bn_frozen = False

    # -- structure -----------------------------------------------------------------------

    def _new_head(self, num_outputs: int) -> nn.Conv2d:
        head = nn.Conv2d(self.aspp.out_channels, num_outputs, 1, bias=True)
        nn.init.kaiming_normal_(head.weight)  # bias keeps PyTorch's default init
        p = next(self.parameters(), None)
        return head if p is None else head.to(p.device)

    @property
    def classes_per_step(self) -> tuple[int, ...]:
        return tuple(h.out_channels for h in self.step_heads)

    @property
    def num_classes(self) -> int:
        return sum(self.classes_per_step)

    def config(self) -> dict:
        """Everything needed to rebuild this architecture (stored in checkpoints)."""
        return {
            "backbone": self.backbone_name,
            "output_stride": self.output_stride,
            "aspp_channels": self.aspp.out_channels,
            "dropout": self.aspp.dropout.p,
            "classes_per_step": list(self.classes_per_step),
        }

    def add_step(self, num_new_classes: int, init_from_auxiliary: bool = True) -> None:
        """Grow by one CISS step (docs/method.md §5).

        The new head starts as copies of the auxiliary classifier (weight and bias
        in every output), or Kaiming-normal when the `ac` loss is off.
        """
        head = self._new_head(num_new_classes)
        if init_from_auxiliary:
            with torch.no_grad():
                head.weight.copy_(self.aux_head.weight.expand_as(head.weight))
                head.bias.copy_(self.aux_head.bias.expand_as(head.bias))
        self.step_heads.append(head)

    def as_teacher(self) -> DeepLabV3:
        """A frozen copy for distillation: eval mode, no gradients."""
        teacher = copy.deepcopy(self).eval()
        teacher.requires_grad_(False)
        return teacher

    # -- forward -------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, decompose: bool = False) -> SegmentationOutput:
        features = self.aspp(self.backbone(images))  # [N, D, h, w], >= 0 after ReLU
        weight = torch.cat([h.weight for h in self.step_heads])  # [C, D, 1, 1]
        bias = torch.cat([h.bias for h in self.step_heads])  # [C]
        # The auxiliary classifier must not train the trunk (docs/method.md §3).
        aux = F.conv2d(features.detach(), self.aux_head.weight, self.aux_head.bias)  # [N, 1, h, w]
        pos = neg = None
        if decompose:
            # One conv with the stacked positive and negative parts of the weights.
            # relu(w) and -relu(-w) match the reference's where(w > 0) / where(w < 0),
            # gradients at w == 0 included.
            parts = torch.cat([F.relu(weight), -F.relu(-weight)])  # [2C, D, 1, 1]
            pos, neg = F.conv2d(features, parts).chunk(2, dim=1)  # [N, C, h, w] each
            classes = pos + neg + bias.view(1, -1, 1, 1)
        else:
            classes = F.conv2d(features, weight, bias)  # [N, C, h, w]
        logits = torch.cat([aux, classes], dim=1)  # [N, 1 + C, h, w]
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return SegmentationOutput(logits, pos, neg)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> predicted channel per pixel [N, H, W] (0 = background)."""
        return predict_from_logits(self(images).logits)

    # -- training state ------------------------------------------------------------------

    def freeze_bn(self) -> None:
        """From step 1 on (docs/method.md §5): BN keeps its running statistics and affine parameters,
        dropout is off. Stays so across `train()` calls."""
        self.bn_frozen = True
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> DeepLabV3:
        super().train(mode)
        if self.bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Dropout):
                    m.eval()
        return self

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """SGD parameter groups of docs/method.md §6.

        Step 0: backbone at lr, ASPP and all classifiers at 10·lr, all with weight decay.
        Step t>0: the same learning rates, weight decay only on the newest head;
        the old heads include the auxiliary classifier. Parameters that do not
        require gradients (frozen BN) are left out.
        """
        head_lr = lr * HEAD_LR_MULTIPLIER

        def trainable(*modules: nn.Module) -> list[nn.Parameter]:
            return [p for m in modules for p in m.parameters() if p.requires_grad]

        if len(self.step_heads) == 1:
            groups = [
                ("backbone", trainable(self.backbone), lr, weight_decay),
                ("aspp", trainable(self.aspp), head_lr, weight_decay),
                ("classifiers", trainable(self.aux_head, *self.step_heads), head_lr, weight_decay),
            ]
        else:
            old_heads = (self.aux_head, *self.step_heads[:-1])
            groups = [
                ("backbone", trainable(self.backbone), lr, 0.0),
                ("aspp", trainable(self.aspp), head_lr, 0.0),
                ("old_classifiers", trainable(*old_heads), head_lr, 0.0),
                ("new_classifier", trainable(self.step_heads[-1]), head_lr, weight_decay),
            ]
        return [
            {"name": name, "params": params, "lr": group_lr, "weight_decay": wd}
            for name, params, group_lr, wd in groups
        ]
