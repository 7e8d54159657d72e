"""The data pipeline: dataset layouts, docs/method.md §2 augmentation, datasets, loaders, toy data."""

from dkd_core.data.dataset import (
    ResumableSampler,
    SegmentationDataset,
    eval_loader,
    make_loader,
    read_label,
    train_loader,
)
from dkd_core.data.layout import DatasetLayout, Sample, SplitFiles, open_layout
from dkd_core.data.toy import make_toy_dataset, voc_palette
from dkd_core.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    PairTransform,
    TrainTransform,
    normalize,
    random_resized_crop_params,
    to_uint8_tensor,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetLayout",
    "EvalTransform",
    "PairTransform",
    "ResumableSampler",
    "Sample",
    "SegmentationDataset",
    "SplitFiles",
    "TrainTransform",
    "eval_loader",
    "make_loader",
    "make_toy_dataset",
    "normalize",
    "open_layout",
    "random_resized_crop_params",
    "read_label",
    "to_uint8_tensor",
    "train_loader",
    "voc_palette",
]
