"""Load the authors' released checkpoints into our model.

The reference implementation saves `{"state_dict": ..., "optimizer": ..., ...}`
with a DeepLabV3 whose keys read `backbone.*` (torchvision names, as ours),
`aspp.convs.{i}.{j}`, `aspp.project.{j}`, `aspp.last_conv.{j}` and `cls.{i}`
(cls.0 = auxiliary classifier), sometimes behind a DDP `module.` prefix. This
module maps those keys to ours and back; the mapping is the whole difference,
the numbers are the same (tests/unit/test_compat.py checks logits, decomposed
terms and losses against outputs of the authors' code).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dkd_core.errors import DKDError
from dkd_core.model import DeepLabV3, read_state_dict
from dkd_core.model.resnet import match_state_dict

# (reference pattern, our replacement), applied to the key prefix; first match wins.
_REFERENCE_TO_OURS: list[tuple[str, str]] = [
    (r"aspp\.convs\.([0-3])\.0\.", r"aspp.branches.\1.conv."),
    (r"aspp\.convs\.([0-3])\.1\.", r"aspp.branches.\1.bn."),
    (r"aspp\.convs\.4\.1\.", "aspp.pooling.conv."),  # convs.4.0 is the (parameterless) pooling
    (r"aspp\.convs\.4\.2\.", "aspp.pooling.bn."),
    (r"aspp\.project\.0\.", "aspp.project.conv."),
    (r"aspp\.project\.1\.", "aspp.project.bn."),
    (r"aspp\.last_conv\.0\.", "aspp.fuse.conv."),
    (r"aspp\.last_conv\.1\.", "aspp.fuse.bn."),
    (r"cls\.0\.", "aux_head."),
    (r"backbone\.", "backbone."),
]
_OURS_TO_REFERENCE: list[tuple[str, str]] = [
    (r"aspp\.branches\.([0-3])\.conv\.", r"aspp.convs.\1.0."),
    (r"aspp\.branches\.([0-3])\.bn\.", r"aspp.convs.\1.1."),
    (r"aspp\.pooling\.conv\.", "aspp.convs.4.1."),
    (r"aspp\.pooling\.bn\.", "aspp.convs.4.2."),
    (r"aspp\.project\.conv\.", "aspp.project.0."),
    (r"aspp\.project\.bn\.", "aspp.project.1."),
    (r"aspp\.fuse\.conv\.", "aspp.last_conv.0."),
    (r"aspp\.fuse\.bn\.", "aspp.last_conv.1."),
    (r"aux_head\.", "cls.0."),
    (r"backbone\.", "backbone."),
]
_REFERENCE_HEAD = re.compile(r"cls\.([1-9][0-9]*)\.(.+)")
_OUR_HEAD = re.compile(r"step_heads\.([0-9]+)\.(.+)")


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        new, count = re.subn("^" + pattern, replacement, key)
        if count:
            return new
    return None


def reference_key_to_ours(key: str) -> str | None:
    """Our name for a reference key, or None when the key has no counterpart."""
    if m := _REFERENCE_HEAD.fullmatch(key):
        return f"step_heads.{int(m[1]) - 1}.{m[2]}"
    return _rename(key, _REFERENCE_TO_OURS)


def our_key_to_reference(key: str) -> str:
    if m := _OUR_HEAD.fullmatch(key):
        return f"cls.{int(m[1]) + 1}.{m[2]}"
    renamed = _rename(key, _OURS_TO_REFERENCE)
    if renamed is None:
        raise KeyError(key)
    return renamed


def to_reference_state_dict(model: DeepLabV3) -> dict[str, torch.Tensor]:
    """Our weights in the reference layout (for exporting, and for testing the mapping)."""
    return {our_key_to_reference(k): v for k, v in model.state_dict().items()}


def _infer_backbone(state: Mapping[str, torch.Tensor]) -> str:
    blocks_in_stage3 = {int(k.split(".")[2]) for k in state if k.startswith("backbone.layer3.")}
    bottleneck = any(k.startswith("backbone.layer1.0.conv3.") for k in state)
    by_shape = {(True, 23): "resnet101", (True, 6): "resnet50", (False, 2): "resnet18"}
    name = by_shape.get((bottleneck, len(blocks_in_stage3)))
    if name is None:
        raise DKDError(
            "cannot tell the backbone from the checkpoint: expected keys "
            "'backbone.layer3.<i>.conv1.weight' of a ResNet-18/50/101 "
            f"(found {len(blocks_in_stage3)} blocks in layer3, bottleneck={bottleneck})"
        )
    return name


def load_reference_checkpoint(
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
    classes_per_step: Sequence[int] | None = None,
    output_stride: int = 16,
) -> DeepLabV3:
    """Build our DeepLabV3 from a checkpoint saved by the authors' code.

    classes_per_step, when given, must match the checkpoint's heads (it is read
    from their shapes otherwise). The reference trains at output stride 16.
    """
    source = str(path_or_state_dict) if isinstance(path_or_state_dict, str | Path) else "state_dict"
    if isinstance(path_or_state_dict, str | Path):
        state = read_state_dict(path_or_state_dict)
    else:
        state = dict(path_or_state_dict)
        if isinstance(state.get("state_dict"), Mapping):
            state = dict(state["state_dict"])
    state = {k.removeprefix("module."): v for k, v in state.items()}

    head_sizes: dict[int, int] = {}
    for key, value in state.items():
        if (m := re.fullmatch(r"cls\.([0-9]+)\.weight", key)) is not None:
            head_sizes[int(m[1])] = value.shape[0]
    if head_sizes.get(0) != 1 or sorted(head_sizes) != list(range(len(head_sizes))):
        raise DKDError(
            f"{source}: not a DKD reference checkpoint: expected classifier keys "
            f"'cls.0.weight' (1 output, the auxiliary classifier), 'cls.1.weight', ...; "
            f"found heads {sorted(head_sizes)} with outputs {head_sizes}"
        )
    found = tuple(head_sizes[i] for i in range(1, len(head_sizes)))
    if classes_per_step is not None and tuple(classes_per_step) != found:
        raise DKDError(
            f"{source}: classes_per_step {list(classes_per_step)} does not match the "
            f"checkpoint's classifiers, which have {list(found)} outputs"
        )

    model = DeepLabV3(found, backbone=_infer_backbone(state), output_stride=output_stride)
    # Keys without a counterpart keep their reference name, so the error shows them as they are.
    ours = {reference_key_to_ours(k) or k: v for k, v in state.items()}
    match_state_dict(model.state_dict(), ours, source, "the reference DeepLabV3 layout (our names)")
    model.load_state_dict(ours, strict=True)
    return model


def reference_meta(
    model: DeepLabV3, task, setting: str, source: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """Checkpoint metadata of a converted reference model of `task` (a `tasks.Task`): its
    step (from the number of heads, which must match the task's), task and channels."""
    step = task.step(len(model.classes_per_step) - 1) if model.classes_per_step else None
    if step is None or step.classes_per_step != model.classes_per_step:
        expected = list(step.classes_per_step) if step is not None else "none"
        raise DKDError(
            f"{where}: heads {list(model.classes_per_step)} do not match "
            f"{task.dataset}:{task.name} step {len(model.classes_per_step) - 1}, "
            f"which has {expected}"
        )
    return {
        "source": dict(source),
        "task": {"dataset": task.dataset, "name": task.name, "setting": setting},
        "step": step.index,
        "channel_to_label": list(step.channel_to_label),
    }
