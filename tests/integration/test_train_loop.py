"""The training loop of `train_step`, seen from its collaborators, on a tiny toy dataset.

One uninterrupted step 0 (A), the same step interrupted before its final
checkpoint and resumed (B), interrupted mid-way and resumed from an older
periodic checkpoint with progress lines on (D), and step 1 with one exemplar
(C), all with micro-batches and an enabled loss scaler. Recorded: every call
the loop makes on its metrics, the loss terms of every micro-batch and the
gradient of each update, the epoch of every training sample fetched, the train
log, the periodic checkpoints, the progress lines. A few seconds in all.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import dkd_core.train as train_module
from dkd_core.checkpoint import load_model_checkpoint, read_meta
from dkd_core.config import load_config
from dkd_core.data.dataset import SegmentationDataset
from dkd_core.errors import DKDError
from dkd_core.lease import LEASE_FILE
from dkd_core.metrics import TrainingMetrics
from dkd_core.progress import ProgressLine
from dkd_core.resume import TrainingInterrupted
from tests.integration.conftest import CONFIGS, interrupt_before_final_checkpoint
from tests.s3_server import s3

FIXTURES = (s3,)  # imported so that pytest finds the fixture in this module
pytestmark = pytest.mark.integration

BATCH, MICRO = 4, 2  # two micro-batches per update
STOP = 7  # iterations of each step
LOG_EVERY, CHECKPOINT_EVERY = 2, 3  # logged 2, 4, 6; periodic checkpoints at 3 and 6
INIT_SCALE = 2.0**10


def settings(root: Path, output: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}", f"run.output={output}", "data.num_workers=0",
        f"data.batch_size={BATCH}", f"data.micro_batch_size={MICRO}", "data.eval_batch_size=8",
        "data.crop_size=32", "data.memory_size=1", "model.aspp_channels=16", "optim.epochs=3",
        f"train.max_iterations={STOP}", f"train.log_every={LOG_EVERY}",
        f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.keep_checkpoints=1",
        "train.metrics_port=-1", "train.progress=false", *extra,
    ]  # fmt: skip


@dataclass
class Seen:
    """What one `train_step` call showed: metric calls, micro-batches, updates, scalers."""

    calls: list[tuple[str, dict]] = field(default_factory=list)
    micro_terms: list[dict[str, float]] = field(default_factory=list)
    micro_grads: list[torch.Tensor] = field(default_factory=list)
    micro_sizes: list[int] = field(default_factory=list)
    update_grads: list[torch.Tensor] = field(default_factory=list)
    scalers: list[torch.amp.GradScaler] = field(default_factory=list)
    train_set_sizes: list[int] = field(default_factory=list)
    data_sizes: list[int] = field(default_factory=list)
    lease_held: list[bool] = field(default_factory=list)
    published_log: list[int | None] = field(default_factory=list)
    replicas_checked: list[int] = field(default_factory=list)
    progress_lines: list[str] = field(default_factory=list)
    sample_epochs: list[int] = field(default_factory=list)  # the train set's, per fetch
    metrics: list[TrainingMetrics] = field(default_factory=list)
    initial: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    def named(self, name: str) -> list[dict]:
        return [kwargs for n, kwargs in self.calls if n == name]


def _last_iteration(path: Path) -> int | None:
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    return json.loads(lines[-1])["iteration"] if lines else None


def instrument(patch: pytest.MonkeyPatch, seen: Seen, step_folder: Path) -> None:
    """Record what the loop does, then let the real code run."""
    real_losses = train_module.dkd_losses
    real_loader = train_module.train_loader
    real_step_data = train_module.step_data
    real_check = train_module._check_replicas_agree
    real_sgd = torch.optim.SGD
    model_of = {}

    class Recording(TrainingMetrics):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.metrics.append(self)

    def recorder(name):
        real = getattr(TrainingMetrics, name)

        def method(self, *args, **kwargs):
            seen.calls.append((name, {"args": args, **kwargs}))
            if name == "observe_iteration":
                seen.lease_held.append((step_folder / LEASE_FILE).is_file())
                seen.published_log.append(_last_iteration(step_folder / "train_log.jsonl"))
            return real(self, *args, **kwargs)

        return method

    for name in (
        "delete_pushed", "set_plan", "observe_iteration", "observe_gpu_memory",
        "observe_checkpoint", "observe_evaluation", "finish", "push", "wait_for_scrape", "close",
    ):  # fmt: skip
        patch.setattr(Recording, name, recorder(name))

    def step_data(*args, **kwargs):
        data = real_step_data(*args, **kwargs)
        seen.data_sizes.append(len(data.train))
        return data

    def loader(train_set, *args, **kwargs):
        seen.train_set_sizes.append(len(train_set))
        model_of["train_set"] = train_set
        return real_loader(train_set, *args, **kwargs)

    real_getitem = SegmentationDataset.__getitem__

    def getitem(self, index):
        if self is model_of.get("train_set"):  # not the test set, nor the exemplar pass
            seen.sample_epochs.append(self.epoch)
        return real_getitem(self, index)

    def losses(outputs, teacher_outputs, labels, step, weights):
        terms = real_losses(outputs, teacher_outputs, labels, step, weights)
        head = model_of["model"].step_heads[-1].weight
        (grad,) = torch.autograd.grad(terms["total"], head, retain_graph=True)
        seen.micro_grads.append(grad)
        seen.micro_terms.append({k: v.item() for k, v in terms.items()})
        seen.micro_sizes.append(labels.shape[0])
        return terms

    class RecordingSGD(real_sgd):
        def step(self, *args, **kwargs):
            head = model_of["model"].step_heads[-1].weight
            seen.update_grads.append(head.grad.detach().clone())
            return super().step(*args, **kwargs)

    real_build = train_module.build_student_and_teacher

    def build(*args, **kwargs):
        model, teacher = real_build(*args, **kwargs)
        model_of["model"] = model
        seen.initial = {k: v.clone() for k, v in model.state_dict().items()}
        return model, teacher

    def scaler(use_amp, amp_dtype):  # the fp16 loss scaler of CUDA, here on the CPU
        made = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=1)
        seen.scalers.append(made)
        return made

    def check(model, info):
        seen.replicas_checked.append(len(seen.update_grads))
        return real_check(model, info)

    class RecordingProgress(ProgressLine):  # the lines it writes, whatever logging's setup
        def __init__(self, *args, **kwargs):
            # A clock a second further at each reading: each line due by the iteration is
            # written, however little time a machine takes between two logged iterations.
            clock = itertools.count(0.0).__next__
            super().__init__(*args, **kwargs, emit=seen.progress_lines.append, clock=clock)

    patch.setattr(train_module, "ProgressLine", RecordingProgress)
    patch.setattr(SegmentationDataset, "__getitem__", getitem)
    patch.setattr(train_module, "TrainingMetrics", Recording)
    patch.setattr(train_module, "dkd_losses", losses)
    patch.setattr(train_module, "train_loader", loader)
    patch.setattr(train_module, "step_data", step_data)
    patch.setattr(train_module, "build_student_and_teacher", build)
    patch.setattr(train_module, "make_grad_scaler", scaler)
    patch.setattr(train_module, "_check_replicas_agree", check)
    patch.setattr(torch.optim, "SGD", RecordingSGD)


def observed(call, config, step_folder: Path, patch_remote: bool = False) -> tuple[Seen, object]:
    seen = Seen()
    with pytest.MonkeyPatch.context() as patch:
        instrument(patch, seen, step_folder)
        if patch_remote:  # the train log as for s3:// (a local store stands in)
            patch.setattr(train_module, "is_remote", lambda uri: True)
        started = time.perf_counter()
        try:
            result = call(patch, config)
        finally:
            seen.seconds = time.perf_counter() - started
    return seen, result


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small trains several times faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dkd_core.data import make_toy_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    make_toy_dataset(root, classes=6, images=36, size=32, seed=0)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DKD_CACHE", str(tmp_path_factory.mktemp("cache")))
        env.delenv("DKD_RUN_ID", raising=False)
        out_a, out_b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
        out_d = tmp_path_factory.mktemp("d")
        config_a = load_config(CONFIGS / "toy.yaml", settings(root, out_a))
        config_b = load_config(CONFIGS / "toy.yaml", settings(root, out_b))
        config_d = load_config(CONFIGS / "toy.yaml", settings(root, out_d))
        # The same step; progress lines are in config.RESULT_NEUTRAL_KEYS.
        config_d_progress = load_config(
            CONFIGS / "toy.yaml",
            settings(root, out_d, "train.progress=true", "train.progress_seconds=0.001"),
        )

        def train(step):
            return lambda patch, config: train_module.train_step(config, step)

        def seeded(seed, step):  # a different global RNG before each: the step seeds itself
            def call(patch, config):
                torch.manual_seed(seed)
                return train_module.train_step(config, step)

            return call

        def interrupted(patch, config):
            torch.manual_seed(2)
            return interrupt_before_final_checkpoint(patch, config)

        def interrupted_at(iteration):  # Ctrl-C in the middle of update `iteration + 1`
            real_check = train_module._check_finite

            def check(terms, done, *args):
                if done == iteration:
                    raise KeyboardInterrupt
                return real_check(terms, done, *args)

            def call(patch, config):
                patch.setattr(train_module, "_check_finite", check)
                with pytest.raises(TrainingInterrupted):
                    train_module.train_step(config, 0)

            return call

        a = observed(seeded(1, 0), config_a, out_a / "step_0", patch_remote=True)
        b1 = observed(interrupted, config_b, out_b / "step_0")
        b1_periodic = sorted(p.name for p in (out_b / "step_0" / "periodic").iterdir())
        b1_log = (out_b / "step_0" / "train_log.jsonl").read_text()
        b2 = observed(seeded(3, 0), config_b, out_b / "step_0")
        # Stopped in update 5, after the log at 4: resumed from the checkpoint at 3.
        d1 = observed(interrupted_at(4), config_d, out_d / "step_0")
        d1_log = (out_d / "step_0" / "train_log.jsonl").read_text()
        d2 = observed(seeded(4, 0), config_d_progress, out_d / "step_0")
        again = observed(train(0), config_a, out_a / "step_0")
        c = observed(train(1), config_a, out_a / "step_1")
    return {
        "root": root, "out_a": out_a, "out_b": out_b, "config_a": config_a, "a": a, "b1": b1,
        "b1_periodic": b1_periodic, "b1_log": b1_log, "b2": b2, "again": again, "c": c,
        "out_d": out_d, "d1": d1, "d1_log": d1_log, "d2": d2,
    }  # fmt: skip


def test_every_iteration_is_observed_with_its_epoch_samples_and_learning_rates(runs):
    seen, _ = runs["a"]
    iterations = seen.named("observe_iteration")
    batches_per_epoch = runs["a"][0].train_set_sizes[0] // BATCH
    assert [c["iteration"] for c in iterations] == list(range(1, STOP + 1))
    assert [c["epoch"] for c in iterations] == [i // batches_per_epoch for i in range(STOP)]
    assert all(c["samples"] == BATCH for c in iterations)
    assert all(set(c["learning_rates"]) == {"backbone", "aspp", "classifiers"} for c in iterations)
    for c in iterations:  # a phase of the run lasts no longer than the run
        assert 0 <= c["data_wait_seconds"] <= seen.seconds
        assert 0 <= c["compute_seconds"] <= seen.seconds
    logged = [c["iteration"] for c in iterations if c["losses"] is not None]
    assert logged == [2, 4, 6]
    assert len(seen.named("observe_gpu_memory")) == len(logged)
    assert all(seen.lease_held)  # the step's lease is held while it trains ...
    assert not (runs["out_a"] / "step_0" / LEASE_FILE).exists()  # ... and released after


def test_metric_calls_come_in_the_order_of_a_step(runs):
    seen, checkpoint = runs["a"]
    names = [n for n, _ in seen.calls if n not in ("observe_iteration", "observe_gpu_memory")]
    assert names == [
        "delete_pushed", "set_plan", "observe_checkpoint", "observe_checkpoint",
        "observe_evaluation", "observe_checkpoint", "finish", "push", "wait_for_scrape", "close",
    ]  # fmt: skip
    assert seen.named("set_plan")[0]["args"] == (STOP,)
    assert seen.replicas_checked == [STOP]  # after the last update, before the evaluation
    for c in seen.named("observe_checkpoint"):
        seconds, size = c["args"]
        assert 0 <= seconds <= seen.seconds and size > 1000
    final_size = seen.named("observe_checkpoint")[-1]["args"][1]
    assert seen.named("finish") == [
        {"args": (), "iterations": STOP, "checkpoint_bytes": final_size}
    ]
    metrics = json.loads((runs["out_a"] / "step_0" / "eval" / "metrics.json").read_text())
    assert read_meta(checkpoint)["metrics"] == metrics
    (evaluation,) = seen.named("observe_evaluation")
    assert evaluation["args"] == (
        metrics["miou_old"], metrics["miou_new"], metrics["miou_all"], metrics["hiou"],
        metrics["pixel_accuracy"],
    )  # fmt: skip
    assert not seen.metrics[0]._http.started


def test_logged_losses_are_the_means_of_the_micro_batches(runs):
    seen, _ = runs["a"]
    assert seen.micro_sizes == [MICRO] * (2 * STOP)
    records = [json.loads(line) for line in (runs["out_a"] / "step_0" / "train_log.jsonl")
               .read_text().splitlines()]  # fmt: skip
    assert [r["iteration"] for r in records] == [2, 4, 6]
    by_iteration = {c["iteration"]: c for c in seen.named("observe_iteration")}
    for record in records:
        i = record["iteration"]
        first, second = seen.micro_terms[2 * i - 2], seen.micro_terms[2 * i - 1]
        for name in first:
            assert record[name] == pytest.approx((first[name] + second[name]) / 2, rel=1e-6)
        assert by_iteration[i]["losses"] == {k: record[k] for k in first}
        # The lr logged is the backbone's, after this iteration's scheduler step.
        assert record["lr"] == by_iteration[i]["learning_rates"]["backbone"]


def test_each_update_uses_the_mean_gradient_of_its_micro_batches(runs):
    seen, _ = runs["a"]
    assert len(seen.update_grads) == STOP
    for i, grad in enumerate(seen.update_grads):
        mean = (seen.micro_grads[2 * i] + seen.micro_grads[2 * i + 1]) / 2
        torch.testing.assert_close(grad, mean, rtol=1e-5, atol=1e-7)


def test_the_loss_scale_grows_per_update_and_is_saved(runs):
    seen, _ = runs["a"]
    (scaler,) = seen.scalers
    assert scaler.get_scale() == INIT_SCALE * 2**STOP  # growth_interval 1, no inf
    (b2_scaler,) = runs["b2"][0].scalers
    assert b2_scaler.get_scale() == scaler.get_scale()  # restored at 6, one more update


def test_periodic_checkpoints_are_kept_until_the_step_is_done(runs):
    assert runs["b1_periodic"] == ["iter_00000006"]  # at 3 and 6; one kept; not at 7
    for out in (runs["out_a"], runs["out_b"]):
        assert not (out / "step_0" / "periodic").exists()
        assert (out / "step_0" / "checkpoint" / "meta.json").is_file()


def test_a_resumed_step_ends_as_the_uninterrupted_one(runs):
    a = load_model_checkpoint(str(runs["out_a"] / "step_0" / "checkpoint"))[0].state_dict()
    b = load_model_checkpoint(str(runs["out_b"] / "step_0" / "checkpoint"))[0].state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    initial = runs["a"][0].initial
    assert all(not torch.equal(a[k], initial[k]) for k in a if k.endswith("conv1.weight"))
    b2, _ = runs["b2"]
    assert [c["iteration"] for c in b2.named("observe_iteration")] == [7]
    assert len(b2.micro_sizes) == 2
    # The interrupted attempt logged 2, 4 and 6; the resumed one continues after 6.
    assert [json.loads(line)["iteration"] for line in runs["b1_log"].splitlines()] == [2, 4, 6]
    log_a = (runs["out_a"] / "step_0" / "train_log.jsonl").read_text()
    assert (runs["out_b"] / "step_0" / "train_log.jsonl").read_text() == log_a
    metrics_b = runs["out_b"] / "step_0" / "eval" / "metrics.json"
    assert metrics_b.read_text() == (runs["out_a"] / "step_0" / "eval" / "metrics.json").read_text()


def test_a_remote_train_log_is_published_at_each_checkpoint(runs):
    seen, _ = runs["a"]
    # Published after the periodic checkpoint at 3 (holding 2) and at 6 (holding 6).
    assert seen.published_log == [None, None, None, 2, 2, 2, 6]


def test_a_finished_step_is_not_trained_again(runs):
    seen, result = runs["again"]
    assert result == str(runs["out_a"] / "step_0" / "checkpoint")
    assert seen.named("observe_iteration") == [] and seen.data_sizes == []


def test_step1_trains_on_its_images_and_one_exemplar_and_step0_on_its_own(runs):
    a, _ = runs["a"]
    assert a.train_set_sizes == a.data_sizes  # no memory at step 0
    c, _ = runs["c"]
    assert c.train_set_sizes == [c.data_sizes[0] + 1]
    assert (runs["out_a"] / "step_1" / "memory.json").is_file()


def test_progress_lines_can_be_switched_off(runs):
    assert all(runs[k][0].progress_lines == [] for k in ("a", "b1", "b2", "c", "d1"))


def test_progress_lines_count_from_the_resumed_iteration(runs):
    """With train.progress on and no minimum interval: a line at each logged iteration
    the resumed attempt trains (4, 6) and at the last (7), out of the step's 7."""
    lines = runs["d2"][0].progress_lines
    assert [line.split(",")[0] for line in lines] == [
        "step 0: iteration 4/7 (57%)", "step 0: iteration 6/7 (86%)",
        "step 0: iteration 7/7 (100%)",
    ], lines  # fmt: skip


def test_each_sample_is_augmented_with_its_epochs_draws(runs):
    """The train set's augmentation follows the epoch of the iteration that fetches it
    (docs/method.md §2), in a resumed attempt too."""
    seen, _ = runs["a"]
    batches_per_epoch = seen.train_set_sizes[0] // BATCH
    epochs = [i // batches_per_epoch for i in range(STOP) for _ in range(BATCH)]
    assert len(set(epochs)) > 1  # the step spans several epochs
    assert seen.sample_epochs == epochs
    assert runs["b2"][0].sample_epochs == epochs[-BATCH:]  # resumed at 6
    assert runs["d2"][0].sample_epochs == epochs[3 * BATCH :]  # resumed at 3


def test_a_step_resumed_from_an_older_checkpoint_logs_each_iteration_once(runs):
    """Stopped after logging 4 but with the newest checkpoint at 3: the resumed attempt
    drops the interrupted one's records past 3, so the log and the model are those of
    the uninterrupted step."""
    assert [json.loads(line)["iteration"] for line in runs["d1_log"].splitlines()] == [2, 4]
    assert [c["iteration"] for c in runs["d2"][0].named("observe_iteration")] == [4, 5, 6, 7]
    log_a = (runs["out_a"] / "step_0" / "train_log.jsonl").read_text()
    assert (runs["out_d"] / "step_0" / "train_log.jsonl").read_text() == log_a
    a = load_model_checkpoint(str(runs["out_a"] / "step_0" / "checkpoint"))[0].state_dict()
    d = load_model_checkpoint(str(runs["out_d"] / "step_0" / "checkpoint"))[0].state_dict()
    for key in a:
        assert torch.equal(a[key], d[key]), key


def test_a_non_finite_loss_stops_at_once(runs, tmp_path, monkeypatch):
    config = load_config(CONFIGS / "toy.yaml", settings(runs["root"], tmp_path))
    real = train_module.dkd_losses

    def nan_losses(*args):
        terms = real(*args)
        return {**terms, "total": terms["total"] * float("nan")}

    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train_module, "dkd_losses", nan_losses)
    with pytest.raises(DKDError, match=r"non-finite loss at step 0, iteration 0 \(.*total=nan"):
        train_module.train_step(config, 0)
    assert not (tmp_path / "step_0" / "checkpoint").exists()


def test_an_interruption_reports_this_steps_progress_not_the_previous_ones(
    runs, monkeypatch, tmp_path
):
    """After a finished step in the same process, Ctrl-C while loading the next one's data."""
    monkeypatch.setenv("DKD_CACHE", str(tmp_path))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "step_data", interrupted)
    config = runs["config_a"]
    train_module._progress.final = "earlier/checkpoint"
    with pytest.raises(TrainingInterrupted, match="step 2 interrupted; no periodic checkpoint"):
        train_module.train_step(config, 2)


def test_no_process_group_is_left_behind(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("DKD_CACHE", str(tmp_path))
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
    )
    try:
        train_module.train_step(runs["config_a"], 0)  # finished: returns at once
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_a_step_writes_its_checkpoints_log_and_metrics_into_s3(runs, tmp_path, s3, monkeypatch):
    from dkd_core.storage import checkpoint_complete, open_store

    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    run = s3.uri("run")
    extra = ("train.max_iterations=2", "train.checkpoint_every=1", "train.log_every=1")
    config = load_config(CONFIGS / "toy.yaml", settings(runs["root"], run, *extra))
    interrupt_before_final_checkpoint(monkeypatch, config)
    store = open_store(run)
    assert checkpoint_complete(s3.uri("run/step_0/periodic/iter_00000001"))
    assert store.read_text(s3.uri("run/step_0/train_log.jsonl")).count("\n") == 1
    checkpoint = train_module.train_step(config, 0)
    assert checkpoint == s3.uri("run/step_0/checkpoint") and checkpoint_complete(checkpoint)
    assert store.read_text(s3.uri("run/step_0/train_log.jsonl")).count("\n") == 2
    assert store.exists(s3.uri("run/step_0/eval/metrics.json"))
    assert not store.list(s3.uri("run/step_0/periodic"))


def test_with_ddp_only_the_last_micro_batch_synchronises(runs, tmp_path, monkeypatch):
    """DDP all-reduces gradients in a backward outside `no_sync`: the last micro-batch's only.

    One process (a gloo group of one) shows which backward would synchronise.
    """
    from torch.nn.parallel import DistributedDataParallel

    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    config = load_config(
        CONFIGS / "toy.yaml", settings(runs["root"], tmp_path, "train.max_iterations=2")
    )
    synchronised: list[bool] = []
    nets = []
    real_losses = train_module.dkd_losses

    def prepare(model, info):
        nets.append(DistributedDataParallel(model))
        return nets[-1]

    def losses(*args):
        synchronised.append(nets[-1].require_backward_grad_sync)  # set by no_sync for the backward
        return real_losses(*args)

    monkeypatch.setattr(train_module.distributed, "prepare_model", prepare)
    monkeypatch.setattr(train_module, "dkd_losses", losses)
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
    )
    try:
        train_module.train_step(config, 0)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert synchronised == [False, True, False, True]


def test_a_teacher_given_explicitly_is_the_one_used(runs, tmp_path, monkeypatch):
    """As a pipeline passes it: step 1 of a run whose output holds no step 0."""
    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    teacher = str(runs["out_a"] / "step_0" / "checkpoint")
    config = load_config(
        CONFIGS / "toy.yaml", settings(runs["root"], tmp_path, "train.max_iterations=1")
    )
    seen = Seen()
    with monkeypatch.context() as patch:
        instrument(patch, seen, tmp_path / "step_1")
        patch.setattr(train_module, "evaluate_model", _interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_module.train_step(config, 1, teacher=teacher)
    assert [c["iteration"] for c in seen.named("observe_iteration")] == [1]


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt
