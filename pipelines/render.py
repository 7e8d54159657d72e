"""`python -m pipelines render-job`: the job manifest a train step of a pipeline would create.

The parameters are the compiled pipeline's (its defaults, then `--param`), mapped
by `pipelines.jobspec` exactly as the `train_step` component maps them at run
time. What only a run knows is a placeholder: the artifact URIs KFP assigns (so
the job name, a hash of the Model's URI, differs from a real run's), the run id
and pod name labels. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from dkd_core.config import config_from_dict, config_to_dict, load_config
from dkd_core.errors import DKDError
from pipelines import builder, jobspec
from pipelines.params import add_overrides, parse_params, seed_list

RENDERABLE = ("pytorchjob", "trainjob")
#: Stand-ins for what KFP fills in at run time.
RUN_PLACEHOLDER, TASK_PLACEHOLDER = "RUN_ID", "TASK_ID"


def _task_name(step: int) -> str:
    """KFP's name of the train task of `step`: train-step, train-step-2, ..."""
    return "train-step" if step == 0 else f"train-step-{step + 1}"


def artifact_uri(pipeline: str, task: str, output: str) -> str:
    """Where KFP 2.17 puts an output artifact: <pipeline root>/<pipeline>/<run>/<task>/<uuid>/<output>."""
    return f"minio://mlpipeline/v2/artifacts/{pipeline}/{RUN_PLACEHOLDER}/{task}/{TASK_PLACEHOLDER}/{output}"


def render_step(
    name: str,
    step: int,
    launcher: str,
    params: Mapping[str, Any] | list[str] = (),
    namespace: str = "kubeflow",
    seed: int | None = None,
    overrides: Sequence[str] = (),
    **options: Any,
) -> dict[str, Any]:
    """The manifest of step `step`'s job for pipeline `name` (compile `options` as for
    `build_pipeline`) in the chain of `seed` (default: the first of the `seeds`
    parameter); an empty `namespace` parameter becomes `namespace`, the component
    pod's namespace it would resolve to (standalone KFP: kubeflow). `overrides` are
    added to the `overrides` parameter, as `submit --override` adds them."""
    from dkd_core.launch import render_job

    if launcher not in RENDERABLE:
        raise DKDError(f"--launcher {launcher!r}: expected one of {', '.join(RENDERABLE)}")
    path = builder.config_path(name)
    pipeline = builder.build_pipeline(path, launcher=launcher, **options)
    inputs = pipeline.component_spec.inputs
    args = {k: v.default for k, v in inputs.items() if v.default is not None}
    args.update(parse_params(pipeline, params))
    add_overrides(args, overrides)
    args.setdefault("dataset_uri", "s3://DATASET")
    config = load_config(path)
    steps = builder._task(config).num_steps
    if not isinstance(step, int) or not 0 <= step < steps:
        raise DKDError(f"--step {step}: {name} has steps 0 to {steps - 1}")
    seeds = builder.run_seeds(path, args, cluster=True)
    (seed,) = seeds[:1] if seed is None else seed_list([seed], "--seed {}")
    settings = jobspec.step_settings(
        args["dataset_uri"], args["epochs"], args["overrides"], seed, args.get("pretrained", "")
    )
    config = config_from_dict(config_to_dict(config), settings, "pipeline config")
    pipeline_name = builder.pipeline_name(config)
    model = artifact_uri(pipeline_name, _task_name(step), "model")
    job = jobspec.step_job(
        config.run.name, step, jobspec.step_config_uri(model),
        settings, model, artifact_uri(pipeline_name, "split-data", "manifest"),
        artifact_uri(pipeline_name, _task_name(step - 1), "model") if step else None,
        args["gpus_per_pod"], args["pods_per_step"],
    )  # fmt: skip
    access = ("s3_secret", "s3_secret_keys", "job_s3_secret", "job_s3_secret_keys")
    secret, keys = builder.job_s3_access(**{k: options[k] for k in access if k in options})
    spec = jobspec.cluster_spec(
        {**args, "namespace": args["namespace"] or namespace, "s3_secret": secret,
         "s3_secret_keys": keys},
        env={"S3_ENDPOINT": args["s3_endpoint"]} if args["s3_endpoint"] else {},
    )  # fmt: skip
    return render_job(job, spec, launcher)


def to_yaml(manifest: Mapping[str, Any]) -> str:
    """The manifest as YAML, with a comment saying which values are placeholders."""
    head = (
        f"# {RUN_PLACEHOLDER}, {TASK_PLACEHOLDER} (and so the job name, from the Model's URI) "
        "are placeholders for what KFP assigns at run time.\n"
    )
    return head + yaml.safe_dump(dict(manifest), sort_keys=False)
