"""Where and how a step's pods run on Kubernetes: `ClusterSpec`, shared by both job kinds.

Also the small pieces both manifests are built from (container resources,
security context, the /dev/shm volume, env) and the helpers that talk to the
API server (`load_kube_config`, `is_transient`, `api_error_message`). The
`kubernetes` package is imported only inside the functions that need it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dkd_core.errors import DKDError
from dkd_core.launch.job import StepJob

GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"
CLEAN_POD_POLICIES = ("None", "Running", "All")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
#: Labels put on every job and pod, before `ClusterSpec.labels`.
BASE_LABELS = {"app.kubernetes.io/part-of": "dkd", "app.kubernetes.io/component": "train"}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
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


@dataclass(frozen=True)
class ClusterSpec:
    """Pod settings of a step's job; the same spec serves PyTorchJob and TrainJob.

    Quantities (`cpu_*`, `memory_*`, `shm_size`) are Kubernetes quantities
    ("4", "500m", "16Gi"); `None` leaves a request/limit unset. `env`,
    `node_selector` and `labels` also accept a mapping. `s3_secret` names a
    Secret with the S3 credentials. `s3_secret_env` maps environment variable
    names to its keys (e.g. KFP's `mlpipeline-minio-artifact`: AWS_ACCESS_KEY_ID
    -> accesskey) and is rendered as `secretKeyRef`s; without it a PyTorchJob
    takes every key of the Secret under its own name (`envFrom`). A TrainJob
    (release 2.3) has no `envFrom` for the trainer, so it needs `s3_secret_env`.
    """

    namespace: str
    image: str
    image_pull_policy: str = "IfNotPresent"
    gpus_per_pod: int = 0
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    shm_size: str | None = "8Gi"
    s3_secret: str | None = None
    s3_secret_env: Pairs = ()  # (environment variable, Secret key)
    env: Pairs = ()
    service_account: str | None = None
    node_selector: Pairs = ()
    tolerations: tuple[Mapping[str, Any], ...] = ()
    clean_pod_policy: str = "Running"
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = 3600
    labels: Pairs = ()
    run_as_user: int | None = None

    def __post_init__(self) -> None:
        for field in ("env", "node_selector", "labels", "s3_secret_env"):
            object.__setattr__(self, field, _pairs(getattr(self, field), field))
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
        for field in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size"):
            value = getattr(self, field)
            if value is not None and not _QUANTITY.match(str(value)):
                raise DKDError(
                    f"cluster spec: {field} {value!r} is not a Kubernetes quantity "
                    "(e.g. '4', '500m', '16Gi')"
                )
        for name, _ in self.env:
            if "=" in name:
                raise DKDError(f"cluster spec env: {name!r} is not a valid variable name")
        for key, value in (*BASE_LABELS.items(), *self.labels):
            _check_label(key, value, "labels")
        for secret in (self.s3_secret, self.service_account):
            if secret is not None and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", secret):
                raise DKDError(f"cluster spec: {secret!r} is not a valid object name")

    def _check_ints(self) -> None:
        minimum = {
            "gpus_per_pod": 0,
            "backoff_limit": 0,
            "active_deadline_seconds": 1,
            "ttl_seconds_after_finished": 0,
            "run_as_user": 1,
        }
        for field, low in minimum.items():
            value = getattr(self, field)
            if value is None and field not in ("gpus_per_pod", "backoff_limit"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise DKDError(f"cluster spec: {field} must be an integer >= {low}, got {value!r}")

    # -- pieces of the pod template ------------------------------------------------

    def check_job(self, job: StepJob) -> None:
        """Raise `DKDError` when `job` cannot run on pods of this spec."""
        if self.gpus_per_pod and job.nproc_per_node > self.gpus_per_pod:
            raise DKDError(
                f"job {job.name}: nproc_per_node={job.nproc_per_node} exceeds "
                f"gpus_per_pod={self.gpus_per_pod} (one process per GPU)"
            )

    def all_labels(self) -> dict[str, str]:
        """Labels of the job object and its pods."""
        return {**BASE_LABELS, **dict(self.labels)}

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
        """Container `env`: `PYTHONUNBUFFERED=1` then `env` (later names win, no duplicates)."""
        merged = {"PYTHONUNBUFFERED": "1", **dict(self.env)}
        return [{"name": k, "value": v} for k, v in merged.items()]

    def container_security_context(self) -> dict[str, Any]:
        """Non-root, no privilege escalation, no capabilities, runtime-default seccomp."""
        ctx: dict[str, Any] = {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        if self.run_as_user is not None:
            ctx["runAsUser"] = self.run_as_user
        return ctx

    def shm_volume(self) -> dict[str, Any]:
        """A memory-backed emptyDir for /dev/shm (data-loader workers share tensors there)."""
        empty_dir: dict[str, Any] = {"medium": "Memory"}
        if self.shm_size is not None:
            empty_dir["sizeLimit"] = self.shm_size
        return {"name": SHM_VOLUME, "emptyDir": empty_dir}

    @staticmethod
    def shm_mount() -> dict[str, str]:
        return {"name": SHM_VOLUME, "mountPath": SHM_PATH}

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
