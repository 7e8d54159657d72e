"""DKD-M: which model pseudo-labels the memory candidates (`data.memory_pseudo_labels`)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import dkd_core.step_data as step_data_module
from dkd_core import distributed
from dkd_core.config import Config
from dkd_core.errors import DKDError
from dkd_core.locations import StepLocations
from dkd_core.memory import memory_labeller
from dkd_core.model import DeepLabV3
from dkd_core.tasks import get_task

CPU = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def teacher_model() -> DeepLabV3:
    torch.manual_seed(5)
    return DeepLabV3((2, 1), backbone="tiny", output_stride=8, aspp_channels=16).as_teacher()


def test_the_default_labels_with_the_trained_teacher():
    assert Config().data.memory_pseudo_labels == "teacher"
    teacher = teacher_model()
    assert memory_labeller("teacher", teacher, None, seed=1) is teacher


def test_untrained_rebuilds_the_teachers_architecture_with_fresh_weights():
    teacher = teacher_model()
    state = torch.get_rng_state()
    model = memory_labeller("untrained", teacher, None, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # training's random stream is untouched
    assert model is not teacher and not model.training
    assert model.config() == teacher.config()
    assert not torch.equal(model.step_heads[0].weight, teacher.step_heads[0].weight)
    again = memory_labeller("untrained", teacher, None, seed=1)
    for (key, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), key  # the same untrained model on every process


def test_an_unknown_choice_names_the_key():
    with pytest.raises(DKDError, match=r"data\.memory_pseudo_labels: expected one of teacher"):
        memory_labeller("random", teacher_model(), None, seed=1)


class _Labelled(Exception):
    """Raised by the pseudo-labelling spy with the model it was given."""


@pytest.mark.parametrize("choice", ["teacher", "untrained"])
def test_step_2_memory_is_labelled_by_the_configured_model(tmp_path, monkeypatch, choice):
    def spy(model, samples, step, crop_size, info):
        raise _Labelled(model)

    monkeypatch.setattr(step_data_module, "pseudo_label_sets", spy)
    monkeypatch.setattr(step_data_module, "manifest_step", lambda m, i: SimpleNamespace(train=[]))
    config = Config()
    config = replace(
        config,
        task=replace(config.task, dataset="toy", name="2-1", num_classes=4),
        data=replace(config.data, memory_size=2, memory_pseudo_labels=choice),
    )
    step = get_task("toy", "2-1", num_classes=4).step(2)
    teacher = teacher_model()
    where = StepLocations(str(tmp_path / "step_2" / "checkpoint"), str(tmp_path / "m.json"))
    data = SimpleNamespace(train_samples={}, manifest={})
    with pytest.raises(_Labelled) as labelled:
        step_data_module.exemplar_memory(
            config, step, where, str(tmp_path / "step_1" / "checkpoint"), data, teacher, CPU
        )
    model = labelled.value.args[0]
    assert (model is teacher) == (choice == "teacher")
    assert model.classes_per_step == teacher.classes_per_step


def test_an_unknown_choice_stops_step_1_before_it_trains(tmp_path):
    config = Config()
    config = replace(config, data=replace(config.data, memory_size=2, memory_pseudo_labels="x"))
    step = get_task("voc", "15-1").step(1)
    where = StepLocations(str(tmp_path / "step_1" / "checkpoint"), str(tmp_path / "m.json"))
    with pytest.raises(DKDError, match=r"data\.memory_pseudo_labels"):
        step_data_module.exemplar_memory(config, step, where, "", None, None, CPU)
