"""Mixed precision on CUDA: autocast dtype and, for fp16, the loss scaler.

`train.amp_dtype: bf16` autocasts to bfloat16 alone: it has fp32's exponent
range, so gradients do not underflow and need no scaling. `fp16` is what the
authors' code trains with: float16 autocast plus `torch.amp.GradScaler`, whose
state (the current scale and its growth tracker) is part of the training
state, saved in every periodic checkpoint's meta.json as plain JSON numbers
and restored on resume so the resumed run scales (and skips steps) exactly as
the uninterrupted one. On CPU training runs in fp32 with a disabled scaler,
whose state is empty.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dkd_core.errors import DKDError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# GradScaler.state_dict() of an enabled scaler: these keys, these JSON types.
_SCALER_FIELDS: dict[str, type] = {
    "scale": float,
    "growth_factor": float,
    "backoff_factor": float,
    "growth_interval": int,
    "_growth_tracker": int,
}


def autocast_dtype(amp_dtype: str) -> torch.dtype:
    try:
        return AUTOCAST_DTYPES[amp_dtype]
    except KeyError:
        raise DKDError(
            f"train.amp_dtype: expected one of {', '.join(map(repr, AUTOCAST_DTYPES))}, "
            f"got {amp_dtype!r}"
        ) from None


def make_grad_scaler(use_amp: bool, amp_dtype: str) -> torch.amp.GradScaler:
    """Enabled only for fp16 autocast on CUDA; disabled, it passes losses and steps through."""
    return torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == "fp16")


def scaler_state_to_json(state: dict[str, Any]) -> dict[str, float | int]:
    """A GradScaler state dict as JSON numbers ({} for a disabled scaler)."""
    return {key: _SCALER_FIELDS[key](state[key]) for key in _SCALER_FIELDS if key in state}


def scaler_state_from_json(data: Any, where: str) -> dict[str, float | int]:
    """The GradScaler state stored at `where`, checked: {} or every field, finite, scale > 0."""
    if data == {}:
        return {}
    if not isinstance(data, dict) or set(data) != set(_SCALER_FIELDS):
        raise DKDError(
            f"{where}: expected the GradScaler state with keys {', '.join(_SCALER_FIELDS)} "
            f"(or {{}}), got {data!r}"
        )
    state: dict[str, float | int] = {}
    for key, kind in _SCALER_FIELDS.items():
        value = data[key]
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (kind is int and not float(value).is_integer()):
            raise DKDError(
                f"{where}: '{key}' must be a{'n integer' if kind is int else ' number'}, got {value!r}"
            )
        if not math.isfinite(value) or (key == "scale" and value <= 0):
            raise DKDError(
                f"{where}: '{key}' must be finite{' and > 0' if key == 'scale' else ''}, got {value!r}"
            )
        state[key] = kind(value)
    return state


def restore_scaler(scaler: torch.amp.GradScaler, data: Any, where: str) -> None:
    """Load a checkpoint's scaler state; a state saved by a disabled scaler leaves it fresh."""
    state = scaler_state_from_json(data, where)
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)
