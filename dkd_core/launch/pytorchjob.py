"""Run a step as a Kubeflow Training Operator v1 `PyTorchJob` (kubeflow.org/v1).

One `Master` pod plus `nodes - 1` `Worker` pods, each running `StepJob.command()`
in a container named `pytorch` (the operator finds the training container by
that name and injects torchrun's `PET_*` variables into it). Pods restart
`OnFailure`: a killed pod comes back and the step resumes from its last
periodic checkpoint.

The operator's admission webhook (release 1.9) refuses a job whose name is not
an RFC 1035 label, whose replica types are not Master/Worker, whose Master has
other than 1 replica or a Worker fewer than 1, or whose replicas have no
container named `pytorch` with an image; `render_pytorchjob` never produces one.
"""

from __future__ import annotations

from typing import Any

from dkd_core.errors import DKDError
from dkd_core.launch.cluster import ClusterSpec
from dkd_core.launch.job import NAME_MAX_LENGTH, StepJob
from dkd_core.launch.watch import ClusterLauncher, JobKind

PYTORCHJOB = JobKind(
    kind="PyTorchJob",
    group="kubeflow.org",
    version="v1",
    plural="pytorchjobs",
    success="Succeeded",
    failure="Failed",
    pod_label="training.kubeflow.org/job-name",
    container="pytorch",
    suspend_field=("spec", "runPolicy", "suspend"),
)


def _check_name_budget(job: StepJob) -> None:
    """The operator names a Service per pod `<job>-<type>-<index>`: it must fit in 63."""
    longest = f"{job.name}-worker-{job.nodes - 2}" if job.nodes > 1 else f"{job.name}-master-0"
    if len(longest) > NAME_MAX_LENGTH:
        raise DKDError(
            f"job name {job.name!r} is too long for a PyTorchJob: the operator would create a "
            f"service {longest!r} ({len(longest)} > {NAME_MAX_LENGTH} characters)"
        )


def pod_template(spec: ClusterSpec, command: list[str] | None = None) -> dict[str, Any]:
    """The pod template of every replica: `spec`'s pod settings, running `command`.

    Without `command` it is the generic training pod that
    k8s/base/training/podtemplate.yaml documents (tools/gen_manifests.py).
    """
    container: dict[str, Any] = {
        "name": PYTORCHJOB.container,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
    }
    if command is not None:
        container["command"] = list(command)
    container["env"] = spec.env_list()
    if spec.s3_secret and spec.s3_secret_env:
        container["env"] = [*container["env"], *spec.secret_env_list()]
    elif spec.s3_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.s3_secret}}]
    container.update(
        {
            # Rank 0 serves /metrics here; the PodMonitor (k8s/monitoring) scrapes this port.
            "ports": [spec.metrics_port()],
            "resources": spec.resources(),
            "securityContext": spec.container_security_context(),
            "volumeMounts": spec.volume_mounts(),
        }
    )
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # training never talks to the API server
        "securityContext": spec.pod_security_context(),
        **spec.placement(),
        "containers": [container],
        "volumes": spec.volumes(),
    }
    return {"metadata": spec.pod_metadata(), "spec": pod_spec}


def _replica(job: StepJob, spec: ClusterSpec, replicas: int) -> dict[str, Any]:
    return {
        "replicas": replicas,
        # A killed pod comes back and resumes from its last periodic checkpoint.
        "restartPolicy": "OnFailure",
        "template": pod_template(spec, job.command()),
    }


def render_pytorchjob(job: StepJob, spec: ClusterSpec) -> dict[str, Any]:
    """The `PyTorchJob` manifest (a plain dict, ready for the API or `yaml.safe_dump`)."""
    spec.check_job(job)
    _check_name_budget(job)
    replica_specs = {"Master": _replica(job, spec, 1)}
    if job.nodes > 1:  # the webhook rejects a Worker spec with 0 replicas
        replica_specs["Worker"] = _replica(job, spec, job.nodes - 1)
    run_policy: dict[str, Any] = {
        "cleanPodPolicy": spec.clean_pod_policy,
        "backoffLimit": spec.backoff_limit,
    }
    if spec.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": PYTORCHJOB.api_version,
        "kind": PYTORCHJOB.kind,
        "metadata": {
            "name": job.name,
            "namespace": spec.namespace,
            "labels": spec.job_labels(),
        },
        "spec": {
            # A string in v1 (torchrun also accepts "auto", "gpu", "cpu"); the
            # deprecated elasticPolicy.nProcPerNode is the int32 one.
            "nprocPerNode": str(job.nproc_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }


class PyTorchJobLauncher(ClusterLauncher):
    """Launches a step as a `PyTorchJob`; success is the `Succeeded` condition."""

    kind = PYTORCHJOB

    def render(self, job: StepJob, spec: ClusterSpec) -> dict[str, Any]:
        return render_pytorchjob(job, spec)
