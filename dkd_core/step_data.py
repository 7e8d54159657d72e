"""The data one CISS step reads: dataset (synced from S3 once), split manifest, exemplar memory.

`step_data` turns a config and a step into train and test datasets, through
the run's split manifest (built once by one process, cached at its URI, and
kept as is when imported from the authors' lists). `exemplar_memory` adds the
DKD-M replay images of docs/method.md §2 (see `memory`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from dkd_core import distributed
from dkd_core.config import Config
from dkd_core.data import EvalTransform, SegmentationDataset, TrainTransform, open_layout
from dkd_core.data.layout import DatasetLayout, Sample
from dkd_core.data.splits import (
    build_or_load_manifest,
    manifest_from_reference_npy,
    manifest_step,
    read_manifest,
    write_manifest,
)
from dkd_core.errors import DKDError
from dkd_core.locations import StepLocations, cache_dir, memory_beside, run_manifest_uri
from dkd_core.memory import (
    check_labeller_choice,
    ground_truth_label_sets,
    memory_labeller,
    pseudo_label_sets,
    select,
)
from dkd_core.progress import bars_wanted
from dkd_core.storage import is_remote, local_path, open_store, sync_dataset
from dkd_core.tasks import Task, TaskStep, get_task

log = logging.getLogger("dkd_core.step_data")


def task_of(config: Config) -> Task:
    c = config.task
    return get_task(c.dataset, c.name, c.setting, num_classes=c.num_classes)


def dataset_layout(config: Config, info: distributed.DistInfo | None = None) -> DatasetLayout:
    """The dataset as a local folder: an s3:// root is mirrored into the cache once per node
    (a torchrun node: on a cluster each pod, whose /tmp cache starts empty)."""
    root = config.data.root
    if is_remote(root):
        first = info is None or info.local_rank == 0
        if first:  # one download per node; the node's other processes then find it done
            local = sync_dataset(
                root, cache_dir("datasets"), progress=bars_wanted(config.train.progress)
            )
        distributed.barrier()
        if not first:
            local = sync_dataset(root, cache_dir("datasets"), progress=False)
        root = str(local)
    return open_layout(root, config.data.format)


@dataclass
class StepData:
    """What one step reads: its train and test sets and where they came from."""

    train: SegmentationDataset
    test: SegmentationDataset
    channel_names: list[str]  # class name of each output channel
    manifest: dict
    train_samples: dict[str, Sample]  # every train image of the dataset, by id


def train_dataset(config: Config, step: TaskStep, samples: list[Sample]) -> SegmentationDataset:
    return SegmentationDataset(
        samples,
        step.label_lut(step.new_labels, fill=0),  # docs/method.md §2: only C_t stays
        TrainTransform(config.data.crop_size),
        seed=config.train.seed,  # the augmentation stream of this run's seed
        allowed_labels=range(task_of(config).num_classes + 1),
    )


def step_data(
    config: Config,
    step: TaskStep,
    manifest_uri: str,
    info: distributed.DistInfo,
    read_only: bool = False,
) -> StepData:
    """Train and test sets of one step, from the run's (cached) split manifest.

    With `read_only` (evaluation) the run's manifest is used when it matches the
    data, and otherwise a manifest is built in the local cache: the run's stays as
    it is, since its steps were trained on it.
    """
    layout = dataset_layout(config, info)
    task = task_of(config)
    if layout.num_classes != task.num_classes:
        raise DKDError(
            f"dataset {config.data.root} has {layout.num_classes} classes, task "
            f"{task.dataset}:{task.name} expects {task.num_classes} (task.num_classes)"
        )
    train_samples = {s.id: s for s in layout.samples("train")}
    val_samples = {s.id: s for s in layout.samples("val")}
    for split, samples in (("train", train_samples), ("val", val_samples)):
        if not samples:
            raise DKDError(
                f"{_list_source(layout, split)} lists no images: the {split} split is empty"
            )
    manifest = None
    if info.is_main:  # one process reads the label PNGs, the others wait and read the result
        manifest = run_manifest(
            config, task, list(train_samples.values()), list(val_samples.values()), manifest_uri,
            read_only=read_only,
        )  # fmt: skip
    manifest = distributed.broadcast_object(manifest)
    split = manifest_step(manifest, step.index)
    # An empty set would train nothing, or report an mIoU of 0 as if measured (docs/method.md §2).
    for split_name, ids, rule in (
        ("train", split.train, f"holds a pixel of the step's new labels {list(step.new_labels)}"),
        ("val", split.test, f"holds any label seen so far {list(step.seen_labels)}"),
    ):
        if not ids:
            raise DKDError(
                f"step {step.index} has no {'test' if split_name == 'val' else 'train'} images: "
                f"no image of {_list_source(layout, split_name)} {rule} (split manifest "
                f"{manifest_uri}); check the list and its labels"
            )
    test = SegmentationDataset(
        [val_samples[i] for i in split.test],
        step.label_lut(step.seen_labels, fill=layout.unseen_test_label),
        EvalTransform(config.data.crop_size, whole_image=config.data.whole_image_eval),
        # Not the run's train.seed: evaluation draws nothing at random (EvalTransform
        # ignores its generator), and a fixed seed says so. Every seed of a run is
        # tested on the same images of the shared split manifest, prepared the same way.
        seed=0,
        allowed_labels=range(task.num_classes + 1),
    )
    return StepData(
        train=train_dataset(config, step, [train_samples[i] for i in split.train]),
        test=test,
        channel_names=[layout.class_names[label] for label in step.channel_to_label],
        manifest=manifest,
        train_samples=train_samples,
    )


def _list_source(layout: DatasetLayout, split: str) -> Path:
    """The list file of `split` (or its image folder, for datasets without lists)."""
    files = layout.split_files(split)
    return files.list_file or files.image_dir


def _local_copy(uri: str) -> Path:
    """A local path for the file at `uri`: the path itself, or a cache file for s3://."""
    if not is_remote(uri):
        return local_path(uri)
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return cache_dir("manifests", digest) / Path(uri).name


def run_manifest(
    config: Config,
    task: Task,
    train: list[Sample],
    val: list[Sample],
    manifest_uri: str,
    read_only: bool = False,
) -> dict:
    """The run's split manifest: an imported one (authors' lists) as is, else built or cached.

    `train` and `val` are the dataset's samples (`DatasetLayout.samples`), listed once.
    With `read_only` a manifest that must be rebuilt (other data) goes to the local
    cache, never to `manifest_uri`.
    """
    store = open_store(manifest_uri)
    local = _local_copy(manifest_uri)
    if read_only:
        key = f"{manifest_uri} {config.data.root}".encode()
        private = cache_dir("manifests", "evaluate", hashlib.sha256(key).hexdigest()[:16])
        private_copy = private / "manifest.json"
        if store.exists(manifest_uri):
            store.download_file(manifest_uri, private_copy, progress=False)
        local = private_copy
    elif is_remote(manifest_uri) and store.exists(manifest_uri):
        store.download_file(manifest_uri, local, progress=False)
    if local.is_file():
        existing = read_manifest(local)
        imported = existing["inputs"].get("source") == "reference-npy"
        if imported and existing["task"]["steps"] == [list(s) for s in task.steps]:
            return existing
    manifest = build_or_load_manifest(
        task,
        [s.id for s in train],
        [s.label for s in train],
        [s.id for s in val],
        [s.label for s in val],
        num_workers=config.data.split_workers,
        progress=bars_wanted(config.train.progress),
        cache_path=local,
        train_image_paths=[s.image for s in train],
        val_image_paths=[s.image for s in val],
    )
    if is_remote(manifest_uri) and not read_only:
        store.upload_file(local, manifest_uri)
    return manifest


def write_split_manifest(
    config: Config, reference_npy: str | None = None, manifest_uri: str | None = None
) -> tuple[str, dict]:
    """`split` command: build (or load) the run's manifest, or import the authors' .npy lists."""
    manifest_uri = manifest_uri or run_manifest_uri(config.run.output)
    task = task_of(config)
    if reference_npy:
        manifest = manifest_from_reference_npy(task, Path(reference_npy))
        local = _local_copy(manifest_uri)
        write_manifest(manifest, local)
        if is_remote(manifest_uri):
            open_store(manifest_uri).upload_file(local, manifest_uri)
        return manifest_uri, manifest
    layout = dataset_layout(config)
    train, val = layout.samples("train"), layout.samples("val")
    return manifest_uri, run_manifest(config, task, train, val, manifest_uri)


def exemplar_memory(
    config: Config,
    step: TaskStep,
    locations: StepLocations,
    teacher_uri: str,
    data: StepData,
    teacher,
    info: distributed.DistInfo,
    pretrained: str | None = None,
) -> list[str]:
    """DKD-M: ids of the old-step images replayed at this step (docs/method.md §2; see `memory`).

    The choice is written to the step's memory.json, reused on resume and read
    by the next step (beside its teacher checkpoint).
    """
    check_labeller_choice(config.data.memory_pseudo_labels)  # at step 1 already, not at step 2
    store = open_store(locations.memory)
    if store.exists(locations.memory):  # chosen before an interruption: the same images again
        return store.read_json(locations.memory)["memory"]
    previous = task_of(config).step(step.index - 1)
    previous_train = [
        data.train_samples[i] for i in manifest_step(data.manifest, previous.index).train
    ]
    if step.index == 1:
        label_sets = ground_truth_label_sets(previous_train, previous.new_labels)
    else:
        labeller = memory_labeller(
            config.data.memory_pseudo_labels, teacher, pretrained, config.train.seed
        )
        label_sets = pseudo_label_sets(
            labeller, previous_train, previous, config.data.crop_size, info
        )
        previous_memory_uri = memory_beside(teacher_uri)
        if not open_store(previous_memory_uri).exists(previous_memory_uri):
            raise DKDError(
                f"{previous_memory_uri} does not exist: step {step.index} with exemplar memory "
                f"needs step {previous.index}'s memory (train it with the same data.memory_size)"
            )
        for image_id, labels in (
            open_store(previous_memory_uri).read_json(previous_memory_uri)["label_sets"].items()
        ):
            label_sets[image_id] = label_sets.get(image_id, set()) | set(labels)
    chosen = select(label_sets, step.old_labels, config.data.memory_size, config.train.seed)
    if info.is_main:
        store.write_json(
            locations.memory,
            {
                "step": step.index,
                "memory": sorted(chosen),
                "label_sets": {i: sorted(label_sets[i]) for i in sorted(chosen)},
            },
        )
        log.info("exemplar memory of step %d: %d images", step.index, len(chosen))
    distributed.barrier()
    return chosen
