"""A train step's pipeline parameters -> its training job: the one mapping, torch-free.

The `train_step` component calls these at run time, and `python -m pipelines
render-job` calls them on this machine, so the manifest `render-job` prints is
the one a run creates. Everything here takes plain JSON values, as KFP passes
pipeline parameters (str, int, float, bool, dict, list).

- `POD_DEFAULTS`: the pod parameters of the pipeline and their defaults, read
  from `ClusterSpec`'s own defaults (`None` there is `""` here: KFP parameters
  have no null).
- `cluster_spec(params)`: the `ClusterSpec` of the job's pods
  (`ClusterSpec.from_params` of `cluster_spec_params(params)`).
- `launch_options(params)`: keyword arguments of `launch_step` (the wait).
- `step_job(...)`: the `StepJob` (job name, torchrun command).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dkd_core.errors import DKDError
from dkd_core.launch.cluster import ClusterSpec
from dkd_core.launch.job import StepJob, job_name

#: KFP's own `mlpipeline-minio-artifact` Secret holds the keys accesskey/secretkey (in
#: `kubeflow`, and in every profile namespace of multi-user Kubeflow).
DEFAULT_S3_SECRET = "mlpipeline-minio-artifact"
DEFAULT_S3_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
#: Key mapping of a separate `job_s3_secret`: its keys named as dkd_core reads them (e.g.
#: the Secret `minio-credentials` of k8s/overlays/minio).
DEFAULT_JOB_S3_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                       "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}  # fmt: skip
#: KFP 2.17's object store: the Service `seaweedfs` in `kubeflow`, whose port 9000 forwards
#: to SeaweedFS's S3 port 8333 (manifests/kustomize/third-party/seaweedfs; `minio-service`
#: was removed in KFP 2.16).
DEFAULT_S3_ENDPOINT = "http://seaweedfs.kubeflow:9000"
#: Where Kubernetes mounts the pod's own namespace (every pod with a service-account token).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Environment of the component pod: KFP sets KFP_POD_NAME on every pod it runs; the
#: builder maps the pod label `pipeline/runid` (set by the KFP API server) to KFP_RUN_ID.
#: The launcher labels the job and its pods with both (`ClusterSpec.kfp_run_id`, ...).
RUN_ID_ENV, POD_NAME_ENV = "KFP_RUN_ID", "KFP_POD_NAME"
#: The run identity the training reads (`dkd_core.metrics.RUN_ID_ENV`; not imported: torch).
TRAINING_RUN_ID_ENV = "DKD_RUN_ID"
#: Component environment passed on to the job's pods.
FORWARDED_ENV = (
    "S3_ENDPOINT", "S3_SECURE", "S3_REGION", "AWS_REGION", "S3_RETRY_SECONDS", "PUSHGATEWAY_URL",
)  # fmt: skip
#: The config key a chain's seed sets (`dkd_core.config.TrainConfig.seed`).
SEED_KEY = "train.seed"
#: Fields of a Kubernetes Toleration (core/v1).
TOLERATION_FIELDS = ("key", "operator", "value", "effect", "tolerationSeconds")

_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ClusterSpec)}
#: Pod parameters of the pipeline (name -> default); strings "" mean "unset".
POD_DEFAULTS: dict[str, Any] = {
    "image_pull_policy": _SPEC_DEFAULTS["image_pull_policy"],
    "cpu_request": _SPEC_DEFAULTS["cpu_request"] or "",
    "cpu_limit": _SPEC_DEFAULTS["cpu_limit"] or "",
    "memory_request": _SPEC_DEFAULTS["memory_request"] or "",
    "memory_limit": _SPEC_DEFAULTS["memory_limit"] or "",
    "shm_size": _SPEC_DEFAULTS["shm_size"] or "",
    "tmp_size": _SPEC_DEFAULTS["tmp_size"] or "",
    "service_account": _SPEC_DEFAULTS["service_account"] or "",
    "node_selector": dict(_SPEC_DEFAULTS["node_selector"]),
    "tolerations": [dict(t) for t in _SPEC_DEFAULTS["tolerations"]],
    "trainjob_runtime": _SPEC_DEFAULTS["trainjob_runtime"],
    # Delete the job when it ends (the upstream launcher's `delete_after_done`); False
    # keeps a finished or failed job and its pods for inspection.
    "delete_after_done": _SPEC_DEFAULTS["delete_after_done"],
    # The uid (and gid) every container of the job's pods runs as: the image's by default.
    "run_as_user": _SPEC_DEFAULTS["run_as_user"],
    # A Kueue LocalQueue of the namespace: the job waits in it, suspended, until admitted.
    "kueue_queue": _SPEC_DEFAULTS["kueue_queue"] or "",
}
#: Default of the `queue_timeout_hours` parameter: 0 means the step's `timeout_hours`.
QUEUE_TIMEOUT_SAME = 0.0


def resolve_namespace(namespace: str, path: Path | None = None) -> str:
    """`namespace`, or when empty the namespace of the pod this runs in.

    A profile namespace's pipeline runner may create jobs only in its own
    namespace, so that is the default (read from the service-account mount).
    """
    if namespace:
        return namespace
    path = SERVICE_ACCOUNT_NAMESPACE if path is None else path
    try:
        own = path.read_text().strip()
    except OSError:
        own = ""
    if not own:
        raise DKDError(
            f"pipeline parameter namespace is empty and {path} is not readable (not in a pod): "
            "set namespace to where the training jobs should run"
        )
    return own


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name, POD_DEFAULTS.get(name, ""))
    if value is None or value == "":
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise DKDError(f"pipeline parameter {name}: expected a string, got {value!r}")
    return str(value)


def _node_selector(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in value.items()
    ):
        raise DKDError(
            "pipeline parameter node_selector: expected a mapping of node label to value, "
            f'e.g. {{"nvidia.com/gpu.present": "true"}}, got {value!r}'
        )
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}


def _tolerations(value: Any) -> tuple[dict[str, Any], ...]:
    if value in (None, ""):
        return ()
    example = '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]'
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise DKDError(f"pipeline parameter tolerations: expected a list, e.g. {example}")
    out = []
    for item in value:
        if not isinstance(item, Mapping) or not item:
            raise DKDError(
                f"pipeline parameter tolerations: {item!r} is not a toleration, e.g. {example}"
            )
        unknown = sorted(set(item) - set(TOLERATION_FIELDS))
        if unknown:
            raise DKDError(
                f"pipeline parameter tolerations: unknown field {unknown[0]!r} in {dict(item)}; "
                f"a toleration has {', '.join(TOLERATION_FIELDS)}"
            )
        out.append(dict(item))
    return tuple(out)


def cluster_spec_params(
    params: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`ClusterSpec.from_params` values (JSON, keyed by ClusterSpec field) of a train step.

    `params` holds the pipeline's pod parameters (`POD_DEFAULTS` fill the
    missing ones) and `namespace` (empty: this pod's), `image`, `gpus_per_pod`,
    `s3_secret`, `s3_secret_keys` (Secret key -> environment variable). `env` is
    the component's environment: FORWARDED_ENV is passed on, the KFP run and pod
    label the job.
    """
    env = os.environ if env is None else env
    image = _text(params, "image")
    if image is None:
        raise DKDError("pipeline parameter image is empty: set it to the dkd image to train with")
    gpus = params.get("gpus_per_pod", 0)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise DKDError(f"pipeline parameter gpus_per_pod: expected an integer >= 0, got {gpus!r}")
    keys = params.get("s3_secret_keys") or {}
    if not isinstance(keys, Mapping):
        raise DKDError(f"s3_secret_keys: expected a mapping of Secret key to env, got {keys!r}")
    delete = params.get("delete_after_done", POD_DEFAULTS["delete_after_done"])
    if not isinstance(delete, bool):
        raise DKDError(f"pipeline parameter delete_after_done: expected true/false, got {delete!r}")
    uid = params.get("run_as_user", POD_DEFAULTS["run_as_user"])
    if not isinstance(uid, int) or isinstance(uid, bool) or uid < 1:
        raise DKDError(
            f"pipeline parameter run_as_user: expected a uid >= 1 (not root), got {uid!r}"
        )
    secret = _text(params, "s3_secret")
    text = {name: _text(params, name) or "" for name in (
        "image_pull_policy", "cpu_request", "cpu_limit", "memory_request", "memory_limit",
        "shm_size", "tmp_size", "service_account", "trainjob_runtime", "kueue_queue",
    )}  # fmt: skip
    return {
        "namespace": resolve_namespace(_text(params, "namespace") or ""),
        "image": image,
        "gpus_per_pod": gpus,
        **text,
        "image_pull_policy": text["image_pull_policy"] or POD_DEFAULTS["image_pull_policy"],
        "trainjob_runtime": text["trainjob_runtime"] or POD_DEFAULTS["trainjob_runtime"],
        "node_selector": _node_selector(params.get("node_selector")),
        "tolerations": list(_tolerations(params.get("tolerations", POD_DEFAULTS["tolerations"]))),
        "s3_secret": secret or "",
        "s3_secret_env": {v: k for k, v in keys.items()} if secret else {},
        "env": {
            **{k: env[k] for k in FORWARDED_ENV if env.get(k)},
            # every series the job exports carries the KFP run id (`dkd_core.metrics`)
            **({TRAINING_RUN_ID_ENV: env[RUN_ID_ENV]} if env.get(RUN_ID_ENV) else {}),
        },
        "kfp_run_id": env.get(RUN_ID_ENV, ""),
        "kfp_pod_name": env.get(POD_NAME_ENV, ""),
        "delete_after_done": delete,
        # one id for user, group and fsGroup: an image made for another uid has that group
        "run_as_user": uid,
        "run_as_group": uid,
    }


def cluster_spec(params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ClusterSpec:
    """The `ClusterSpec` of a train step's job pods (see `cluster_spec_params`)."""
    return ClusterSpec.from_params(cluster_spec_params(params, env))


def launch_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """`launch_step` keyword arguments of a train step: how long it waits for its job
    (`timeout_hours`, not counting the time queued) and how long the job may wait for
    admission or for Unschedulable pods (`queue_timeout_hours`; 0: `timeout_hours`)."""
    hours = params.get("timeout_hours", 48.0)
    if not isinstance(hours, int | float) or isinstance(hours, bool) or hours <= 0:
        raise DKDError(f"pipeline parameter timeout_hours: expected hours > 0, got {hours!r}")
    queue = params.get("queue_timeout_hours", QUEUE_TIMEOUT_SAME)
    if not isinstance(queue, int | float) or isinstance(queue, bool) or queue < 0:
        raise DKDError(
            f"pipeline parameter queue_timeout_hours: expected hours >= 0 (0: timeout_hours), "
            f"got {queue!r}"
        )
    return {
        "timeout_seconds": float(hours) * 3600,
        "queue_timeout_seconds": float(queue or hours) * 3600,
    }


def step_settings(
    dataset_uri: str,
    epochs: int,
    overrides: Sequence[str],
    seed: int | None = None,
    pretrained: str = "",
) -> list[str]:
    """Config overrides of a step, in order (later wins): data.root, optim.epochs (0: the
    config's), model.pretrained (the `pretrained` parameter; empty: the config's), the
    `overrides` parameter, then train.seed=<seed> (the chain's seed).

    The seed is the pipeline's `seeds` parameter, one chain per seed; `overrides` may
    not set it too (a seed there would be silently replaced in every chain).
    """
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise DKDError(f"seed {seed!r}: expected an integer (the seeds parameter)")
        for override in overrides:
            if override.partition("=")[0].strip() == SEED_KEY:
                raise DKDError(
                    f"overrides {override!r}: {SEED_KEY} is set per chain by the seeds "
                    f"parameter; pass seeds=[{override.partition('=')[2].strip()}] "
                    "(--seeds, make ... SEEDS=) instead"
                )
    return [
        f"data.root={dataset_uri}",
        *([f"optim.epochs={epochs}"] if epochs else []),
        *([f"model.pretrained={pretrained.strip()}"] if pretrained and pretrained.strip() else []),
        *overrides,
        *([f"{SEED_KEY}={seed}"] if seed is not None else []),
    ]


def step_config_uri(model_uri: str) -> str:
    """Where a train step writes its resolved config: `config.yaml` beside its Model, in the
    step's folder (`dkd_core.locations.parent`; computed here because dkd_core.storage
    needs torch)."""
    folder, sep, _ = model_uri.rstrip("/").rpartition("/")
    if not sep or folder.endswith(":/"):
        raise DKDError(f"model URI {model_uri!r} has no parent folder")
    return f"{folder}/config.yaml"


def step_job(
    run_name: str,
    step: int,
    config_uri: str,
    settings: Sequence[str],
    model_uri: str,
    manifest_uri: str,
    teacher_uri: str | None,
    gpus_per_pod: int,
    pods_per_step: int,
) -> StepJob:
    """The `StepJob` of a train step; its name is fixed by the Model's URI, so a retry of
    the same task (same URI) finds the job its earlier attempt created."""
    return StepJob(
        name=job_name(run_name, step, hashlib.sha256(model_uri.encode()).hexdigest()[:6]),
        config_uri=config_uri,
        step=step,
        overrides=tuple(settings),
        teacher=teacher_uri,
        nproc_per_node=max(gpus_per_pod, 1),
        nodes=pods_per_step,
        checkpoint_out=model_uri,
        manifest=manifest_uri,
    )
