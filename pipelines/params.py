"""Pipeline parameters from the command line: `key=value`, typed by the pipeline's signature."""

from __future__ import annotations

import re
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


def add_overrides(arguments: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`arguments` with `overrides` appended to its `overrides` parameter (later ones win,
    as on the command line): what `--override` adds to `--param overrides=[...]`."""
    if overrides:
        arguments["overrides"] = [*arguments.get("overrides", []), *overrides]
    return arguments


#: The pipeline parameter that runs one chain of steps per seed.
SEEDS_PARAM = "seeds"
SEEDS_EXAMPLE = "e.g. --seeds 1,2,3 (make ... SEEDS=1,2,3)"


def seed_list(value: Any, option: str = "--seeds {}") -> list[int]:
    """The seeds of a run as distinct integers >= 0, in the order given.

    `value` is `1,2,3` or `[1, 2, 3]` (a string, as typed) or a list of integers,
    of integral floats (a KFP list parameter at run time) or of integer strings
    (`--param seeds=1,2` parses to strings). Anything else,
    a repeated seed or an empty list is a `DKDError` that starts with `option`
    filled with the value as given.
    """
    shown = value if isinstance(value, str) else ",".join(map(str, value or []))
    where = option.format(shown or "''")
    items: Any = value
    if isinstance(value, str):
        text = value.strip().strip("[]").strip()
        items = [v.strip() for v in text.split(",")] if text else []
    if not isinstance(items, list | tuple) or not items:
        raise DKDError(f"{where}: expected a list of integers, {SEEDS_EXAMPLE}")
    seeds: list[int] = []
    for item in items:
        if isinstance(item, str) and re.fullmatch(r"[+-]?\d+", item):
            item = int(item)
        elif isinstance(item, float) and item.is_integer():
            item = int(item)  # a KFP list parameter's numbers arrive as JSON doubles (1.0)
        if not isinstance(item, int) or isinstance(item, bool) or item < 0:
            raise DKDError(f"{where}: {item!r} is not an integer >= 0; {SEEDS_EXAMPLE}")
        if item in seeds:
            raise DKDError(
                f"{where}: seed {item} is given twice; each seed is one run, so the seeds "
                f"must differ, {SEEDS_EXAMPLE}"
            )
        seeds.append(item)
    return seeds


def apply_seeds(arguments: dict[str, Any], seeds: str | None) -> dict[str, Any]:
    """`arguments` with the `seeds` parameter from `--seeds` (if given) or `--param seeds=`,
    checked by `seed_list`; both given and different is an error."""
    given = seed_list(seeds) if seeds is not None else None
    if SEEDS_PARAM in arguments:
        param = seed_list(arguments[SEEDS_PARAM], f"--param {SEEDS_PARAM}={{}}")
        if given is not None and given != param:
            raise DKDError(
                f"--seeds {seeds} and --param {SEEDS_PARAM}= name different seeds: give one"
            )
        given = param
    if given is not None:
        arguments[SEEDS_PARAM] = given
    return arguments
