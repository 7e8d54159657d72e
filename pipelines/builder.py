"""Benchmark YAML -> KFP pipeline: split -> (train t -> evaluate t) per step -> report.

`build_pipeline(config_path, ...)` validates the config first (a malformed one is
a `DKDError` before anything is compiled), then returns the `@dsl.pipeline`
function. The resolved config is embedded as a constant; the number of steps
comes from the config's task. Train step t+1 takes train step t's Model as its
teacher; evaluate t+1 takes evaluate t's history, so the report gets every
step's metrics. Evaluate t and train t+1 depend on nothing of each other and
may run side by side.

What a cluster needs (S3 credentials and endpoint in the component pods, GPUs
for the tasks that compute in their own pod, retries) is set only when
`cluster=True`; `kfp.local` runs use `cluster=False`.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown

from components import IMAGE, with_image
from dkd_core.config import Config, config_to_dict, load_config
from dkd_core.errors import DKDError
from dkd_core.launch import LAUNCHERS
from dkd_core.step_data import task_of

CONFIGS = Path(__file__).parent / "configs"
GPU = "nvidia.com/gpu"
#: KFP's own `mlpipeline-minio-artifact` Secret holds the keys accesskey/secretkey.
DEFAULT_S3_SECRET = "mlpipeline-minio-artifact"
DEFAULT_S3_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
DEFAULT_S3_ENDPOINT = "http://minio-service.kubeflow:9000"
TRAIN_RETRIES = 2
TRAIN_RETRY_BACKOFF = "60s"


class PipelineOutputs(NamedTuple):
    """What a run leaves as the pipeline's outputs: the report and every step's metrics."""

    report: HTML  # report.html, plots embedded
    markdown: Markdown  # report.md
    plots: Artifact  # folder: miou_steps.png, per_class_iou.png, summary.json
    history: Artifact  # JSON list of each step's test metrics


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


def build_pipeline(
    config_path: str | Path,
    launcher: str = "pytorchjob",
    image: str = IMAGE,
    gpus_per_pod: int = 1,
    s3_secret: str = DEFAULT_S3_SECRET,
    s3_endpoint: str = DEFAULT_S3_ENDPOINT,
    s3_secret_keys: Mapping[str, str] | None = None,
    job_s3_secret: str | None = None,
    cluster: bool = True,
) -> Callable:
    """The pipeline function of the benchmark config at `config_path`.

    - `launcher`: how train_step runs a step (`local`: torchrun in the component's
      own pod; `pytorchjob`/`trainjob`: a Kubeflow job it creates and watches).
    - `image`: the components' base image and the default of the jobs' image.
    - `gpus_per_pod`: default of the pipeline parameter (processes per pod = GPUs);
      with 0 nothing asks for a GPU.
    - `s3_secret`, `s3_secret_keys` (Secret key -> env name), `s3_endpoint`: S3
      access of the component pods. The training jobs' pods get the Secret
      `job_s3_secret` (default `s3_secret`) with the same key mapping, so KFP's
      own `mlpipeline-minio-artifact` serves both.
    - `cluster=False` leaves out every Kubernetes setting (for `kfp.local`).
    """
    if launcher not in LAUNCHERS:
        raise DKDError(f"launcher {launcher!r}: expected one of {', '.join(sorted(LAUNCHERS))}")
    if not isinstance(gpus_per_pod, int) or isinstance(gpus_per_pod, bool) or gpus_per_pod < 0:
        raise DKDError(f"gpus_per_pod must be an integer >= 0, got {gpus_per_pod!r}")
    if not isinstance(image, str) or not image.strip():
        raise DKDError("image must be a non-empty image reference")
    config = load_config(config_path)
    task = task_of(config)
    config_yaml = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    keys = dict(DEFAULT_S3_KEYS if s3_secret_keys is None else s3_secret_keys)
    job_secret = s3_secret if job_s3_secret is None else job_s3_secret
    c = with_image(image)
    default_image, default_gpus = image, gpus_per_pod

    def on_cluster(t: dsl.PipelineTask, name: str, s3: bool = True, gpus: int = 0) -> None:
        """Display name, S3 access and, for a pod that computes (`gpus`), GPUs and /dev/shm.

        Nothing of it has an effect under kfp.local, which would warn about it.
        """
        if not cluster:
            return
        from kfp import kubernetes

        t.set_display_name(name)
        if not s3:
            return
        if s3_secret:
            kubernetes.use_secret_as_env(t, secret_name=s3_secret, secret_key_to_env=keys)
        t.set_env_variable("S3_ENDPOINT", s3_endpoint)
        if gpus:  # data-loader workers share tensors through /dev/shm (64 MiB by default)
            kubernetes.empty_dir_mount(
                t, volume_name="dshm", mount_path="/dev/shm", medium="Memory"
            )
            if default_gpus > 0:
                t.set_accelerator_type(GPU).set_accelerator_limit(gpus)

    @dsl.pipeline(
        name=pipeline_name(config),
        description=f"DKD class-incremental segmentation, {task.dataset} {task.name} "
        f"({task.setting}, {task.num_steps} steps), launcher {launcher}",
    )
    def pipeline(
        dataset_uri: str = config.data.root,
        image: str = default_image,
        gpus_per_pod: int = default_gpus,
        pods_per_step: int = 1,
        epochs: int = config.optim.epochs,
        overrides: list = [],  # noqa: B006 - KFP reads the default from the signature
        namespace: str = "kubeflow",
        timeout_hours: float = 48.0,
    ) -> PipelineOutputs:
        split = c.split_data(config_yaml=config_yaml, dataset_uri=dataset_uri, overrides=overrides)
        on_cluster(split, "split")
        manifest = split.outputs["manifest"]
        teacher = history = None
        for t in range(task.num_steps):
            train = c.train_step(
                config_yaml=config_yaml, step=t, dataset_uri=dataset_uri, overrides=overrides,
                epochs=epochs, launcher=launcher, image=image, namespace=namespace,
                gpus_per_pod=gpus_per_pod, pods_per_step=pods_per_step,
                timeout_hours=timeout_hours, s3_secret=job_secret if cluster else "",
                s3_secret_keys=keys if cluster else {},
                manifest=manifest, **({"teacher": teacher} if teacher is not None else {}),
            )  # fmt: skip
            train.set_caching_options(False)
            # launcher local: the step trains in this task's own pod, on gpus_per_pod GPUs
            on_cluster(train, f"train step {t}", gpus=max(default_gpus, 1) * (launcher == "local"))
            if cluster:
                train.set_retry(num_retries=TRAIN_RETRIES, backoff_duration=TRAIN_RETRY_BACKOFF)
            teacher = train.outputs["model"]
            evaluation = c.evaluate(
                model=teacher,
                manifest=manifest,
                **({"history_in": history} if history is not None else {}),
            )
            # Reads the metrics the training job computed: no GPU, no /dev/shm.
            on_cluster(evaluation, f"evaluate step {t}")
            history = evaluation.outputs["history_out"]
        summary = c.report(history=history, title=f"DKD {task.dataset} {task.name}")
        on_cluster(summary, "report", s3=False)
        return PipelineOutputs(
            report=summary.outputs["html"],
            markdown=summary.outputs["markdown"],
            plots=summary.outputs["plots"],
            history=history,
        )

    return pipeline


def compile_pipeline(config: str | Path, output: str | Path, **options: Any) -> Path:
    """Compile the pipeline of `config` (a benchmark name or a YAML path) to IR YAML at `output`.

    `options` go to `build_pipeline`. The same inputs give a byte-identical file
    (kfp 2.17 writes no timestamp or random id into the IR). The file is written
    whole or not at all.
    """
    from kfp import compiler

    output = Path(output)
    if output.suffix not in (".yaml", ".yml"):
        raise DKDError(f"--output {output}: the pipeline file must end in .yaml")
    pipeline = build_pipeline(config_path(str(config)), **options)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    try:
        compiler.Compiler().compile(pipeline, str(partial))
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return output
