"""Qualitative samples (fixed ids, palette, the evaluation's prediction rule) and provenance."""

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dkd_core import provenance
from dkd_core.checkpoint import save_model_checkpoint
from dkd_core.config import config_to_dict, load_config
from dkd_core.data import make_toy_dataset, voc_palette
from dkd_core.evaluate import SegmentationMetrics
from dkd_core.model import DeepLabV3
from dkd_core.report import build_report, run_from_folder
from dkd_core.report.inputs import StepFacts
from dkd_core.report.samples import common_ids
from dkd_core.samples import channels_to_labels, choose_ids, palette_png, predict, write_samples
from dkd_core.step_data import step_data, task_of
from dkd_core.train import evaluate_model
from tests.unit.report_synthetic import write_run

CONFIG = Path(__file__).parents[2] / "pipelines" / "configs" / "toy.yaml"


def test_chosen_ids_cover_the_most_classes_deterministically():
    ids = ["a", "b", "c", "d"]
    presence = np.zeros((4, 256), dtype=bool)
    presence[0, [0, 1, 255]] = True  # a: class 1
    presence[1, [1, 2]] = True  # b: classes 1, 2
    presence[2, [3]] = True  # c: class 3
    presence[3, [1, 2]] = True  # d: same as b
    assert choose_ids(ids, presence, 2) == ["b", "c"]  # most classes, then the uncovered one
    assert choose_ids(ids, presence, 4) == ["b", "c", "d", "a"]  # ties: more classes, then id
    assert choose_ids(list(reversed(ids)), presence[::-1], 2) == ["b", "c"]  # order-free
    assert choose_ids(ids, presence, 9) == ["b", "c", "d", "a"]


def test_palette_png_is_mode_p_with_the_voc_palette():
    labels = np.array([[0, 1, 15], [255, 20, 2]], dtype=np.uint8)
    with Image.open(io.BytesIO(palette_png(labels))) as im:
        assert im.mode == "P"
        assert (np.asarray(im) == labels).all()
        palette = np.array(im.getpalette()[: 256 * 3], dtype=np.uint8).reshape(256, 3)
    assert (palette == voc_palette()).all()
    assert palette[1].tolist() == [128, 0, 0] and palette[15].tolist() == [192, 128, 128]


def test_channels_become_dataset_labels_and_ignore_stays():
    channels = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    assert channels_to_labels(channels, (0, 4, 2)).tolist() == [[0, 4, 2, 255]]


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """A step-1 checkpoint of the toy task (random weights) with its config, and its data."""
    root = tmp_path_factory.mktemp("samples")
    data = make_toy_dataset(root / "data", classes=6, images=40, size=64, seed=0).root
    config = load_config(CONFIG, [f"data.root={data}", f"run.output={root / 'run'}",
                                  "model.aspp_channels=16", "data.num_workers=0"])  # fmt: skip
    step = task_of(config).step(1)
    torch.manual_seed(0)
    model = DeepLabV3(step.classes_per_step, "tiny", 8, 16)
    checkpoint = root / "run" / "step_1" / "checkpoint"
    meta = {"step": 1, "config": config_to_dict(config),
            "task": {"dataset": "toy", "name": "4-1", "setting": "overlap"}}  # fmt: skip
    save_model_checkpoint(checkpoint, model, meta)
    return checkpoint, config, step, model


def test_samples_are_predicted_by_the_evaluation_rule(toy_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    checkpoint, config, step, model = toy_checkpoint
    folder = Path(write_samples(str(checkpoint), None, count=3))
    assert folder == checkpoint.parent / "eval" / "samples"
    index = json.loads((folder / "index.json").read_text())
    assert len(index["ids"]) == 3 and index["step"] == 1 and index["palette"] == "voc"
    assert index["class_names"]["0"] == "background"
    # Fixed: the same ids again, and for another step of the run.
    again = json.loads((Path(write_samples(str(checkpoint), None, count=3)) / "index.json")
                       .read_text())  # fmt: skip
    assert again["ids"] == index["ids"]
    # Every prediction is the evaluation's: the confusion matrix of the PNGs equals
    # evaluate_model's on the same images.
    data = step_data(config, step, str(checkpoint.parents[1] / "split" / "manifest.json"),
                     _single(), read_only=True)  # fmt: skip
    positions = [i for i, s in enumerate(data.test.samples) if s.id in index["ids"]]
    subset = torch.utils.data.Subset(data.test, positions)
    loader = torch.utils.data.DataLoader(subset, batch_size=8)
    expected = evaluate_model(model, loader, step, torch.device("cpu"))
    metrics = SegmentationMetrics.for_test(step, device=torch.device("cpu"))
    to_channel = np.zeros(256, dtype=np.int64)
    for label, channel in step.label_to_channel.items():
        to_channel[label] = channel
    for i in positions:
        sample_id = data.test.samples[i].id
        with Image.open(folder / f"{sample_id}.png") as im:
            assert im.mode == "P"
            predicted = to_channel[np.asarray(im)]
        direct = predict(model, data.test[i]["image"], torch.device("cpu"))
        assert (torch.from_numpy(predicted) == direct).all()
        metrics.update(torch.from_numpy(predicted)[None], data.test[i]["label"][None].long())
    assert metrics.compute().to_dict()["confusion"] == expected.to_dict()["confusion"]


def _single():
    from dkd_core.distributed import DistInfo

    return DistInfo(0, 1, 0, torch.device("cpu"))


def test_report_shows_only_the_ids_every_step_has(tmp_path):
    steps = [StepFacts(0, "c0", samples={"ids": ["a", "b", "c"]}),
             StepFacts(1, "c1", samples={"ids": ["c", "a"]})]  # fmt: skip
    assert common_ids(steps) == ["c", "a"]
    assert common_ids([*steps, StepFacts(2, "c2")]) == []
    run = write_run(tmp_path / "run", [2, 1, 1], samples=3, task=("toy", "2-1", "overlap"))
    files = build_report([run_from_folder(str(run), "DKD")], tmp_path / "out")
    assert (tmp_path / "out" / "samples.png") in files.figures
    assert "Qualitative results" in files.markdown.read_text()
    (run / "step_2" / "eval" / "samples" / "index.json").unlink()
    files = build_report([run_from_folder(str(run), "DKD")], tmp_path / "out2")
    summary = json.loads(files.summary.read_text())
    assert any("no qualitative results" in n and "[2]" in n for n in summary["notes"])


def test_git_revision_from_the_image_or_the_checkout(monkeypatch):
    monkeypatch.setenv(provenance.REVISION_ENV, "0123abcd")
    assert provenance.git_revision() == "0123abcd"
    monkeypatch.delenv(provenance.REVISION_ENV)
    revision = provenance.git_revision()
    assert revision is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", revision)


def test_training_attempt_records_wall_time_throughput_and_hardware(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.REVISION_ENV, "feedbeef")
    checkpoint = tmp_path / "step_0" / "checkpoint"
    periodic = tmp_path / "step_0" / "periodic"
    log = tmp_path / "step_0" / "train_log.jsonl"
    clock = iter([100.0, 110.0])  # begin, finish: 10 s
    monkeypatch.setattr(provenance.time, "monotonic", lambda: next(clock))
    attempt = provenance.TrainingAttempt.begin(str(checkpoint), str(periodic))
    monkeypatch.setenv(provenance.REVISION_ENV, "changed-while-training")
    checkpoint.mkdir(parents=True)
    (checkpoint / "meta.json").write_text('{"weights": {}}')
    log.write_text('{"iteration": 10, "lr": 0.1}\n{"iteration": 20, "lr": 0.05}\n')
    uri = attempt.finish(batch_size=8, train_log=str(log))
    record = json.loads(Path(uri).read_text())
    assert uri == str(tmp_path / "step_0" / "provenance.json")
    assert record["last_logged_iteration"] == 20 and record["resumed_from_iteration"] == 0
    # (20 - 0) iterations x 8 images in 10 s.
    assert record["wall_seconds"] == 10.0 and record["images_per_second"] == 16.0
    assert record["git_revision"] == "feedbeef"
    assert {"host", "torch", "device", "gpus", "world_size", "cpu_count"} <= set(record["hardware"])
    numerics = record["hardware"]["numerics"]
    assert numerics["threads"] == torch.get_num_threads()
    assert numerics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert numerics["cpu_model"] == provenance.cpu_model() and numerics["cpu_model"]
    assert record["started"] <= record["finished"]
    # A second command that finds the step complete (same meta.json) records nothing.
    Path(uri).unlink()
    monkeypatch.setattr(provenance.time, "monotonic", lambda: 0.0)
    again = provenance.TrainingAttempt.begin(str(checkpoint), str(periodic))
    assert again.finish(batch_size=8, train_log=str(log)) is None
    assert not Path(uri).exists()


def test_cpu_numerics_name_the_kernels_threads_and_their_caps(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        numerics = provenance.cpu_numerics()
    finally:
        torch.set_num_threads(before)
    assert numerics["threads"] == 1 and numerics["env"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    if "BLAS_INFO=mkl" in torch.__config__.show():
        assert re.fullmatch(r"MKL [0-9.]+", numerics["blas"])
    line = provenance.numerics_summary(numerics)
    assert "1 threads" in line and "ONEDNN_MAX_CPU_ISA=AVX2" in line
    assert f"{numerics['cpu_capability']} (torch kernels)" in line


def test_a_comparison_across_cpu_numerics_says_so(tmp_path):
    def cpu_run(folder: str, seed: int, capability: str) -> Path:
        run = write_run(tmp_path / folder, [2, 1], seed=seed, task=("toy", "2-1", "overlap"))
        for t in range(2):
            path = run / f"step_{t}" / "provenance.json"
            record = json.loads(path.read_text())
            record["hardware"] = {
                "host": "h", "device": "cpu", "gpus": [], "world_size": 1, "torch": "2.13.0",
                "numerics": {"cpu_model": "AMD EPYC", "cpu_capability": capability,
                             "threads": 2, "blas": "MKL 2024.2", "env": {}},
            }  # fmt: skip
            path.write_text(json.dumps(record))
        return run

    same = [cpu_run("a", 1, "AVX512"), cpu_run("b", 2, "AVX512")]
    files = build_report([run_from_folder(str(r), "DKD") for r in same], tmp_path / "same")
    summary = json.loads(files.summary.read_text())
    assert summary["numerics_differ"] is False
    assert not any("float rounding" in n for n in summary["notes"])
    assert "AVX512 (torch kernels), 2 threads" in files.markdown.read_text()
    mixed = [same[0], cpu_run("c", 3, "AVX2")]
    files = build_report([run_from_folder(str(r), "DKD") for r in mixed], tmp_path / "mixed")
    summary = json.loads(files.summary.read_text())
    assert summary["numerics_differ"] is True
    (note,) = [n for n in summary["notes"] if "float rounding" in n]
    assert "2 different kinds" in note and "AVX2 (torch kernels)" in note


def test_the_evaluate_component_predicts_the_default_number_of_samples():
    import inspect

    from components.dkd import evaluate
    from dkd_core.samples import DEFAULT_COUNT

    default = inspect.signature(evaluate.python_func).parameters["samples"].default
    assert default == DEFAULT_COUNT  # KFP needs a literal there: kept equal here
