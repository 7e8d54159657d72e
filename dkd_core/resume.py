"""Whether a step is already done, resumes, or starts over; and what a finished step leaves.

Running `train --step N` again is always safe:

- a final checkpoint that verifies (every payload's sha256) and was trained with
  the same result-affecting settings (`config.result_differences`) and, for a
  step t > 0, from the same teacher checkpoint (`teacher_identity`) means the step
  is complete: its leftovers are finished (eval/metrics.json written from the
  checkpoint's metadata if a kill came before it, periodic checkpoints deleted)
  and nothing is trained;
- otherwise the newest complete periodic checkpoint is resumed, if it was
  started with the same settings;
- any difference in settings is an error that lists the keys, old -> new, and
  says what to do: `--restart` (train the step again from scratch, deleting its
  checkpoints, train log, metrics and exemplar memory) or another `run.output`.

A finished step is written in this order, so that every reader stays right
whenever a kill comes: the train log, then the final checkpoint (payloads,
meta.json last), then eval/metrics.json (read by `report`), then the periodic
checkpoints are deleted, then the lease (`lease`) is released.

An interrupted step (Ctrl-C) raises `TrainingInterrupted`, whose message
(`StepProgress.describe`) says the iteration reached, the last periodic
checkpoint and that the same command resumes from it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from dkd_core.checkpoint_format import META_FILE
from dkd_core.config import Config, result_differences
from dkd_core.errors import DKDError
from dkd_core.locations import StepLocations, cache_dir
from dkd_core.storage import (
    ObjectNotFoundError,
    is_remote,
    latest_checkpoint,
    local_path,
    open_store,
    verify_checkpoint,
)

log = logging.getLogger("dkd_core.resume")


@dataclass(frozen=True)
class StepPlan:
    complete: bool  # the final checkpoint exists, verified, with the same settings
    resume_from: str | None = None  # the periodic checkpoint to resume, if any


def check_same_settings(stored: Any, config: Config, uri: str, what: str) -> None:
    """A `DKDError` listing the differing keys when `stored` (a checkpoint's config) and
    `config` differ in anything that changes the result."""
    if not isinstance(stored, dict):
        raise DKDError(f"{uri}: meta.json holds no training config; cannot tell how it was trained")
    differences = result_differences(stored, config, f"{uri}/{META_FILE}")
    if differences:
        raise DKDError(
            f"{what} was trained with other settings ({uri}): {'; '.join(differences)}. "
            "Pass --restart to train the step again with the new settings, or choose "
            "another run.output"
        )


def clear_step(where: StepLocations) -> None:
    """`--restart`: remove everything the step wrote (not the run's split manifest)."""
    store = open_store(where.checkpoint)
    store.delete(f"{where.checkpoint}/{META_FILE}")  # first: no reader sees a half-deleted one
    store.delete_prefix(where.checkpoint)
    store.delete_prefix(where.periodic)
    for uri in (where.metrics, where.train_log, where.memory):
        store.delete(uri)
    log.info("restart: removed the checkpoints, metrics, train log and memory of %s", where.folder)


def finish_leftovers(where: StepLocations, meta: dict[str, Any]) -> None:
    """What a kill after the final checkpoint may have left undone."""
    store = open_store(where.metrics)
    if not store.exists(where.metrics) and isinstance(meta.get("metrics"), dict):
        store.write_json(where.metrics, meta["metrics"])
        log.info("wrote %s from the final checkpoint", where.metrics)
    open_store(where.periodic).delete_prefix(where.periodic)


def remove_temporaries(where: StepLocations) -> None:
    """The temporary files of local writes a kill interrupted (`.<name>.<random>.tmp`).

    Only the lease holder writes under the step folder, so every such file is a
    leftover. S3 writes are single PUTs or multipart uploads: none stay visible.
    """
    if is_remote(where.folder):
        return
    folder = local_path(where.folder)
    if folder.is_dir():
        for leftover in folder.rglob(".*.tmp"):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted write", leftover)


def teacher_identity(teacher_uri: str | None) -> dict[str, str] | None:
    """What a step t > 0 records of its teacher: the URI and the sha256 of its meta.json
    (which holds the sha256 of its weights), or None when there is no teacher (yet)."""
    if teacher_uri is None:
        return None
    meta_uri = f"{teacher_uri.rstrip('/')}/{META_FILE}"
    try:
        data = open_store(meta_uri).read_bytes(meta_uri)
    except ObjectNotFoundError:
        return None
    return {"uri": teacher_uri, "meta_sha256": hashlib.sha256(data).hexdigest()}


def check_same_teacher(stored: Any, teacher_uri: str | None, uri: str, what: str) -> None:
    """A `DKDError` when a step was trained from another checkpoint of the previous step
    (e.g. it was retrained with --restart since)."""
    current = teacher_identity(teacher_uri)
    if not isinstance(stored, dict) or current is None:
        return  # written before teachers were recorded, or no teacher to compare
    if stored.get("meta_sha256") != current["meta_sha256"]:
        raise DKDError(
            f"{what} was trained from another teacher than {teacher_uri} holds now ({uri}: "
            f"teacher meta.json sha256 {stored.get('meta_sha256')}, now "
            f"{current['meta_sha256']}). Pass --restart to train the step again from the "
            "current teacher, or choose another run.output"
        )


def plan_step(
    config: Config,
    step_index: int,
    where: StepLocations,
    restart: bool,
    teacher_uri: str | None = None,
) -> StepPlan:
    """Rank 0's decision for one step (see the module docstring); raises on a mismatch."""
    what = f"step {step_index}"
    remove_temporaries(where)
    if restart:
        clear_step(where)
    if verify_checkpoint(where.checkpoint, cache_dir("verified")):
        meta = open_store(where.checkpoint).read_json(f"{where.checkpoint}/{META_FILE}")
        check_same_settings(meta.get("config"), config, where.checkpoint, what)
        check_same_teacher(meta.get("teacher"), teacher_uri, where.checkpoint, what)
        finish_leftovers(where, meta)
        return StepPlan(complete=True)
    resume = latest_checkpoint(where.periodic)
    if resume is not None:
        meta = open_store(resume).read_json(f"{resume}/{META_FILE}")
        check_same_settings(meta.get("config"), config, resume, f"{what} (interrupted)")
        check_same_teacher(meta.get("teacher"), teacher_uri, resume, f"{what} (interrupted)")
    return StepPlan(complete=False, resume_from=resume)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during a step; the message says where it stopped and how to go on."""


class StepProgress:
    """How far the step in this process got, for the message of an interruption."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.iteration: int | None = None
        self.stop: int | None = None
        self.checkpoint: str | None = None  # the newest periodic checkpoint (resume point)
        self.final: str | None = None  # the final checkpoint, once written

    def describe(self, step_index: int) -> str:
        if self.final is not None:
            return (
                f"step {step_index} interrupted after its final checkpoint {self.final}; "
                "the same command finishes what is left"
            )
        where = f"step {step_index} interrupted"
        if self.iteration is not None:
            where += f" at iteration {self.iteration} of {self.stop}"
        if self.checkpoint is None:
            return f"{where}; no periodic checkpoint yet: the same command starts the step over"
        return f"{where}; last checkpoint {self.checkpoint}: the same command resumes from it"
