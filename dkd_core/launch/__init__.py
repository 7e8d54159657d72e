"""Turn one CISS step into a process or a Kubernetes job, and watch it to the end.

Backends (`launch_step(backend, job, spec, **kw)`):

- `local`: `python -m torch.distributed.run ... -m dkd_core train ...` as a
  subprocess of this interpreter (`run_local`);
- `pytorchjob`: a Kubeflow Training Operator v1 `PyTorchJob` (`PyTorchJobLauncher`);
- `trainjob`: a Kubeflow Trainer v2 `TrainJob` (`TrainJobLauncher`).

Every backend returns on success and raises `DKDError` otherwise.
`render_job(job, spec, kind)` returns the exact manifest a cluster backend
creates (a dry run: pipe its YAML to `kubectl apply --dry-run=server -f -`).
Rendering manifests needs neither torch nor the `kubernetes` package; talking
to a cluster needs `kubernetes`, imported only then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dkd_core.errors import DKDError
from dkd_core.launch.cluster import (
    DEFAULT_RUNTIME,
    KFP_POD_NAME_LABEL,
    KFP_RUN_ID_LABEL,
    ClusterSpec,
    label_value,
)
from dkd_core.launch.job import StepJob, job_name, validate_name
from dkd_core.launch.local import local_command, run_local
from dkd_core.launch.pytorchjob import PYTORCHJOB, PyTorchJobLauncher, render_pytorchjob
from dkd_core.launch.trainjob import PATCH_MANAGER, TRAINJOB, TrainJobLauncher, render_trainjob
from dkd_core.launch.watch import (
    ClusterLauncher,
    CustomObjectsAPI,
    JobKind,
    KubePods,
    PodsAPI,
)

#: Default wait for a cluster job launched through `launch_step`: one day.
DEFAULT_TIMEOUT_SECONDS = 24 * 3600

Log = Callable[[str], None]


def _launch_local(
    job: StepJob,
    spec: ClusterSpec | None = None,
    *,
    env: Mapping[str, str] | None = None,
    log: Log = print,
    cwd: str | Path | None = None,
    argv: Sequence[str] | None = None,
    timeout_seconds: float | None = None,
) -> None:
    """`run_local`; a `ClusterSpec`, if given, is ignored (it describes pods)."""
    run_local(job, env=env, log=log, cwd=cwd, argv=argv, timeout_seconds=timeout_seconds)


def _need_spec(backend: str, spec: ClusterSpec | None) -> ClusterSpec:
    if not isinstance(spec, ClusterSpec):
        raise DKDError(f"backend {backend!r} needs a ClusterSpec (namespace, image, ...)")
    return spec


def _cluster_backend(backend: str, launcher_class: type[ClusterLauncher]) -> Callable[..., None]:
    """`launcher_class(api, pod_logs, **options).launch(...)` behind the `launch_step` signature."""

    def launch(
        job: StepJob,
        spec: ClusterSpec | None = None,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        queue_timeout_seconds: float | None = None,
        poll_seconds: float = 10.0,
        keep: bool = False,
        log: Log = print,
        api: CustomObjectsAPI | None = None,
        pods: PodsAPI | None = None,
        **options: Any,  # trainjob: runtime
    ) -> None:
        launcher = launcher_class(api, pods, **options)
        launcher.launch(
            job, _need_spec(backend, spec), timeout_seconds, poll_seconds, keep, log,
            queue_timeout_seconds=queue_timeout_seconds,
        )  # fmt: skip

    launch.__name__ = f"launch_{backend}"
    return launch


#: Job kinds `render_job` renders, by backend name.
RENDERERS: dict[str, Callable[[StepJob, ClusterSpec], dict[str, Any]]] = {
    "pytorchjob": render_pytorchjob,
    "trainjob": render_trainjob,
}


def render_job(job: StepJob, spec: ClusterSpec, kind: str = "pytorchjob") -> dict[str, Any]:
    """The exact manifest the `kind` backend ("pytorchjob" or "trainjob") creates for `job`.

    A plain dict, ready for `yaml.safe_dump`/`json.dumps`; the TrainJob references
    `spec.trainjob_runtime`. Raises `DKDError` for an unknown kind or a job the
    pods cannot run (e.g. more processes than GPUs, a name too long for the
    operator's pod names).
    """
    try:
        renderer = RENDERERS[kind]
    except (KeyError, TypeError):
        raise DKDError(
            f"unknown job kind {kind!r}: expected one of {', '.join(sorted(RENDERERS))}"
        ) from None
    return renderer(job, _need_spec(kind, spec))


#: Backend name -> `fn(job, spec=None, **kw)`; see `launch_step`.
LAUNCHERS: dict[str, Callable[..., None]] = {
    "local": _launch_local,
    "pytorchjob": _cluster_backend("pytorchjob", PyTorchJobLauncher),
    "trainjob": _cluster_backend("trainjob", TrainJobLauncher),
}


def launch_step(backend: str, job: StepJob, spec: ClusterSpec | None = None, **kw: Any) -> None:
    """Run `job` with `backend` and wait for it; return on success, `DKDError` otherwise.

    Keyword arguments go to the backend: `local` takes env, log, cwd, argv, timeout_seconds;
    `pytorchjob` and `trainjob` take timeout_seconds (default 24 h),
    queue_timeout_seconds (how long the job may wait suspended in a Kueue queue, or
    for Unschedulable pods; default timeout_seconds), poll_seconds, keep, log, api, pods, and `trainjob` also runtime (default:
    `spec.trainjob_runtime`).
    """
    try:
        launcher = LAUNCHERS[backend]
    except (KeyError, TypeError):
        raise DKDError(
            f"unknown launch backend {backend!r}: expected one of {', '.join(sorted(LAUNCHERS))}"
        ) from None
    launcher(job, spec, **kw)


__all__ = [
    "DEFAULT_RUNTIME",
    "DEFAULT_TIMEOUT_SECONDS",
    "KFP_POD_NAME_LABEL",
    "KFP_RUN_ID_LABEL",
    "LAUNCHERS",
    "PATCH_MANAGER",
    "PYTORCHJOB",
    "RENDERERS",
    "TRAINJOB",
    "ClusterLauncher",
    "ClusterSpec",
    "CustomObjectsAPI",
    "JobKind",
    "KubePods",
    "PodsAPI",
    "PyTorchJobLauncher",
    "StepJob",
    "TrainJobLauncher",
    "job_name",
    "label_value",
    "launch_step",
    "local_command",
    "render_job",
    "render_pytorchjob",
    "render_trainjob",
    "run_local",
    "validate_name",
]
