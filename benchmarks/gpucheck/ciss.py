"""Stage 3: one CISS step end to end, the way a training pod runs it.

First, a process group of world size 1 (NCCL on CUDA, gloo on CPU) with the
model prepared as for several processes (`distributed.prepare_model`: SyncBN
on CUDA, DDP): our collectives answer, and three iterations at step 0 and at
step 1 run, the first equal to the plain model's. Then, on generated toy data
at the check's crop size: `torchrun -m dkd_core train` (plain `python -m` in
the tiny preset) step 0, then step 1
(teacher + DKD losses, the real loader with workers, periodic checkpoints),
killed with SIGKILL after its first periodic checkpoint and run again, which
must resume from it and finish. The loss of step 1 (its train log) must be
finite and falling. (A single-process torchrun runs without a process group,
as `dkd_core.distributed` does; the first part is where NCCL and SyncBN run.)
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from dkd_core import distributed
from dkd_core.data import normalize
from gpucheck.models import build_step_models, fixed_batch, forward_losses, task_step
from gpucheck.stage_io import Deadline, StageResult, kill_tree
from gpucheck.toydata import ensure_toy_data

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = REPO / "pipelines" / "configs" / "toy.yaml"


# -- process group of world size 1 ------------------------------------------------------


def _iterations_under_ddp(settings, device, step_index: int) -> dict:
    step = task_step(step_index)
    raw, labels = fixed_batch(settings.ciss_batch, settings.size, step, seed=3)
    images, labels = normalize(raw.to(device)), labels.to(device)
    model, teacher = build_step_models(settings, step_index, raw.to(device), seed=3)
    plain = copy.deepcopy(model)
    # What prepare_model does with several processes; here the group has one.
    info = SimpleNamespace(device=device, enabled=True, local_rank=device.index or 0)
    net = distributed.prepare_model(model, info)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    train_dtype = torch.bfloat16 if device.type == "cuda" else None
    losses = []
    for i in range(3):  # DDP checks at each backward that every gradient arrived
        dtype = None if i == 0 else train_dtype
        torch.manual_seed(i)  # the same dropout mask as the plain model's at step 0
        _, _, terms = forward_losses(net, teacher, images, labels, step, dtype)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        losses.append(terms["total"].item())
    torch.manual_seed(0)
    _, _, plain_terms = forward_losses(plain, teacher, images, labels, step, None)
    reference = plain_terms["total"].item()
    return {
        "step": step_index,
        "ddp": type(net).__name__,
        "sync_batchnorm_modules": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules()),
        "losses": losses,
        "plain_model_loss": reference,
        "first_loss_relative_difference": abs(losses[0] - reference) / abs(reference),
    }


def process_group_check(settings, result: StageResult, scratch: Path) -> None:
    device = torch.device(settings.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = scratch / "process_group_store"
    store.unlink(missing_ok=True)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    try:
        total = distributed.all_reduce_sum(torch.ones(4, device=device))
        objects = distributed.all_gather_objects({"rank": 0})
        collectives = bool(total.eq(1).all().item()) and objects == [{"rank": 0}]
        runs = [_iterations_under_ddp(settings, device, index) for index in (0, 1)]
    finally:
        dist.destroy_process_group()
        store.unlink(missing_ok=True)
    result.set("process_group", {"backend": backend, "world_size": 1, "runs": runs})
    finite = all(math.isfinite(v) for r in runs for v in r["losses"])
    same = all(r["first_loss_relative_difference"] < 1e-4 for r in runs)
    sync_bn = device.type != "cuda" or all(r["sync_batchnorm_modules"] > 0 for r in runs)
    result.check(
        "process group",
        collectives and finite and same and sync_bn,
        f"{backend}, world size 1: collectives {'ok' if collectives else 'WRONG'}; "
        f"{runs[0]['ddp']} with {runs[0]['sync_batchnorm_modules']} SyncBatchNorm; "
        f"step 0 and 1 losses {'finite' if finite else 'NON-FINITE'}, first iteration "
        f"{max(r['first_loss_relative_difference'] for r in runs):.2g} from the plain model",
    )


# -- training step 0 and step 1 with torchrun -----------------------------------------


def _overrides(settings, data_root: Path, run_dir: Path, iterations: int) -> list[str]:
    return [
        f"data.root={data_root}", f"run.output={run_dir}", f"data.crop_size={settings.size}",
        f"data.batch_size={settings.ciss_batch}", f"data.eval_batch_size={settings.ciss_batch}",
        f"data.num_workers={settings.ciss_workers}", f"model.backbone={settings.backbone}",
        f"model.output_stride={settings.output_stride}",
        f"model.aspp_channels={settings.aspp_channels}", "model.pretrained=null",
        f"train.checkpoint_every={settings.checkpoint_every}",
        f"train.log_every={max(1, settings.step1_iterations // 30)}",
        "train.metrics_port=-1", "train.progress=false",
        # Many epochs, stopped early: the schedule barely decays over the iterations run.
        "optim.epochs=1000", f"train.max_iterations={iterations}",
    ]  # fmt: skip


def _train_command(settings, step_index: int, overrides: list[str]) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    return [
        sys.executable, *(launcher if settings.ciss_torchrun else []), "-m", "dkd_core", "train",
        "--config", str(TOY_CONFIG), "--step", str(step_index), *overrides,
    ]  # fmt: skip


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(proc: subprocess.Popen, log: Path, deadline: Deadline, what: str) -> None:
    try:
        rc = proc.wait(timeout=max(1.0, deadline.left()))
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise RuntimeError(f"{what}: still running when the stage's budget ran out") from None
    if rc != 0:
        tail = " | ".join(log.read_text(errors="replace").splitlines()[-5:])
        raise RuntimeError(f"{what}: exit code {rc}: {tail}")


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summary(records: list[dict]) -> dict:
    totals = [r["total"] for r in records]
    third = max(1, len(totals) // 3)
    first, last = sum(totals[:third]) / third, sum(totals[-third:]) / third
    return {
        "iterations": [r["iteration"] for r in records],
        "total": totals,
        "first_third_mean": first,
        "last_third_mean": last,
        "finite": all(math.isfinite(v) for r in records for k, v in r.items() if k != "lr"),
        "falling": last < first,
    }


def training_check(settings, result: StageResult, deadline: Deadline, scratch: Path) -> None:
    started = time.perf_counter()
    data_root = ensure_toy_data(scratch, settings)
    result.set("data", {"root": str(data_root), "images": settings.ciss_images,
                        "image_size": settings.data_size, "crop_size": settings.size,
                        "seconds_to_generate": time.perf_counter() - started})  # fmt: skip
    run_dir = scratch / "ciss_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: nothing to skip or resume yet
    log = scratch / "ciss_train.log"
    log.unlink(missing_ok=True)

    command = _train_command(
        settings, 0, _overrides(settings, data_root, run_dir, settings.step0_iterations)
    )
    _finish(_start(command, log), log, deadline, "step 0")
    step0 = _summary(_read_log(run_dir / "step_0" / "train_log.jsonl"))
    result.set("step0", step0)

    overrides = _overrides(settings, data_root, run_dir, settings.step1_iterations)
    command = _train_command(settings, 1, overrides)
    proc = _start(command, log)
    periodic = run_dir / "step_1" / "periodic"
    while proc.poll() is None and deadline.left() > 0:
        if list(periodic.glob("iter_*/meta.json")):
            break
        time.sleep(0.02)
    interrupted = proc.poll() is None
    if interrupted:
        kill_tree(proc)  # a preempted pod: no chance to clean up
    killed_at = sorted(p.parent.name for p in periodic.glob("iter_*/meta.json"))
    resumed_log_start = log.stat().st_size
    _finish(_start(command, log), log, deadline, "step 1 after the kill")
    resumed_output = log.read_text(errors="replace")[resumed_log_start:]
    match = re.search(r"resumed step 1 from .* \(iteration (\d+)\)", resumed_output)
    records = _read_log(run_dir / "step_1" / "train_log.jsonl")
    step1 = _summary(records)
    iterations = step1["iterations"]
    metrics = json.loads((run_dir / "step_1" / "eval" / "metrics.json").read_text())
    result.set("step1", {
        **step1, "killed_after": killed_at, "resumed_from_iteration": int(match[1]) if match else None,
        "final_checkpoint": (run_dir / "step_1" / "checkpoint" / "meta.json").is_file(),
        "periodic_left": sorted(p.name for p in periodic.glob("iter_*")),
        "miou_all": metrics.get("miou_all"),
    })  # fmt: skip
    result.check(
        "resume",
        interrupted and match is not None and int(match[1]) > 0,
        f"killed after {killed_at[-1] if killed_at else 'no checkpoint'}; "
        + (f"resumed from iteration {match[1]}" if match else "did NOT resume"),
    )
    result.check(
        "step 1 log",
        iterations == sorted(set(iterations)) and iterations[-1] == settings.step1_iterations,
        f"{len(iterations)} records up to iteration {iterations[-1]}, each once",
    )
    result.check(
        "step 1 loss",
        step1["finite"] and step1["falling"],
        f"{'finite' if step1['finite'] else 'NON-FINITE'}; mean total over the first third "
        f"{step1['first_third_mean']:.4f}, last third {step1['last_third_mean']:.4f}",
    )


def run(settings, result: StageResult, deadline: Deadline, scratch: Path, **_) -> None:
    try:
        process_group_check(settings, result, scratch)
    except Exception as e:  # recorded; the training part still runs
        result.check("process group", False, f"{type(e).__name__}: {e}")
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    training_check(settings, result, deadline, scratch)
