"""Stage 2: the device against fp32 on CPU, same weights and batch, per precision.

VOC 15-1 step 1 (student with decomposition, frozen teacher, every DKD loss
term, backward). The CPU fp32 run is the reference; each mode runs the same
models on the device: fp32 with TF32 off, fp32 with PyTorch's default TF32
setting (cuDNN convolutions in TF32; CUDA only), bf16 autocast and fp16
autocast. Figures: relative L2 error ||x - x_ref|| / ||x_ref|| of the logits,
the decomposed terms (pos, neg) of student and teacher and the student's whole
gradient; relative error |l - l_ref| / |l_ref| of every loss term.

A deep ResNet with random weights amplifies rounding errors far more than a
trained one, so a fixed tolerance for bf16 would judge the weights, not the
arithmetic. The yardstick is the CPU's own autocast on the same weights and
batch: a device mode passes when everything is finite and each figure is
within `FACTOR` x the CPU's error at the same precision (fp16's for TF32, which
has as many mantissa bits) plus `SLACK`; strict fp32 must be within
`FP32_TOLERANCE`. Both errors are reported.
"""

from __future__ import annotations

import copy

import torch

from dkd_core.data import normalize
from gpucheck.models import build_step_models, fixed_batch, forward_losses, task_step
from gpucheck.stage_io import Deadline, StageResult, finite_or_none

# fp32 on the device differs from CPU only in summation order.
FP32_TOLERANCE = 1e-3
FACTOR, SLACK = 4.0, 1e-3
DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
YARDSTICK = {"tf32": "fp16", "bf16": "bf16", "fp16": "fp16"}  # CPU precision to compare with


def _run(student, teacher, images, labels, step, dtype) -> dict[str, torch.Tensor]:
    """Every compared quantity of one forward + backward, as fp32 CPU tensors."""
    student.zero_grad(set_to_none=True)
    out, teacher_out, terms = forward_losses(student, teacher, images, labels, step, dtype)
    terms["total"].backward()
    grads = [p.grad.float().flatten() for p in student.parameters() if p.grad is not None]
    values = {
        "logits": out.logits, "pos": out.pos, "neg": out.neg,
        "teacher_logits": teacher_out.logits, "teacher_pos": teacher_out.pos,
        "teacher_neg": teacher_out.neg, "gradient": torch.cat(grads),
    }  # fmt: skip
    values.update({f"loss.{k}": v.reshape(1) for k, v in terms.items()})
    return {k: v.detach().float().cpu() for k, v in values.items()}


def _errors(values: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    errors = {}
    for name, ref in reference.items():
        diff = (values[name] - ref).norm() / ref.norm().clamp_min(1e-30)
        errors[name] = finite_or_none(diff.item())
    return errors


def _worst(errors: dict, limits: dict) -> tuple[str, bool]:
    """The figure furthest over (or closest to) its limit, and whether all are within."""
    ratios = {k: float("inf") if e is None else e / limits[k] for k, e in errors.items()}
    worst = max(ratios, key=ratios.get)
    return worst, all(r <= 1 for r in ratios.values())


def run(settings, result: StageResult, deadline: Deadline, **_) -> None:
    device = torch.device(settings.device)
    step = task_step(1)
    size = settings.correctness_size
    raw, labels = fixed_batch(settings.correctness_batch, size, step, seed=1)
    student, teacher = build_step_models(settings, 1, raw, seed=1)  # on CPU
    images = normalize(raw)
    reference = _run(student, teacher, images, labels, step, None)
    result.set("reference", {
        "device": "cpu", "precision": "fp32", "batch": settings.correctness_batch, "size": size,
        "loss": {k[5:]: v.item() for k, v in reference.items() if k.startswith("loss.")},
    })  # fmt: skip
    modes = ["fp32", "tf32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16", "fp16"]
    s_dev, t_dev = copy.deepcopy(student).to(device), copy.deepcopy(teacher).to(device)
    images_dev, labels_dev = images.to(device), labels.to(device)
    measured = {}
    for mode in modes:  # the device first: its figures are kept even if time runs out later
        if deadline.left() < 1:
            result.check(f"correctness {mode}", False, "not run: the stage's time budget ran out")
            continue
        conv_tf32 = torch.backends.cudnn.allow_tf32
        matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            if mode == "fp32":  # a strict fp32 run; "tf32" keeps PyTorch's defaults
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
            values = _run(s_dev, t_dev, images_dev, labels_dev, step, DTYPES[mode])
        finally:
            torch.backends.cudnn.allow_tf32 = conv_tf32
            torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        finite = all(torch.isfinite(v).all().item() for v in values.values())
        measured[mode] = (_errors(values, reference), finite, conv_tf32)
        result.set("device_relative_error", {m: e for m, (e, _, _) in measured.items()})

    cpu_errors = {}
    for precision in ("bf16", "fp16"):
        cpu_errors[precision] = _errors(
            _run(student, teacher, images, labels, step, DTYPES[precision]), reference
        )
    result.set("cpu_autocast_relative_error", cpu_errors)

    for mode, (errors, finite, conv_tf32) in measured.items():
        if mode == "fp32":
            limits = dict.fromkeys(errors, FP32_TOLERANCE)
        else:
            yardstick = cpu_errors[YARDSTICK[mode]]
            limits = {k: FACTOR * (yardstick[k] or 0.0) + SLACK for k in errors}
        worst, within = _worst(errors, limits)
        result.append("modes", {
            "mode": mode, "finite": finite, "relative_error": errors, "limit": limits,
            "tf32_conv": bool(conv_tf32) if mode == "tf32" else False,
        })  # fmt: skip
        shown = "non-finite" if errors[worst] is None else f"{errors[worst]:.3g}"
        result.check(
            f"correctness {mode}",
            finite and within,
            f"{'finite' if finite else 'NON-FINITE values'}; closest to its limit: {worst} "
            f"{shown} (limit {limits[worst]:.3g})",
        )
