"""Running a step again: reuse, resume, refuse or restart, never a silently wrong result."""

import json
import os
import shutil
from pathlib import Path

import pytest

import dkd_core.train as train_module
from dkd_core.checkpoint import read_meta
from dkd_core.errors import DKDError
from dkd_core.evaluate_cli import evaluate_checkpoint
from dkd_core.lease import LeaseHeldError
from dkd_core.train import train_step
from tests.integration.conftest import interrupt_before_final_checkpoint, toy_config

pytestmark = pytest.mark.integration

FAST = ("train.max_iterations=2", "train.progress=false")


@pytest.fixture(scope="module")
def finished_run(toy_root, tmp_path_factory) -> Path:
    """A run whose step 0 is finished (two iterations)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train_step(toy_config(toy_root, run, *FAST), 0)
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def checkpoint_files(run: Path) -> dict[str, tuple[int, int]]:
    folder = run / "step_0" / "checkpoint"
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_changed_settings_on_a_finished_step_are_an_error(toy_root, run_copy):
    before = checkpoint_files(run_copy)
    config = toy_config(toy_root, run_copy, *FAST, "optim.lr=0.5", "loss.kd=2")
    with pytest.raises(DKDError) as error:
        train_step(config, 0)
    message = str(error.value)
    assert "step 0 was trained with other settings" in message
    assert "loss.kd 5.0 -> 2.0" in message and "optim.lr 0.01 -> 0.5" in message
    assert "--restart" in message and "run.output" in message
    assert checkpoint_files(run_copy) == before


def test_settings_that_cannot_change_the_result_reuse_the_step(toy_root, run_copy):
    before = checkpoint_files(run_copy)
    neutral = ("train.log_every=7", "train.checkpoint_every=3", "data.eval_batch_size=2")
    # run.output differs too: the copy lives elsewhere than the run that trained it.
    config = toy_config(toy_root, run_copy, *FAST, *neutral)
    assert train_step(config, 0) == str(run_copy / "step_0" / "checkpoint")
    assert checkpoint_files(run_copy) == before


def test_restart_trains_the_step_again_with_the_new_settings(toy_root, run_copy):
    config = toy_config(toy_root, run_copy, *FAST, "optim.lr=0.02")
    train_step(config, 0, restart=True)
    meta = read_meta(run_copy / "step_0" / "checkpoint")
    assert meta["config"]["optim"]["lr"] == 0.02
    metrics = json.loads((run_copy / "step_0" / "eval" / "metrics.json").read_text())
    assert metrics == meta["metrics"]


def test_a_same_size_corruption_of_the_final_checkpoint_is_not_complete(toy_root, run_copy):
    weights = run_copy / "step_0" / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    config = toy_config(toy_root, run_copy, *FAST)
    with pytest.raises(DKDError, match=r"model.safetensors: checksum mismatch .* damaged"):
        train_step(config, 0)


def test_an_edited_checksum_in_meta_json_is_not_complete(toy_root, run_copy):
    meta_path = run_copy / "step_0" / "checkpoint" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["weights"]["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DKDError, match="checksum mismatch"):
        train_step(toy_config(toy_root, run_copy, *FAST), 0)


def test_leftovers_of_a_kill_after_the_final_checkpoint_are_finished(toy_root, run_copy):
    """Killed after meta.json: the rerun writes eval/metrics.json and deletes periodic ones."""
    step = run_copy / "step_0"
    (step / "eval" / "metrics.json").unlink()
    shutil.copytree(step / "checkpoint", step / "periodic" / "iter_00000001")
    assert train_step(toy_config(toy_root, run_copy, *FAST), 0)
    assert (
        json.loads((step / "eval" / "metrics.json").read_text())
        == read_meta(step / "checkpoint")["metrics"]
    )
    assert not (step / "periodic").exists()


def test_temporary_files_of_interrupted_writes_are_removed(toy_root, run_copy):
    step = run_copy / "step_0"
    leftovers = [
        step / "checkpoint" / ".meta.json.k1ll3d.tmp",
        step / "eval" / ".metrics.json.x.tmp",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"{half")
    train_step(toy_config(toy_root, run_copy, *FAST), 0)
    assert [p for p in leftovers if p.exists()] == []


def test_a_kill_before_the_final_checkpoint_leaves_no_metrics_and_no_duplicate_log(
    toy_root, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    config = toy_config(toy_root, run, *FAST, "train.log_every=1")
    publish = train_module.publish_model_checkpoint

    def killed_at_the_final_checkpoint(uri, *args, **kwargs):
        if uri.endswith("checkpoint"):
            raise KeyboardInterrupt
        return publish(uri, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "publish_model_checkpoint", killed_at_the_final_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            train_step(config, 0)
    step = run / "step_0"
    assert not (step / "checkpoint" / "meta.json").exists()
    assert not (step / "eval" / "metrics.json").exists(), "metrics of a step with no checkpoint"
    assert not (step / "lease.json").exists()

    train_step(config, 0)  # no periodic checkpoint: trains again from iteration 0
    iterations = [json.loads(line)["iteration"] for line in (step / "train_log.jsonl").open()]
    assert iterations == [1, 2]
    assert (step / "eval" / "metrics.json").is_file()


def test_an_interrupted_step_resumed_with_other_settings_is_an_error(
    toy_root, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    config = toy_config(toy_root, run, *FAST, "train.checkpoint_every=1")
    stopped = interrupt_before_final_checkpoint(monkeypatch, config)
    assert isinstance(stopped, train_module.TrainingInterrupted)
    assert str(stopped) == (
        f"step 0 interrupted at iteration 2 of 2; last checkpoint "
        f"{run / 'step_0' / 'periodic' / 'iter_00000001'}: the same command resumes from it"
    )
    changed = toy_config(toy_root, run, *FAST, "train.checkpoint_every=1", "optim.lr=0.02")
    with pytest.raises(DKDError) as error:
        train_step(changed, 0)
    assert "step 0 (interrupted) was trained with other settings" in str(error.value)
    assert "optim.lr 0.01 -> 0.02" in str(error.value)

    train_step(changed, 0, restart=True)
    assert read_meta(run / "step_0" / "checkpoint")["config"]["optim"]["lr"] == 0.02


def test_a_second_run_on_the_same_step_is_refused(toy_root, tmp_path):
    step = tmp_path / "run" / "step_0"
    step.mkdir(parents=True)
    import socket
    import time

    other = os.getppid()  # a live process on this host that is not this one
    lease = {"host": socket.gethostname(), "pid": other, "token": "other",
             "started": time.time(), "heartbeat": time.time()}  # fmt: skip
    (step / "lease.json").write_text(json.dumps(lease))
    with pytest.raises(LeaseHeldError, match=rf"step 0 .* is being trained by pid {other} on "):
        train_step(toy_config(toy_root, tmp_path / "run", *FAST), 0)
    assert json.loads((step / "lease.json").read_text())["token"] == "other"


def test_an_empty_val_list_is_an_error_naming_the_list(toy_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(toy_root, data)
    val_list = data / "ImageSets" / "Segmentation" / "val.txt"
    val_list.write_text("")
    config = toy_config(data, tmp_path / "run", *FAST)
    with pytest.raises(DKDError, match=rf"{val_list} lists no images: the val split is empty"):
        train_step(config, 0)
    assert not (tmp_path / "run" / "step_0" / "checkpoint").exists()


def test_an_empty_test_set_of_a_step_is_an_error(toy_root, tmp_path):
    """The val list holds images, but none with a class of the step."""
    from dkd_core.data import open_layout, read_label

    data = tmp_path / "data"
    shutil.copytree(toy_root, data)
    layout = open_layout(data)
    without_base = [
        s.id for s in layout.samples("val") if not set(read_label(s.label).flat) & {1, 2, 3, 4}
    ]
    if not without_base:  # every toy image has a base class: make one all background
        sample = layout.samples("val")[0]
        label = read_label(sample.label)
        label[...] = 0
        from PIL import Image

        Image.fromarray(label).save(sample.label)
        without_base = [sample.id]
    val_list = data / "ImageSets" / "Segmentation" / "val.txt"
    val_list.write_text("".join(f"{i}\n" for i in without_base))
    with pytest.raises(DKDError, match=rf"step 0 has no test images: no image of {val_list}"):
        train_step(toy_config(data, tmp_path / "run", *FAST), 0)


def test_evaluate_on_other_data_leaves_the_run_manifest_alone(toy_root, run_copy, tmp_path):
    from dkd_core.data import make_toy_dataset

    other = tmp_path / "other"
    make_toy_dataset(other, classes=6, images=40, size=64, seed=5)
    manifest = run_copy / "split" / "manifest.json"
    before = manifest.read_bytes()
    _report, out, _ = evaluate_checkpoint(
        str(run_copy / "step_0" / "checkpoint"),
        [f"data.root={other}", "data.num_workers=0", f"run.output={run_copy}"],
        False,
        str(tmp_path / "other_metrics.json"),
    )
    assert Path(out).is_file()
    assert manifest.read_bytes() == before


def test_a_damaged_teacher_names_the_damaged_file(toy_root, run_copy):
    weights = run_copy / "step_0" / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DKDError) as error:
        train_step(toy_config(toy_root, run_copy, *FAST), 1)
    assert f"{weights}: checksum mismatch" in str(error.value)
    assert "train step 0 first" not in str(error.value)


def test_a_step_trained_from_another_teacher_is_not_reused(toy_root, run_copy):
    config = toy_config(toy_root, run_copy, *FAST)
    step1 = train_step(config, 1)
    assert read_meta(step1)["teacher"]["uri"] == str(run_copy / "step_0" / "checkpoint")
    assert train_step(config, 1) == step1  # same teacher: complete
    teacher_meta = run_copy / "step_0" / "checkpoint" / "meta.json"
    meta = json.loads(teacher_meta.read_text())
    meta["metrics"]["miou_all"] = 99.0  # the previous step was trained again since
    teacher_meta.write_text(json.dumps(meta))
    with pytest.raises(DKDError, match="step 1 was trained from another teacher than"):
        train_step(config, 1)
