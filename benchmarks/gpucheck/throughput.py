"""Stage 4: training images/s and peak memory, ours in four settings and the authors' model.

One row per (configuration, per-GPU batch, step). A row times `timed_iterations`
full training iterations (forward, the teacher's forward from step 1 on, every
loss term, backward, optimizer step) after `warmup_iterations`, on the same
fixed batch for every configuration. Configurations:

- ours_fp32: eager, fp32 (PyTorch's default TF32 setting for convolutions);
- ours_bf16: bf16 autocast, as `dkd_core.train` runs on CUDA (train.amp);
- ours_bf16_cl: bf16 + channels_last (train.channels_last);
- ours_bf16_cl_compile: bf16 + channels_last + torch.compile of student and teacher;
- reference_fp16_amp: the authors' model and losses under their own AMP setting
  (fp16 autocast + GradScaler, cudnn.benchmark on, as their train script sets it).

FLOPs per image are counted once per step (torch.utils.flop_counter, one eager
iteration: forward, teacher forward and backward); MFU is images/s x FLOPs per
image over the bf16 matrix rate the environment stage measured. Rows run in
priority order (largest batch and step 1 first, compile rows last); a row that
would not fit in the stage's remaining budget is recorded as skipped.
"""

from __future__ import annotations

import gc
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dkd_core.data import normalize
from gpucheck.models import build_step_models, fixed_batch, forward_losses, task_step
from gpucheck.reference import ReferenceStep, load_reference, reference_available
from gpucheck.stage_io import Deadline, StageResult, finite_or_none

# name -> (autocast dtype, channels_last, compile)
OURS = {
    "ours_fp32": (None, False, False),
    "ours_bf16": (torch.bfloat16, False, False),
    "ours_bf16_cl": (torch.bfloat16, True, False),
    "ours_bf16_cl_compile": (torch.bfloat16, True, True),
}
REFERENCE = "reference_fp16_amp"
EAGER_MIN_SECONDS = 5.0  # an eager row starts only with this much budget left
# Every optimizer step runs, with learning rate 0: a random ResNet-101 under frozen BN has
# gradients that would blow its weights up within an iteration or two (NaN from then on),
# and the time of a step does not depend on the values.
BENCH_LR = 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class OurStep:
    """One training iteration of ours, as `dkd_core.train` runs it (optionally compiled)."""

    def __init__(self, settings, step, raw, dtype, channels_last, compiled):
        self.student, self.teacher = build_step_models(settings, step.index, raw, seed=0)
        if channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.student.parameter_groups(BENCH_LR, 1e-4), lr=BENCH_LR, momentum=0.9,
            nesterov=True,
        )  # fmt: skip
        self.net, self.teacher_net = self.student, self.teacher
        if compiled:
            self.net = torch.compile(self.student, backend=settings.compile_backend)
            if self.teacher is not None:
                self.teacher_net = torch.compile(self.teacher, backend=settings.compile_backend)
        self.step, self.dtype, self.channels_last = step, dtype, channels_last

    def iteration(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        _, _, terms = forward_losses(
            self.net, self.teacher_net, images, labels, self.step, self.dtype
        )
        torch.isfinite(terms["total"]).item()  # dkd_core.train checks every iteration (a sync)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        return terms["total"].detach()


def count_flops_per_image(settings, step, raw, labels) -> float:
    """Forward + teacher forward + backward FLOPs of one eager fp32 iteration, per image."""
    runner = OurStep(settings, step, raw, None, False, False)
    images = normalize(raw)
    with FlopCounterMode(display=False) as counter:
        _, _, terms = forward_losses(runner.student, runner.teacher, images, labels, step, None)
        terms["total"].backward()
    return counter.get_total_flops() / raw.shape[0]


def same_loss(runner: ReferenceStep, ours, teacher, images, labels, step) -> float | None:
    """Relative difference of their fp32 loss and ours, same weights and batch (dropout seeded)."""
    with torch.no_grad():
        torch.manual_seed(0)
        theirs = runner.loss(images, labels, amp=False).item()
        torch.manual_seed(0)
        mine = forward_losses(ours, teacher, images, labels, step, None)[2]["total"].item()
    return finite_or_none(abs(theirs - mine) / abs(mine))


def time_row(runner, images, labels, settings, device) -> dict:
    started = time.perf_counter()
    loss = None
    for _ in range(settings.warmup_iterations):
        loss = runner.iteration(images, labels)
    _sync(device)
    first = time.perf_counter() - started
    start = time.perf_counter()
    for _ in range(settings.timed_iterations):
        loss = runner.iteration(images, labels)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_second": images.shape[0] * settings.timed_iterations / seconds,
        "seconds_per_iteration": seconds / settings.timed_iterations,
        "warmup_seconds": first,
        "last_loss": finite_or_none(loss.float().item()),
    }


def rows_in_priority_order(settings) -> list[tuple[str, int, int]]:
    eager = [*(n for n, (_, _, compiled) in OURS.items() if not compiled), REFERENCE]
    rows = [(n, b, s) for b in settings.batches for s in settings.steps for n in eager]
    compiled = [n for n, (_, _, c) in OURS.items() if c]
    return rows + [(n, b, s) for b in settings.batches for s in settings.steps for n in compiled]


def run(settings, result: StageResult, deadline: Deadline, reference_dir=None, **_) -> None:
    device = torch.device(settings.device)
    skip_reference = reference_available(reference_dir)
    reference_modules = None
    if skip_reference is None:
        try:
            reference_modules = load_reference(reference_dir)
        except Exception as e:  # their code failed to import: the row says why
            skip_reference = f"the authors' code did not import: {type(e).__name__}: {e}"
    result.set("reference_note", skip_reference)
    batches = {}
    for batch in settings.batches:
        for step_index in settings.steps:
            raw, labels = fixed_batch(batch, settings.size, task_step(step_index), seed=0)
            batches[batch, step_index] = raw.to(device), labels.to(device)
    flops = {}
    for step_index in settings.steps:
        raw, labels = batches[settings.batches[-1], step_index]
        flops[step_index] = count_flops_per_image(settings, task_step(step_index), raw, labels)
    result.set("flops_per_image", {f"step{k}": v for k, v in flops.items()})

    for name, batch, step_index in rows_in_priority_order(settings):
        row = {"config": name, "batch": batch, "step": step_index, "size": settings.size}
        needed = settings.compile_min_seconds if name.endswith("compile") else EAGER_MIN_SECONDS
        if name == REFERENCE and skip_reference is not None:
            result.append("rows", {**row, "skipped": skip_reference})
            continue
        if deadline.left() < needed:
            result.append("rows", {**row, "skipped": f"{deadline.left():.0f} s of the stage's budget left, a row needs {needed:.0f}"})  # fmt: skip
            continue
        step = task_step(step_index)
        raw, labels = batches[batch, step_index]
        images = normalize(raw)
        benchmark = torch.backends.cudnn.benchmark
        runner = None
        try:
            _peak_reset(device)
            if name == REFERENCE:
                torch.backends.cudnn.benchmark = True  # their train_voc.py sets it
                ours, teacher = build_step_models(settings, step_index, raw, seed=0)
                runner = ReferenceStep(
                    reference_modules, ours, teacher, step, device, images, lr=BENCH_LR
                )
                if runner.weights.startswith("ours"):  # same weights: the losses must agree
                    row["fp32_loss_vs_ours"] = same_loss(
                        runner, ours, teacher, images, labels, step
                    )
                del ours, teacher
            else:
                dtype, channels_last, compiled = OURS[name]
                runner = OurStep(settings, step, raw, dtype, channels_last, compiled)
                if compiled:
                    row["compile_backend"] = settings.compile_backend
            if name == REFERENCE:  # GradScaler finds its scale first, as in a long run
                row["scaler_warmup_iterations"] = runner.settle_scaler(images, labels)
            figures = time_row(runner, images, labels, settings, device)
            row.update(figures)
            row["peak_memory_gib"] = _peak_gib(device)
            row["flops_per_image"] = flops[step_index]
            if name == REFERENCE:
                row["grad_scale"] = runner.scaler.get_scale()
                row["skipped_steps_timed"] = runner.skipped_since_settled
                row["weights"] = runner.weights
        except Exception as e:  # one row failing (OOM, compile error) leaves the others
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            torch.backends.cudnn.benchmark = benchmark
            del runner
            gc.collect()
            if name.endswith("compile"):
                torch._dynamo.reset()
        result.append("rows", row)
        print(f"throughput {name} batch {batch} step {step_index}: "
              f"{row.get('images_per_second', float('nan')):.1f} images/s", flush=True)  # fmt: skip
    rows = result.data.get("rows", [])
    measured = [r for r in rows if "images_per_second" in r]
    failed = [
        r for r in rows if "error" in r or ("images_per_second" in r and r["last_loss"] is None)
    ]
    result.check(
        "throughput rows",
        bool(measured) and not failed,
        f"{len(measured)} measured, {sum('skipped' in r for r in rows)} skipped, "
        f"{len(failed)} failed"
        + "".join(
            f"; {r['config']} b{r['batch']} s{r['step']}: {r.get('error', 'non-finite loss')}"
            for r in failed
        ),
    )
