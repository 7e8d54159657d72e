"""Pipeline parameters from the command line: `key=value`, typed by the pipeline's signature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from dkd_core.errors import DKDError


def _parse_value(name: str, kind: str, raw: str) -> Any:
    try:
        if kind == "Integer":
            return int(raw)
        if kind == "Float":
            return float(raw)
        if kind == "Boolean":
            value = yaml.safe_load(raw)
            if not isinstance(value, bool):
                raise ValueError
            return value
    except ValueError:
        raise DKDError(f"--param {name}={raw!r}: expected {kind.lower()}") from None
    if kind == "List":
        try:
            value = yaml.safe_load(raw) if raw.strip().startswith("[") else None
        except yaml.YAMLError:
            value = None
        if value is None:  # a,b,c
            value = [v.strip() for v in raw.split(",") if v.strip()]
        if not isinstance(value, list):
            raise DKDError(f"--param {name}={raw!r}: expected a list, e.g. [a=1, b=2] or a=1,b=2")
        # Mappings stay mappings (tolerations); scalars are strings (overrides: key=value).
        return [v if isinstance(v, dict) else str(v) for v in value]
    if kind == "Dict":
        try:
            value = yaml.safe_load(raw) if raw.strip().startswith("{") else None
        except yaml.YAMLError:
            value = None
        if value is None and raw.strip():  # k=v,k=v
            pairs = [item.partition("=") for item in raw.split(",") if item.strip()]
            if all(sep and k.strip() for k, sep, _ in pairs):
                value = {k.strip(): v.strip() for k, _, v in pairs}
        if not isinstance(value, dict):
            raise DKDError(
                f'--param {name}={raw!r}: expected a mapping, e.g. {{"k": "v"}} or k=v,k2=v2'
            )
        return value
    return raw


def parse_params(pipeline: Any, params: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Arguments for `pipeline` from `key=value` strings (or a mapping, checked the same way).

    Values are converted to the parameter's type (int, float, list as `[a, b]` or
    `a,b`); an unknown key is an error listing the pipeline's parameters.
    """
    inputs = pipeline.component_spec.inputs or {}
    items: list[tuple[str, Any]] = []
    if isinstance(params, Mapping):
        items = list(params.items())
    else:
        for param in params:
            key, sep, raw = param.partition("=")
            if not sep or not key.strip():
                raise DKDError(f"--param {param!r}: expected key=value, e.g. epochs=10")
            items.append((key.strip(), raw))
    out: dict[str, Any] = {}
    for key, value in items:
        if key not in inputs:
            raise DKDError(
                f"--param {key}: the pipeline has no such parameter; parameters: "
                f"{', '.join(inputs)}"
            )
        out[key] = _parse_value(key, inputs[key].type, value) if isinstance(value, str) else value
    return out
