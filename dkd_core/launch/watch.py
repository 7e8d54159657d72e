"""Create a training job custom resource, wait for its outcome, clean it up.

One implementation for both operators: a `JobKind` says which resource it is
and which condition types mean success and failure (PyTorchJob: `Succeeded` /
`Failed`; TrainJob: `Complete` / `Failed`). `ClusterLauncher.launch` waits
only for those two with status "True": every other condition (Created,
Running, Restarting, Suspended, ...) means "keep waiting", until an explicit
deadline. Transient API errors (429, 5xx, connection errors) while polling
are retried. Everything that talks to the cluster is injectable (`api`,
`pod_logs`, `clock`, `sleep`), so the loop is tested without one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from dkd_core.errors import DKDError
from dkd_core.launch.cluster import (
    ClusterSpec,
    api_error_message,
    api_status,
    is_transient,
    load_kube_config,
)
from dkd_core.launch.job import StepJob

Log = Callable[[str], None]
#: (namespace, label selector, container) -> the last lines of the failing pod's log.
PodLogReader = Callable[[str, str, str], str]

LOG_TAIL_LINES = 50
_CREATE_ATTEMPTS = 5
_DELETE_ATTEMPTS = 3


class CustomObjectsAPI(Protocol):
    """The part of `kubernetes.client.CustomObjectsApi` the launchers use."""

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: Any, **kw: Any
    ) -> Any: ...

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **kw: Any
    ) -> Any: ...

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **kw: Any
    ) -> Any: ...


@dataclass(frozen=True)
class JobKind:
    """A training-job custom resource and how to read its outcome."""

    kind: str
    group: str
    version: str
    plural: str
    success: str  # condition type that means the job finished successfully
    failure: str  # condition type that means it failed for good
    pod_label: str  # label whose value is the job name, on the job's pods
    container: str  # the training container in those pods

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def conditions_of(obj: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """`status.conditions` of a custom object, [] when there are none yet."""
    status = (obj or {}).get("status") or {}
    return [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]


def true_condition(conditions: Iterable[Mapping[str, Any]], ctype: str) -> Mapping[str, Any] | None:
    """The condition of type `ctype` whose status is "True", if any."""
    for c in conditions:
        if c.get("type") == ctype and str(c.get("status")) == "True":
            return c
    return None


def describe_conditions(conditions: Sequence[Mapping[str, Any]]) -> str:
    """E.g. `Created=True, Running=True (PyTorchJobRunning)`; `none` when empty."""
    if not conditions:
        return "none"
    parts = []
    for c in conditions:
        text = f"{c.get('type')}={c.get('status')}"
        if c.get("reason"):
            text += f" ({c['reason']})"
        parts.append(text)
    return ", ".join(parts)


def _latest_true(conditions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    current = [c for c in conditions if str(c.get("status")) == "True"]
    return current[-1] if current else None


# -- pod logs ---------------------------------------------------------------------


def pick_failing_pod(pods: Iterable[Any], container: str) -> tuple[str, bool] | None:
    """(pod name, previous) of the pod whose log best explains a failure.

    Works on `kubernetes.client.V1Pod` objects. Preference: a pod in phase
    Failed; a pod whose `container` terminated with a non-zero exit code; one
    whose previous run of it did (its log is read with `previous=True`, since
    `restartPolicy: OnFailure` restarts containers in place); else the first pod.
    """
    best: tuple[int, str, bool] | None = None
    for pod in pods:
        name = pod.metadata.name
        status = pod.status
        rank, previous = 3, False
        if getattr(status, "phase", None) == "Failed":
            rank = 0
        for cs in getattr(status, "container_statuses", None) or []:
            if cs.name != container:
                continue
            state = getattr(cs.state, "terminated", None) if cs.state else None
            last = getattr(cs.last_state, "terminated", None) if cs.last_state else None
            if state is not None and state.exit_code not in (0, None):
                rank = min(rank, 1)
            elif last is not None and last.exit_code not in (0, None) and rank > 2:
                rank, previous = 2, True
        if best is None or rank < best[0]:
            best = (rank, name, previous)
    return None if best is None else (best[1], best[2])


class KubePodLogs:
    """Reads the last lines of the failing pod of a job with `CoreV1Api`."""

    def __init__(self, core_api: Any = None, tail_lines: int = LOG_TAIL_LINES) -> None:
        self._core = core_api
        self.tail_lines = tail_lines

    def _api(self) -> Any:
        if self._core is None:
            load_kube_config()
            from kubernetes import client

            self._core = client.CoreV1Api()
        return self._core

    def __call__(self, namespace: str, selector: str, container: str) -> str:
        api = self._api()
        pods = api.list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=60
        ).items
        picked = pick_failing_pod(pods, container)
        if picked is None:
            return f"(no pods match {selector})"
        name, previous = picked
        text = api.read_namespaced_pod_log(
            name,
            namespace,
            container=container,
            tail_lines=self.tail_lines,
            previous=previous,
            _request_timeout=60,
        )
        run = "previous run of " if previous else ""
        return f"[{run}pod {name}]\n{text or '(empty log)'}"


# -- the launcher -----------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_raises(what: str) -> Iterator[None]:
    """While waiting, SIGTERM (a cancelled pipeline run stops the component's pod) raises,
    so the caller's `finally` deletes the job instead of leaving it running."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def cancelled(signum: int, frame: Any) -> None:
        raise DKDError(f"cancelled (SIGTERM) while waiting for {what}; deleting the job")

    previous = signal.signal(signal.SIGTERM, cancelled)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ClusterLauncher:
    """Runs a `StepJob` as a training-job custom resource and waits for it to finish.

    Subclasses set `kind` and implement `render`. `api` is a
    `kubernetes.client.CustomObjectsApi` (created on first use, after loading
    the in-cluster config or a kubeconfig, when None); `pod_logs` reads a
    failing pod's log (`KubePodLogs` by default); `clock` and `sleep` are
    injectable for tests.
    """

    kind: ClassVar[JobKind]

    def __init__(
        self,
        api: CustomObjectsAPI | None = None,
        pod_logs: PodLogReader | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        request_timeout: float = 60.0,
    ) -> None:
        self._api = api
        self._pod_logs = pod_logs
        self._clock = clock
        self._sleep = sleep
        self.request_timeout = request_timeout

    def render(self, job: StepJob, spec: ClusterSpec) -> dict[str, Any]:
        """The manifest of `job` on `spec`."""
        raise NotImplementedError

    @property
    def api(self) -> CustomObjectsAPI:
        if self._api is None:
            load_kube_config()
            from kubernetes import client

            self._api = client.CustomObjectsApi()
        return self._api

    def launch(
        self,
        job: StepJob,
        spec: ClusterSpec,
        timeout_seconds: float,
        poll_seconds: float = 10.0,
        keep: bool = False,
        log: Log = print,
    ) -> None:
        """Create the job, wait until it succeeds, delete it (unless `keep`).

        Raises `DKDError` when the job fails (with the failure condition's
        message and the last lines of the failing pod's log), when it has not
        finished after `timeout_seconds` (counted from the call, creation
        included), or when the API refuses it.
        """
        if not timeout_seconds > 0 or not poll_seconds > 0:
            raise DKDError(
                f"timeout_seconds and poll_seconds must be > 0, got {timeout_seconds} "
                f"and {poll_seconds}"
            )
        manifest = self.render(job, spec)
        k, ns, name = self.kind, spec.namespace, job.name
        deadline = self._clock() + timeout_seconds
        created = False
        try:
            with _sigterm_raises(f"{k.kind} {ns}/{name}"):
                self._create(manifest, ns, name, deadline, poll_seconds, log)
                created = True
                log(f"{k.kind} {ns}/{name} created; waiting up to {timeout_seconds:g} s")
                self._wait(ns, name, deadline, timeout_seconds, poll_seconds, keep, log)
        finally:
            if created and not keep:
                self._delete(ns, name, poll_seconds, log)
            elif created:
                log(f"{k.kind} {ns}/{name} kept (keep=True)")

    # -- steps of launch ------------------------------------------------------------

    def _create(
        self,
        manifest: dict[str, Any],
        ns: str,
        name: str,
        deadline: float,
        poll_seconds: float,
        log: Log,
    ) -> None:
        k = self.kind
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                self.api.create_namespaced_custom_object(
                    k.group,
                    k.version,
                    ns,
                    k.plural,
                    manifest,
                    _request_timeout=self.request_timeout,
                )
                return
            except Exception as e:
                status = api_status(e)
                if status == 409 and attempt > 1:
                    return  # an earlier attempt reached the server after all
                if status == 409:
                    raise DKDError(
                        f"{k.kind} {ns}/{name} already exists: delete it "
                        f"(kubectl delete {k.plural}.{k.group} -n {ns} {name}) or pick another "
                        "job name"
                    ) from e
                if status == 404:
                    raise DKDError(
                        f"cannot create {k.kind} {ns}/{name}: {api_error_message(e)} "
                        f"(is the {k.api_version} CRD installed and the namespace there?)"
                    ) from e
                transient = is_transient(e)
                if not transient and status is None:
                    raise  # not an answer from the API server: a bug, let it surface
                if not transient or attempt == _CREATE_ATTEMPTS or self._clock() >= deadline:
                    raise DKDError(
                        f"cannot create {k.kind} {ns}/{name}: {api_error_message(e)}"
                    ) from e
                log(f"creating {k.kind} {ns}/{name}: {api_error_message(e)}; retrying")
                self._sleep(min(poll_seconds, max(deadline - self._clock(), 0.0)))

    def _wait(
        self,
        ns: str,
        name: str,
        deadline: float,
        timeout_seconds: float,
        poll_seconds: float,
        keep: bool,
        log: Log,
    ) -> None:
        k = self.kind
        conditions: list[Mapping[str, Any]] = []
        state: str | None = None
        while True:
            try:
                obj = self.api.get_namespaced_custom_object(
                    k.group, k.version, ns, k.plural, name, _request_timeout=self.request_timeout
                )
                conditions = conditions_of(obj)
            except Exception as e:
                if api_status(e) == 404:
                    raise DKDError(
                        f"{k.kind} {ns}/{name} disappeared while we waited for it (deleted by "
                        f"someone else?); last conditions: {describe_conditions(conditions)}"
                    ) from e
                if not is_transient(e):
                    if api_status(e) is None:
                        raise
                    raise DKDError(
                        f"cannot read {k.kind} {ns}/{name}: {api_error_message(e)}"
                    ) from e
                log(f"{k.kind} {ns}/{name}: {api_error_message(e)}; retrying")
            else:
                failed = true_condition(conditions, k.failure)
                if failed is not None:
                    raise DKDError(self._failure_message(ns, name, failed))
                if true_condition(conditions, k.success) is not None:
                    log(f"{k.kind} {ns}/{name}: {k.success}")
                    return
                latest = _latest_true(conditions)
                now_state = describe_conditions([latest]) if latest else None
                if now_state and now_state != state:
                    message = latest.get("message") if latest else None
                    log(f"{k.kind} {ns}/{name}: {now_state}" + (f": {message}" if message else ""))
                    state = now_state
            remaining = deadline - self._clock()
            if remaining <= 0:
                fate = (
                    "it is kept (keep=True)"
                    if keep
                    else "it is deleted now (pass keep=True to keep it)"
                )
                raise DKDError(
                    f"{k.kind} {ns}/{name} did not finish within the timeout of "
                    f"{timeout_seconds:g} s; last conditions: {describe_conditions(conditions)}; "
                    f"{fate}"
                )
            self._sleep(min(poll_seconds, remaining))

    def _failure_message(self, ns: str, name: str, failed: Mapping[str, Any]) -> str:
        k = self.kind
        why = ": ".join(str(failed[f]) for f in ("reason", "message") if failed.get(f))
        selector = f"{k.pod_label}={name}"
        reader = self._pod_logs if self._pod_logs is not None else KubePodLogs()
        try:
            logs = reader(ns, selector, k.container)
        except Exception as e:
            logs = f"(could not read the pod log: {api_error_message(e)})"
        return (
            f"{k.kind} {ns}/{name} failed: {why or 'no message'}\n"
            f"--- last {LOG_TAIL_LINES} log lines ({selector}) ---\n{logs.rstrip()}"
        )

    def _delete(self, ns: str, name: str, poll_seconds: float, log: Log) -> None:
        k = self.kind
        for attempt in range(1, _DELETE_ATTEMPTS + 1):
            try:
                self.api.delete_namespaced_custom_object(
                    k.group,
                    k.version,
                    ns,
                    k.plural,
                    name,
                    propagation_policy="Background",
                    _request_timeout=self.request_timeout,
                )
                log(f"{k.kind} {ns}/{name} deleted")
                return
            except Exception as e:
                if api_status(e) == 404:
                    return  # already gone: fine
                if is_transient(e) and attempt < _DELETE_ATTEMPTS:
                    self._sleep(min(poll_seconds, 5.0))
                    continue
                # Never mask the outcome of the job (or the error in flight) with this one.
                log(f"warning: could not delete {k.kind} {ns}/{name}: {api_error_message(e)}")
                return
