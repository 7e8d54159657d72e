"""The parts of `train` one at a time, without a training loop (fast; `tools/mutate.py` runs
these first): building student and teacher, periodic checkpoints and their restore, the
train log, the finite-loss and replica checks, the metrics server's wiring."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from prometheus_client import generate_latest
from torch import nn

import dkd_core.train as train_module
from dkd_core.checkpoint import read_meta, save_model_checkpoint
from dkd_core.config import config_to_dict, load_config
from dkd_core.distributed import DistInfo
from dkd_core.errors import DKDError
from dkd_core.locations import StepLocations
from dkd_core.model import DeepLabV3
from dkd_core.tasks import get_task

CONFIGS = Path(__file__).parents[2] / "pipelines" / "configs"
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
WORKER = DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
TOY = get_task("toy", "4-1", num_classes=6)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DKD_RUN_ID", raising=False)
    monkeypatch.delenv("DKD_METRICS_PORT", raising=False)


def toy(*overrides: str):
    return load_config(CONFIGS / "toy.yaml", ["model.aspp_channels=16", *overrides])


def step0_checkpoint(path: Path, config, meta: dict | None = None) -> str:
    torch.manual_seed(0)
    model, _ = train_module.build_student_and_teacher(config, TOY.step(0), None)
    save_model_checkpoint(path, model, meta or {})
    return str(path)


# -- student and teacher ----------------------------------------------------------------------


def test_step0_builds_a_fresh_model_from_the_backbone_weights_file(tmp_path):
    weights = tmp_path / "backbone.pth"
    donor = DeepLabV3((4,), "tiny", 8, 16).backbone
    with torch.no_grad():
        for p in donor.parameters():
            p.fill_(0.25)
    torch.save(donor.state_dict(), weights)
    model, teacher = train_module.build_student_and_teacher(
        toy(f"model.pretrained={weights}"), TOY.step(0), None
    )
    assert teacher is None and model.classes_per_step == (4,)
    assert all(torch.all(p == 0.25) for p in model.backbone.parameters())


@pytest.mark.parametrize("teacher", [None, "missing"])
def test_step1_without_a_teacher_checkpoint_is_an_error(tmp_path, teacher):
    uri = None if teacher is None else str(tmp_path / teacher)
    with pytest.raises(DKDError, match="needs step 0's final checkpoint"):
        train_module.build_student_and_teacher(toy(), TOY.step(1), uri)


def test_a_teacher_at_step0_is_an_error_before_anything_is_written(tmp_path):
    """Step 0 trains from scratch (docs/method.md §5): a teacher given to it is a mistake
    (a wrong --step or --teacher), never silently ignored or recorded."""
    output = tmp_path / "run"
    config = toy(f"run.output={output}", "train.metrics_port=-1")
    with pytest.raises(DKDError) as error:
        train_module.train_step(config, 0, teacher=str(tmp_path / "step_0" / "checkpoint"))
    assert str(error.value) == (
        f"--teacher {tmp_path}/step_0/checkpoint: step 0 trains from scratch and takes no "
        "teacher; a teacher is step t-1's final checkpoint, for steps t > 0"
    )
    assert not output.exists()


def test_a_teacher_with_other_heads_is_an_error(tmp_path):
    model = DeepLabV3((3,), "tiny", 8, 16)
    save_model_checkpoint(tmp_path / "ckpt", model, {})
    with pytest.raises(DKDError, match=r"model has heads \[3\], but step 0 of 4-1 has \[4\]"):
        train_module.build_student_and_teacher(toy(), TOY.step(1), str(tmp_path / "ckpt"))


def test_step1_grows_the_teacher_by_one_head_from_the_auxiliary_with_frozen_bn(tmp_path):
    config = toy()
    uri = step0_checkpoint(tmp_path / "ckpt", config)
    model, teacher = train_module.build_student_and_teacher(config, TOY.step(1), uri)
    assert teacher.classes_per_step == (4,) and model.classes_per_step == (4, 1)
    assert not teacher.training
    new = model.step_heads[-1].weight  # [1, D, 1, 1]
    assert torch.equal(new, model.aux_head.weight.expand_as(new))
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and not any(m.training for m in bn)
    # Step 2 expects the heads of steps 0 and 1.
    step1 = tmp_path / "ckpt1"
    save_model_checkpoint(step1, model, {})
    model2, _ = train_module.build_student_and_teacher(config, TOY.step(2), str(step1))
    assert model2.classes_per_step == (4, 1, 1)


@pytest.mark.parametrize("ac", ["0", "0.5"])
def test_the_new_head_starts_from_the_auxiliary_only_with_the_ac_loss_on(tmp_path, ac):
    config = toy(f"loss.ac={ac}")
    uri = step0_checkpoint(tmp_path / "ckpt", config)
    model, _ = train_module.build_student_and_teacher(config, TOY.step(1), uri)
    new = model.step_heads[-1].weight
    assert torch.equal(new, model.aux_head.weight.expand_as(new)) == (ac != "0")


def test_bn_trains_at_step1_when_freezing_is_off(tmp_path):
    config = toy("train.freeze_bn_incremental=false")
    uri = step0_checkpoint(tmp_path / "ckpt", config)
    model, _ = train_module.build_student_and_teacher(config, TOY.step(1), uri)
    model.train()
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


# -- periodic checkpoints ----------------------------------------------------------------------


class RecordingMetrics:
    def __init__(self):
        self.checkpoints: list[tuple[float, int]] = []

    def observe_checkpoint(self, seconds, nbytes):
        self.checkpoints.append((seconds, nbytes))


def _optimiser(model, lr=0.1):
    optimizer = torch.optim.SGD(model.parameter_groups(lr, 1e-4), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 - it / 100)
    return optimizer, scheduler


def _train(model, optimizer, scheduler):
    """One update from random gradients: momentum buffers that differ per parameter."""
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    scheduler.step()


@pytest.fixture(scope="module")
def periodic(tmp_path_factory):
    """Three periodic checkpoints (iterations 1, 2, 3) of a tiny model, keeping two."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DKD_CACHE", str(tmp_path_factory.mktemp("cache")))
        clock = iter(range(0, 1000, 7))  # each save "takes" 7 s: started, then finished
        patch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
        return _periodic(tmp_path_factory.mktemp("periodic"))


def _periodic(tmp_path):
    config = toy("train.keep_checkpoints=2")
    where = StepLocations.of_run(str(tmp_path / "run"), 0)
    base_meta = {"step": 0, "run_id": "r1", "config": config_to_dict(config)}
    torch.manual_seed(0)
    model = DeepLabV3((4,), "tiny", 8, 16)
    optimizer, scheduler = _optimiser(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    metrics = RecordingMetrics()
    uris = []
    for iteration in (1, 2, 3):
        _train(model, optimizer, scheduler)
        # A state name with a dot (none of SGD's has one) is restored whole.
        optimizer.state[model.aux_head.bias]["ema.value"] = torch.full((1,), float(iteration))
        uris.append(
            train_module._save_periodic(
                where, model, optimizer, scheduler, scaler, iteration, base_meta, CPU, metrics
            )
        )
    expected_rng = torch.rand(3)
    return where, model, optimizer, scheduler, metrics, uris, expected_rng


def test_periodic_checkpoints_beyond_keep_are_deleted_and_each_save_is_timed(periodic):
    where, _, _, _, metrics, uris, _ = periodic
    folder = Path(where.periodic)
    assert uris == [str(folder / f"iter_{i:08d}") for i in (1, 2, 3)]
    assert sorted(p.name for p in folder.iterdir()) == ["iter_00000002", "iter_00000003"]
    for kept in ("iter_00000002", "iter_00000003"):  # whole, not a file short
        assert read_meta(folder / kept)["training"]["iteration"] == int(kept[-1])
    assert [s for s, _ in metrics.checkpoints] == [7.0, 7.0, 7.0]
    assert all(n > 1000 for _, n in metrics.checkpoints)


@pytest.mark.parametrize("keep", [0, 1])
def test_keep_checkpoints_below_one_keeps_the_newest(tmp_path, keep):
    config = toy()
    config = replace(config, train=replace(config.train, keep_checkpoints=keep))
    where = StepLocations.of_run(str(tmp_path / "run"), 0)
    base_meta = {"config": config_to_dict(config)}
    model = DeepLabV3((4,), "tiny", 8, 16)
    optimizer, scheduler = _optimiser(model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for iteration in (1, 2):
        train_module._save_periodic(
            where, model, optimizer, scheduler, scaler, iteration, base_meta, CPU,
            RecordingMetrics(),
        )  # fmt: skip
    assert [p.name for p in Path(where.periodic).iterdir()] == ["iter_00000002"]


def test_a_restored_periodic_checkpoint_continues_exactly(periodic):
    """Momentum, schedule, loss scale and RNG come back: the next iterations match."""
    _, model, optimizer, scheduler, _, uris, expected_rng = periodic
    directory = Path(uris[-1])
    meta = read_meta(directory)
    assert meta["run_id"] == "r1" and meta["step"] == 0

    fresh = DeepLabV3((4,), "tiny", 8, 16)
    fresh.load_state_dict(model.state_dict())
    fresh_optimizer, fresh_scheduler = _optimiser(fresh, lr=0.5)  # overwritten by the restore
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    torch.manual_seed(123)
    iteration = train_module._restore_training_state(
        directory, meta, fresh_optimizer, fresh_scheduler, scaler, torch.device("cpu")
    )
    assert iteration == 3
    assert torch.equal(torch.rand(3), expected_rng)  # the RNG as it was when saved
    assert scaler.get_scale() == 512.0
    assert fresh_scheduler.last_epoch == scheduler.last_epoch == 3
    assert [g["lr"] for g in fresh_optimizer.param_groups] == [
        g["lr"] for g in optimizer.param_groups
    ]
    assert torch.equal(
        fresh_optimizer.state[fresh.aux_head.bias]["ema.value"], torch.full((1,), 3.0)
    )
    for group, fresh_group in zip(
        optimizer.param_groups, fresh_optimizer.param_groups, strict=True
    ):
        for p, q in zip(group["params"], fresh_group["params"], strict=True):
            assert torch.equal(
                optimizer.state[p]["momentum_buffer"], fresh_optimizer.state[q]["momentum_buffer"]
            )


FAKE_CUDA_RNG = torch.arange(16, dtype=torch.uint8)


def _save_and_restore(tmp_path, monkeypatch, saved_on_cuda: bool, restored_on_cuda: bool):
    """One periodic checkpoint written and read back as on a machine with or without CUDA
    (torch.cuda stood in for); returns the CUDA RNG states the restore set."""
    config = toy()
    where = StepLocations.of_run(str(tmp_path / "run"), 0)
    model = DeepLabV3((4,), "tiny", 8, 16)
    optimizer, scheduler = _optimiser(model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: saved_on_cuda)
        patch.setattr(torch.cuda, "get_rng_state", lambda: FAKE_CUDA_RNG.clone())
        uri = train_module._save_periodic(
            where, model, optimizer, scheduler, scaler, 1, {"config": config_to_dict(config)},
            CPU, RecordingMetrics(),
        )  # fmt: skip
    restored = []
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: restored_on_cuda)
        patch.setattr(torch.cuda, "set_rng_state", restored.append)
        directory = Path(uri)
        iteration = train_module._restore_training_state(
            directory, read_meta(directory), optimizer, scheduler, scaler, torch.device("cpu")
        )
    assert iteration == 1
    return restored


def test_the_cuda_rng_state_is_restored_on_a_cuda_machine(tmp_path, monkeypatch):
    (state,) = _save_and_restore(tmp_path, monkeypatch, saved_on_cuda=True, restored_on_cuda=True)
    assert torch.equal(state, FAKE_CUDA_RNG)


@pytest.mark.parametrize("saved_on_cuda", [False, True])
def test_a_checkpoint_moves_between_cpu_and_cuda_machines(tmp_path, monkeypatch, saved_on_cuda):
    """Written without CUDA and resumed with it, or the other way round: no CUDA RNG state."""
    restored = _save_and_restore(
        tmp_path, monkeypatch, saved_on_cuda=saved_on_cuda, restored_on_cuda=not saved_on_cuda
    )
    assert restored == []


def test_a_training_state_that_does_not_fit_is_a_clear_error(periodic):
    _, _, _, _, _, uris, _ = periodic
    directory = Path(uris[-1])
    other = DeepLabV3((4, 1), "tiny", 8, 16)  # one more parameter group
    optimizer, scheduler = _optimiser(other)
    with pytest.raises(DKDError, match="does not fit this step's optimizer"):
        train_module._restore_training_state(
            directory, read_meta(directory), optimizer, scheduler,
            torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"),
        )  # fmt: skip


def test_the_run_id_comes_from_the_step_then_its_periodic_then_the_teacher(tmp_path):
    config = toy()
    where = StepLocations.of_run(str(tmp_path / "run"), 1)
    teacher = step0_checkpoint(tmp_path / "teacher", config, {"run_id": "from-teacher"})
    assert train_module._recorded_run_id(where, None) is None
    assert train_module._recorded_run_id(where, teacher) == "from-teacher"
    model = DeepLabV3((4, 1), "tiny", 8, 16)
    training = {"training": {"iteration": 3}}
    save_model_checkpoint(Path(where.periodic) / "iter_3", model, {"run_id": "p", **training})
    assert train_module._recorded_run_id(where, teacher) == "p"
    save_model_checkpoint(Path(where.checkpoint), model, {"run_id": "final"})
    assert train_module._recorded_run_id(where, teacher) == "final"


# -- metrics server ----------------------------------------------------------------------------


def _metrics(config, info, tmp_path):
    where = StepLocations.of_run(str(tmp_path / "run"), 0)
    metrics = train_module.start_metrics(config, TOY, TOY.step(0), info, where, None)
    try:
        return metrics, metrics._http.started, generate_latest(metrics.registry).decode()
    finally:
        metrics.close()


def test_rank0_serves_its_metrics_and_describes_the_step(tmp_path):
    metrics, started, text = _metrics(toy("train.metrics_port=0"), CPU, tmp_path)
    assert metrics.enabled and started
    assert 'backbone="tiny"' in text and 'world_size="1"' in text


def test_other_ranks_serve_nothing(tmp_path):
    metrics, started, text = _metrics(toy("train.metrics_port=0"), WORKER, tmp_path)
    assert not metrics.enabled and not started and "dkd_" not in text


def test_port_minus_one_serves_nothing_and_no_port_reads_the_environment(tmp_path, monkeypatch):
    _, started, text = _metrics(toy("train.metrics_port=-1"), CPU, tmp_path)
    assert not started and 'backbone="tiny"' in text
    monkeypatch.setenv("DKD_METRICS_PORT", "-1")
    config = toy()
    config = replace(config, train=replace(config.train, metrics_port=None))
    _, started, _ = _metrics(config, CPU, tmp_path)
    assert not started
    monkeypatch.setenv("DKD_METRICS_PORT", "0")
    _, started, _ = _metrics(config, CPU, tmp_path)
    assert started


# -- train log ---------------------------------------------------------------------------------


def test_the_train_log_keeps_records_up_to_the_resumed_iteration(tmp_path):
    path = tmp_path / "run" / "step_0" / "train_log.jsonl"  # folders made on the first append
    log = train_module.TrainLog(str(path), enabled=True)
    for i in (1, 2, 3, 4):
        log.append({"iteration": i, "total": 0.5})
    with open(path, "a") as f:
        f.write('{"iteration": 5, "tot')  # cut short by a kill
    log.truncate(3)
    assert path.read_text() == "".join(
        json.dumps({"iteration": i, "total": 0.5}) + "\n" for i in (1, 2, 3)
    )


def test_a_disabled_train_log_writes_nothing(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"iteration": 9}\n')
    log = train_module.TrainLog(str(path), enabled=False)
    log.append({"iteration": 10})
    log.truncate(0)
    assert path.read_text() == '{"iteration": 9}\n'


@pytest.mark.parametrize(
    "line", ["", "not json", "[1]", '{"lr": 1}', '{"iteration": "3"}', '{"iteration": 2.0}']
)
def test_lines_without_an_integer_iteration_have_none(line):
    assert train_module._logged_iteration(line) is None


def test_a_remote_train_log_is_continued_and_published(tmp_path, monkeypatch):
    """An s3:// log is kept in the scratch cache and uploaded (a local store stands in)."""
    monkeypatch.setattr(train_module, "is_remote", lambda uri: True)
    remote = tmp_path / "bucket" / "train_log.jsonl"
    remote.parent.mkdir()
    remote.write_text('{"iteration": 1}\n{"iteration": 2}\n')
    log = train_module.TrainLog(str(remote), enabled=True)
    assert log.path.parent == tmp_path / "cache" / "scratch"
    assert log.path.read_text() == remote.read_text()  # the published log, continued
    other = train_module.TrainLog(str(tmp_path / "bucket" / "other.jsonl"), enabled=True)
    assert other.path != log.path and not other.path.exists()
    # Other ranks neither copy nor publish it.
    (tmp_path / "bucket" / "quiet.jsonl").write_text('{"iteration": 1}\n')
    quiet = train_module.TrainLog(str(tmp_path / "bucket" / "quiet.jsonl"), enabled=False)
    assert not quiet.path.exists()
    quiet.path.write_text('{"iteration": 2}\n')
    quiet.publish()
    assert (tmp_path / "bucket" / "quiet.jsonl").read_text() == '{"iteration": 1}\n'
    log.truncate(1)
    log.append({"iteration": 2, "total": 1.0})
    log.publish()
    assert remote.read_text() == '{"iteration": 1}\n{"iteration": 2, "total": 1.0}\n'
    # A new attempt with nothing published starts from an empty log, whatever is cached.
    remote.unlink()
    fresh = train_module.TrainLog(str(remote), enabled=True)
    assert not fresh.path.exists()
    fresh.publish()
    assert not remote.exists()


def test_a_local_train_log_is_not_published(tmp_path, monkeypatch):
    uploads = []
    monkeypatch.setattr(train_module, "open_store", lambda uri: uploads.append(uri))
    log = train_module.TrainLog(str(tmp_path / "train_log.jsonl"), enabled=True)
    log.append({"iteration": 1})
    log.publish()
    assert uploads == []


class LastLR:
    def get_last_lr(self):
        return [0.25, 0.5]


def test_a_logged_iteration_records_the_terms_and_the_backbone_lr(tmp_path):
    path = tmp_path / "train_log.jsonl"
    log = train_module.TrainLog(str(path), enabled=True)
    terms = {"total": torch.tensor(1.5), "mbce": torch.tensor(0.5, dtype=torch.float64)}
    averaged = train_module._log_iteration(log, 7, terms, LastLR(), CPU)
    assert averaged == {"total": 1.5, "mbce": 0.5}
    assert json.loads(path.read_text()) == {"iteration": 7, "lr": 0.25, "total": 1.5, "mbce": 0.5}
    quiet = train_module.TrainLog(str(tmp_path / "other.jsonl"), enabled=True)
    assert train_module._log_iteration(quiet, 7, terms, LastLR(), WORKER) == averaged
    assert not quiet.path.exists()  # only rank 0 writes


# -- checks ------------------------------------------------------------------------------------


def test_a_finite_loss_passes_and_a_non_finite_one_names_its_terms():
    step = TOY.step(1)
    train_module._check_finite({"total": torch.tensor(2.0)}, 4, step, CPU)
    terms = {"total": torch.tensor(float("nan")), "kd": torch.tensor(1.0)}
    with pytest.raises(
        DKDError, match=r"non-finite loss at step 1, iteration 4 \(total=nan, kd=1\)"
    ):
        train_module._check_finite(terms, 4, step, CPU)


def test_evaluation_sums_the_confusion_of_every_process(monkeypatch):
    """A second process saw one more pixel of class 1, predicted as class 2."""

    def all_reduce_sum(confusion):  # [C, C], in place, as the collective does
        confusion[1, 2] += 1
        return confusion

    monkeypatch.setattr(train_module.distributed, "all_reduce_sum", all_reduce_sum)
    step = get_task("toy", "2-1", num_classes=3).step(1)
    model = DeepLabV3((2, 1), "tiny", 8, 16)
    with torch.no_grad():
        for head in model.step_heads:
            head.weight.zero_()
            head.bias.fill_(-10.0)  # every pixel: background
    batch = {"image": torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
             "label": torch.zeros(1, 8, 8, dtype=torch.uint8)}  # fmt: skip
    report = train_module.evaluate_model(model, [batch], step, torch.device("cpu"))
    # background: 64 of 64 right; class 1: its one pixel missed; class 2: one false positive
    assert report.to_dict()["iou"][:3] == pytest.approx([100.0, 0.0, 0.0])
    assert report.pixel_accuracy == pytest.approx(100 * 64 / 65)


class Gather:
    """torch.distributed.all_gather of one fingerprint per rank: `offsets` apart."""

    def __init__(self, offsets):
        self.offsets = offsets

    def __call__(self, gathered, fingerprint):
        for out, offset in zip(gathered, self.offsets, strict=True):
            out.copy_(fingerprint + offset)


def test_replicas_that_agree_pass_and_diverged_ones_are_an_error(monkeypatch):
    model = DeepLabV3((4,), "tiny", 8, 16)
    two = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    monkeypatch.setattr(torch.distributed, "all_gather", Gather([0.0, 0.0]))
    train_module._check_replicas_agree(model, two)
    monkeypatch.setattr(torch.distributed, "all_gather", Gather([0.0, 0.5]))
    with pytest.raises(DKDError, match="model replicas diverged"):
        train_module._check_replicas_agree(model, two)
    monkeypatch.setattr(torch.distributed, "all_gather", Gather([0.0]))
    one = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    train_module._check_replicas_agree(model, one)  # alone: nothing to compare, no collective
    three = DistInfo(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    monkeypatch.setattr(torch.distributed, "all_gather", Gather([0.0, 0.0, 0.0]))
    train_module._check_replicas_agree(model, three)


# -- schedule ----------------------------------------------------------------------------------


def test_a_warm_up_of_no_iterations_is_plain_poly():
    config = load_config(None, ["optim.schedule=warmup_poly", "optim.warmup_fraction=0"])
    assert train_module.lr_factor(config, 0, 100) == 1.0
    assert train_module.lr_factor(config, 50, 100) == pytest.approx(0.5**0.9, rel=1e-12)
