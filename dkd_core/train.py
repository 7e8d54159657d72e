"""One CISS step, exactly as docs/method.md §5–6: `python -m dkd_core train --config C.yaml --step N`.

Step 0 trains base classes from (optionally) ImageNet weights. Step t > 0
loads step t-1's final checkpoint into the student and a frozen teacher,
initialises the new head from the auxiliary classifier, freezes BN, and trains
with the DKD objective. Runs alone or under torchrun (see `distributed`).

Every location is a URI (s3://, minio:// or a local path; see `locations`):
the step's final checkpoint, its periodic checkpoints beside it, the split
manifest, the teacher. Running the same command again resumes from the newest
complete periodic checkpoint, or does nothing when the step's final
checkpoint already exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dkd_core import distributed, hold_for_tests
from dkd_core.batching import grouped, plan_batches
from dkd_core.checkpoint import (
    META_FILE,
    load_training_tensors,
    open_model_checkpoint,
    publish_model_checkpoint,
)
from dkd_core.config import Config, config_to_dict
from dkd_core.data import eval_loader, normalize, train_loader
from dkd_core.errors import DKDError
from dkd_core.evaluate import SegmentationMetrics, SegmentationReport
from dkd_core.lease import StepLease
from dkd_core.locations import StepLocations, cache_dir
from dkd_core.losses import dkd_losses
from dkd_core.metrics import TrainingMetrics, metrics_port, resolve_run_id
from dkd_core.model import DeepLabV3, predict_from_logits
from dkd_core.precision import (
    autocast_dtype,
    make_grad_scaler,
    restore_scaler,
    scaler_state_to_json,
)
from dkd_core.progress import ProgressLine, bars_wanted
from dkd_core.resume import StepProgress, TrainingInterrupted, plan_step, teacher_identity
from dkd_core.step_data import exemplar_memory, step_data, task_of, train_dataset
from dkd_core.storage import (
    checkpoint_complete,
    fetch_checkpoint,
    is_remote,
    join,
    latest_checkpoint,
    local_path,
    open_store,
)
from dkd_core.tasks import Task, TaskStep
from dkd_core.weights import resolve_weights

log = logging.getLogger("dkd_core.train")


# -- model and optimisation --------------------------------------------------------------


def step_weights(config: Config, step: TaskStep, info) -> str | None:
    """The local file of `model.pretrained` when this step reads it (step 0's backbone;
    the "untrained" memory labeller of a later DKD-M step), fetched and checked once per
    node (`weights.resolve_weights`); None when the step reads no ImageNet weights."""
    spec = config.model.pretrained
    labeller_reads_it = (
        config.data.memory_size > 0
        and config.data.memory_pseudo_labels == "untrained"
        and step.index > 1
    )
    if spec is None or not (step.index == 0 or labeller_reads_it):
        return None
    progress = bars_wanted(config.train.progress)
    first = info.local_rank == 0
    if first:  # one download per node; the node's other processes then find it cached
        path = resolve_weights(spec, progress=progress)
    distributed.barrier()
    if not first:
        path = resolve_weights(spec, progress=False)
    return str(path)


def verify_teacher(step: TaskStep, teacher_uri: str | None) -> None:
    """Step t > 0: its teacher, step t-1's final checkpoint, exists and every file of it
    verifies (fetched into the cache when remote)."""
    if step.index == 0:
        return
    if teacher_uri is None or not open_store(teacher_uri).exists(join(teacher_uri, META_FILE)):
        raise DKDError(
            f"step {step.index} needs step {step.index - 1}'s final checkpoint at {teacher_uri}; "
            f"train step {step.index - 1} first (same config, --step {step.index - 1})"
        )
    fetch_checkpoint(teacher_uri, cache_dir("checkpoints"))


def build_student_and_teacher(
    config: Config, step: TaskStep, teacher_uri: str | None, pretrained: str | None = None
) -> tuple[DeepLabV3, DeepLabV3 | None]:
    """Step 0: a fresh model, its backbone from `pretrained` (the local file of
    `model.pretrained`, resolved here when not given). Step t: step t-1's final model
    grown by one head, plus its frozen copy."""
    if step.index == 0:
        m = config.model
        if pretrained is None and m.pretrained is not None:
            pretrained = str(resolve_weights(m.pretrained, progress=False))
        model = DeepLabV3(
            step.classes_per_step, m.backbone, m.output_stride, m.aspp_channels,
            pretrained_backbone=pretrained,
        )  # fmt: skip
        return model, None
    verify_teacher(step, teacher_uri)
    model, _, _ = open_model_checkpoint(teacher_uri, cache_dir("checkpoints"))
    expected = step.classes_per_step[:-1]
    if model.classes_per_step != expected:
        raise DKDError(
            f"{teacher_uri}: model has heads {list(model.classes_per_step)}, but step "
            f"{step.index - 1} of {step.task_name} has {list(expected)}"
        )
    teacher = model.as_teacher()
    # docs/method.md §5: new head from the auxiliary classifier (random when the ac loss is off).
    model.add_step(step.num_new, init_from_auxiliary=config.loss.ac > 0)
    if config.train.freeze_bn_incremental:
        model.freeze_bn()
    return model, teacher


def lr_factor(config: Config, iteration: int, max_iterations: int) -> float:
    """Poly decay, optionally after a linear warm-up (docs/method.md §6), stepped every iteration."""
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


def _restore_training_state(
    directory: Path, meta: dict, optimizer, scheduler, scaler, device
) -> int:
    """Optimizer momentum, schedule, loss scale and RNG of a periodic checkpoint; its iteration."""
    try:
        iteration = _restore(directory, meta, optimizer, scheduler, device)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        if isinstance(e, DKDError):
            raise
        raise DKDError(
            f"{directory}/meta.json: the training state does not fit this step's optimizer "
            f"({type(e).__name__}: {e}); delete the periodic checkpoint or pass --restart"
        ) from None
    # Checkpoints written before fp16 existed have no scaler state: a fresh scaler.
    scaler_state = meta["training"].get("grad_scaler", {})
    restore_scaler(scaler, scaler_state, f"{directory}/meta.json: training.grad_scaler")
    return iteration


def _restore(directory: Path, meta: dict, optimizer, scheduler, device) -> int:
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


# -- evaluation ----------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module, loader: DataLoader, step: TaskStep, device: torch.device
) -> SegmentationReport:
    """Test metrics of docs/method.md §7, summed over all processes."""
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


def start_metrics(
    config: Config, task: Task, step: TaskStep, info, where: StepLocations, teacher_uri
) -> TrainingMetrics:
    """Prometheus metrics of this step: served by rank 0, no-ops elsewhere (`metrics`)."""
    recorded = _recorded_run_id(where, teacher_uri) if info.is_main else None
    metrics = TrainingMetrics(
        config.run.name, resolve_run_id(recorded), f"{task.dataset}:{task.name}", step.index,
        enabled=info.is_main,
    )  # fmt: skip
    port = metrics_port() if config.train.metrics_port is None else config.train.metrics_port
    if info.is_main and port >= 0:
        try:
            metrics.serve(port, config.train.metrics_address)
        except OSError as e:  # monitoring never stops training
            log.warning("cannot serve metrics on port %d (%s); training goes on without", port, e)
    metrics.set_info(backbone=config.model.backbone, world_size=info.world_size)
    return metrics


def _recorded_run_id(where: StepLocations, teacher_uri: str | None) -> str | None:
    """The run id in this step's checkpoint, the one it resumes from or its teacher's.

    So the steps of one run, and a resumed step, keep one identity when no
    `$DKD_RUN_ID` is given.
    """
    for uri in (where.checkpoint, latest_checkpoint(where.periodic), teacher_uri):
        if uri is not None and checkpoint_complete(uri):
            return open_store(uri).read_json(join(uri, "meta.json")).get("run_id")
    return None


def train_step(
    config: Config,
    step_index: int,
    teacher: str | None = None,
    checkpoint_out: str | None = None,
    manifest: str | None = None,
    restart: bool = False,
) -> str:
    """Train one CISS step end to end; returns the URI of its final checkpoint.

    By default every location follows `run.output` (`locations.StepLocations.of_run`);
    a pipeline passes the step's checkpoint URI, the manifest URI and the teacher's.
    A finished step is reused and an interrupted one resumed when the settings match
    (`resume`); `restart` trains the step again from scratch. Rank 0 holds the step's
    lease (`lease`) while it runs.
    """
    info = distributed.init_distributed(timeout_minutes=config.train.process_group_timeout_minutes)
    metrics = None
    lease = None
    _progress.reset()
    try:
        task = task_of(config)
        step = task.step(step_index)
        where = StepLocations.of_run(config.run.output, step.index)
        where = StepLocations(checkpoint_out or where.checkpoint, manifest or where.manifest)
        if teacher is None and step.index > 0:
            teacher = StepLocations.of_run(config.run.output, step.index - 1).checkpoint
        if teacher is not None and step.index == 0:  # docs/method.md §5: step 0 has none
            raise DKDError(
                f"--teacher {teacher}: step 0 trains from scratch and takes no teacher; "
                "a teacher is step t-1's final checkpoint, for steps t > 0"
            )
        if info.is_main:
            lease = StepLease(where.folder, f"step {step.index} ({where.folder})")
        distributed.on_main(info, lambda: lease.acquire())
        metrics = start_metrics(config, task, step, info, where, teacher)
        return _train_step(config, task, step, info, where, teacher, metrics, restart)
    except KeyboardInterrupt as e:
        raise TrainingInterrupted(_progress.describe(step_index)) from e
    finally:
        if lease is not None:
            lease.release()
        if metrics is not None:
            metrics.close()
        distributed.cleanup()


_progress = StepProgress()  # of the step this process trains, for Ctrl-C


def _train_step(
    config: Config,
    task: Task,
    step: TaskStep,
    info,
    where: StepLocations,
    teacher_uri,
    metrics,
    restart: bool = False,
) -> str:
    plan = distributed.on_main(
        info, lambda: plan_step(config, step.index, where, restart, teacher_uri)
    )
    if plan.complete:
        if info.is_main:
            log.info("step %d already complete: %s", step.index, where.checkpoint)
        return where.checkpoint

    torch.manual_seed(config.train.seed)
    batches = plan_batches(config.data.batch_size, info.world_size, config.data.micro_batch_size)
    # Inputs that may be wrong or missing are checked before any dataset file is fetched.
    pretrained = step_weights(config, step, info)
    verify_teacher(step, teacher_uri)
    data = step_data(config, step, where.manifest, info)
    model, teacher = build_student_and_teacher(config, step, teacher_uri, pretrained)
    train_set = data.train
    if config.data.memory_size > 0 and step.index > 0:
        memory = exemplar_memory(
            config, step, where, teacher_uri, data, teacher, info, pretrained=pretrained
        )
        train_set = train_dataset(
            config, step, train_set.samples + [data.train_samples[i] for i in memory]
        )
    loader, sampler = train_loader(
        train_set, batches.per_process, info.rank, info.world_size, config.train.seed,
        config.data.num_workers, micro_batch_size=batches.micro_batch,
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
    use_amp = config.train.amp and info.device.type == "cuda"
    scaler = make_grad_scaler(use_amp, config.train.amp_dtype)
    start = 0
    train_log = TrainLog(where.train_log, enabled=info.is_main)
    resume_uri = plan.resume_from
    _progress.checkpoint = resume_uri
    if resume_uri is not None:  # all processes read it; the newest complete one, verified
        resumed, meta, local = open_model_checkpoint(resume_uri, cache_dir("checkpoints"))
        model.load_state_dict(resumed.state_dict())
        start = _restore_training_state(local, meta, optimizer, scheduler, scaler, info.device)
        if info.is_main:
            log.info("resumed step %d from %s (iteration %d)", step.index, resume_uri, start)
    train_log.truncate(start)  # records of an interrupted attempt past the resumed iteration
    net = distributed.prepare_model(model, info)
    if teacher is not None:
        teacher = teacher.to(info.device)
    weights = config.loss.for_step(step.index)

    stop = min(max_iterations, config.train.max_iterations or max_iterations)
    _progress.iteration, _progress.stop = start, stop
    metrics.delete_pushed()  # what an earlier attempt of this step left in the Pushgateway
    metrics.set_plan(stop)
    amp_dtype = autocast_dtype(config.train.amp_dtype)
    # DDP all-reduces gradients in the backward; only the last micro-batch's must.
    deferred_sync = (
        net.no_sync if isinstance(net, torch.nn.parallel.DistributedDataParallel) else nullcontext
    )
    base_meta = {
        "task": {"dataset": task.dataset, "name": task.name, "setting": task.setting},
        "step": step.index,
        "run_id": metrics.run_id,
        "channel_to_label": list(step.channel_to_label),
        "config": config_to_dict(config),
        "teacher": teacher_identity(teacher_uri),  # None at step 0
    }
    net.train()
    progress = ProgressLine(
        f"step {step.index}", stop, start, config.train.progress_seconds,
        enabled=info.is_main and config.train.progress,
    )  # fmt: skip
    iteration = start
    while iteration < stop:
        epoch, offset = divmod(iteration, sampler.batches_per_epoch)
        sampler.set_epoch(epoch, offset)
        train_set.set_epoch(epoch)
        tick = time.perf_counter()
        for micro_batches in grouped(loader, batches.accumulation_steps):
            started = time.perf_counter()
            data_wait = started - tick
            optimizer.zero_grad(set_to_none=True)
            terms: dict[str, torch.Tensor] = {}
            for index, batch in enumerate(micro_batches):
                last = index == len(micro_batches) - 1
                with nullcontext() if last else deferred_sync():
                    micro_terms = _forward_backward(
                        net, teacher, batch, step, weights, info, config, use_amp, amp_dtype,
                        scaler, batches.accumulation_steps,
                    )  # fmt: skip
                for name, value in micro_terms.items():  # the full batch's mean: equal sizes
                    terms[name] = terms.get(name, 0) + value / batches.accumulation_steps
            _check_finite(terms, iteration, step, info)
            scaler.step(optimizer)  # a disabled scaler just steps
            scaler.update()
            scheduler.step()
            iteration += 1
            _progress.iteration = iteration
            averaged = None
            if iteration % config.train.log_every == 0:
                averaged = _log_iteration(train_log, iteration, terms, scheduler, info)
                metrics.observe_gpu_memory()
            progress.update(iteration, averaged)
            metrics.observe_iteration(
                iteration=iteration, epoch=epoch, samples=config.data.batch_size,
                learning_rates={g["name"]: g["lr"] for g in optimizer.param_groups},
                data_wait_seconds=data_wait, compute_seconds=time.perf_counter() - started,
                losses=averaged,
            )  # fmt: skip
            every = config.train.checkpoint_every
            if every and iteration % every == 0 and iteration < stop:
                _progress.checkpoint = _save_periodic(
                    where, model, optimizer, scheduler, scaler, iteration, base_meta, info,
                    metrics,
                )  # fmt: skip
                train_log.publish()
            hold_for_tests.hold(iteration)  # returns at once unless a test watches this step live
            tick = time.perf_counter()  # after the save: the next data wait is the loader's alone
            if iteration >= stop:
                break

    _check_replicas_agree(model, info)
    report = evaluate_model(model, test_loader, step, info.device)
    metrics.observe_evaluation(
        report.miou_old, report.miou_new, report.miou_all, report.hiou, report.pixel_accuracy
    )
    if info.is_main:  # in the order of `resume`: every reader stays right whatever is killed
        results = {**report.to_dict(), "channel_names": data.channel_names}
        train_log.publish()
        started = time.perf_counter()
        size = publish_model_checkpoint(
            where.checkpoint, model, {**base_meta, "metrics": results},
            scratch=cache_dir("scratch"),
        )  # fmt: skip
        _progress.final = where.checkpoint
        metrics.observe_checkpoint(time.perf_counter() - started, size)
        metrics.finish(iterations=iteration, checkpoint_bytes=size)
        metrics.push()  # the pod goes away: leave the final figures in the Pushgateway
        open_store(where.metrics).write_json(where.metrics, results)
        open_store(where.periodic).delete_prefix(where.periodic)
        log.info(
            "step %d done: %s\n%s",
            step.index, where.checkpoint, report.format_table(data.channel_names),
        )  # fmt: skip
    distributed.barrier()
    metrics.wait_for_scrape()  # Prometheus reads the final figures before the pod goes
    return where.checkpoint


def _forward_backward(
    net, teacher, batch, step, weights, info, config, use_amp, amp_dtype, scaler, steps
) -> dict[str, torch.Tensor]:
    """One micro-batch: forward, the loss terms (detached, returned), backward of total / steps."""
    images = normalize(batch["image"].to(info.device, non_blocking=True))  # [n, 3, S, S]
    labels = batch["label"].to(info.device, non_blocking=True).long()  # [n, S, S]
    if config.train.channels_last and info.device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(info.device.type, amp_dtype, enabled=use_amp):
        outputs = net(images, decompose=teacher is not None)
        teacher_outputs = None
        if teacher is not None:
            with torch.no_grad():
                teacher_outputs = teacher(images, decompose=True)
        terms = dkd_losses(outputs, teacher_outputs, labels, step, weights)
    # Each term is a mean over this micro-batch; / steps makes the sum of the
    # micro-batches' gradients the full batch's (`batching`).
    scaler.scale(terms["total"] / steps).backward()
    return {name: value.detach() for name, value in terms.items()}


def _check_finite(terms: dict[str, torch.Tensor], iteration: int, step: TaskStep, info) -> None:
    """Stop every process, with the terms, as soon as the loss is not finite on any of them."""
    finite = torch.isfinite(terms["total"].detach()).float()
    if distributed.all_reduce_sum(finite).item() < info.world_size:
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        raise DKDError(
            f"non-finite loss at step {step.index}, iteration {iteration} ({values}); "
            "lower the learning rate (optim.lr / optim.lr_incremental)"
        )


class TrainLog:
    """`train_log.jsonl`: loss terms per logged iteration, averaged over all processes.

    Written to a local file as training goes; when the step lives in S3 it is
    published at every checkpoint and at the end. Only rank 0 writes.
    """

    def __init__(self, uri: str, enabled: bool):
        self.uri, self.enabled = uri, enabled
        remote = is_remote(uri)
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        self.path = (
            cache_dir("scratch") / f"train_log-{digest}.jsonl" if remote else local_path(uri)
        )
        if enabled and remote:
            store = open_store(uri)
            if store.exists(uri):  # resuming: continue the published log
                self.path.write_text(store.read_text(uri))
            else:
                self.path.unlink(missing_ok=True)

    def append(self, record: dict) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate(self, iteration: int) -> None:
        """After a resume, forget records the interrupted run wrote past its checkpoint."""
        if self.enabled and self.path.is_file():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if _logged_iteration(line) is not None and _logged_iteration(line) <= iteration
            ]  # a line cut short by a kill has no iteration: dropped
            self.path.write_text("".join(line + "\n" for line in kept))

    def publish(self) -> None:
        if self.enabled and is_remote(self.uri) and self.path.is_file():
            open_store(self.uri).upload_file(self.path, self.uri)


def _logged_iteration(line: str) -> int | None:
    try:
        iteration = json.loads(line)["iteration"]
    except (ValueError, KeyError, TypeError):
        return None
    return iteration if isinstance(iteration, int) else None


def _log_iteration(train_log: TrainLog, iteration, terms, scheduler, info) -> dict[str, float]:
    """Loss terms averaged over all processes, to the train log; returned."""
    names = list(terms)
    values = distributed.all_reduce_mean(torch.stack([terms[k].detach().float() for k in names]))
    record = {"iteration": iteration, "lr": scheduler.get_last_lr()[0]}
    record.update({k: v for k, v in zip(names, values.tolist(), strict=True)})
    if info.is_main:
        train_log.append(record)
    return {k: record[k] for k in names}


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
    where: StepLocations, model, optimizer, scheduler, scaler, iteration, base_meta, info,
    metrics,
) -> str:  # fmt: skip
    """A checkpoint with training state under `<step>/periodic/`; older ones beyond
    `train.keep_checkpoints` are deleted (resume picks by iteration, not by name)."""
    uri = join(where.periodic, f"iter_{iteration:08d}")
    if info.is_main:
        started = time.perf_counter()
        meta = {
            **base_meta,
            "training": {
                "iteration": iteration,
                "scheduler": scheduler.state_dict(),  # lr_lambdas are [None, ...] for functions
                "param_groups": optimizer.state_dict()["param_groups"],
                "grad_scaler": scaler_state_to_json(scaler.state_dict()),  # {} unless fp16
            },
        }
        size = publish_model_checkpoint(
            uri, model, meta, _training_tensors(optimizer), scratch=cache_dir("scratch")
        )
        metrics.observe_checkpoint(time.perf_counter() - started, size)
        store = open_store(where.periodic)
        folders = sorted({u.rstrip("/") for u in store.list(where.periodic, recursive=False)})
        keep = max(1, base_meta["config"]["train"]["keep_checkpoints"])
        for old in folders[:-keep]:
            store.delete_prefix(old)
    distributed.barrier()
    return uri
