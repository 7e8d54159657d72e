"""DeepLabV3 for class-incremental segmentation: backbones, ASPP, per-step heads (docs/method.md §3)."""

from dkd_core.model.deeplab import DeepLabV3, SegmentationOutput, predict_from_logits
from dkd_core.model.resnet import BACKBONES, build_backbone, load_imagenet_weights, read_state_dict

__all__ = [
    "BACKBONES",
    "DeepLabV3",
    "SegmentationOutput",
    "build_backbone",
    "load_imagenet_weights",
    "predict_from_logits",
    "read_state_dict",
]
