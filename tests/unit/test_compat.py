"""Loading checkpoints laid out like the authors' code (key mapping, prefixes, errors)."""

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from dkd_core.checkpoint import load_model_checkpoint
from dkd_core.cli import main
from dkd_core.compat import load_reference_checkpoint, to_reference_state_dict
from dkd_core.errors import DKDError
from dkd_core.model import DeepLabV3

GOLDEN = Path(__file__).parents[1] / "golden" / "reference_outputs.json"


@pytest.fixture(scope="module")
def resnet101():
    torch.manual_seed(0)
    return DeepLabV3((15, 1, 1), backbone="resnet101").eval()


def test_reference_layout_has_exactly_the_authors_key_names_and_shapes(resnet101):
    # Key names and shapes recorded from the authors' DeepLabV3(classes=[15, 1, 1]).
    authors = json.loads(GOLDEN.read_text())["student_keys"]
    ours = {k: list(v.shape) for k, v in to_reference_state_dict(resnet101).items()}
    assert ours == authors


def test_round_trip_through_a_ddp_checkpoint_file(tmp_path, resnet101):
    reference = to_reference_state_dict(resnet101)
    checkpoint = {
        "arch": "DistributedDataParallel",
        "epoch": 60,
        "state_dict": {"module." + k: v for k, v in reference.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
        "monitor_best": 0,
    }
    torch.save(checkpoint, tmp_path / "checkpoint-epoch60.pth")
    loaded = load_reference_checkpoint(tmp_path / "checkpoint-epoch60.pth", [15, 1, 1]).eval()
    for key, value in resnet101.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(1, 3, 32, 32)
    assert_close(loaded(images, decompose=True).pos, resnet101(images, decompose=True).pos)


def test_convert_reference_cli_writes_a_checkpoint_we_can_load(tmp_path, resnet101, capsys):
    torch.save({"state_dict": to_reference_state_dict(resnet101)}, tmp_path / "ref.pth")
    args = ["convert-reference", str(tmp_path / "ref.pth"), str(tmp_path / "out")]
    assert main([*args, "--task", "voc:15-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes_per_step"] == [15, 1, 1]
    model, meta = load_model_checkpoint(tmp_path / "out")
    assert meta["step"] == 2
    assert meta["channel_to_label"] == list(range(18))
    for key, value in resnet101.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    # A task whose step does not fit the heads is refused, and nothing is written.
    assert main([*args[:2], str(tmp_path / "bad"), "--task", "voc:10-1"]) == 2
    assert "do not match" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_mismatches_are_clear_errors(resnet101):
    reference = to_reference_state_dict(resnet101)
    with pytest.raises(DKDError, match=r"classes_per_step \[15, 1\] does not match"):
        load_reference_checkpoint(reference, [15, 1])
    with pytest.raises(DKDError, match=r"unexpected 1 keys \['aspp\.extra\.weight'\]"):
        load_reference_checkpoint({**reference, "aspp.extra.weight": torch.zeros(1)})
    missing = {k: v for k, v in reference.items() if not k.startswith("aspp.last_conv.1.")}
    with pytest.raises(DKDError, match="missing"):
        load_reference_checkpoint(missing)
    wrong_shape = {**reference, "aspp.project.0.weight": torch.zeros(256, 1024, 1, 1)}
    with pytest.raises(DKDError, match=r"aspp\.project\.conv\.weight.*shape \(256, 1024, 1, 1\)"):
        load_reference_checkpoint(wrong_shape)
    no_aux = {k: v for k, v in reference.items() if not k.startswith("cls.0.")}
    with pytest.raises(DKDError, match="auxiliary classifier"):
        load_reference_checkpoint(no_aux)
