"""The pipeline's KFP v2 lightweight components: artifacts in, URIs to dkd_core, artifacts out.

Each body is a few lines around a dkd_core call. KFP embeds only the function
source in the pipeline, so every import is inside the body and the bodies
share no helpers. They run in the dkd image (`make images IMAGE=...`, which has
dkd_core, components/, pipelines/ and kfp installed; the builder sets it with
`components.with_image`), or, under `kfp.local`, in this virtual environment.
A train step maps its parameters to the training job with `pipelines.jobspec`,
the module `python -m pipelines render-job` uses too.

S3: the components that read or write the object store take `s3_endpoint` (a
pipeline parameter) and export it as `S3_ENDPOINT` before touching a URI; an
empty value keeps the environment's (kfp.local on this machine).

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

#: Base image of the components as declared here. Only kfp.local runs use them as they
#: are (in this environment; the image is not pulled); a pipeline for a cluster gets the
#: image it was compiled for (`components.with_image`), never this name.
LOCAL_IMAGE = "dkd:local"


@dsl.component(base_image=LOCAL_IMAGE, install_kfp_package=False)
def split_data(
    config_yaml: str,
    dataset_uri: str,
    overrides: list,
    s3_endpoint: str,
    manifest: Output[Dataset],
    seeds: list = [],  # noqa: B006 - KFP reads the default from the signature
) -> None:
    """Per-step image lists of the run (`dkd_core split`), as the `manifest` Dataset.

    The run's `seeds` are checked here, before any chain trains: seeds typed in
    the KFP UI have not passed the command line's checks.
    """
    import os

    import yaml

    from pipelines.params import seed_list

    if seeds:
        seed_list(seeds, "pipeline parameter seeds={}")
    if s3_endpoint:
        os.environ["S3_ENDPOINT"] = s3_endpoint

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


@dsl.component(base_image=LOCAL_IMAGE, install_kfp_package=False)
def train_step(
    config_yaml: str,
    step: int,
    seed: int,
    dataset_uri: str,
    overrides: list,
    epochs: int,
    launcher: str,
    image: str,
    namespace: str,
    gpus_per_pod: int,
    pods_per_step: int,
    timeout_hours: float,
    s3_endpoint: str,
    s3_secret: str,
    s3_secret_keys: dict,
    image_pull_policy: str,
    cpu_request: str,
    cpu_limit: str,
    memory_request: str,
    memory_limit: str,
    shm_size: str,
    tmp_size: str,
    service_account: str,
    node_selector: dict,
    tolerations: list,
    trainjob_runtime: str,
    delete_after_done: bool,
    run_as_user: int,
    kueue_queue: str,
    queue_timeout_hours: float,
    manifest: Input[Dataset],
    model: Output[Model],
    model_uri: dsl.OutputPath(str),
    teacher_uri: str = "",
    pretrained: str = "",
) -> None:
    """Train one CISS step with `launcher` (local | pytorchjob | trainjob); the job writes `model`.

    The teacher (step t-1's Model) comes as its URI, `teacher_uri` (the previous step's
    `model_uri` output), not as an input artifact: KFP's launcher downloads every input
    artifact into this pod before it starts (kfp 2.17.0
    `backend/src/v2/component/launcher_v2.go` `downloadArtifacts`), about 240 MB of
    checkpoint that only the job's pods read, from the store.

    Overrides, in order (later wins): data.root=<dataset_uri>, optim.epochs=<epochs>
    (0 keeps the config's), model.pretrained=<pretrained> (empty keeps the config's),
    `overrides`, then train.seed=<seed> (this chain's seed:
    model init, data order, augmentation, exemplar choice). The pod parameters become
    the job's `ClusterSpec` in `pipelines.jobspec.cluster_spec`.
    """
    import os

    import yaml

    from dkd_core.config import config_from_dict
    from dkd_core.launch import launch_step
    from dkd_core.storage import join, open_store
    from pipelines import jobspec

    if s3_endpoint:
        os.environ["S3_ENDPOINT"] = s3_endpoint  # for this pod, and forwarded to the job's
    settings = jobspec.step_settings(dataset_uri, epochs, overrides, seed, pretrained)
    config = config_from_dict(yaml.safe_load(config_yaml), settings, "pipeline config")
    # The job writes the checkpoint at model.uri; KFP then uploads this local folder, empty.
    os.makedirs(model.path, exist_ok=True)
    config_uri = jobspec.step_config_uri(model.uri)
    open_store(config_uri).write_text(config_uri, config_yaml)
    job = jobspec.step_job(
        config.run.name, step, config_uri, settings, model.uri, manifest.uri,
        teacher_uri or None, gpus_per_pod, pods_per_step,
    )  # fmt: skip
    params = {
        "namespace": namespace, "image": image, "gpus_per_pod": gpus_per_pod,
        "timeout_hours": timeout_hours, "s3_secret": s3_secret, "s3_secret_keys": s3_secret_keys,
        "image_pull_policy": image_pull_policy, "cpu_request": cpu_request,
        "cpu_limit": cpu_limit, "memory_request": memory_request, "memory_limit": memory_limit,
        "shm_size": shm_size, "tmp_size": tmp_size, "service_account": service_account,
        "node_selector": node_selector, "tolerations": tolerations,
        "trainjob_runtime": trainjob_runtime, "delete_after_done": delete_after_done,
        "run_as_user": run_as_user, "kueue_queue": kueue_queue,
        "queue_timeout_hours": queue_timeout_hours,
    }  # fmt: skip
    if launcher == "local":
        launch_step(
            launcher, job, timeout_seconds=jobspec.launch_options(params)["timeout_seconds"]
        )
    else:
        spec = jobspec.cluster_spec(params)
        launch_step(launcher, job, spec, **jobspec.launch_options(params))
    with open(model_uri, "w") as f:
        f.write(model.uri)
    meta = open_store(model.uri).read_json(join(model.uri, "meta.json"))
    model.metadata["step"] = meta["step"]
    model.metadata["seed"] = meta["config"]["train"]["seed"]
    model.metadata["classes_per_step"] = meta["model"]["classes_per_step"]
    model.metadata["task"] = f"{meta['task']['dataset']}:{meta['task']['name']}"


@dsl.component(base_image=LOCAL_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    manifest: Input[Dataset],
    seed: int,
    s3_endpoint: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    per_class: Output[Markdown],
    history_out: Output[Artifact],
    history_in: Input[Artifact] = None,
    recompute: bool = False,
    samples: int = 6,
) -> None:
    """Test metrics of a step's checkpoint (`dkd_core evaluate`), for the Kubeflow UI.

    The training job already evaluated this checkpoint on this manifest's test
    split (eval/metrics.json beside it); that result is shown unless
    `recompute`. `history_out` is `history_in`'s JSON list of step metrics plus
    this step's: chained from step to step, it gives the report every step of the
    chain of `seed` (each entry names the seed, so the report pairs a collected
    history with its seed by content, not by position).
    The report's qualitative figure needs `samples` fixed test images predicted
    into eval/samples/ beside the checkpoint (`dkd_core.samples`, the same images
    at every step; 0: none). The training job writes them where its data is; only
    when they are missing (or `recompute`) are they predicted here, on CPU, which
    first mirrors the dataset into this pod. The default is
    `dkd_core.samples.DEFAULT_COUNT`.
    """
    import json
    import os

    from dkd_core.evaluate_cli import evaluate_checkpoint
    from dkd_core.locations import parent
    from dkd_core.storage import join, open_store

    if s3_endpoint:
        os.environ["S3_ENDPOINT"] = s3_endpoint
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
    if samples > 0:
        from dkd_core.samples import ensure_samples

        folder = ensure_samples(model.uri, manifest.uri, samples, recompute)
        if folder is not None:
            print(f"{samples} sample predictions in {folder}")
    history = []
    if history_in is not None:
        with open(history_in.path) as f:
            history = json.load(f)
    history.append({"step": len(history), "seed": seed, "checkpoint": model.uri, **result})
    with open(history_out.path, "w") as f:
        json.dump(history, f)


@dsl.component(base_image=LOCAL_IMAGE, install_kfp_package=False)
def report(
    histories: Input[list[Artifact]],
    seeds: list,
    title: str,
    s3_endpoint: str,
    markdown: Output[Markdown],
    html: Output[HTML],
    plots: Output[Artifact],
    history: Output[Artifact],
) -> None:
    """The run report (`dkd_core report`) over every seed's chain: markdown, HTML with the
    plots embedded, PNGs, and `history`, the JSON {seed: that chain's step metrics}.

    `histories` are the evaluate histories gathered from the seeds' chains
    (`dsl.Collected`); each is matched to its seed by the seed its entries name, and the
    runs are reported in the order of `seeds`: per step mean ± sample std over the seeds
    and each seed's values (`dkd_core.report`). The entries' `checkpoint` URIs may be
    read for files beside them, hence `s3_endpoint` and the components' S3 keys.
    """
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from dkd_core.errors import DKDError
    from dkd_core.report import RunInput, build_report
    from pipelines.params import seed_list

    if s3_endpoint:
        os.environ["S3_ENDPOINT"] = s3_endpoint
    seeds = seed_list(seeds, "pipeline parameter seeds={}")
    by_seed = {}
    for artifact in histories:
        with open(artifact.path) as f:
            steps = json.load(f)
        named = {entry.get("seed") for entry in steps}
        if len(named) != 1 or None in named:
            raise DKDError(f"history {artifact.uri}: expected one seed in its entries, got {named}")
        (seed,) = named
        if seed in by_seed:
            raise DKDError(f"two histories for seed {seed}: {artifact.uri} (seeds {seeds})")
        by_seed[seed] = steps
    if sorted(by_seed) != sorted(seeds):
        raise DKDError(f"histories of seeds {sorted(by_seed)}, expected the seeds {seeds}")
    runs = [RunInput(by_seed[seed], seed=seed) for seed in seeds]
    with open(history.path, "w") as f:
        json.dump({str(seed): by_seed[seed] for seed in seeds}, f)
    with tempfile.TemporaryDirectory() as tmp:
        files = build_report(runs, Path(tmp), title)
        shutil.copyfile(files.markdown, markdown.path)
        shutil.copyfile(files.html, html.path)
        os.makedirs(plots.path, exist_ok=True)
        for path in (*files.figures, files.summary):
            shutil.copy(path, plots.path)


@dsl.component(base_image=LOCAL_IMAGE, install_kfp_package=False)
def prepare_dataset(dataset: str, dataset_uri: str, mirror: str, s3_endpoint: str) -> None:
    """`dkd_core data fetch DATASET DATASET_URI` in this pod: the official archives (or
    `mirror`'s) are downloaded, verified, laid out and pushed straight into the object
    store, so they never cross a laptop or a port-forward."""
    import os

    if s3_endpoint:
        os.environ["S3_ENDPOINT"] = s3_endpoint

    from dkd_core.prepare.fetch import fetch_dataset

    summary = fetch_dataset(dataset, dataset_uri, mirror=mirror or None, progress=False)
    print(", ".join(f"{k}: {v}" for k, v in summary.items()))


ALL = (split_data, train_step, evaluate, report, prepare_dataset)
