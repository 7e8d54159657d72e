"""Typed run configuration: frozen dataclasses from YAML, with dotted overrides.

The dataclass defaults below are the single source of truth for every default
(they are docs/method.md §6's VOC values); a benchmark YAML under `pipelines/configs/`
states only what differs. `load_config("voc_15-1.yaml", ["optim.lr=0.01"])`
reads the file, applies the overrides, checks every key and type, and returns
a `Config`. A typo is an error naming the key and listing the valid ones. The
resolved config (`config_to_dict`) is saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dkd_core.errors import DKDError


@dataclass(frozen=True)
class RunConfig:
    name: str = "dkd"
    output: str = "results/dkd"  # root URI; step t writes <output>/step_<t>/


@dataclass(frozen=True)
class TaskConfig:
    dataset: str = "voc"  # voc | ade | any name for a custom dataset
    name: str = "15-1"
    setting: str = "overlap"  # overlap | disjoint
    num_classes: int | None = None  # required for custom datasets


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/VOC2012"  # dataset URI
    format: str | None = None  # voc | ade | palette; detected when None
    crop_size: int = 512
    batch_size: int = 32  # global, over all processes and micro-batches: one optimizer step
    # Images per process per forward/backward; None or 0: batch_size / processes (no
    # gradient accumulation). Else batch_size / (processes x micro_batch_size) micro-batches
    # are accumulated per step (`batching`), so any GPU count trains the same global batch.
    micro_batch_size: int | None = None
    eval_batch_size: int = 1  # per process
    num_workers: int = 4
    whole_image_eval: bool = False  # the reference evaluates a 512 centre crop (docs/method.md §2)
    split_workers: int = 0  # processes for the class-presence pass
    memory_size: int = 0  # DKD-M exemplars replayed from step 1 on (VOC 100, ADE20K 300); 0 = DKD
    # Which model pseudo-labels old-step images for the DKD-M memory from step 2 on:
    # "teacher" (step t-1's final model) or "untrained" (what the authors' code does:
    # the teacher's architecture before its weights are loaded; docs/method.md).
    memory_pseudo_labels: str = "teacher"


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet101"
    output_stride: int = 16
    aspp_channels: int = 256
    pretrained: str | None = None  # torchvision ImageNet weights file for step 0


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # step 0
    lr_incremental: float = 1e-4  # steps t > 0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    epochs: int = 60
    schedule: str = "poly"  # poly | warmup_poly (ADE20K)
    power: float = 0.9
    warmup_fraction: float = 0.2  # of the step's iterations
    warmup_factor: float = 1e-3  # warm-up starts at this fraction of lr


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms in the total, and mbce's weight on positive pixels (docs/method.md §4)."""

    mbce: float = 1.0
    kd: float = 5.0
    dkd_pos: float = 5.0
    dkd_neg: float = 5.0
    ac: float = 1.0  # 0 also switches new heads to Kaiming initialisation (docs/method.md §5)
    pos_weight: float = 1.0


@dataclass(frozen=True)
class LossConfig(LossWeights):
    """The loss of a run: step 0 and later steps differ only in pos_weight."""

    pos_weight: float = 2.0  # at step 0 (VOC 2, ADE20K 35)
    pos_weight_incremental: float = 1.0  # at steps t > 0 (VOC 1, ADE20K 35)

    def for_step(self, step_index: int) -> LossWeights:
        weight = self.pos_weight if step_index == 0 else self.pos_weight_incremental
        terms = {f.name: getattr(self, f.name) for f in dataclasses.fields(LossWeights)}
        return LossWeights(**{**terms, "pos_weight": weight})


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1
    amp: bool = True  # autocast on CUDA (in amp_dtype); CPU always trains in fp32
    # bf16: autocast alone (fp32's exponent range, no loss scaling). fp16: as the authors'
    # code, autocast with a GradScaler whose state is saved in periodic checkpoints.
    amp_dtype: str = "bf16"
    channels_last: bool = False
    freeze_bn_incremental: bool = True  # docs/method.md §5
    checkpoint_every: int = 500  # iterations between periodic checkpoints; 0 = final only
    keep_checkpoints: int = 2  # periodic checkpoints kept on disk
    log_every: int = 20  # iterations between log lines
    progress: bool = True  # progress lines on rank 0: iteration/total, loss, speed, ETA
    progress_seconds: float = 30.0  # at least this long between progress lines
    metrics_port: int | None = (
        None  # rank 0 serves /metrics here; None: $DKD_METRICS_PORT or 9400; -1: off
    )
    metrics_address: str = "0.0.0.0"  # where /metrics listens: all interfaces; "::" for IPv6
    max_iterations: int | None = (
        None  # stop early (smoke tests); the schedule still spans all epochs
    )
    # Timeout of every collective of the process group, explicit rather than the backend's
    # default (torch.distributed.constants: 30 min for gloo; NCCL's, from its C++ layer, is
    # shorter): the other ranks wait in a barrier while each node's first rank mirrors the
    # dataset and rank 0 builds the split manifest, which on a large dataset and a slow
    # store takes longer than that.
    process_group_timeout_minutes: int = 120


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Coerce/validate one value against its field type (int, float, bool, str, X | None)."""
    options = (
        typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    )
    if value is None:
        if type(None) in options:
            return None
        raise DKDError(f"{where}: must not be empty (expected {annotation})")
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; users mean the number.
            try:
                return float(value)
            except ValueError:
                pass
        if option is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise DKDError(f"{where}: expected {names}, got {value!r}")


def _origin(path: str, source: str, origins: dict[str, str]) -> str:
    """Where the value at `path` came from: a command-line override, or the file."""
    for key, override in origins.items():
        if path == key or path.startswith(key + ".") or key.startswith(path + "."):
            return f"command-line override {override!r}"
    return source


def _build(
    cls: type, data: Any, where: str, source: str, origins: dict[str, str] | None = None
) -> Any:
    origins = origins or {}
    if not isinstance(data, dict):
        raise DKDError(
            f"{_origin(where, source, origins)}: '{where}' must be a mapping, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in valid:
            raise DKDError(
                f"{_origin(path, source, origins)}: unknown key '{path}'; "
                f"valid keys{' in ' + repr(where) if where else ''}: {', '.join(valid)}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, path, source, origins)
        else:
            value = _check_value(value, hint, f"{_origin(path, source, origins)}: '{path}'")
            _check_range(path, value, _origin(path, source, origins))
            kwargs[key] = value
    return cls(**kwargs)


# Allowed values of the fields whose type alone does not say it (None is always allowed
# where the type allows it). Checked at load, so a bad value fails before any work.
_AT_LEAST: dict[str, float] = {
    "data.crop_size": 1,
    "data.batch_size": 1,
    "data.eval_batch_size": 1,
    "data.micro_batch_size": 0,
    "data.num_workers": 0,
    "data.split_workers": 0,
    "data.memory_size": 0,
    "task.num_classes": 1,
    "model.aspp_channels": 1,
    "optim.epochs": 1,
    "optim.weight_decay": 0,
    "optim.power": 0,
    "loss.mbce": 0,
    "loss.kd": 0,
    "loss.dkd_pos": 0,
    "loss.dkd_neg": 0,
    "loss.ac": 0,
    "train.checkpoint_every": 0,
    "train.keep_checkpoints": 1,
    "train.log_every": 1,
    "train.max_iterations": 1,
    "train.process_group_timeout_minutes": 1,
    # numpy's SeedSequence (the augmentation's `default_rng([seed, epoch, i])`) takes
    # non-negative integers only.
    "train.seed": 0,
}
_ABOVE_ZERO = (
    "optim.lr",
    "optim.lr_incremental",
    "loss.pos_weight",
    "loss.pos_weight_incremental",
    "train.progress_seconds",
)
_BETWEEN: dict[str, tuple[float, float]] = {
    "optim.momentum": (0, 1),
    "optim.warmup_fraction": (0, 1),
    "optim.warmup_factor": (0, 1),
    "train.metrics_port": (-1, 65535),  # -1: no metrics server; 0: any free port
}
_CHOICES: dict[str, tuple[Any, ...]] = {
    "task.setting": ("overlap", "disjoint"),
    "data.format": ("voc", "ade", "palette"),
    "model.output_stride": (8, 16),
    "optim.schedule": ("poly", "warmup_poly"),
    "train.amp_dtype": ("bf16", "fp16"),
}


def _check_range(path: str, value: Any, origin: str) -> None:
    if value is None:
        return
    if path in _CHOICES and value not in _CHOICES[path]:
        options = ", ".join(repr(c) for c in _CHOICES[path])
        raise DKDError(f"{origin}: '{path}': expected one of {options}, got {value!r}")
    if path in _AT_LEAST and not value >= _AT_LEAST[path]:
        raise DKDError(
            f"{origin}: '{path}': expected a number >= {_AT_LEAST[path]:g}, got {value!r}"
        )
    if path in _ABOVE_ZERO and not value > 0:
        raise DKDError(f"{origin}: '{path}': expected a number > 0, got {value!r}")
    if path in _BETWEEN:
        low, high = _BETWEEN[path]
        if not low <= value <= high:
            raise DKDError(
                f"{origin}: '{path}': expected a number in {low:g}..{high:g}, got {value!r}"
            )


def apply_overrides(data: dict, overrides: list[str], source: str = "override") -> dict:
    """Apply `a.b=value` overrides (values parsed as YAML scalars) to a nested dict."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise DKDError(f"{source} {override!r}: expected key=value, e.g. optim.lr=0.01")
        value = yaml.safe_load(raw) if raw.strip() else None
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DKDError(f"{source} {override!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Config from a YAML file (or defaults when path is None) plus dotted overrides."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(_read_text(str(path))) or {}
        except yaml.YAMLError as e:
            raise DKDError(f"{path}: not valid YAML ({e})") from e
    return config_from_dict(data, overrides, source)


def _read_text(uri: str) -> str:
    """A config file's text, from a local path or an s3:// URI (e.g. written by a pipeline)."""
    if Path(uri).is_file():  # local: no object store, whose checkpoint code imports torch
        return Path(uri).read_text()
    from dkd_core.storage import is_remote, open_store

    if is_remote(uri):
        return open_store(uri).read_text(uri)
    raise DKDError(f"config file {uri} does not exist")


def config_from_dict(
    data: dict, overrides: list[str] | None = None, source: str = "config"
) -> Config:
    """Config from a nested dict (e.g. the resolved config stored in a checkpoint)."""
    data = apply_overrides(data, overrides or [], source="command-line override")
    origins = {o.partition("=")[0].strip(): o for o in overrides or []}
    return _build(Config, data, "", source, origins)


# Keys that cannot change a step's weights or metrics: where things are written or
# read from, how progress is shown, how fast data is loaded. A finished or
# interrupted step is reused (or resumed) when only these differ from the config
# stored in its checkpoint; any other difference is an error (`result_differences`).
# - run.name, run.output: labels and locations, not the training
# - data.root: where the dataset is read from (a local folder or its S3 copy); which
#   images a step trains and tests on is fixed by the run's split manifest
# - data.num_workers, data.split_workers: loader processes; augmentation is seeded
#   per (seed, epoch, sample), not per worker
# - data.eval_batch_size: evaluation runs in eval mode, images do not interact
# - train.checkpoint_every, train.keep_checkpoints: a resumed run ends with the same
#   weights as an uninterrupted one
# - train.log_every, train.progress, train.progress_seconds, train.metrics_port,
#   train.metrics_address: logging and monitoring only
# Not neutral, though it may look so: data.micro_batch_size. From step 1 on BN is frozen
# and accumulation gives the full batch's gradient, but only up to float summation order
# (a resume would not be bit-exact), and at step 0 BN normalises each micro-batch with
# its own statistics (per process without SyncBN), which changes the weights.
RESULT_NEUTRAL_KEYS = frozenset(
    {
        "run.name",
        "run.output",
        "data.root",
        "data.num_workers",
        "data.split_workers",
        "data.eval_batch_size",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.log_every",
        "train.progress",
        "train.progress_seconds",
        "train.metrics_port",
        "train.metrics_address",
        "train.process_group_timeout_minutes",
    }
)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def result_digest(config: Config) -> str:
    """A short hash of the settings that change the result (`RESULT_NEUTRAL_KEYS` left out):
    equal for two configs exactly when `result_differences` finds none."""
    import hashlib
    import json

    flat = _flatten(config_to_dict(config))
    kept = {k: v for k, v in flat.items() if k not in RESULT_NEUTRAL_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def result_differences(stored: dict[str, Any], requested: Config, where: str) -> list[str]:
    """The result-affecting keys whose value in `stored` differs from `requested`, as
    "key old -> new" lines, sorted; keys in `RESULT_NEUTRAL_KEYS` are not compared.

    `stored` is the resolved config saved in a checkpoint; keys it lacks take their
    defaults (a checkpoint written before a key existed was trained with its default).
    """
    try:
        old = _flatten(config_to_dict(config_from_dict(stored, source=where)))
    except DKDError as e:
        raise DKDError(f"{where}: the stored config cannot be read ({e})") from e
    new = _flatten(config_to_dict(requested))
    return [
        f"{key} {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if key not in RESULT_NEUTRAL_KEYS and old.get(key) != new.get(key)
    ]
