"""Where a step's files live: URIs (s3://, minio:// or local paths) and the local cache.

By default a run lives under `run.output`:

    split/manifest.json            per-step image lists
    step_<t>/checkpoint/           the step's final model (meta.json written last)
    step_<t>/periodic/iter_<N>/    periodic checkpoints with training state
    step_<t>/eval/metrics.json     test metrics after the step (docs/method.md §7)
    step_<t>/train_log.jsonl       loss terms per logged iteration
    step_<t>/memory.json           DKD-M exemplars of the step
    step_<t>/provenance.json       when, where and with which code it was trained
    step_<t>/eval/samples/         predictions of a fixed set of test images (`samples`)

A pipeline instead names the checkpoint URI of each step (its Model artifact)
and the manifest URI; everything else of the step sits beside the checkpoint,
in the checkpoint's parent folder, so the same rules hold for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dkd_core.storage import join

CACHE_ENV = "DKD_CACHE"


def cache_dir(*parts: str) -> Path:
    """Local cache for downloaded datasets and checkpoints (`$DKD_CACHE`, else ~/.cache/dkd)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dkd")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def parent(uri: str) -> str:
    """The folder holding `uri` (one level up), for s3:// URIs and paths alike."""
    head, sep, _ = str(uri).rstrip("/").rpartition("/")
    if not sep or head.endswith(":/"):
        raise ValueError(f"{uri!r} has no parent folder")
    return head


@dataclass(frozen=True)
class StepLocations:
    checkpoint: str  # the step's final checkpoint folder
    manifest: str  # the run's split manifest

    @classmethod
    def of_run(cls, run_output: str, step: int) -> StepLocations:
        return cls(
            checkpoint=join(str(run_output), f"step_{step}", "checkpoint"),
            manifest=run_manifest_uri(run_output),
        )

    @property
    def folder(self) -> str:
        return parent(self.checkpoint)

    @property
    def periodic(self) -> str:
        return join(self.folder, "periodic")

    @property
    def metrics(self) -> str:
        return join(self.folder, "eval", "metrics.json")

    @property
    def train_log(self) -> str:
        return join(self.folder, "train_log.jsonl")

    @property
    def memory(self) -> str:
        return join(self.folder, "memory.json")

    @property
    def provenance(self) -> str:
        return join(self.folder, "provenance.json")

    @property
    def samples(self) -> str:
        return join(self.folder, "eval", "samples")


def run_manifest_uri(run_output: str) -> str:
    return join(str(run_output), "split", "manifest.json")


def memory_beside(checkpoint: str) -> str:
    """The memory.json of the step whose final checkpoint is `checkpoint`."""
    return join(parent(checkpoint), "memory.json")
