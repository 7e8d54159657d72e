"""Typed config: YAML + dotted overrides, typos named, docs/method.md §6 hyperparameters per benchmark."""

from pathlib import Path

import pytest

from dkd_core.config import Config, config_from_dict, config_to_dict, load_config
from dkd_core.errors import DKDError
from dkd_core.tasks import get_task

CONFIGS = Path(__file__).parents[2] / "pipelines" / "configs"
BENCHMARKS = ["voc_19-1", "voc_15-5", "voc_15-1", "voc_10-1", "voc_5-3"]
BENCHMARKS += ["ade_100-50", "ade_100-10", "ade_50-50", "toy"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_config_loads_and_names_a_valid_task(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    t = config.task
    task = get_task(t.dataset, t.name, t.setting, num_classes=t.num_classes)
    assert config.run.name == name and task.num_steps >= 2


@pytest.mark.parametrize("name", [b for b in BENCHMARKS if b.startswith("voc")])
def test_voc_hyperparameters_follow_spec(name):
    c = load_config(CONFIGS / f"{name}.yaml")
    assert (c.data.batch_size, c.data.crop_size, c.optim.epochs) == (32, 512, 60)
    assert (c.optim.lr, c.optim.lr_incremental, c.optim.schedule) == (1e-3, 1e-4, "poly")
    assert (c.loss.pos_weight, c.loss.pos_weight_incremental) == (2.0, 1.0)
    assert (c.loss.mbce, c.loss.kd, c.loss.dkd_pos, c.loss.dkd_neg, c.loss.ac) == (1, 5, 5, 5, 1)
    assert (c.optim.momentum, c.optim.nesterov, c.optim.weight_decay) == (0.9, True, 1e-4)
    assert (c.model.backbone, c.model.output_stride, c.train.seed) == ("resnet101", 16, 1)


@pytest.mark.parametrize("name", [b for b in BENCHMARKS if b.startswith("ade")])
def test_ade_hyperparameters_follow_spec(name):
    c = load_config(CONFIGS / f"{name}.yaml")
    assert (c.data.batch_size, c.data.crop_size, c.optim.epochs) == (24, 512, 100)
    assert (c.optim.lr, c.optim.lr_incremental) == (2.5e-3, 2.5e-4)
    assert (c.optim.schedule, c.optim.warmup_fraction, c.optim.warmup_factor) == (
        "warmup_poly",
        0.2,
        1e-3,
    )
    assert (c.loss.pos_weight, c.loss.pos_weight_incremental) == (35.0, 35.0)


def test_overrides_are_typed_and_dotted():
    c = load_config(CONFIGS / "toy.yaml", ["optim.lr=0.02", "train.max_iterations=5"])
    assert c.optim.lr == 0.02 and c.train.max_iterations == 5
    assert load_config(None, ["model.pretrained=null"]).model.pretrained is None
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0  # ints are valid floats
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 1e-3  # YAML 1.1 reads this as str


def test_typos_and_bad_types_name_the_key():
    with pytest.raises(DKDError, match=r"unknown key 'optim\.lrr'.*lr_incremental"):
        load_config(CONFIGS / "toy.yaml", ["optim.lrr=0.1"])
    with pytest.raises(DKDError, match=r"'train\.amp': expected bool"):
        load_config(None, ["train.amp=yes please"])
    with pytest.raises(DKDError, match=r"'data\.batch_size': expected int"):
        load_config(None, ["data.batch_size=3.5"])
    with pytest.raises(DKDError, match="expected key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(DKDError, match="does not exist"):
        load_config(CONFIGS / "nope.yaml")


def test_typo_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 0.1\n  epohcs: 3\n")
    with pytest.raises(DKDError, match=r"bad\.yaml: unknown key 'optim\.epohcs'"):
        load_config(path)


def test_resolved_config_round_trips():
    c = load_config(CONFIGS / "ade_100-10.yaml", ["train.seed=7"])
    assert config_from_dict(config_to_dict(c)) == c
    assert Config() == load_config(None)


def test_loss_weights_per_step():
    loss = load_config(CONFIGS / "ade_100-10.yaml", ["loss.kd=3"]).loss
    assert loss.for_step(0).pos_weight == 35.0 and loss.for_step(4).pos_weight == 35.0
    voc = load_config(CONFIGS / "voc_15-1.yaml").loss
    assert (voc.for_step(0).pos_weight, voc.for_step(1).pos_weight) == (2.0, 1.0)
    assert loss.for_step(1).kd == 3.0 and loss.for_step(1).dkd_pos == 5.0


def test_result_differences_list_result_keys_old_to_new_and_ignore_neutral_ones():
    from dkd_core.config import RESULT_NEUTRAL_KEYS, config_to_dict, result_differences

    stored = config_to_dict(load_config(None, ["optim.lr=0.01"]))
    neutral = ["train.log_every=3", "train.progress=false", "train.metrics_port=-1",
               "data.num_workers=0", "run.output=elsewhere", "train.checkpoint_every=7",
               "train.progress_seconds=2.5"]  # fmt: skip
    assert result_differences(stored, load_config(None, ["optim.lr=0.01", *neutral]), "m") == []
    changed = load_config(None, ["optim.lr=0.02", "train.amp=false", *neutral])
    assert result_differences(stored, changed, "m") == [
        "optim.lr 0.01 -> 0.02",
        "train.amp True -> False",
    ]
    assert {"train.progress", "train.metrics_port", "data.num_workers"} <= RESULT_NEUTRAL_KEYS


def test_a_stored_config_missing_a_key_was_trained_with_its_default():
    from dkd_core.config import config_to_dict, result_differences

    stored = config_to_dict(load_config(None))
    del stored["loss"]["ac"]
    assert result_differences(stored, load_config(None), "m") == []
    assert result_differences(stored, load_config(None, ["loss.ac=0"]), "m") == [
        "loss.ac 1.0 -> 0.0"
    ]


def test_result_digest_changes_exactly_with_the_result_settings():
    from dkd_core.config import result_digest

    base = result_digest(load_config(None))
    assert result_digest(load_config(None, ["train.log_every=1", "run.output=x"])) == base
    assert result_digest(load_config(None, ["optim.lr=0.5"])) != base


def test_train_has_a_restart_flag():
    from dkd_core.cli import build_parser

    args = build_parser().parse_args(["train", "--config", "c.yaml", "--step", "1", "--restart"])
    assert args.restart is True
    assert build_parser().parse_args(["train", "--config", "c", "--step", "1"]).restart is False


def test_micro_batch_size_and_amp_dtype_are_checked_at_load():
    assert load_config(None).data.micro_batch_size is None
    assert load_config(None).train.amp_dtype == "bf16"
    config = load_config(None, ["data.micro_batch_size=4", "train.amp_dtype=fp16"])
    assert (config.data.micro_batch_size, config.train.amp_dtype) == (4, "fp16")
    with pytest.raises(DKDError, match=r"'data\.micro_batch_size': expected a number >= 0, got -1"):
        load_config(None, ["data.micro_batch_size=-1"])
    with pytest.raises(
        DKDError, match=r"'train\.amp_dtype': expected one of 'bf16', 'fp16', got 'fp8'"
    ):
        load_config(None, ["train.amp_dtype=fp8"])


def test_micro_batch_size_and_amp_dtype_change_the_result():
    from dkd_core.config import config_to_dict, result_differences

    stored = config_to_dict(load_config(None))
    changed = load_config(None, ["data.micro_batch_size=8", "train.amp_dtype=fp16"])
    assert result_differences(stored, changed, "m") == [
        "data.micro_batch_size None -> 8",
        "train.amp_dtype 'bf16' -> 'fp16'",
    ]
