"""Where a report's numbers come from: run folders, pipeline histories, and what lies beside
each step's checkpoint.

A run is found from a run folder (`step_<t>/eval/metrics.json`, the default
layout of `run.output`) or from a pipeline's history (a JSON list of step
metrics, each with its step's `checkpoint` URI). Everything else of a step is
read beside its checkpoint (`dkd_core.locations`), through `dkd_core.storage`,
so local folders and s3:// URIs work alike:

    checkpoint/meta.json      task, resolved config (seed), model sha256
    provenance.json           when, where, with which code it was trained
    train_log.jsonl           loss terms and learning rate per logged iteration
    eval/samples/index.json   predictions of fixed test images (`dkd_core.samples`)

Any of these may be missing (a converted checkpoint, an old run, samples not
computed): the report then says so in a note instead of failing. Malformed
step metrics are an error naming the file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from dkd_core.errors import DKDError
from dkd_core.locations import parent
from dkd_core.report.runs import REQUIRED, RunInput
from dkd_core.storage import is_remote, join, open_store

_STEP_METRICS = re.compile(r"(?:^|/)step_(\d+)/eval/metrics\.json$")


@dataclass
class StepFacts:
    """What lies beside one step's checkpoint (None: not there)."""

    step: int
    checkpoint: str | None
    meta: dict | None = None
    provenance: dict | None = None
    train_log: list[dict] | None = None
    samples: dict | None = None  # index.json, plus "folder"


@dataclass
class RunFacts:
    steps: list[StepFacts]
    notes: list[str] = field(default_factory=list)

    @property
    def task(self) -> dict | None:
        """The run's task (dataset, name, setting) from its checkpoints' metadata."""
        for s in self.steps:
            if s.meta and isinstance(s.meta.get("task"), dict):
                return s.meta["task"]
        return None

    @property
    def seed(self) -> int | None:
        for s in self.steps:
            seed = ((s.meta or {}).get("config") or {}).get("train", {}).get("seed")
            if seed is not None:
                return int(seed)
        return None


def _read_json(uri: str, what: str):
    store = open_store(uri)
    if not store.exists(uri):
        return None
    try:
        return store.read_json(uri)
    except DKDError as e:
        raise DKDError(f"{what}: {e}") from e


def run_from_folder(folder: str, method: str | None = None) -> RunInput:
    """The run under `folder` (a path or s3:// URI): every `step_<t>/eval/metrics.json`.

    The steps must be 0, 1, ... without a gap; the method defaults to the
    folder's name and the seed to the one its checkpoints were trained with.
    """
    folder = str(folder).rstrip("/")
    if not is_remote(folder):  # provenance names checkpoints by absolute path
        folder = os.path.abspath(folder)
    store = open_store(folder)
    found = {}
    for uri in store.list(folder, recursive=True):
        match = _STEP_METRICS.search(uri[len(folder) :])
        if match:
            found[int(match.group(1))] = uri
    if not found:
        raise DKDError(
            f"no step metrics found under {folder} (looked for step_*/eval/metrics.json)"
        )
    if sorted(found) != list(range(len(found))):
        raise DKDError(
            f"{folder}: step metrics of steps {sorted(found)}; expected steps 0 to "
            f"{max(found)} without a gap"
        )
    steps = []
    for t in range(len(found)):
        metrics = _check_metrics(store.read_json(found[t]), found[t], t)
        checkpoint = join(folder, f"step_{t}", "checkpoint")
        steps.append({"step": t, "checkpoint": checkpoint, **metrics})
    info = {"source": folder, "manifest": join(folder, "split", "manifest.json")}
    run = RunInput(steps, method=method or folder.rsplit("/", 1)[-1], info=info)
    return _with_seed(run)


def run_from_history(uri: str, method: str | None = None) -> RunInput:
    """The run of a pipeline's history JSON (the evaluate component's `history_out`)."""
    history = _read_json(uri, "history")
    if history is None:
        raise DKDError(f"{uri}: history file not found")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise DKDError(f"{uri}: expected a JSON list of step metrics (a pipeline's history)")
    for t, entry in enumerate(history):
        _check_metrics(entry, uri, t)
    run = RunInput(history, method=method or "DKD", info={"source": uri})
    return _with_seed(run)


def _check_metrics(metrics, uri: str, step: int) -> dict:
    """Step metrics as `evaluate` writes them; a `DKDError` naming the file, step and field."""
    if not isinstance(metrics, dict):
        raise DKDError(f"{uri}: step {step}: expected a JSON object of step metrics")
    for key in REQUIRED:
        if key not in metrics:
            raise DKDError(
                f"{uri}: step {step} has no field {key!r}; expected the metrics `evaluate` writes"
            )
    return metrics


def _with_seed(run: RunInput) -> RunInput:
    if run.seed is not None or not run.steps or "checkpoint" not in run.steps[0]:
        return run
    meta = _read_json(join(run.steps[0]["checkpoint"], "meta.json"), "checkpoint metadata")
    seed = ((meta or {}).get("config") or {}).get("train", {}).get("seed")
    return RunInput(run.steps, run.method, None if seed is None else int(seed), run.info)


def _train_log(uri: str) -> list[dict] | None:
    store = open_store(uri)
    if not store.exists(uri):
        return None
    records = []
    for n, line in enumerate(store.read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DKDError(f"{uri}: line {n} is not JSON ({e})") from e
        if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
            raise DKDError(f"{uri}: line {n} has no integer 'iteration'")
        records.append(record)
    return records


def gather(run: RunInput) -> RunFacts:
    """Read what lies beside each step's checkpoint; a note for each missing piece."""
    facts = RunFacts([])
    for t, metrics in enumerate(run.steps):
        checkpoint = metrics.get("checkpoint")
        step = StepFacts(t, checkpoint)
        facts.steps.append(step)
        if not checkpoint:
            continue
        folder = parent(checkpoint)
        step.meta = _read_json(join(checkpoint, "meta.json"), f"step {t} checkpoint metadata")
        step.provenance = _read_json(join(folder, "provenance.json"), f"step {t} provenance")
        step.train_log = _train_log(join(folder, "train_log.jsonl"))
        samples = join(folder, "eval", "samples")
        index = _read_json(join(samples, "index.json"), f"step {t} samples")
        step.samples = None if index is None else {**index, "folder": samples}
        for what, value in (
            ("checkpoint metadata (meta.json)", step.meta),
            ("training record (provenance.json)", step.provenance),
            ("train log (train_log.jsonl)", step.train_log),
        ):
            if value is None:
                facts.notes.append(f"{run.label}, step {t}: no {what} beside {checkpoint}")
    if not any(s.checkpoint for s in facts.steps):
        facts.notes.append(
            f"{run.label}: step metrics only (no checkpoint URIs): no loss curves, "
            "provenance or qualitative results"
        )
    return facts
