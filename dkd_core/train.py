"""One CISS step, exactly as SPEC §5–6: `python -m dkd_core train --config C.yaml --step N`.

Step 0 trains base classes from (optionally) ImageNet weights. Step t > 0
loads step t-1's final checkpoint into the student and a frozen teacher,
initialises the new head from the auxiliary classifier, freezes BN, and trains
with the DKD objective. Runs alone or under torchrun (see `distributed`).

A run lives under `config.run.output`:
    split/manifest.json               per-step image lists (built once, cached)
    step_<t>/periodic/iter_<N>/       periodic checkpoints with training state
    step_<t>/checkpoint/              the step's final model (meta.json written last)
    step_<t>/eval/metrics.json        test metrics after the step (SPEC §7)
Running the same command again resumes from the newest periodic checkpoint,
or does nothing when the step's final checkpoint already exists.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dkd_core import distributed
from dkd_core.checkpoint import (
    load_model_checkpoint,
    load_training_tensors,
    read_meta,
    save_model_checkpoint,
)
from dkd_core.config import Config, config_to_dict
from dkd_core.data import (
    EvalTransform,
    SegmentationDataset,
    TrainTransform,
    eval_loader,
    normalize,
    open_layout,
    train_loader,
)
from dkd_core.data.layout import Sample
from dkd_core.data.splits import (
    build_or_load_manifest,
    manifest_from_reference_npy,
    manifest_step,
    read_manifest,
    write_manifest,
)
from dkd_core.errors import DKDError
from dkd_core.evaluate import SegmentationMetrics, SegmentationReport
from dkd_core.losses import dkd_losses
from dkd_core.memory import (
    ground_truth_label_sets,
    pseudo_label_sets,
    read_memory,
    select,
    write_memory,
)
from dkd_core.metrics import TrainingMetrics, metrics_port
from dkd_core.model import DeepLabV3, predict_from_logits
from dkd_core.tasks import Task, TaskStep, get_task

log = logging.getLogger("dkd_core.train")


# -- where things live -------------------------------------------------------------------


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "split" / "manifest.json"

    def step(self, t: int) -> Path:
        return self.root / f"step_{t}"

    def checkpoint(self, t: int) -> Path:
        return self.step(t) / "checkpoint"

    def periodic(self, t: int) -> Path:
        return self.step(t) / "periodic"

    def eval(self, t: int) -> Path:
        return self.step(t) / "eval"


def task_of(config: Config) -> Task:
    c = config.task
    return get_task(c.dataset, c.name, c.setting, num_classes=c.num_classes)


# -- data --------------------------------------------------------------------------------


@dataclass
class StepData:
    """What one step reads: its train and test sets and where they came from."""

    train: SegmentationDataset
    test: SegmentationDataset
    channel_names: list[str]  # class name of each output channel
    manifest: dict
    train_samples: dict[str, Sample]  # every train image of the dataset, by id


def train_dataset(config: Config, step: TaskStep, samples: list[Sample]) -> SegmentationDataset:
    return SegmentationDataset(
        samples,
        step.label_lut(step.new_labels, fill=0),  # SPEC §2: only C_t stays
        TrainTransform(config.data.crop_size),
        seed=config.train.seed,
        allowed_labels=range(task_of(config).num_classes + 1),
    )


def step_data(
    config: Config, step: TaskStep, paths: RunPaths, info: distributed.DistInfo
) -> StepData:
    """Train and test sets of one step, from the run's (cached) split manifest."""
    layout = open_layout(config.data.root, config.data.format)
    task = task_of(config)
    if layout.num_classes != task.num_classes:
        raise DKDError(
            f"dataset {config.data.root} has {layout.num_classes} classes, task "
            f"{task.dataset}:{task.name} expects {task.num_classes} (task.num_classes)"
        )
    train_samples = {s.id: s for s in layout.samples("train")}
    val_samples = {s.id: s for s in layout.samples("val")}
    manifest = None
    if info.is_main:  # one process reads the label PNGs, the others wait and read the result
        manifest = run_manifest(config, task, layout, paths)
    manifest = distributed.broadcast_object(manifest)
    split = manifest_step(manifest, step.index)
    test = SegmentationDataset(
        [val_samples[i] for i in split.test],
        step.label_lut(step.seen_labels, fill=layout.unseen_test_label),
        EvalTransform(config.data.crop_size, whole_image=config.data.whole_image_eval),
        seed=config.train.seed,
        allowed_labels=range(task.num_classes + 1),
    )
    return StepData(
        train=train_dataset(config, step, [train_samples[i] for i in split.train]),
        test=test,
        channel_names=[layout.class_names[label] for label in step.channel_to_label],
        manifest=manifest,
        train_samples=train_samples,
    )


def exemplar_memory(
    config: Config, step: TaskStep, paths: RunPaths, data: StepData, teacher, info
) -> list[str]:
    """DKD-M: ids of the old-step images replayed at this step (SPEC §2; see `memory`)."""
    path = paths.step(step.index) / "memory.json"
    if path.is_file():  # chosen before an interruption: the same images again
        return read_memory(path)["memory"]
    previous = task_of(config).step(step.index - 1)
    previous_train = [
        data.train_samples[i] for i in manifest_step(data.manifest, previous.index).train
    ]
    if step.index == 1:
        label_sets = ground_truth_label_sets(previous_train, previous.new_labels)
    else:
        label_sets = pseudo_label_sets(
            teacher, previous_train, previous, config.data.crop_size, info
        )
        for image_id, labels in read_memory(paths.step(previous.index) / "memory.json")[
            "label_sets"
        ].items():
            label_sets[image_id] = label_sets.get(image_id, set()) | labels
    chosen = select(label_sets, step.old_labels, config.data.memory_size, config.train.seed)
    if info.is_main:
        write_memory(path, step.index, chosen, label_sets)
        log.info("exemplar memory of step %d: %d images", step.index, len(chosen))
    distributed.barrier()
    return chosen


def run_manifest(config: Config, task: Task, layout, paths: RunPaths) -> dict:
    """The run's split manifest: an imported one (authors' lists) as is, else built or cached."""
    if paths.manifest.is_file():
        existing = read_manifest(paths.manifest)
        imported = existing["inputs"].get("source") == "reference-npy"
        if imported and existing["task"]["steps"] == [list(s) for s in task.steps]:
            return existing
    train, val = layout.samples("train"), layout.samples("val")
    return build_or_load_manifest(
        task,
        [s.id for s in train],
        [s.label for s in train],
        [s.id for s in val],
        [s.label for s in val],
        num_workers=config.data.split_workers,
        progress=config.train.progress,
        cache_path=paths.manifest,
    )


def write_split_manifest(config: Config, reference_npy: str | None = None) -> tuple[Path, dict]:
    """`split` command: build (or load) the run's manifest, or import the authors' .npy lists."""
    paths = RunPaths(Path(config.run.output))
    task = task_of(config)
    if reference_npy:
        manifest = manifest_from_reference_npy(task, Path(reference_npy))
        write_manifest(manifest, paths.manifest)
        return paths.manifest, manifest
    layout = open_layout(config.data.root, config.data.format)
    return paths.manifest, run_manifest(config, task, layout, paths)


# -- model and optimisation --------------------------------------------------------------


def build_student_and_teacher(
    config: Config, step: TaskStep, paths: RunPaths, teacher_dir: Path | None = None
) -> tuple[DeepLabV3, DeepLabV3 | None]:
    """Step 0: a fresh model. Step t: step t-1's final model grown by one head, plus its frozen copy."""
    if step.index == 0:
        m = config.model
        model = DeepLabV3(
            step.classes_per_step, m.backbone, m.output_stride, m.aspp_channels,
            pretrained_backbone=m.pretrained,
        )  # fmt: skip
        return model, None
    teacher_dir = teacher_dir or paths.checkpoint(step.index - 1)
    if not (teacher_dir / "meta.json").is_file():
        raise DKDError(
            f"step {step.index} needs step {step.index - 1}'s final checkpoint at {teacher_dir}; "
            f"train step {step.index - 1} first (same config, --step {step.index - 1})"
        )
    model, _ = load_model_checkpoint(teacher_dir)
    expected = step.classes_per_step[:-1]
    if model.classes_per_step != expected:
        raise DKDError(
            f"{teacher_dir}: model has heads {list(model.classes_per_step)}, but step "
            f"{step.index - 1} of {step.task_name} has {list(expected)}"
        )
    teacher = model.as_teacher()
    # SPEC §5: new head from the auxiliary classifier (random when the ac loss is off).
    model.add_step(step.num_new, init_from_auxiliary=config.loss.ac > 0)
    if config.train.freeze_bn_incremental:
        model.freeze_bn()
    return model, teacher


def lr_factor(config: Config, iteration: int, max_iterations: int) -> float:
    """Poly decay, optionally after a linear warm-up (SPEC §6), stepped every iteration."""
    o = config.optim
    factor = (1.0 - iteration / max_iterations) ** o.power
    if o.schedule == "warmup_poly":
        warmup = o.warmup_fraction * max_iterations
        if iteration < warmup:
            alpha = iteration / warmup
            factor *= o.warmup_factor * (1 - alpha) + alpha
    elif o.schedule != "poly":
        raise DKDError(f"optim.schedule: expected 'poly' or 'warmup_poly', got {o.schedule!r}")
    return factor


# -- periodic checkpoints ----------------------------------------------------------------


def _training_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
    return tensors


def _restore_training_state(directory: Path, meta: dict, optimizer, scheduler, device) -> int:
    tensors = load_training_tensors(directory, meta)
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available() and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": meta["training"]["param_groups"]})
    scheduler.load_state_dict(meta["training"]["scheduler"])
    return int(meta["training"]["iteration"])


def latest_periodic(directory: Path) -> Path | None:
    """The newest periodic checkpoint whose metadata exists (meta.json is written last)."""
    found = []
    for candidate in directory.glob("iter_*"):
        if (candidate / "meta.json").is_file():
            found.append((read_meta(candidate)["training"]["iteration"], candidate))
    return max(found)[1] if found else None


# -- evaluation ----------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module, loader: DataLoader, step: TaskStep, device: torch.device
) -> SegmentationReport:
    """Test metrics of SPEC §7, summed over all processes."""
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics.for_test(step, device=device)
    for batch in loader:
        logits = model(normalize(batch["image"].to(device, non_blocking=True))).logits
        labels = batch["label"].to(device, non_blocking=True).long()
        metrics.update(predict_from_logits(logits), labels)
    distributed.all_reduce_sum(metrics.confusion)
    model.train(was_training)
    return metrics.compute()


# -- the step ----------------------------------------------------------------------------


def start_metrics(config: Config, task: Task, step: TaskStep, info) -> TrainingMetrics:
    """Prometheus metrics of this step: served by rank 0, no-ops elsewhere (`metrics`)."""
    metrics = TrainingMetrics(
        config.run.name, f"{task.dataset}:{task.name}", step.index, enabled=info.is_main
    )
    port = metrics_port() if config.train.metrics_port is None else config.train.metrics_port
    if info.is_main and port >= 0:
        try:
            metrics.serve(port)
        except OSError as e:  # monitoring never stops training
            log.warning("cannot serve metrics on port %d (%s); training goes on without", port, e)
    metrics.set_info(backbone=config.model.backbone, world_size=info.world_size)
    return metrics


def train_step(config: Config, step_index: int, teacher_dir: Path | None = None) -> Path:
    """Train one CISS step end to end; returns the final checkpoint folder."""
    info = distributed.init_distributed()
    metrics = None
    try:
        task = task_of(config)
        step = task.step(step_index)
        metrics = start_metrics(config, task, step, info)
        return _train_step(config, task, step, info, teacher_dir, metrics)
    finally:
        if metrics is not None:
            metrics.close()
        distributed.cleanup()


def _train_step(
    config: Config, task: Task, step: TaskStep, info, teacher_dir: Path | None, metrics
) -> Path:
    from tqdm import tqdm

    paths = RunPaths(Path(config.run.output))
    final_dir = paths.checkpoint(step.index)
    if (final_dir / "meta.json").is_file():
        if info.is_main:
            log.info("step %d already complete: %s", step.index, final_dir)
        return final_dir

    torch.manual_seed(config.train.seed)
    if config.data.batch_size % info.world_size:
        raise DKDError(
            f"data.batch_size {config.data.batch_size} is not divisible by the "
            f"{info.world_size} processes"
        )
    per_rank_batch = config.data.batch_size // info.world_size
    data = step_data(config, step, paths, info)
    model, teacher = build_student_and_teacher(config, step, paths, teacher_dir)
    train_set = data.train
    if config.data.memory_size > 0 and step.index > 0:
        memory = exemplar_memory(config, step, paths, data, teacher, info)
        train_set = train_dataset(
            config, step, train_set.samples + [data.train_samples[i] for i in memory]
        )
    loader, sampler = train_loader(
        train_set, per_rank_batch, info.rank, info.world_size, config.train.seed,
        config.data.num_workers,
    )  # fmt: skip
    test_loader = eval_loader(
        data.test, config.data.eval_batch_size, info.rank, info.world_size, config.data.num_workers
    )
    if config.train.channels_last and info.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    lr = config.optim.lr if step.index == 0 else config.optim.lr_incremental
    optimizer = torch.optim.SGD(
        model.parameter_groups(lr, config.optim.weight_decay),
        lr=lr,
        momentum=config.optim.momentum,
        nesterov=config.optim.nesterov,
    )
    max_iterations = config.optim.epochs * sampler.batches_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(config, it, max_iterations)
    )
    start = 0
    resume_dir = latest_periodic(paths.periodic(step.index))
    if resume_dir is not None:
        meta = read_meta(resume_dir)
        resumed, _ = load_model_checkpoint(resume_dir)
        model.load_state_dict(resumed.state_dict())
        start = _restore_training_state(resume_dir, meta, optimizer, scheduler, info.device)
        if info.is_main:
            log.info("resumed step %d from %s (iteration %d)", step.index, resume_dir, start)
            _truncate_log(paths.step(step.index) / "train_log.jsonl", start)
    net = distributed.prepare_model(model, info)
    if teacher is not None:
        teacher = teacher.to(info.device)
    weights = config.loss.for_step(step.index)

    stop = min(max_iterations, config.train.max_iterations or max_iterations)
    metrics.set_plan(stop)
    use_amp = config.train.amp and info.device.type == "cuda"
    base_meta = {
        "task": {"dataset": task.dataset, "name": task.name, "setting": task.setting},
        "step": step.index,
        "channel_to_label": list(step.channel_to_label),
        "config": config_to_dict(config),
    }
    net.train()
    progress = tqdm(
        total=stop, initial=start, desc=f"step {step.index}", disable=not (info.is_main and config.train.progress),
        unit="it", dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 30,
    )  # fmt: skip
    iteration = start
    while iteration < stop:
        epoch, offset = divmod(iteration, sampler.batches_per_epoch)
        sampler.set_epoch(epoch, offset)
        train_set.set_epoch(epoch)
        tick = time.perf_counter()
        for batch in loader:
            data_wait = time.perf_counter() - tick
            images = normalize(batch["image"].to(info.device, non_blocking=True))
            labels = batch["label"].to(info.device, non_blocking=True).long()
            if config.train.channels_last and info.device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(info.device.type, torch.bfloat16, enabled=use_amp):
                outputs = net(images, decompose=teacher is not None)
                teacher_outputs = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_outputs = teacher(images, decompose=True)
                terms = dkd_losses(outputs, teacher_outputs, labels, step, weights)
            _check_finite(terms, iteration, step, info)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            scheduler.step()
            iteration += 1
            progress.update(1)
            if iteration % config.train.log_every == 0:
                _log_iteration(paths, step, iteration, terms, scheduler, progress, info)
                metrics.observe_gpu_memory()
            if metrics.enabled:
                metrics.observe_iteration(
                    iteration=iteration, epoch=epoch, seconds=time.perf_counter() - tick,
                    samples=config.data.batch_size, data_wait_seconds=data_wait,
                    losses={k: v.item() for k, v in terms.items()},
                    learning_rates={g["name"]: g["lr"] for g in optimizer.param_groups},
                )  # fmt: skip
            tick = time.perf_counter()
            every = config.train.checkpoint_every
            if every and iteration % every == 0 and iteration < stop:
                _save_periodic(
                    paths, step, model, optimizer, scheduler, iteration, base_meta, info, metrics
                )
            if iteration >= stop:
                break
    progress.close()

    _check_replicas_agree(model, info)
    report = evaluate_model(model, test_loader, step, info.device)
    metrics.observe_evaluation(
        report.miou_old, report.miou_new, report.miou_all, report.hiou, report.pixel_accuracy
    )
    if info.is_main:
        started = time.perf_counter()
        results = {**report.to_dict(), "channel_names": data.channel_names}
        save_model_checkpoint(final_dir, model, {**base_meta, "metrics": results})
        size = sum(f.stat().st_size for f in final_dir.iterdir())
        metrics.observe_checkpoint(time.perf_counter() - started, size)
        metrics.push()  # the pod goes away: leave the final figures in the Pushgateway
        paths.eval(step.index).mkdir(parents=True, exist_ok=True)
        (paths.eval(step.index) / "metrics.json").write_text(
            json.dumps(results, indent=2, sort_keys=True) + "\n"
        )
        shutil.rmtree(paths.periodic(step.index), ignore_errors=True)
        log.info(
            "step %d done: %s\n%s", step.index, final_dir, report.format_table(data.channel_names)
        )
    distributed.barrier()
    return final_dir


def _check_finite(terms: dict[str, torch.Tensor], iteration: int, step: TaskStep, info) -> None:
    """Stop every process, with the terms, as soon as the loss is not finite on any of them."""
    finite = torch.isfinite(terms["total"].detach()).float()
    if distributed.all_reduce_sum(finite).item() < info.world_size:
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        raise DKDError(
            f"non-finite loss at step {step.index}, iteration {iteration} ({values}); "
            "lower the learning rate (optim.lr / optim.lr_incremental)"
        )


def _log_iteration(paths, step, iteration, terms, scheduler, progress, info) -> None:
    """Loss terms averaged over all processes, to the progress bar and `train_log.jsonl`."""
    names = list(terms)
    values = distributed.all_reduce_mean(torch.stack([terms[k].detach().float() for k in names]))
    record = {"iteration": iteration, "lr": scheduler.get_last_lr()[0]}
    record.update({k: v for k, v in zip(names, values.tolist(), strict=True)})
    if info.is_main:
        progress.set_postfix({k: f"{record[k]:.4f}" for k in names}, refresh=False)
        log_path = paths.step(step.index) / "train_log.jsonl"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _truncate_log(log_path: Path, iteration: int) -> None:
    """After a resume, forget log records the interrupted run wrote past its checkpoint."""
    if log_path.is_file():
        lines = log_path.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["iteration"] <= iteration]
        log_path.write_text("".join(line + "\n" for line in kept))


def _check_replicas_agree(model: torch.nn.Module, info) -> None:
    """DDP keeps replicas identical; verify it before saving (a cheap fingerprint per rank)."""
    if not info.enabled:
        return
    fingerprint = torch.stack(
        [p.detach().double().abs().sum() for p in model.parameters()]
    ).sum().reshape(1)  # fmt: skip
    gathered = [torch.zeros_like(fingerprint) for _ in range(info.world_size)]
    torch.distributed.all_gather(gathered, fingerprint)
    values = [g.item() for g in gathered]
    if len(set(values)) != 1:
        raise DKDError(f"model replicas diverged across processes: fingerprints {values}")
    if info.is_main:
        log.info(
            "replicas agree across %d processes (fingerprint %.10g)", info.world_size, values[0]
        )


def _save_periodic(
    paths, step, model, optimizer, scheduler, iteration, base_meta, info, metrics
) -> None:
    if info.is_main:
        started = time.perf_counter()
        directory = paths.periodic(step.index) / f"iter_{iteration:08d}"
        scheduler_state = scheduler.state_dict()  # lr_lambdas are [None, ...] for plain functions
        param_groups = optimizer.state_dict()["param_groups"]
        meta = {
            **base_meta,
            "training": {
                "iteration": iteration,
                "scheduler": scheduler_state,
                "param_groups": param_groups,
            },
        }
        save_model_checkpoint(directory, model, meta, _training_tensors(optimizer))
        size = sum(f.stat().st_size for f in directory.iterdir())
        metrics.observe_checkpoint(time.perf_counter() - started, size)
        keep = max(1, base_meta["config"]["train"]["keep_checkpoints"])
        for old in sorted(paths.periodic(step.index).glob("iter_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
