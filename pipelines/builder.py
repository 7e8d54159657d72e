"""Benchmark YAML -> KFP pipeline: split -> per seed (train t -> evaluate t per step) -> report.

`build_pipeline(config_path, ...)` validates the config first (a malformed one is
a `DKDError` before anything is compiled), then returns the `@dsl.pipeline`
function. The resolved config is embedded as a constant; the number of steps
comes from the config's task. Train step t+1 takes train step t's Model as its
teacher, by URI (its `model_uri` output: an input artifact would be downloaded into
the component pod, though only the job reads it); evaluate t+1 takes evaluate t's
history, so the report gets every step's metrics. Evaluate t and train t+1 depend on nothing of each other and
may run side by side.

Seeds: the run-time parameter `seeds` (a list, default `[train.seed]` of the
config, or `--seeds` at compile time) fans the chain of steps out with
`dsl.ParallelFor`, one chain per seed, each training with `train.seed=<seed>`.
The split runs once, before the loop, and every chain reads its manifest (the
split does not depend on the seed). The report gathers the chains' last
histories with `dsl.Collected` and aggregates them per step (mean ± sample std).
A run-time parameter, not a loop unrolled at compile time, so that one compiled
pipeline serves any seeds, they show in the KFP UI, and a resubmitted run with
more seeds reuses the cached chains of the seeds it shares with an earlier run:
a task's cache key holds its input values (the seed, not the loop index), the
names of its input artifacts, its outputs' names and types and its image and
command (kfp backend `src/v2/driver/cache.go` `getFingerPrint`,
`src/v2/cacheutils/cache.go` `GenerateCacheKey`), so seed 2's step t keys the
same in a run over [1, 2] and in one over [1, 2, 3]. Each iteration's tasks get
their own output URIs (`src/v2/driver/driver.go` `provisionOutputs`: the task's
name and a fresh UUID per execution; kfp.local: a folder per iteration), so two
seeds never share a checkpoint folder, a job name (a hash of the Model's URI) or
a lease.

Run-time settings are pipeline parameters, shown in the KFP UI: the dataset
(required), the ImageNet weights (`pretrained`, default the config's
`model.pretrained`; an air-gapped cluster names a copy in its own S3), the S3 endpoint, the jobs' image, namespace and pods
(`pipelines.jobspec.POD_DEFAULTS`). Compile-time: the launcher, the image the
components run on (also the default of `image`) and the Secrets with S3 keys.
What a cluster needs (S3 Secrets in the component pods, GPUs for a step that
trains in its own pod, retries) is set only when `cluster=True`; `kfp.local`
runs use `cluster=False`.

Caching is on for every task. It is safe for train steps: KFP records a task
in its cache, and registers its Model, only after the executor succeeded
(kfp backend `src/v2/component/launcher_v2.go`: the cache entry is created
after `executeV2` returns without error), so a resubmitted run reuses the
steps that finished and trains the rest. A retry of a failed task (its retry
policy, or Retry in the UI) re-runs the executor with the same output URIs, so
the step's job resumes from the newest periodic checkpoint beside its Model.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
import ast
import copy
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown

from components import LOCAL_IMAGE, with_image
from dkd_core.config import Config, config_to_dict, load_config
from dkd_core.errors import DKDError
from dkd_core.launch import LAUNCHERS
from dkd_core.tasks import Task, get_task
from dkd_core.weights import is_local_reference
from pipelines.jobspec import (
    DEFAULT_JOB_S3_KEYS,
    DEFAULT_S3_ENDPOINT,
    DEFAULT_S3_KEYS,
    DEFAULT_S3_SECRET,
    POD_DEFAULTS,
    QUEUE_TIMEOUT_SAME,
    RUN_ID_ENV,
    step_settings,
)
from pipelines.params import seed_list

CONFIGS = Path(__file__).parent / "configs"
GPU = "nvidia.com/gpu"
#: Pod label the KFP API server puts on every pod of a run, with the run's id.
KFP_RUN_ID_LABEL = "pipeline/runid"
TRAIN_RETRIES = 2
TRAIN_RETRY_BACKOFF = "60s"
NO_IMAGE = (
    "no image for the cluster: pass --image REGISTRY/dkd:TAG (make compile|submit IMAGE=...), "
    "an image built and pushed with `make images push IMAGE=REGISTRY/dkd:TAG`"
)


class PipelineOutputs(NamedTuple):
    """What a run leaves as the pipeline's outputs: the report and every step's metrics."""

    report: HTML  # report.html, plots embedded
    markdown: Markdown  # report.md
    plots: Artifact  # folder: miou_steps.png, per_class_iou.png, summary.json
    history: Artifact  # JSON {seed: list of each step's test metrics}, in the order of seeds


def available_configs() -> list[str]:
    """Names of the benchmark configs under pipelines/configs/ (e.g. 'voc_15-1')."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def config_path(name: str) -> Path:
    """The config of benchmark `name` (or `name` itself when it is a YAML file)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise DKDError(
            f"unknown pipeline {name!r}: available configs are {', '.join(available_configs())} "
            f"(files in {CONFIGS}), or give a path to a YAML file"
        )
    return path


def pipeline_name(config: Config) -> str:
    """`dkd-<run.name>` as KFP accepts it: lowercase letters, digits and '-'."""
    return "dkd-" + (re.sub(r"[^a-z0-9]+", "-", config.run.name.lower()).strip("-") or "run")


def _task(config: Config) -> Task:
    c = config.task
    return get_task(c.dataset, c.name, c.setting, num_classes=c.num_classes)


def job_s3_access(
    s3_secret: str = DEFAULT_S3_SECRET,
    s3_secret_keys: Mapping[str, str] | None = None,
    job_s3_secret: str | None = None,
    job_s3_secret_keys: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """(Secret, Secret key -> env) of the training jobs' pods: `job_s3_secret` with its own
    mapping (default `DEFAULT_JOB_S3_KEYS`), or the components' Secret with theirs."""
    if job_s3_secret is None:
        secret = s3_secret
        keys = dict(DEFAULT_S3_KEYS if s3_secret_keys is None else s3_secret_keys)
    else:
        secret, keys = job_s3_secret, dict(DEFAULT_JOB_S3_KEYS)
    if job_s3_secret_keys is not None:
        keys = dict(job_s3_secret_keys)
    return secret, keys


def run_seeds(
    config_file: str | Path, arguments: Mapping[str, Any], cluster: bool = False
) -> list[int]:
    """The seeds a run with pipeline `arguments` trains: its `seeds`, else the config's
    train.seed (the parameter's default), each checked with the run's overrides as a
    train step applies them (`jobspec.step_settings`); a typo in an override, a bad or
    repeated seed, or an override of train.seed is a `DKDError` here, not in a task.
    `cluster`: the weights the steps read must be readable in a pod (not a local path)."""
    overrides = list(arguments.get("overrides", []))
    pretrained = str(arguments.get("pretrained", "") or "")
    config = load_config(config_file, overrides)
    seeds = seed_list(arguments.get("seeds", [config.train.seed]), "--param seeds={}")
    for seed in seeds:  # the settings of a train step of that seed
        settings = step_settings(config.data.root, 0, overrides, seed, pretrained)
        step_config = load_config(config_file, settings)
        if cluster:
            check_pod_weights(step_config.model.pretrained, "pretrained")
    return seeds


def check_pod_weights(reference: str | None, where: str) -> None:
    """A one-line `DKDError` when the weight file `reference` is a local path, which the
    pods of a cluster cannot read; it says what to pass instead."""
    if reference is None or not is_local_reference(reference):
        return
    raise DKDError(
        f"{where}={reference}: a file on this machine, which the training pods cannot read; "
        "use torchvision:resnet101 (downloaded by the pods), an https:// URL or an s3:// URI "
        "instead, as the run parameter pretrained (--param pretrained=...) or the config's "
        "model.pretrained (copy the file there with `python -m dkd_core fetch weights "
        f"{reference} --dest s3://mlpipeline/shared/weights/`)"
    )


def build_pipeline(
    config_path: str | Path,
    launcher: str = "pytorchjob",
    image: str | None = None,
    gpus_per_pod: int = 1,
    s3_secret: str = DEFAULT_S3_SECRET,
    s3_endpoint: str = DEFAULT_S3_ENDPOINT,
    s3_secret_keys: Mapping[str, str] | None = None,
    job_s3_secret: str | None = None,
    job_s3_secret_keys: Mapping[str, str] | None = None,
    cluster: bool = True,
    seeds: Sequence[int] | str | None = None,
    parallel_seeds: int = 0,
) -> Callable:
    """The pipeline function of the benchmark config at `config_path`.

    - `launcher`: how train_step runs a step (`local`: torchrun in the component's
      own pod; `pytorchjob`/`trainjob`: a Kubeflow job it creates and watches).
    - `image`: the components' base image and the default of the `image`
      parameter (the jobs' image). Required for a cluster; kfp.local runs the
      components in this environment.
    - `gpus_per_pod`: default of the `gpus_per_pod` parameter (processes per pod
      = GPUs; 0: CPU).
    - `s3_secret` with `s3_secret_keys` (Secret key -> env name): S3 keys of the
      component pods. The training jobs' pods get `job_s3_secret` (default
      `s3_secret`) with `job_s3_secret_keys` (default: the component's mapping
      for the same Secret, `DEFAULT_JOB_S3_KEYS` for another one).
    - `s3_endpoint`: default of the `s3_endpoint` parameter.
    - `cluster=False` leaves out every Kubernetes setting (for `kfp.local`).
    - `seeds`: default of the `seeds` parameter (default: `[train.seed]` of the config).
    - `parallel_seeds`: how many seeds' chains run at once (0: all). KFP takes a
      ParallelFor's parallelism when compiling only. On a cluster the chains' jobs ask
      for GPUs together, and a pod that stays Unschedulable fails its step after the
      `queue_timeout_hours` parameter: limit it to what the GPUs hold, or queue the jobs
      (`kueue_queue`).
    """
    if launcher not in LAUNCHERS:
        raise DKDError(f"launcher {launcher!r}: expected one of {', '.join(sorted(LAUNCHERS))}")
    if not isinstance(gpus_per_pod, int) or isinstance(gpus_per_pod, bool) or gpus_per_pod < 0:
        raise DKDError(f"gpus_per_pod must be an integer >= 0, got {gpus_per_pod!r}")
    if (
        not isinstance(parallel_seeds, int)
        or isinstance(parallel_seeds, bool)
        or parallel_seeds < 0
    ):
        raise DKDError(
            f"--parallel-seeds {parallel_seeds!r}: expected an integer >= 0 (0: every seed at once)"
        )
    if image is None or (isinstance(image, str) and not image.strip()):
        if cluster:
            raise DKDError(NO_IMAGE)
        image = LOCAL_IMAGE
    if not isinstance(image, str) or any(c.isspace() for c in image):
        raise DKDError(f"image {image!r} is not an image reference (REGISTRY/NAME:TAG)")
    config = load_config(config_path)
    if cluster:  # a local path is never compiled in: it means nothing in a pod
        check_pod_weights(config.model.pretrained, f"{config_path}: model.pretrained")
    default_pretrained = config.model.pretrained or ""
    default_seeds = seed_list([config.train.seed] if seeds is None else seeds)
    task = _task(config)
    config_yaml = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    keys = dict(DEFAULT_S3_KEYS if s3_secret_keys is None else s3_secret_keys)
    job_secret, job_keys = job_s3_access(s3_secret, keys, job_s3_secret, job_s3_secret_keys)
    c = with_image(image)
    default_image, default_gpus, default_endpoint = image, gpus_per_pod, s3_endpoint
    pod = copy.deepcopy(POD_DEFAULTS)  # KFP may reorder a default dict in place: a copy per build

    def on_cluster(t: dsl.PipelineTask, name: str, s3: bool = True) -> None:
        """Display name and S3 keys; nothing of it has an effect under kfp.local (which would
        warn about it)."""
        if not cluster:
            return
        from kfp import kubernetes

        t.set_display_name(name)
        if s3 and s3_secret:
            kubernetes.use_secret_as_env(t, secret_name=s3_secret, secret_key_to_env=keys)

    def on_cluster_train(train: dsl.PipelineTask, t: int, gpus: Any) -> None:
        """A train step's cluster settings: its run id, retries and, trained in its own pod,
        `gpus` (the run's gpus_per_pod parameter) and /dev/shm."""
        on_cluster(train, f"train step {t}")  # one per seed: the loop iteration tells which
        if not cluster:
            return
        from kfp import kubernetes

        # The run id labels the job (orphans can be found); an env var from the
        # pod's label, not an input, so it stays out of the cache key.
        kubernetes.use_field_path_as_env(
            train, RUN_ID_ENV, f"metadata.labels['{KFP_RUN_ID_LABEL}']"
        )
        train.set_retry(num_retries=TRAIN_RETRIES, backoff_duration=TRAIN_RETRY_BACKOFF)
        if launcher == "local":  # the step trains in this task's own pod
            # data-loader workers share tensors through /dev/shm (64 MiB by default)
            kubernetes.empty_dir_mount(
                train, volume_name="dshm", mount_path="/dev/shm", medium="Memory"
            )
            train.set_accelerator_type(GPU).set_accelerator_limit(gpus)

    @dsl.pipeline(
        name=pipeline_name(config),
        description=f"DKD class-incremental segmentation, {task.dataset} {task.name} "
        f"({task.setting}, {task.num_steps} steps), launcher {launcher}",
    )
    def pipeline(
        dataset_uri: str,
        s3_endpoint: str = default_endpoint,
        image: str = default_image,
        namespace: str = "",
        gpus_per_pod: int = default_gpus,
        pods_per_step: int = 1,
        epochs: int = config.optim.epochs,
        seeds: list = default_seeds,
        overrides: list = [],  # noqa: B006 - KFP reads the default from the signature
        timeout_hours: float = 48.0,
        delete_after_done: bool = pod["delete_after_done"],
        image_pull_policy: str = pod["image_pull_policy"],
        cpu_request: str = pod["cpu_request"],
        cpu_limit: str = pod["cpu_limit"],
        memory_request: str = pod["memory_request"],
        memory_limit: str = pod["memory_limit"],
        shm_size: str = pod["shm_size"],
        tmp_size: str = pod["tmp_size"],
        service_account: str = pod["service_account"],
        node_selector: dict = pod["node_selector"],
        tolerations: list = pod["tolerations"],
        trainjob_runtime: str = pod["trainjob_runtime"],
        run_as_user: int = pod["run_as_user"],
        kueue_queue: str = pod["kueue_queue"],
        queue_timeout_hours: float = QUEUE_TIMEOUT_SAME,
        pretrained: str = default_pretrained,
    ) -> PipelineOutputs:
        split = c.split_data(
            config_yaml=config_yaml, dataset_uri=dataset_uri, overrides=overrides,
            s3_endpoint=s3_endpoint, seeds=seeds,
        )  # fmt: skip
        on_cluster(split, "split")
        manifest = split.outputs["manifest"]
        # One chain of steps per seed; the split above is shared by all of them. No `name=`:
        # a named ParallelFor broke dsl.Collected on the v2 backend (kubeflow/pipelines#13239).
        with dsl.ParallelFor(seeds, parallelism=parallel_seeds) as seed:
            teacher_uri = history = None
            for t in range(task.num_steps):
                train = c.train_step(
                    config_yaml=config_yaml, step=t, seed=seed, dataset_uri=dataset_uri,
                    overrides=overrides,
                    epochs=epochs, launcher=launcher, image=image, namespace=namespace,
                    gpus_per_pod=gpus_per_pod, pods_per_step=pods_per_step,
                    timeout_hours=timeout_hours, s3_endpoint=s3_endpoint,
                    s3_secret=job_secret if cluster else "",
                    s3_secret_keys=job_keys if cluster else {},
                    image_pull_policy=image_pull_policy, cpu_request=cpu_request,
                    cpu_limit=cpu_limit, memory_request=memory_request, memory_limit=memory_limit,
                    shm_size=shm_size, tmp_size=tmp_size, service_account=service_account,
                    node_selector=node_selector, tolerations=tolerations,
                    trainjob_runtime=trainjob_runtime, delete_after_done=delete_after_done,
                    run_as_user=run_as_user, kueue_queue=kueue_queue,
                    queue_timeout_hours=queue_timeout_hours,
                    manifest=manifest, pretrained=pretrained,
                    **({"teacher_uri": teacher_uri} if teacher_uri is not None else {}),
                )  # fmt: skip
                on_cluster_train(train, t, gpus_per_pod)
                # the next step's teacher, by URI: only its job's pods read it
                teacher_uri = train.outputs["model_uri"]
                evaluation = c.evaluate(
                    model=train.outputs["model"],
                    manifest=manifest,
                    seed=seed,
                    s3_endpoint=s3_endpoint,
                    **({"history_in": history} if history is not None else {}),
                )
                # Reads the metrics the training job computed: no GPU, no /dev/shm.
                on_cluster(evaluation, f"evaluate step {t}")
                history = evaluation.outputs["history_out"]
        summary = c.report(
            histories=dsl.Collected(history), seeds=seeds,
            title=f"DKD {task.dataset} {task.name}", s3_endpoint=s3_endpoint,
        )  # fmt: skip
        # Reads each step's files beside its checkpoint: the components' S3 keys.
        on_cluster(summary, "report")
        return PipelineOutputs(
            report=summary.outputs["html"],
            markdown=summary.outputs["markdown"],
            plots=summary.outputs["plots"],
            history=summary.outputs["history"],
        )

    return pipeline


_HEADER_DEFAULT = re.compile(r"^(#    \w+: \w+ \[Default: )(.*)(\])$")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _stable_header(text: str) -> str:
    """The IR with the keys of dict defaults sorted in its header comment.

    kfp 2.17 prints each parameter's default there from a protobuf Struct, whose
    key order changes from process to process (e.g. the tolerations' default);
    the YAML body is sorted already.
    """
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        m = _HEADER_DEFAULT.match(line)
        if m and m.group(2)[:1] in "[{":
            try:
                value = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                continue
            lines[i] = f"{m.group(1)}{_sorted(value)}{m.group(3)}"
    return "\n".join(lines)


def compile_pipeline(config: str | Path, output: str | Path, **options: Any) -> Path:
    """Compile the pipeline of `config` (a benchmark name or a YAML path) to IR YAML at `output`.

    `options` go to `build_pipeline`. The same inputs give a byte-identical file
    (kfp 2.17 writes no timestamp or random id into the IR). The file is written
    whole or not at all.
    """
    check_output(output)
    return write_ir(build_pipeline(config_path(str(config)), **options), output)


def check_output(output: str | Path) -> None:
    if Path(output).suffix not in (".yaml", ".yml"):
        raise DKDError(f"--output {output}: the pipeline file must end in .yaml")


def write_ir(pipeline: Callable, output: str | Path) -> Path:
    """Compile `pipeline` to IR YAML at `output`, whole or not at all, byte-stable."""
    from kfp import compiler

    output = Path(output)
    check_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    try:
        compiler.Compiler().compile(pipeline, str(partial))
        partial.write_text(_stable_header(partial.read_text()))
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return output
