"""Model checkpoints: round trip, checksum verification, clear errors."""

import json

import pytest
import torch
from torch.testing import assert_close

from dkd_core.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    load_model_checkpoint,
    save_model_checkpoint,
)
from dkd_core.errors import DKDError
from dkd_core.model import DeepLabV3


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = DeepLabV3((3, 2), backbone="tiny", output_stride=8, aspp_channels=16)
    m.train()(torch.randn(2, 3, 32, 32))  # move BN statistics away from their defaults
    return m.eval()


def test_round_trip_restores_architecture_weights_and_metadata(tmp_path, model):
    save_model_checkpoint(tmp_path / "ckpt", model, {"task": {"name": "4-1"}, "step": 1})
    loaded, meta = load_model_checkpoint(tmp_path / "ckpt")
    assert loaded.classes_per_step == (3, 2)
    assert meta["step"] == 1 and meta["task"] == {"name": "4-1"}
    assert meta["weights"]["bytes"] == (tmp_path / "ckpt" / WEIGHTS_FILE).stat().st_size
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(1, 3, 32, 32)
    assert_close(loaded.eval()(images).logits, model(images).logits)
    assert not list(tmp_path.glob("ckpt/.*.tmp")), "temporary files left behind"


def test_a_flipped_byte_is_detected(tmp_path, model):
    save_model_checkpoint(tmp_path / "ckpt", model, {})
    weights = tmp_path / "ckpt" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(DKDError, match="checksum mismatch"):
        load_model_checkpoint(tmp_path / "ckpt")


def test_missing_or_broken_metadata(tmp_path, model):
    with pytest.raises(DKDError, match="not a complete checkpoint"):
        load_model_checkpoint(tmp_path)
    save_model_checkpoint(tmp_path / "ckpt", model, {})
    (tmp_path / "ckpt" / META_FILE).write_text("{not json")
    with pytest.raises(DKDError, match="not valid JSON"):
        load_model_checkpoint(tmp_path / "ckpt")


def test_weights_that_do_not_fit_the_metadata(tmp_path, model):
    save_model_checkpoint(tmp_path / "ckpt", model, {})
    meta_path = tmp_path / "ckpt" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["model"]["classes_per_step"] = [3, 2, 1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DKDError, match="do not fit the architecture"):
        load_model_checkpoint(tmp_path / "ckpt")


@pytest.fixture
def umask_022():
    import os

    old = os.umask(0o022)
    yield
    os.umask(old)


def test_checkpoint_and_store_files_respect_the_umask(tmp_path, model, umask_022):
    from dkd_core.storage import LocalStore

    folder = save_model_checkpoint(tmp_path / "ckpt", model, {"step": 0})
    LocalStore().write_json(str(tmp_path / "eval" / "metrics.json"), {"miou": 1})
    files = [*folder.iterdir(), tmp_path / "eval" / "metrics.json"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
        f.name: "0o644" for f in files
    }


def test_a_full_disk_leaves_no_checkpoint_folder(tmp_path, model, monkeypatch):
    import errno

    import dkd_core.checkpoint as checkpoint_module

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    target = tmp_path / "periodic" / "iter_00000004"
    with pytest.raises(OSError, match="No space left"):
        save_model_checkpoint(target, model, {"step": 0}, {"t": torch.zeros(2)})
    assert not target.exists()
