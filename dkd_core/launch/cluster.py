"""Where and how a step's pods run on Kubernetes: `ClusterSpec`, shared by both job kinds.

`ClusterSpec`'s defaults are the one source of the training pods' settings:
k8s/base/training/podtemplate.yaml is generated from them (tools/gen_manifests.py)
and a test fails when the two drift. Also the small pieces both manifests are
built from (container resources, security contexts, the /dev/shm and /tmp
volumes, env, labels) and the helpers that talk to the API server
(`load_kube_config`, `is_transient`, `api_error_message`). The `kubernetes`
package is imported only inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from dkd_core.errors import DKDError
from dkd_core.launch.job import StepJob
from dkd_core.metrics import DEFAULT_PORT as METRICS_PORT

GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"
#: Set in job pods from the downward API; read by `dkd_core.metrics` (NAMESPACE_ENV).
POD_NAMESPACE_ENV = "POD_NAMESPACE"
TMP_VOLUME = "tmp"
TMP_PATH = "/tmp"
CLEAN_POD_POLICIES = ("None", "Running", "All")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
#: Labels put on every job and pod, before `ClusterSpec.labels`. The PodMonitor
#: (k8s/monitoring) selects training pods by these two.
BASE_LABELS = {"app.kubernetes.io/part-of": "dkd", "app.kubernetes.io/component": "train"}
#: Prefix of our own label keys and of the TrainJob `runtimePatches[].manager`. Trainer
#: v2.3 requires the manager to be a domain-prefixed path (apimachinery's
#: IsDomainPrefixedPath: an RFC 1123 subdomain, "/", an HTTP path); the domain is the
#: project's GitHub organisation, so it cannot collide with another controller's.
LABEL_DOMAIN = "dkd-k8s.github.io"
#: Labels naming the Kubeflow Pipelines run and the component pod that created a job,
#: so that `kubectl get pytorchjobs,trainjobs -l <label>=<run id>` finds a run's jobs.
KFP_RUN_ID_LABEL = f"{LABEL_DOMAIN}/kfp-run-id"
KFP_POD_NAME_LABEL = f"{LABEL_DOMAIN}/kfp-pod-name"
#: The ClusterTrainingRuntime TrainJobs use by default: ours (k8s/base/trainer-runtime),
#: upstream's torch-distributed plus the `metrics` port and the pod settings a
#: TrainJob cannot patch.
DEFAULT_RUNTIME = "dkd-torch-distributed"
#: Name of the container port rank 0 serves /metrics on (`METRICS_PORT`); the
#: PodMonitor scrapes the port of this name.
METRICS_PORT_NAME = "metrics"
#: Toleration of the taint GPU node pools usually carry (NVIDIA GPU operator, GKE, AKS):
#: a toleration only allows a node, so it is harmless where there is no such taint.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
#: The image's user and group (docker/Dockerfile: `USER 1000:1000`), the pods' default.
IMAGE_UID = 1000
#: Istio's per-pod opt-out of sidecar injection (istio/istio pkg/kube/inject/inject.go,
#: `injectRequired`: the label, or the older annotation, "false" wins over a namespace's
#: `istio-injection=enabled`). A sidecar breaks torchrun's rendezvous and keeps a pod
#: Running after training, so the job never succeeds (kubeflow/trainer#1637); the
#: training operator's docs say to turn injection off for job pods.
ISTIO_INJECT = "sidecar.istio.io/inject"
#: Kueue's queue label (kubernetes-sigs/kueue v0.19.2 pkg/controller/constants/constants.go
#: `QueueLabel`): on a job, Kueue's webhook creates it suspended and unsuspends it once
#: the LocalQueue admits it.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_VALUE_MAX = 63
#: The pattern of `resource.Quantity` in the CRDs' schemas.
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Pairs = tuple[tuple[str, str], ...]


def _pairs(value: Mapping[str, str] | Iterable[tuple[str, str]], what: str) -> Pairs:
    """Normalise a mapping or an iterable of (key, value) pairs to a tuple of str pairs."""
    items = value.items() if isinstance(value, Mapping) else value
    out: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise DKDError(f"cluster spec {what}: expected (name, value) pairs, got {item!r}")
        k, v = item
        if not isinstance(k, str) or not k:
            raise DKDError(f"cluster spec {what}: names must be non-empty strings, got {k!r}")
        out.append((k, str(v)))
    return tuple(out)


def _check_label(key: str, value: str, what: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (
        (prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix)))
        or not name
        or len(name) > 63
        or not _LABEL_NAME.match(name)
    ):
        raise DKDError(f"cluster spec {what}: {key!r} is not a valid label key")
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise DKDError(
            f"cluster spec {what}: value {value!r} of {key!r} is not a valid label value "
            "(at most 63 letters, digits, '-', '_', '.')"
        )


def label_value(text: str) -> str:
    """`text` as a valid label value: other characters become '-', at most 63 characters.

    Leading/trailing characters that are not letters or digits are dropped. A value
    that had to be cut keeps its first 56 characters and a 6-hex-digit hash of the
    whole, so distinct long values stay distinct.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-_.")
    if len(cleaned) <= _LABEL_VALUE_MAX:
        return cleaned
    digest = hashlib.sha256(str(text).encode()).hexdigest()[:6]
    return f"{cleaned[: _LABEL_VALUE_MAX - 7].rstrip('-_.')}-{digest}"


@dataclass(frozen=True)
class ClusterSpec:
    """Pod settings of a step's job; the same spec serves PyTorchJob and TrainJob.

    Every field below is also a parameter of `ClusterSpec.from_params`, under the
    same name (the pipelines expose them as pipeline parameters):

    - `namespace`, `image` (required): where the job runs, the training image.
    - `image_pull_policy`: Always | IfNotPresent | Never (PyTorchJob only; a
      TrainJob's comes from its runtime).
    - `gpus_per_pod`: `nvidia.com/gpu` limit of each pod; 0 runs on CPUs.
    - `cpu_request`, `cpu_limit`, `memory_request`, `memory_limit`: Kubernetes
      quantities ("4", "500m", "16Gi"); None (or "" in `from_params`) leaves one
      unset. No CPU limit by default: a limit throttles the data loaders, the
      request is what the scheduler needs.
    - `shm_size`: size of the memory-backed /dev/shm (data-loader workers pass
      batches through it); `tmp_size`: size of the /tmp emptyDir (the image's
      caches, DKD_CACHE: dataset mirror and teacher checkpoints). None: no limit.
    - `read_only_root_filesystem`: the image writes only to /tmp (its HOME).
    - `s3_secret`: a Secret with the S3 credentials; `s3_secret_env` maps
      environment variable names to its keys (e.g. KFP's
      `mlpipeline-minio-artifact`: AWS_ACCESS_KEY_ID -> accesskey), rendered as
      `secretKeyRef`s; without it a PyTorchJob takes every key of the Secret under
      its own name (`envFrom`). A TrainJob (release 2.3) has no `envFrom` for the
      trainer, so it needs `s3_secret_env`.
    - `env`: extra environment variables (a mapping or (name, value) pairs).
    - `service_account`: the pods' ServiceAccount (its token is not mounted).
    - `node_selector` (mapping), `tolerations` (list of Toleration objects): GPU
      pool placement. The default tolerates the usual `nvidia.com/gpu` taint.
    - `clean_pod_policy`, `backoff_limit`, `ttl_seconds_after_finished`: the
      PyTorchJob's runPolicy; `active_deadline_seconds` also bounds a TrainJob.
    - `labels`: extra labels of the job and its pods; `kfp_run_id`,
      `kfp_pod_name`: the Kubeflow Pipelines run and component pod that launch
      the job, put on the job and its pods as `KFP_RUN_ID_LABEL` and
      `KFP_POD_NAME_LABEL` (sanitised to label values) so orphans can be found.
    - `run_as_user`, `run_as_group`: the uid and gid every container of the pods runs
      as (pod-level `runAsUser`, `runAsGroup`; `fsGroup` is `run_as_group`), default
      the image's 1000. Numeric at pod level, so the kubelet never has to trust an
      image's USER: the training operator's `init-pytorch` (alpine, root by default)
      runs as this uid too instead of being refused under `runAsNonRoot`.
    - `kueue_queue`: a Kueue LocalQueue; when set, the job carries `KUEUE_QUEUE_LABEL`
      and waits suspended until admitted.
    - `trainjob_runtime`: the ClusterTrainingRuntime a TrainJob references.
    - `delete_after_done`: delete the job when it has finished (succeeded, failed
      or timed out); False keeps it for inspection, like the Kubeflow Pipelines
      PyTorchJob launcher's `delete_after_done` (a PyTorchJob's
      `ttl_seconds_after_finished` still applies: None keeps it until deleted).
      A retry of the step replaces a failed job of the same name that it finds.
    - `log_tail_lines`: how many lines of the failing pod's log a failure reports.
    - `stuck_pod_grace_seconds`: how long a pod may stay in ImagePullBackOff,
      ErrImagePull, InvalidImageName or CreateContainerConfigError before the step
      fails (instead of waiting for the step's timeout). An Unschedulable pod (GPUs
      busy, a node still being added) waits for the launcher's queue timeout instead.
    """

    namespace: str
    image: str
    image_pull_policy: str = "IfNotPresent"
    gpus_per_pod: int = 0
    cpu_request: str | None = "4"
    cpu_limit: str | None = None
    memory_request: str | None = "16Gi"
    memory_limit: str | None = "32Gi"
    shm_size: str | None = "8Gi"
    s3_secret: str | None = None
    s3_secret_env: Pairs = ()  # (environment variable, Secret key)
    env: Pairs = ()
    service_account: str | None = None
    node_selector: Pairs = ()
    tolerations: tuple[Mapping[str, Any], ...] = (GPU_TOLERATION,)
    clean_pod_policy: str = "Running"
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = 3600
    labels: Pairs = ()
    run_as_user: int = IMAGE_UID
    run_as_group: int = IMAGE_UID
    kueue_queue: str | None = None
    tmp_size: str | None = "100Gi"
    read_only_root_filesystem: bool = True
    trainjob_runtime: str = DEFAULT_RUNTIME
    kfp_run_id: str | None = None
    kfp_pod_name: str | None = None
    delete_after_done: bool = True
    log_tail_lines: int = 500
    stuck_pod_grace_seconds: int = 300

    def __post_init__(self) -> None:
        for field in ("env", "node_selector", "labels", "s3_secret_env"):
            object.__setattr__(self, field, _pairs(getattr(self, field), field))
        if isinstance(self.tolerations, Mapping) or not all(
            isinstance(t, Mapping) for t in self.tolerations
        ):
            raise DKDError(
                "cluster spec tolerations: expected a list of objects like "
                '{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}'
            )
        object.__setattr__(self, "tolerations", tuple(dict(t) for t in self.tolerations))
        if not _DNS_LABEL.match(self.namespace or "") or len(self.namespace) > 63:
            raise DKDError(f"cluster spec: namespace {self.namespace!r} is not a valid namespace")
        if not isinstance(self.image, str) or not self.image.strip():
            raise DKDError("cluster spec: image must be a non-empty image reference")
        if self.image_pull_policy not in PULL_POLICIES:
            raise DKDError(
                f"cluster spec: image_pull_policy {self.image_pull_policy!r} is not one of "
                f"{', '.join(PULL_POLICIES)}"
            )
        if self.clean_pod_policy not in CLEAN_POD_POLICIES:
            raise DKDError(
                f"cluster spec: clean_pod_policy {self.clean_pod_policy!r} is not one of "
                f"{', '.join(CLEAN_POD_POLICIES)}"
            )
        self._check_ints()
        for field in ("read_only_root_filesystem", "delete_after_done"):
            if not isinstance(getattr(self, field), bool):
                raise DKDError(
                    f"cluster spec: {field} must be true or false, got {getattr(self, field)!r}"
                )
        for field in (
            "cpu_request",
            "cpu_limit",
            "memory_request",
            "memory_limit",
            "shm_size",
            "tmp_size",
        ):
            value = getattr(self, field)
            if value is not None and not _QUANTITY.match(str(value)):
                raise DKDError(
                    f"cluster spec: {field} {value!r} is not a Kubernetes quantity "
                    "(e.g. '4', '500m', '16Gi')"
                )
        for name, _ in self.env:
            if "=" in name:
                raise DKDError(f"cluster spec env: {name!r} is not a valid variable name")
        for field in ("s3_secret", "service_account", "trainjob_runtime", "kueue_queue"):
            name = getattr(self, field)
            if name is not None and (
                not isinstance(name, str)
                or len(name) > 253
                or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name)
            ):
                raise DKDError(f"cluster spec: {field} {name!r} is not a valid object name")
        for key, value in self.job_labels().items():
            _check_label(key, value, "labels")
        for field in ("kfp_run_id", "kfp_pod_name"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, str) or not label_value(value)):
                raise DKDError(f"cluster spec: {field} must be a non-empty string, got {value!r}")

    def _check_ints(self) -> None:
        minimum = {
            "gpus_per_pod": 0,
            "backoff_limit": 0,
            "active_deadline_seconds": 1,
            "ttl_seconds_after_finished": 0,
            "run_as_user": 1,
            "run_as_group": 0,
            "log_tail_lines": 1,
            "stuck_pod_grace_seconds": 0,
        }
        optional = ("active_deadline_seconds", "ttl_seconds_after_finished")
        for field, low in minimum.items():
            value = getattr(self, field)
            if value is None and field in optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise DKDError(f"cluster spec: {field} must be an integer >= {low}, got {value!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ClusterSpec:
        """A spec from plain JSON-able values, e.g. a pipeline's parameters.

        Keys are the field names (see the class docstring); unknown keys are
        refused. Integers and booleans may be given as strings ("4", "true");
        "" or None means None for the optional fields; `env`, `labels`,
        `node_selector` and `s3_secret_env` take an object (or a JSON string of
        one, or a list of [name, value] pairs); `tolerations` a list of objects
        (or its JSON string). Raises `DKDError` with one line naming the field.
        """
        if not isinstance(params, Mapping):
            raise DKDError(f"cluster spec parameters: expected an object, got {params!r}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise DKDError(
                f"cluster spec parameters: unknown {', '.join(map(repr, unknown))} "
                f"(expected some of {', '.join(known)})"
            )
        hints = typing.get_type_hints(cls)
        values = {name: _coerce(name, hints[name], value) for name, value in params.items()}
        return cls(**values)

    # -- pieces of the pod template ------------------------------------------------

    def check_job(self, job: StepJob) -> None:
        """Raise `DKDError` when `job` cannot run on pods of this spec."""
        if self.gpus_per_pod and job.nproc_per_node > self.gpus_per_pod:
            raise DKDError(
                f"job {job.name}: nproc_per_node={job.nproc_per_node} exceeds "
                f"gpus_per_pod={self.gpus_per_pod} (one process per GPU)"
            )

    def all_labels(self) -> dict[str, str]:
        """Labels of the job object and its pods: ours, `labels`, the KFP run and pod."""
        out = {**BASE_LABELS, **dict(self.labels)}
        if self.kfp_run_id:
            out[KFP_RUN_ID_LABEL] = label_value(self.kfp_run_id)
        if self.kfp_pod_name:
            out[KFP_POD_NAME_LABEL] = label_value(self.kfp_pod_name)
        return out

    def job_labels(self) -> dict[str, str]:
        """Labels of the job object: `all_labels` and, with `kueue_queue`, Kueue's queue label
        (on the job only: Kueue reads it there, and a queue label on a pod would make
        Kueue's pod integration, where enabled, gate the job's pods as pods of their own)."""
        out = self.all_labels()
        if self.kueue_queue:
            out[KUEUE_QUEUE_LABEL] = self.kueue_queue
        return out

    @staticmethod
    def pod_annotations() -> dict[str, str]:
        """Annotations of every job pod: no Istio sidecar (`ISTIO_INJECT`)."""
        return {ISTIO_INJECT: "false"}

    def pod_metadata(self) -> dict[str, Any]:
        """Labels and annotations of every job pod (the label form of `ISTIO_INJECT` too:
        Istio reads the label first, the annotation on older releases)."""
        return {
            "labels": {**self.all_labels(), ISTIO_INJECT: "false"},
            "annotations": self.pod_annotations(),
        }

    def resources(self) -> dict[str, dict[str, Any]]:
        """Container `resources`: cpu/memory requests and limits, GPUs as a limit."""
        requests = {"cpu": self.cpu_request, "memory": self.memory_request}
        limits: dict[str, Any] = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        if self.gpus_per_pod:
            limits[GPU_RESOURCE] = self.gpus_per_pod
        out = {
            "requests": {k: v for k, v in requests.items() if v is not None},
            "limits": {k: v for k, v in limits.items() if v is not None},
        }
        return {k: v for k, v in out.items() if v}

    def secret_env_list(self) -> list[dict[str, Any]]:
        """`s3_secret_env` as container env entries with `secretKeyRef`s."""
        return [
            {"name": name, "valueFrom": {"secretKeyRef": {"name": self.s3_secret, "key": key}}}
            for name, key in self.s3_secret_env
        ]

    def env_list(self) -> list[dict[str, Any]]:
        """Container `env`: PYTHONUNBUFFERED=1, HOME=/tmp, then `env` (later names win), and
        POD_NAMESPACE from the downward API.

        HOME is /tmp because the root filesystem is read-only and /tmp is the
        writable emptyDir. POD_NAMESPACE keeps the Pushgateway groups of two
        namespaces apart (`dkd_core.metrics`).
        """
        merged = {"PYTHONUNBUFFERED": "1", "HOME": TMP_PATH, **dict(self.env)}
        merged.pop(POD_NAMESPACE_ENV, None)
        return [{"name": k, "value": v} for k, v in merged.items()] + [
            {
                "name": POD_NAMESPACE_ENV,
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            }
        ]

    def container_security_context(self) -> dict[str, Any]:
        """Non-root, no privilege escalation, no capabilities, runtime-default seccomp."""
        ctx: dict[str, Any] = {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": self.read_only_root_filesystem,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        ctx["runAsUser"] = self.run_as_user
        ctx["runAsGroup"] = self.run_as_group
        return ctx

    def pod_security_context(self) -> dict[str, Any]:
        """The pod's, for every container of the pod (the operators' own init containers
        included): non-root with a numeric uid and gid, `fsGroup` owning the volumes,
        runtime-default seccomp.

        The kubelet refuses a container under `runAsNonRoot` whose effective uid is
        unknown and whose image runs as root (kubernetes/kubernetes
        pkg/kubelet/kuberuntime/security_context_others.go, `verifyRunAsNonRoot`); a
        numeric `runAsUser` here is what every container inherits.
        """
        return {
            "runAsNonRoot": True,
            "runAsUser": self.run_as_user,
            "runAsGroup": self.run_as_group,
            "fsGroup": self.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    def volumes(self) -> list[dict[str, Any]]:
        """/dev/shm (memory-backed: data-loader workers share tensors there) and /tmp."""
        shm: dict[str, Any] = {"medium": "Memory"}
        if self.shm_size is not None:
            shm["sizeLimit"] = self.shm_size
        tmp: dict[str, Any] = {}
        if self.tmp_size is not None:
            tmp["sizeLimit"] = self.tmp_size
        return [{"name": SHM_VOLUME, "emptyDir": shm}, {"name": TMP_VOLUME, "emptyDir": tmp}]

    @staticmethod
    def volume_mounts() -> list[dict[str, str]]:
        return [
            {"name": SHM_VOLUME, "mountPath": SHM_PATH},
            {"name": TMP_VOLUME, "mountPath": TMP_PATH},
        ]

    @staticmethod
    def metrics_port() -> dict[str, Any]:
        """The container port the PodMonitor (k8s/monitoring) scrapes."""
        return {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}

    def placement(self) -> dict[str, Any]:
        """Pod-level fields: serviceAccountName, nodeSelector, tolerations (those set)."""
        out: dict[str, Any] = {}
        if self.service_account:
            out["serviceAccountName"] = self.service_account
        if self.node_selector:
            out["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            out["tolerations"] = [dict(t) for t in self.tolerations]
        return out


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """`value` (plain JSON) as the type `hint` of field `name`; `DKDError` naming the field."""
    where = f"cluster spec parameter {name}"
    args = typing.get_args(hint)
    optional = (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args
    if optional:
        if value is None or value == "":
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise DKDError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        raise DKDError(f"{where}: expected an integer, got {value!r}")
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise DKDError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if isinstance(value, str):  # an object or list given as JSON text (e.g. from the CLI)
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except ValueError as e:
            raise DKDError(f"{where}: not valid JSON ({e.msg}): {value!r}") from None
    if name == "tolerations":
        if not isinstance(value, list | tuple) or not all(isinstance(t, Mapping) for t in value):
            raise DKDError(f"{where}: expected a list of toleration objects, got {value!r}")
        return tuple(dict(t) for t in value)
    # Pairs: an object of string values, or a list of [name, value] pairs.
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple) and all(
        isinstance(i, list | tuple) and len(i) == 2 for i in value
    ):
        items = [tuple(i) for i in value]
    else:
        raise DKDError(f"{where}: expected an object of names to values, got {value!r}")
    for k, v in items:
        if not isinstance(k, str) or not k or isinstance(v, Mapping | list | tuple) or v is None:
            raise DKDError(f"{where}: {k!r}: {v!r} is not a name and a plain value")
    return tuple((k, v if isinstance(v, str) else json.dumps(v)) for k, v in items)


# -- talking to the API server ------------------------------------------------------


def load_kube_config() -> None:
    """Configure the `kubernetes` client: in-cluster service account first, then kubeconfig."""
    try:
        from kubernetes import config
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DKDError(
            "launching on Kubernetes needs the 'kubernetes' package: "
            "pip install 'dkd-core[pipelines]'"
        ) from e
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise DKDError(
                f"no Kubernetes configuration: not in a pod and no usable kubeconfig ({e})"
            ) from e


def api_status(exc: BaseException) -> int | None:
    """HTTP status of a `kubernetes` ApiException (or look-alike), else None."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def is_transient(exc: BaseException) -> bool:
    """Whether an error talking to the API server is worth retrying.

    Throttling (429), server errors (5xx) and connection-level failures
    (urllib3 errors, OS connection errors, timeouts) are transient; anything
    else (403, 404, 422, ...) is not.
    """
    status = api_status(exc)
    if status is not None:
        return status == 429 or status >= 500
    transient: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    try:
        from urllib3.exceptions import HTTPError

        transient += (HTTPError,)
    except ImportError:  # pragma: no cover - urllib3 comes with kubernetes
        pass
    return isinstance(exc, transient)


def api_error_message(exc: BaseException) -> str:
    """A one-line account of an API error: status, reason and the server's message."""
    status = api_status(exc)
    body = getattr(exc, "body", None)
    message = ""
    if body:
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, TypeError, AttributeError):
            message = str(body)[:500]
    reason = getattr(exc, "reason", None) or type(exc).__name__
    head = f"HTTP {status} {reason}" if status is not None else f"{reason}: {exc}"
    return f"{head}: {message}" if message else head
