"""Every failure a user can cause is one line that says what to fix (no traceback)."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from dkd_core.checkpoint import load_model_checkpoint, save_model_checkpoint
from dkd_core.config import load_config
from dkd_core.errors import DKDError, user_message
from dkd_core.model import DeepLabV3


@pytest.fixture(scope="module")
def model() -> DeepLabV3:
    torch.manual_seed(0)
    return DeepLabV3((2, 1), backbone="tiny", output_stride=8, aspp_channels=8).eval()


def edit_meta(folder, edit) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


# -- config values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.batch_size=0", "'data.batch_size': expected a number >= 1, got 0"),
        ("optim.epochs=0", "'optim.epochs': expected a number >= 1, got 0"),
        ("train.log_every=0", "'train.log_every': expected a number >= 1, got 0"),
        ("train.checkpoint_every=-5", "'train.checkpoint_every': expected a number >= 0, got -5"),
        ("train.metrics_port=70000", "'train.metrics_port': expected a number in -1..65535"),
        ("train.metrics_port=-2", "'train.metrics_port': expected a number in -1..65535"),
        ("optim.lr=0", "'optim.lr': expected a number > 0, got 0.0"),
        ("train.progress_seconds=0", "'train.progress_seconds': expected a number > 0, got 0.0"),
        ("optim.momentum=1.5", "'optim.momentum': expected a number in 0..1, got 1.5"),
        ("task.setting=overlapped", "'task.setting': expected one of 'overlap', 'disjoint'"),
        ("model.output_stride=32", "'model.output_stride': expected one of 8, 16, got 32"),
    ],
)
def test_config_values_out_of_range_fail_at_load(override, expected):
    with pytest.raises(DKDError) as error:
        load_config(None, [override])
    assert expected in str(error.value)
    assert str(error.value).startswith(f"command-line override {override!r}: ")


def test_metrics_port_minus_one_is_accepted_as_off(monkeypatch):
    from dkd_core.metrics import metrics_port

    assert load_config(None, ["train.metrics_port=-1"]).train.metrics_port == -1
    monkeypatch.setenv("DKD_METRICS_PORT", "-1")
    assert metrics_port() == -1
    monkeypatch.setenv("DKD_METRICS_PORT", "70000")
    with pytest.raises(DKDError, match=r"DKD_METRICS_PORT: expected a port in 0\.\.65535, or -1"):
        metrics_port()


def test_an_override_typo_names_the_command_line_not_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.01\n")
    with pytest.raises(DKDError) as error:
        load_config(path, ["optim.lrr=1"])
    assert str(error.value).startswith("command-line override 'optim.lrr=1': unknown key")
    path.write_text("optim:\n  lrr: 0.01\n")
    with pytest.raises(DKDError, match=rf"^{path}: unknown key 'optim.lrr'"):
        load_config(path, ["optim.lr=1"])


# -- checkpoints --------------------------------------------------------------------------


def test_a_lying_safetensors_header_is_one_line(tmp_path, model):
    folder = save_model_checkpoint(tmp_path / "ckpt", model, {"step": 0})
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[0:8] = (len(data) * 4).to_bytes(8, "little")  # a header longer than the file
    weights.write_bytes(bytes(data))
    from dkd_core.checkpoint import sha256_file

    edit_meta(folder, lambda m: m["weights"].update(sha256=sha256_file(weights)))
    with pytest.raises(DKDError, match=rf"{weights}: not a valid safetensors file \("):
        load_model_checkpoint(folder)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("aspp_channels", 10**7, "model.aspp_channels must be an integer in 1..4096"),
        ("classes_per_step", [10**9], "model.classes_per_step must be a list of class counts"),
        ("classes_per_step", "2,1", "model.classes_per_step must be a list of class counts"),
        ("output_stride", "8", "model.output_stride must be 8 or 16"),
        ("backbone", 7, "model.backbone must be one of"),
        ("dropout", "0.1", "model.dropout must be a number in [0, 1)"),
    ],
)
def test_absurd_or_mistyped_architecture_fields_are_refused_before_allocating(
    tmp_path, model, field, value, expected
):
    folder = save_model_checkpoint(tmp_path / "ckpt", model, {"step": 0})
    edit_meta(folder, lambda m: m["model"].update({field: value}))
    with pytest.raises(DKDError) as error:
        load_model_checkpoint(folder)
    assert f"meta.json: {expected}" in str(error.value)


def test_heads_that_do_not_fit_the_weights_name_the_tensor(tmp_path, model):
    folder = save_model_checkpoint(tmp_path / "ckpt", model, {"step": 0})
    edit_meta(folder, lambda m: m["model"].update(classes_per_step=[3, 1]))
    with pytest.raises(DKDError) as error:
        load_model_checkpoint(folder)
    message = str(error.value)
    assert "the weights do not fit the architecture in its meta.json" in message
    assert "step_heads.0.weight is [2," in message and "\n" not in message


def test_wrongly_typed_payload_fields_in_meta_json_are_named(tmp_path, model):
    folder = save_model_checkpoint(tmp_path / "ckpt", model, {"step": 0})
    edit_meta(folder, lambda m: m["weights"].update(bytes="12"))
    with pytest.raises(DKDError, match=r"the size of model\.safetensors must be a number of bytes"):
        load_model_checkpoint(folder)
    edit_meta(folder, lambda m: m.update(step="zero"))
    with pytest.raises(DKDError):
        load_model_checkpoint(folder)


def test_a_full_disk_while_writing_tensors_is_one_line(tmp_path, model, monkeypatch):
    from safetensors import SafetensorError

    import dkd_core.checkpoint as checkpoint_module

    def full(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(checkpoint_module, "save_file", full)
    with pytest.raises(DKDError, match=r"model.safetensors: cannot be written \(.*No space left"):
        save_model_checkpoint(tmp_path / "ckpt", model, {"step": 0})


# -- the command line's one line ----------------------------------------------------------


def test_user_message_of_library_errors():
    enospc = OSError(errno.ENOSPC, "No space left on device", "/data/run/step_0/x.tmp")
    assert user_message(enospc).startswith("/data/run/step_0/x.tmp: no space left on device;")
    assert user_message(RuntimeError("a bug")) is None
    assert user_message(DKDError("plain")) == "plain"


class BadLabels(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        raise DKDError("labels/x.png: label values [9] are not classes of this dataset")


def test_errors_inside_dataloader_workers_are_unwrapped_to_their_message():
    loader = torch.utils.data.DataLoader(BadLabels(), batch_size=1, num_workers=1)
    with pytest.raises(DKDError) as error:
        next(iter(loader))
    assert "Traceback" in str(error.value)  # what torch re-raises
    assert user_message(error.value) == (
        "labels/x.png: label values [9] are not classes of this dataset"
    )


def test_cli_prints_one_line_for_a_damaged_checkpoint(tmp_path, model, capsys):
    from dkd_core.cli import main

    folder = save_model_checkpoint(tmp_path / "ckpt", model, {"step": 0})
    edit_meta(folder, lambda m: m["model"].update(aspp_channels=10**7))
    assert main(["evaluate", "--checkpoint", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "aspp_channels" in err


def test_cli_keyboard_interrupt_is_one_line(monkeypatch, capsys):
    import dkd_core.cli as cli
    from dkd_core.train import TrainingInterrupted

    def interrupted(args):
        raise TrainingInterrupted("step 0 interrupted at iteration 3 of 9; ...")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["report"].set_defaults(handler=interrupted)
    assert cli.main(["report", "--run", "x"]) == 130
    assert capsys.readouterr().err == "interrupted: step 0 interrupted at iteration 3 of 9; ...\n"
