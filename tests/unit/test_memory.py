"""DKD-M exemplar memory: label sets from ground truth and from confident predictions (docs/method.md §2)."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dkd_core import distributed
from dkd_core.data.layout import Sample
from dkd_core.memory import ground_truth_label_sets, pseudo_label_sets
from dkd_core.model import SegmentationOutput
from dkd_core.tasks import get_task


def sample(tmp_path: Path, name: str, label: np.ndarray) -> Sample:
    image, lab = tmp_path / f"{name}.jpg", tmp_path / f"{name}.png"
    Image.fromarray(np.zeros((*label.shape, 3), dtype=np.uint8)).save(image)
    Image.fromarray(label).save(lab)
    return Sample(name, image, lab)


class ScriptedModel(torch.nn.Module):
    """Returns fixed logits: [aux, class 1, class 2, class 3] over a 4x4 image."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, images, decompose=False):
        return SegmentationOutput(self.logits.expand(images.shape[0], -1, -1, -1))


def test_ground_truth_label_sets_keep_only_the_given_labels(tmp_path):
    a = sample(tmp_path, "a", np.array([[0, 1], [2, 255]], dtype=np.uint8))
    b = sample(tmp_path, "b", np.array([[0, 3], [3, 3]], dtype=np.uint8))
    assert ground_truth_label_sets([a, b], labels=[1, 2]) == {"a": {1, 2}, "b": set()}


def test_pseudo_labels_only_on_confident_background_pixels(tmp_path):
    step = get_task("toy", "2-1", num_classes=3).step(1)  # old 1, 2; new 3
    label = np.zeros((4, 4), dtype=np.uint8)
    label[0, 0] = 3  # the step's own class stays
    label[3, 3] = 255
    logits = torch.full((1, 4, 4, 4), -5.0)
    logits[0, 1, 1, 1] = 3.0  # class 1 at sigmoid 0.95: confident, on background -> kept
    logits[0, 2, 2, 2] = 1.0  # class 2 at sigmoid 0.73: not confident -> dropped
    logits[0, 2, 0, 0] = 5.0  # class 2 confident, but the pixel is labelled 3 -> not background
    logits[0, 2, 3, 3] = 5.0  # class 2 confident on an ignore pixel -> not background
    info = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    sets = pseudo_label_sets(
        ScriptedModel(logits), [sample(tmp_path, "x", label)], step, crop_size=4, info=info
    )
    assert sets == {"x": {1, 3}}
