"""The pipeline's KFP v2 lightweight components: artifacts in, URIs to dkd_core, artifacts out.

Each body is a few lines around a dkd_core call. KFP embeds only the function
source in the pipeline, so every import is inside the body and the bodies
share no helpers. They run in the dkd image (`IMAGE`, which has dkd_core and
kfp installed), or, under `kfp.local`, in this virtual environment.

Locations: a step's checkpoint is its `Model` artifact, written directly by the
training job at `model.uri`; everything else of the step (config.yaml,
train_log.jsonl, eval/metrics.json, periodic/, memory.json) sits beside it, in
the artifact's parent folder (`dkd_core.locations`).
"""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

#: Default image of the component pods (and of the training jobs' pods).
IMAGE = "ghcr.io/dkd-k8s/dkd:0.1.0"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def split_data(
    config_yaml: str, dataset_uri: str, overrides: list, manifest: Output[Dataset]
) -> None:
    """Per-step image lists of the run (`dkd_core split`), as the `manifest` Dataset."""
    import yaml

    from dkd_core.config import config_from_dict
    from dkd_core.step_data import write_split_manifest

    config = config_from_dict(
        yaml.safe_load(config_yaml), [f"data.root={dataset_uri}", *overrides], "pipeline config"
    )
    _, content = write_split_manifest(config, manifest_uri=manifest.path)
    counts = [
        {"step": s["step"], "train": len(s["train"]), "test": len(s["test"])}
        for s in content["steps"]
    ]
    for c in counts:
        print(f"step {c['step']}: {c['train']} train images, {c['test']} test images")
    manifest.metadata["steps"] = counts


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_step(
    config_yaml: str,
    step: int,
    dataset_uri: str,
    overrides: list,
    epochs: int,
    launcher: str,
    image: str,
    namespace: str,
    gpus_per_pod: int,
    pods_per_step: int,
    timeout_hours: float,
    s3_secret: str,
    s3_secret_keys: dict,
    manifest: Input[Dataset],
    model: Output[Model],
    teacher: Input[Model] = None,
) -> None:
    """Train one CISS step with `launcher` (local | pytorchjob | trainjob); the job writes `model`.

    Overrides, in order (later wins): data.root=<dataset_uri>, optim.epochs=<epochs>
    (0 keeps the config's), then `overrides`.
    """
    import hashlib
    import os

    import yaml

    from dkd_core.config import config_from_dict
    from dkd_core.launch import ClusterSpec, StepJob, job_name, launch_step
    from dkd_core.locations import parent
    from dkd_core.storage import join, open_store

    settings = [f"data.root={dataset_uri}", *([f"optim.epochs={epochs}"] if epochs else [])]
    settings += overrides
    config = config_from_dict(yaml.safe_load(config_yaml), settings, "pipeline config")
    # The job writes the checkpoint at model.uri; KFP then uploads this local folder, empty.
    os.makedirs(model.path, exist_ok=True)
    config_uri = join(parent(model.uri), "config.yaml")
    open_store(config_uri).write_text(config_uri, config_yaml)
    job = StepJob(
        name=job_name(config.run.name, step, hashlib.sha256(model.uri.encode()).hexdigest()[:6]),
        config_uri=config_uri,
        step=step,
        overrides=settings,
        teacher=teacher.uri if teacher is not None else None,
        nproc_per_node=max(gpus_per_pod, 1),
        nodes=pods_per_step,
        checkpoint_out=model.uri,
        manifest=manifest.uri,
    )
    if launcher == "local":
        launch_step(launcher, job, timeout_seconds=timeout_hours * 3600)
    else:
        forwarded = ("S3_ENDPOINT", "S3_SECURE", "S3_REGION", "AWS_REGION", "S3_RETRY_SECONDS",
                     "PUSHGATEWAY_URL")  # fmt: skip
        spec = ClusterSpec(
            namespace=namespace,
            image=image,
            gpus_per_pod=gpus_per_pod,
            s3_secret=s3_secret or None,
            s3_secret_env={env: key for key, env in s3_secret_keys.items()} if s3_secret else {},
            env=[(k, os.environ[k]) for k in forwarded if os.environ.get(k)],
        )
        launch_step(launcher, job, spec, timeout_seconds=timeout_hours * 3600)
    meta = open_store(model.uri).read_json(join(model.uri, "meta.json"))
    model.metadata["step"] = meta["step"]
    model.metadata["classes_per_step"] = meta["model"]["classes_per_step"]
    model.metadata["task"] = f"{meta['task']['dataset']}:{meta['task']['name']}"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    manifest: Input[Dataset],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    per_class: Output[Markdown],
    history_out: Output[Artifact],
    history_in: Input[Artifact] = None,
    recompute: bool = False,
) -> None:
    """Test metrics of a step's checkpoint (`dkd_core evaluate`), for the Kubeflow UI.

    The training job already evaluated this checkpoint on this manifest's test
    split (eval/metrics.json beside it); that result is shown unless
    `recompute`. `history_out` is `history_in`'s JSON list of step metrics plus
    this step's: chained from step to step, it gives the report every step.
    """
    import json

    from dkd_core.evaluate_cli import evaluate_checkpoint
    from dkd_core.locations import parent
    from dkd_core.storage import join, open_store

    output = join(parent(model.uri), "eval", "metrics.json")
    store = open_store(output)
    if not recompute and store.exists(output):
        result = store.read_json(output)
    else:
        report, _, names = evaluate_checkpoint(model.uri, [], False, output, manifest.uri)
        result = {**report.to_dict(), "channel_names": names}
    names = result["channel_names"]
    for key in ("miou_old", "miou_new", "miou_all", "hiou", "pixel_accuracy"):
        if result[key] is not None:
            metrics.log_metric(key, result[key])
    classification.log_confusion_matrix(names, result["confusion"])
    new = set(result["new_channels"])
    rows = "".join(
        f"| {name}{' *' if c in new else ''} | {iou:.2f} |\n"
        for c, (name, iou) in enumerate(zip(names, result["iou"], strict=True))
    )
    with open(per_class.path, "w") as f:
        f.write(f"IoU (%) per class (* = added after step 0)\n\n| class | IoU |\n|---|---|\n{rows}")
    history = []
    if history_in is not None:
        with open(history_in.path) as f:
            history = json.load(f)
    history.append({"step": len(history), "checkpoint": model.uri, **result})
    with open(history_out.path, "w") as f:
        json.dump(history, f)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(
    history: Input[Artifact],
    title: str,
    markdown: Output[Markdown],
    html: Output[HTML],
    plots: Output[Artifact],
) -> None:
    """The run report (`dkd_core report`): markdown, HTML with the plots embedded, PNGs."""
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from dkd_core.report import build_report

    with open(history.path) as f:
        steps = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        files = build_report(steps, Path(tmp), title)
        shutil.copyfile(files.markdown, markdown.path)
        shutil.copyfile(files.html, html.path)
        os.makedirs(plots.path, exist_ok=True)
        for path in (files.steps_plot, files.classes_plot, files.summary):
            shutil.copy(path, plots.path)


ALL = (split_data, train_step, evaluate, report)
