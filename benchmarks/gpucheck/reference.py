"""The authors' DeepLabV3 and losses, loaded at run time from a folder outside this repository.

`--reference-dir DIR` names a checkout of the authors' code (github
cvlab-yonsei/DKD, GPL: it is read from there, never copied here) holding
`models/model.py` and `models/loss.py`. Their ResNet imports
`torchvision.models.utils.load_state_dict_from_url`, which torchvision no
longer has (and torchvision may be absent): while their modules are imported,
that name is provided by `torch.hub.load_state_dict_from_url`, the function
torchvision's was, and the stand-in modules are removed again afterwards.

`ReferenceStep` is one iteration of their trainer as `trainer/trainer_voc.py`
runs it with `use_amp: true`: fp16 autocast, their loss modules, GradScaler,
SGD with their parameter groups, BN and dropout frozen from step 1 on.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch

from dkd_core.compat import to_reference_state_dict
from gpucheck.models import calibrate_bn


def load_reference(path: str) -> tuple[types.ModuleType, types.ModuleType]:
    """Their `models.model` and `models.loss` modules (`gpu_check.py` checked the folder)."""
    root = Path(path)
    stand_ins = {}
    try:
        importlib.import_module("torchvision.models.utils")
    except ImportError:
        for name in ("torchvision", "torchvision.models", "torchvision.models.utils"):
            if name not in sys.modules:
                stand_ins[name] = sys.modules[name] = types.ModuleType(name)
        sys.modules[
            "torchvision.models.utils"
        ].load_state_dict_from_url = torch.hub.load_state_dict_from_url
    sys.path.insert(0, str(root))
    try:
        model_module = importlib.import_module("models.model")
        loss_module = importlib.import_module("models.loss")
    finally:
        sys.path.remove(str(root))
        for name in stand_ins:
            sys.modules.pop(name, None)
    return model_module, loss_module


def _load_ours(model: torch.nn.Module, ours) -> str:
    """Give their model our weights (same batch, same numbers); say what it got."""
    try:
        model.load_state_dict(to_reference_state_dict(ours))
    except (RuntimeError, KeyError) as e:  # e.g. a backbone their code does not have
        return f"their own initialisation (ours did not map: {str(e).splitlines()[0]})"
    return "ours, mapped to their layout"


class ReferenceStep:
    """Their model (with our weights, mapped to their layout) and their training iteration."""

    def __init__(
        self, modules, ours, our_teacher, step, device: torch.device, calibration=None,
        lr: float = 1e-3,
    ):  # fmt: skip
        model_module, loss_module = modules
        incremental = step.index > 0
        classes = list(step.classes_per_step)
        self.model = model_module.DeepLabV3(
            output_stride=16, norm_act="bn_sync", backbone_pretrained=False, classes=classes,
            freeze_all_bn=incremental,
        ).to(device)  # fmt: skip
        self.weights = _load_ours(self.model, ours)
        self.teacher = None
        if our_teacher is not None:
            self.teacher = model_module.DeepLabV3(
                output_stride=16, norm_act="bn_sync", backbone_pretrained=False,
                classes=classes[:-1], freeze_all_bn=True,
            ).to(device)  # fmt: skip
            _load_ours(self.teacher, our_teacher)
            self.teacher.eval()
        if not self.weights.startswith("ours") and calibration is not None:
            for model in (self.model, self.teacher):  # as ours: BN statistics of real scale
                if model is not None:
                    calibrate_bn(model, calibration)
        self.model.train()
        if incremental:
            self.model.freeze_bn(affine_freeze=False)
            self.model.freeze_dropout()
        self.step, self.device = step, device
        self.skipped = self.skipped_since_settled = 0
        groups = [
            {"params": self.model.get_backbone_params()},
            {"params": self.model.get_aspp_params(), "lr": lr * 10},
        ]
        if incremental:
            groups[0]["weight_decay"] = groups[1]["weight_decay"] = 0
            groups.append(
                {"params": self.model.get_old_classifer_params(), "lr": lr * 10, "weight_decay": 0}
            )
            groups.append({"params": self.model.get_new_classifer_params(), "lr": lr * 10})
        else:
            groups.append({"params": self.model.get_classifer_params(), "lr": lr * 10})
        self.optimizer = torch.optim.SGD(
            groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
        n_old, n_new = step.num_old, step.num_new
        pos_weight = torch.ones(n_new, device=device)
        self.bce = loss_module.WBCELoss(
            pos_weight=pos_weight, n_old_classes=n_old + 1, n_new_classes=n_new
        )
        self.kd = loss_module.KDLoss(pos_weight=None, reduction="none")
        self.ac = loss_module.ACLoss()

    def loss(self, images: torch.Tensor, labels: torch.Tensor, amp: bool = True) -> torch.Tensor:
        """Their total loss. images: normalised [N, 3, S, S]; labels [N, S, S] (their label
        space is our channel space)."""
        n_old, n_new = self.step.num_old, self.step.num_new
        amp = amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, torch.float16, enabled=amp):
            logit, features = self.model(images, ret_intermediate=self.teacher is not None)
            loss = self.bce(logit[:, -n_new:], labels).mean(dim=[0, 2, 3]).sum()
            loss = loss + self.ac(logit[:, 0:1]).mean(dim=[0, 2, 3]).sum()
            if self.teacher is not None:
                with torch.no_grad():
                    logit_old, features_old = self.teacher(images, ret_intermediate=True)
                kd = self.kd(logit[:, 1 : n_old + 1], logit_old[:, 1:].sigmoid())
                pos = self.kd(features["pos_reg"][:, :n_old], features_old["pos_reg"].sigmoid())
                neg = self.kd(features["neg_reg"][:, :n_old], features_old["neg_reg"].sigmoid())
                for term in (kd, pos, neg):
                    loss = loss + 5 * term.mean(dim=[0, 2, 3]).sum()
        return loss

    def iteration(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.loss(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()
        skipped = self.scaler.is_enabled() and self.scaler.get_scale() < scale
        self.skipped += skipped
        self.skipped_since_settled += skipped
        loss.item()  # their trainer logs the loss every iteration (a sync)
        return loss.detach()

    def settle_scaler(self, images, labels, most: int = 30) -> int:
        """Iterate until an optimizer step is not skipped (GradScaler starts at 2^16 and
        halves on each overflow); returns the iterations it took."""
        done = 0
        while done < most:
            before = self.skipped
            self.iteration(images, labels)
            done += 1
            if self.skipped == before:
                break
        self.skipped_since_settled = 0
        return done


def reference_available(path: str | None) -> str | None:
    """None when the reference row can run, else why it is skipped."""
    if path is None:
        return "skipped: no --reference-dir (a checkout of the authors' code) given"
    return None
