"""Regenerate the whole-tensor gradients of tests/golden/reference_outputs.safetensors.

Runs the authors' model and loss code (a checkout of github cvlab-yonsei/DKD,
GPL-3.0, which this repository does not contain) on the stored weights and
inputs, exactly as tests/golden/README.md describes, and rewrites every
`grad.<key>` tensor with the full gradient of that parameter (a
`tests.helpers.gradient_summary` of it above WHOLE_GRADIENT_MAX values). The other
stored tensors are compared with the fresh run and left as they are.

    python tools/golden_gradients.py /path/to/DKD   # the authors' checkout
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
sys.path.insert(0, str(REPO))

from tests.helpers import (  # noqa: E402
    WHOLE_GRADIENT_MAX,
    gradient_summary,
    synthetic_weights,
)


def _authors_modules(checkout: Path):
    """Their model and loss modules; torchvision is needed only for pretrained downloads."""
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            fake = types.ModuleType("torchvision.models.utils")
            fake.load_state_dict_from_url = None  # never called: backbone_pretrained=False
            sys.modules["torchvision"] = types.ModuleType("torchvision")
            sys.modules["torchvision.models"] = types.ModuleType("torchvision.models")
            sys.modules["torchvision.models.utils"] = fake
    sys.path.insert(0, str(checkout))
    from models.loss import ACLoss, KDLoss, WBCELoss
    from models.model import DeepLabV3

    return DeepLabV3, WBCELoss, KDLoss, ACLoss


def main(checkout: Path) -> None:
    meta = json.loads((GOLDEN / "reference_outputs.json").read_text())
    tensors = load_file(str(GOLDEN / "reference_outputs.safetensors"))
    DeepLabV3, WBCELoss, KDLoss, ACLoss = _authors_modules(checkout)
    torch.use_deterministic_algorithms(True)

    student = DeepLabV3(output_stride=16, norm_act="bn_sync", classes=meta["student_classes"])
    teacher = DeepLabV3(output_stride=16, norm_act="bn_sync", classes=meta["teacher_classes"])
    shapes = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    assert shapes == {k: tuple(v) for k, v in meta["student_keys"].items()}
    student.load_state_dict(synthetic_weights(shapes, meta["student_seed"]))
    teacher_shapes = {k: tuple(v.shape) for k, v in teacher.state_dict().items()}
    teacher.load_state_dict(synthetic_weights(teacher_shapes, meta["teacher_seed"]))
    student.eval()
    teacher.eval()

    images, labels = tensors["images"], tensors["labels"].long()
    logit, features = student(images, ret_intermediate=True)
    with torch.no_grad():
        logit_old, features_old = teacher(images, ret_intermediate=True)
    n_old = sum(meta["teacher_classes"])  # old classes, background not counted
    n_new = meta["student_classes"][-1]
    pos_weight = torch.ones([n_new]) * meta["pos_weight"]
    # As their incremental trainer: per-channel means, summed, weighted 1/5/5/5/1.
    mbce = WBCELoss(pos_weight=pos_weight, n_old_classes=n_old + 1, n_new_classes=n_new)(
        logit[:, -n_new:], labels
    ).mean(dim=[0, 2, 3])
    kd_loss = KDLoss(pos_weight=None, reduction="none")
    kd = kd_loss(logit[:, 1 : n_old + 1], logit_old[:, 1:].sigmoid()).mean(dim=[0, 2, 3])
    ac = ACLoss()(logit[:, 0:1]).mean(dim=[0, 2, 3])
    dkd_pos = kd_loss(features["pos_reg"][:, :n_old], features_old["pos_reg"].sigmoid()).mean(
        dim=[0, 2, 3]
    )
    dkd_neg = kd_loss(features["neg_reg"][:, :n_old], features_old["neg_reg"].sigmoid()).mean(
        dim=[0, 2, 3]
    )
    total = mbce.sum() + 5 * kd.sum() + 5 * dkd_pos.sum() + 5 * dkd_neg.sum() + ac.sum()
    total.backward()

    # The fresh run must reproduce what is stored, or the new gradients belong to another run.
    torch.testing.assert_close(logit.detach(), tensors["student.logits"], atol=0, rtol=0)
    assert abs(total.item() - meta["losses"]["total"]) <= 1e-6 * abs(meta["losses"]["total"])
    params = dict(student.named_parameters())
    for key in meta["grad_keys"]:
        grad = params[key].grad.detach().clone()
        for name in [n for n in tensors if n == f"grad.{key}" or n.startswith(f"grad.{key}.")]:
            del tensors[name]
        if grad.numel() <= WHOLE_GRADIENT_MAX:
            tensors["grad." + key] = grad.contiguous()
        else:  # a summary that still depends on every value (tests/helpers.py)
            for part, value in gradient_summary(grad).items():
                tensors[f"grad.{key}.{part}"] = value
    save_file(tensors, str(GOLDEN / "reference_outputs.safetensors"))
    print(f"wrote the gradients of {len(meta['grad_keys'])} parameters")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "models" / "model.py").is_file():
        sys.exit("usage: python tools/golden_gradients.py <checkout of cvlab-yonsei/DKD>")
    main(Path(sys.argv[1]))
