"""A run's seed (`train.seed`) drives every random stream of its chain, and nothing shared.

Per stream, two seeds differ and the same seed repeats: the model's initial weights,
the data order, the augmentation and the DKD-M exemplar choice, each observed on the
path training takes (`dkd_core.train.train_step`, `step_data.exemplar_memory`). The
split manifest and the test set, shared by every seed of a pipeline run, do not
depend on the seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dkd_core.train as train
from dkd_core import distributed
from dkd_core.config import load_config
from dkd_core.data import make_toy_dataset
from dkd_core.errors import DKDError
from dkd_core.locations import StepLocations
from dkd_core.step_data import exemplar_memory, step_data, task_of, write_split_manifest

CONFIG = Path(__file__).parents[2] / "pipelines" / "configs" / "toy.yaml"
CPU = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "data"
    make_toy_dataset(root, classes=6, images=60, size=32, seed=0)
    return root


def config_of(toy: Path, output: Path, seed: int, *overrides: str):
    return load_config(
        CONFIG,
        [
            f"data.root={toy}", f"run.output={output}", "data.crop_size=32",
            "data.batch_size=4", "data.num_workers=0", "model.aspp_channels=8",
            "train.metrics_port=-1", "train.progress=false", f"train.seed={seed}", *overrides,
        ],
    )  # fmt: skip


class _Stop(Exception):
    """Ends training once the random streams of interest have been drawn."""


def first_draws(toy: Path, output: Path, seed: int, monkeypatch) -> dict:
    """Step 0's initial weights, epoch 0's data order and image 0's augmented crop, taken
    from what `train_step` builds, which then stops before the first iteration."""
    seen: dict = {}
    build, loader = train.build_student_and_teacher, train.train_loader

    def observe_model(*args, **kwargs):
        model, teacher = build(*args, **kwargs)
        seen["init"] = torch.cat([p.detach().flatten() for p in model.parameters()])
        return model, teacher

    def observe_data(dataset, *args, **kwargs):
        _, sampler = loader(dataset, *args, **kwargs)
        sampler.set_epoch(0)
        seen["order"] = list(sampler)
        dataset.set_epoch(0)
        seen["augmented"] = dataset[0]["image"]  # uint8 [3, S, S]
        raise _Stop

    with monkeypatch.context() as mp:
        mp.setattr(train, "build_student_and_teacher", observe_model)
        mp.setattr(train, "train_loader", observe_data)
        with pytest.raises(_Stop):
            train.train_step(config_of(toy, output, seed), 0)
    return seen


def test_the_seed_changes_init_data_order_and_augmentation(toy, tmp_path, monkeypatch):
    one = first_draws(toy, tmp_path / "a", 1, monkeypatch)
    again = first_draws(toy, tmp_path / "b", 1, monkeypatch)
    other = first_draws(toy, tmp_path / "c", 2, monkeypatch)
    assert torch.equal(one["init"], again["init"])
    assert not torch.equal(one["init"], other["init"])
    assert one["order"] == again["order"]
    assert one["order"] != other["order"] and len(one["order"]) == len(other["order"])
    assert torch.equal(one["augmented"], again["augmented"])
    assert not torch.equal(one["augmented"], other["augmented"])


def test_the_seed_changes_the_exemplar_memory(toy, tmp_path):
    """DKD-M at step 1: the class-balanced choice among step 0's images (docs/method.md §2)."""

    def memory(seed: int, name: str) -> list[str]:
        config = config_of(toy, tmp_path / name, seed, "data.memory_size=4")
        manifest, _ = write_split_manifest(config)
        step = task_of(config).step(1)
        where = StepLocations.of_run(config.run.output, 1)
        data = step_data(config, step, manifest, CPU)
        chosen = exemplar_memory(config, step, where, "", data, None, CPU)
        assert json.loads(Path(where.memory).read_text())["memory"] == sorted(chosen)
        return sorted(chosen)

    one, again, other = memory(1, "a"), memory(1, "b"), memory(2, "c")
    assert len(one) == 4 and one == again
    assert one != other


def test_the_split_and_the_test_set_do_not_depend_on_the_seed(toy, tmp_path):
    """What a pipeline run's seeds share: the manifest, and the test images as prepared."""
    configs = [config_of(toy, tmp_path / str(seed), seed) for seed in (1, 2)]
    manifests = [write_split_manifest(c)[1] for c in configs]
    assert manifests[0] == manifests[1]
    step = task_of(configs[0]).step(1)
    tests = [
        step_data(c, step, write_split_manifest(c)[0], CPU, read_only=True).test for c in configs
    ]
    assert [s.id for s in tests[0].samples] == [s.id for s in tests[1].samples]
    for i in range(len(tests[0])):
        a, b = tests[0][i], tests[1][i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_a_negative_seed_is_refused_by_the_config(toy, tmp_path):
    # numpy's SeedSequence (the augmentation's generator) takes non-negative seeds only.
    with pytest.raises(DKDError, match=r"'train.seed': expected a number >= 0, got -1"):
        config_of(toy, tmp_path, -1)
