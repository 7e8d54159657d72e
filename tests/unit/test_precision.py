"""Autocast dtype choice and the GradScaler state a periodic checkpoint stores as JSON."""

import json

import pytest
import torch

from dkd_core.errors import DKDError
from dkd_core.precision import (
    autocast_dtype,
    make_grad_scaler,
    restore_scaler,
    scaler_state_from_json,
    scaler_state_to_json,
)

# What an enabled GradScaler's state_dict() holds after some steps (as torch 2.x names it).
STATE = {
    "scale": 8192.0,
    "growth_factor": 2.0,
    "backoff_factor": 0.5,
    "growth_interval": 2000,
    "_growth_tracker": 37,
}


def test_autocast_dtypes():
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp16") is torch.float16
    with pytest.raises(DKDError, match=r"train\.amp_dtype: expected one of 'bf16', 'fp16'"):
        autocast_dtype("fp8")


def test_the_scaler_is_enabled_for_fp16_on_cuda_only():
    assert not make_grad_scaler(use_amp=False, amp_dtype="fp16").is_enabled()  # CPU
    assert not make_grad_scaler(use_amp=True, amp_dtype="bf16").is_enabled()
    assert make_grad_scaler(False, "fp16").state_dict() == {}


def test_a_scaler_state_round_trips_through_json():
    stored = json.loads(json.dumps(scaler_state_to_json(STATE)))  # as meta.json holds it
    assert stored == STATE
    state = scaler_state_from_json(stored, "meta.json")
    assert state == STATE and type(state["growth_interval"]) is int
    assert scaler_state_to_json({}) == {} and scaler_state_from_json({}, "m") == {}


def test_a_real_scaler_resumes_with_its_scale_and_tracker():
    """An enabled CPU GradScaler stands in for CUDA's: same state, same load path."""
    saved = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    saved.load_state_dict({**saved.state_dict(), "_growth_tracker": 2})
    stored = json.loads(json.dumps(scaler_state_to_json(saved.state_dict())))
    fresh = torch.amp.GradScaler("cpu")
    restore_scaler(fresh, stored, "meta.json")
    assert fresh.state_dict() == saved.state_dict()
    assert fresh.get_scale() == 1024.0 and fresh.state_dict()["_growth_tracker"] == 2


def test_a_disabled_scalers_state_leaves_the_scaler_fresh():
    fresh = torch.amp.GradScaler("cpu", init_scale=64.0)
    restore_scaler(fresh, {}, "meta.json")
    assert fresh.get_scale() == 64.0
    disabled = make_grad_scaler(False, "fp16")
    restore_scaler(disabled, STATE, "meta.json")  # CPU resume of a CUDA fp16 run: fp32, no scaler
    assert disabled.state_dict() == {}


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"scale": 1.0}, "expected the GradScaler state with keys scale, growth_factor"),
        ({**STATE, "scale": "big"}, "'scale' must be a number, got 'big'"),
        ({**STATE, "scale": 0.0}, "'scale' must be finite and > 0, got 0.0"),
        ({**STATE, "growth_factor": float("inf")}, "'growth_factor' must be finite, got inf"),
        ({**STATE, "_growth_tracker": 1.5}, "'_growth_tracker' must be an integer, got 1.5"),
        ({**STATE, "growth_interval": True}, "'growth_interval' must be an integer, got True"),
        ([1, 2], "expected the GradScaler state"),
    ],
)
def test_a_damaged_scaler_state_names_the_file_and_field(bad, message):
    with pytest.raises(DKDError) as error:
        scaler_state_from_json(bad, "run/periodic/iter_00000004/meta.json: training.grad_scaler")
    assert str(error.value).startswith(
        "run/periodic/iter_00000004/meta.json: training.grad_scaler: "
    )
    assert message in str(error.value)
