"""Run a step as a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1, release 2.3).

The TrainJob references a `ClusterTrainingRuntime` (`ClusterSpec.trainjob_runtime`,
default `dkd-torch-distributed` from k8s/base/trainer-runtime: upstream's
`torch-distributed` with one replicated job `node` and a container `node`, plus
the `metrics` port the PodMonitor scrapes and the pod settings a TrainJob cannot
patch) and sets the trainer's image, command, node count, processes per node,
resources and env. What `spec.trainer` cannot say goes into a `runtimePatches`
entry (the release-2.3 successor of `podTemplateOverrides`), which may patch, per
replicated job, the pod's labels and annotations (no Istio sidecar), volumes, security context, nodeSelector,
tolerations, service account, and the container's volumeMounts and securityContext:

- /dev/shm and /tmp: emptyDir volumes and mounts, patched in;
- S3 credentials: a container patch has no `envFrom` (and may not set env on
  `node`), so each entry of `ClusterSpec.s3_secret_env` is mapped with a
  `secretKeyRef` in `spec.trainer.env`;
- not expressible in a TrainJob, set by the runtime: `imagePullPolicy`,
  `automountServiceAccountToken: false`, the `metrics` port, the pods' restart
  policy; left to the runtime's defaults: backoff (JobSet `failurePolicy`),
  clean-up of finished pods and `ttlSecondsAfterFinished`.
  `ClusterSpec.active_deadline_seconds` maps to `spec.activeDeadlineSeconds`.

Trainer's validation (release 2.3) refuses a `runtimePatches[].manager` that is
not a domain-prefixed path (`PATCH_MANAGER` is one), a patch of a replicated job
or container the runtime lacks, env in a patch of the `node` container, PET_*
variables in `spec.trainer.env`, and a name that is not an RFC 1035 label of at
most 63 characters; JobSet refuses names whose pods' names would exceed 63.
"""

from __future__ import annotations

from typing import Any

from dkd_core.errors import DKDError
from dkd_core.launch.cluster import LABEL_DOMAIN, ClusterSpec
from dkd_core.launch.job import NAME_MAX_LENGTH, StepJob
from dkd_core.launch.watch import ClusterLauncher, JobKind

#: Replicated job and container of the trainer in the torch runtimes.
NODE = "node"
#: `manager` of our `runtimePatches` entry (who owns the patch): a domain-prefixed path.
PATCH_MANAGER = f"{LABEL_DOMAIN}/launcher"
#: Environment variables the torch plugin sets itself and refuses in `spec.trainer.env`.
TORCHRUN_RESERVED_ENV = frozenset(
    {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
)

TRAINJOB = JobKind(
    kind="TrainJob",
    group="trainer.kubeflow.org",
    version="v1alpha1",
    plural="trainjobs",
    success="Complete",
    failure="Failed",
    pod_label="jobset.sigs.k8s.io/jobset-name",
    container=NODE,
    suspend_field=("spec", "suspend"),
)


def _check_name_budget(job: StepJob) -> None:
    """JobSet rejects names whose pods `<job>-node-0-<i>-<5 random>` exceed 63 characters."""
    longest = f"{job.name}-{NODE}-0-{job.nodes - 1}-abcde"
    if len(longest) > NAME_MAX_LENGTH:
        raise DKDError(
            f"job name {job.name!r} is too long for a TrainJob: its pods would be named like "
            f"{longest!r} ({len(longest)} > {NAME_MAX_LENGTH} characters)"
        )


def _trainer_env(spec: ClusterSpec) -> list[dict[str, Any]]:
    env = spec.env_list()
    if spec.s3_secret:
        if not spec.s3_secret_env:
            raise DKDError(
                f"cluster spec: a TrainJob cannot inject the whole Secret {spec.s3_secret!r} "
                "(release 2.3 has no envFrom for the trainer): map its keys in "
                "s3_secret_env, or add the envFrom to the ClusterTrainingRuntime and leave "
                "s3_secret unset"
            )
        taken = {e["name"] for e in env}
        env += [e for e in spec.secret_env_list() if e["name"] not in taken]
    reserved = sorted({e["name"] for e in env} & TORCHRUN_RESERVED_ENV)
    if reserved:
        raise DKDError(
            f"cluster spec env: {', '.join(reserved)} are set by the Trainer's torch plugin; "
            "a TrainJob may not set them"
        )
    return env


def _runtime_patch(spec: ClusterSpec) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "securityContext": spec.pod_security_context(),
        **spec.placement(),
        "containers": [
            {
                "name": NODE,
                "securityContext": spec.container_security_context(),
                "volumeMounts": spec.volume_mounts(),
            }
        ],
        "volumes": spec.volumes(),
    }
    pod_template = {"metadata": spec.pod_metadata(), "spec": pod_spec}
    return {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {"name": NODE, "template": {"spec": {"template": pod_template}}}
                    ]
                }
            }
        },
    }


def render_trainjob(job: StepJob, spec: ClusterSpec, runtime: str | None = None) -> dict[str, Any]:
    """The `TrainJob` manifest (a plain dict) running `job` with the ClusterTrainingRuntime
    `runtime` (default: `spec.trainjob_runtime`)."""
    spec.check_job(job)
    _check_name_budget(job)
    runtime = spec.trainjob_runtime if runtime is None else runtime
    if not runtime:
        raise DKDError("render_trainjob: runtime must name a ClusterTrainingRuntime")
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": job.command(),
        "numNodes": job.nodes,
        "numProcPerNode": job.nproc_per_node,  # int32 in release 2.3 (no "auto" here)
        "resourcesPerNode": spec.resources(),
        "env": _trainer_env(spec),
    }
    body: dict[str, Any] = {
        "runtimeRef": {
            "name": runtime,
            "kind": "ClusterTrainingRuntime",
            "apiGroup": TRAINJOB.group,
        },
        "trainer": trainer,
        "runtimePatches": [_runtime_patch(spec)],
    }
    if spec.active_deadline_seconds is not None:
        body["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": TRAINJOB.api_version,
        "kind": TRAINJOB.kind,
        "metadata": {"name": job.name, "namespace": spec.namespace, "labels": spec.job_labels()},
        "spec": body,
    }


class TrainJobLauncher(ClusterLauncher):
    """Launches a step as a `TrainJob`; success is the `Complete` condition.

    `runtime` names the `ClusterTrainingRuntime` to use (default: the spec's
    `trainjob_runtime`).
    """

    kind = TRAINJOB

    def __init__(self, *args: Any, runtime: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runtime = runtime

    def render(self, job: StepJob, spec: ClusterSpec) -> dict[str, Any]:
        return render_trainjob(job, spec, self.runtime)
