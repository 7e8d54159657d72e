"""Create a training job custom resource, wait for its outcome, clean it up.

One implementation for both operators: a `JobKind` says which resource it is
and which condition types mean success and failure (PyTorchJob: `Succeeded` /
`Failed`; TrainJob: `Complete` / `Failed`). `ClusterLauncher.launch` waits
only for those two with status "True": every other condition (Created,
Running, Restarting, Suspended, ...) means "keep waiting", until an explicit
deadline. Transient API errors (429, 5xx, connection errors) while polling
are retried.

Queues: a suspended job (Kueue creates a job labelled with a LocalQueue suspended, and
unsuspends it once admitted) is queued, not stuck: the launcher waits, logging the
admission status of the job's Kueue Workload, for at most the queue timeout
(`queue_timeout_seconds`, default the step's timeout); the time spent queued does not
count against the step's timeout. A pod that stays Unschedulable (GPUs busy, a node
still being added by an autoscaler) is waited for up to the queue timeout too.

A retried pipeline step creates a job of the same name: when the create answers
409 (AlreadyExists) the existing job is adopted and waited on if it is ours (our
labels, the same pipeline run), or deleted and created anew if it had failed.
While waiting, the job's pods are watched: one that stays in ImagePullBackOff,
ErrImagePull, InvalidImageName or CreateContainerConfigError for
`ClusterSpec.stuck_pod_grace_seconds` fails the step with the pod's reason, long
before the step's timeout. Everything that talks to the cluster is injectable
(`api`, `pods`, `clock`, `sleep`), so the loop is tested without one.

API calls, i.e. what the Role in k8s/base/rbac must grant and grants: create,
get and delete of the job resource; list of pods; get of pods/log; list of Kueue
Workloads (only while a job is suspended; refused is logged, not fatal).
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
    BASE_LABELS,
    KFP_RUN_ID_LABEL,
    ClusterSpec,
    api_error_message,
    api_status,
    is_transient,
    label_value,
    load_kube_config,
)
from dkd_core.launch.job import StepJob

Log = Callable[[str], None]

#: Waiting reasons of a container that do not go away by waiting (a wrong image or
#: registry credentials, a missing Secret/ConfigMap key).
STUCK_WAITING_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"}
)
UNSCHEDULABLE = "Unschedulable"
_CREATE_ATTEMPTS = 5
_DELETE_ATTEMPTS = 3
#: How long a failed job of an earlier attempt may take to go away before we give up.
_REPLACE_SECONDS = 600
#: Kueue's Workload (kubernetes-sigs/kueue v0.19.2: v1beta2 is served and stored, v1beta1
#: deprecated) and the label tying it to its job (pkg/controller/constants `JobUIDLabel`).
KUEUE_GROUP, KUEUE_VERSION, KUEUE_WORKLOADS = "kueue.x-k8s.io", "v1beta2", "workloads"
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
#: Condition type both operators set while a job is suspended (training operator v1.9.4
#: `JobSuspended`, Trainer v2.3.0 `TrainJobSuspended`).
SUSPENDED = "Suspended"


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

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, **kw: Any
    ) -> Any: ...


class PodsAPI(Protocol):
    """What the launchers read about a job's pods (`KubePods` with a cluster)."""

    def list_pods(self, namespace: str, selector: str) -> Sequence[Any]:
        """The pods matching a label selector, as `kubernetes.client.V1Pod` objects."""
        ...

    def read_log(
        self, namespace: str, pod: str, container: str, tail_lines: int, previous: bool
    ) -> str:
        """The last `tail_lines` lines of a container's log (of its previous run)."""
        ...


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
    suspend_field: tuple[str, ...]  # path of the job's `suspend` flag (what Kueue sets)

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


def is_suspended(obj: Mapping[str, Any] | None, kind: JobKind) -> bool:
    """Whether the job is suspended: its `suspend` flag, or a Suspended=True condition."""
    value: Any = obj or {}
    for key in kind.suspend_field:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value is True or true_condition(conditions_of(obj), SUSPENDED) is not None


def _latest_true(conditions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    current = [c for c in conditions if str(c.get("status")) == "True"]
    return current[-1] if current else None


# -- pods ---------------------------------------------------------------------


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


def stuck_reason(pod: Any) -> tuple[str, str] | None:
    """(reason, message) when `pod` (a `V1Pod`) waits on something that waiting will not fix.

    A container (or init container) waiting in one of `STUCK_WAITING_REASONS`, or
    the condition PodScheduled=False with reason Unschedulable (no node fits its
    requests, selector and tolerations). A pod being deleted is never stuck.
    """
    if getattr(pod.metadata, "deletion_timestamp", None):
        return None
    status = pod.status
    if status is None:
        return None
    for cs in [
        *(getattr(status, "init_container_statuses", None) or []),
        *(getattr(status, "container_statuses", None) or []),
    ]:
        waiting = getattr(cs.state, "waiting", None) if cs.state else None
        if waiting is not None and waiting.reason in STUCK_WAITING_REASONS:
            return waiting.reason, f"container {cs.name}: {waiting.message or 'no message'}"
    for c in getattr(status, "conditions", None) or []:
        if c.type == "PodScheduled" and str(c.status) == "False" and c.reason == UNSCHEDULABLE:
            return UNSCHEDULABLE, c.message or "no message"
    return None


class KubePods:
    """`PodsAPI` over `kubernetes.client.CoreV1Api` (created on first use when None)."""

    def __init__(self, core_api: Any = None, request_timeout: float = 60.0) -> None:
        self._core = core_api
        self.request_timeout = request_timeout

    def _api(self) -> Any:
        if self._core is None:
            load_kube_config()
            from kubernetes import client

            self._core = client.CoreV1Api()
        return self._core

    def list_pods(self, namespace: str, selector: str) -> Sequence[Any]:
        return (
            self._api()
            .list_namespaced_pod(
                namespace, label_selector=selector, _request_timeout=self.request_timeout
            )
            .items
        )

    def read_log(
        self, namespace: str, pod: str, container: str, tail_lines: int, previous: bool
    ) -> str:
        return self._api().read_namespaced_pod_log(
            pod,
            namespace,
            container=container,
            tail_lines=tail_lines,
            previous=previous,
            _request_timeout=self.request_timeout,
        )


def failing_pod_log(
    pods: PodsAPI, namespace: str, selector: str, container: str, tail_lines: int
) -> str:
    """The last `tail_lines` lines of the pod that best explains a failure, with a header."""
    picked = pick_failing_pod(pods.list_pods(namespace, selector), container)
    if picked is None:
        return f"(no pods match {selector})"
    name, previous = picked
    text = pods.read_log(namespace, name, container, tail_lines, previous)
    run = "previous run of " if previous else ""
    return f"[{run}pod {name}, last {tail_lines} lines]\n{text or '(empty log)'}"


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


def ownership_problem(obj: Mapping[str, Any], spec: ClusterSpec) -> str | None:
    """Why an existing job of our name is not ours to adopt, or None when it is.

    Ours: it carries `BASE_LABELS` and, when `spec` knows the pipeline run
    (`kfp_run_id`), the same run id label (a retry of a step keeps the run id; its
    pod name changes, so that label is not compared).
    """
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    missing = {k: v for k, v in BASE_LABELS.items() if labels.get(k) != v}
    if missing:
        wanted = ", ".join(f"{k}={v}" for k, v in missing.items())
        return f"it lacks the labels {wanted}: it was not created by dkd_core.launch"
    if spec.kfp_run_id and labels.get(KFP_RUN_ID_LABEL) != label_value(spec.kfp_run_id):
        return (
            f"it belongs to another pipeline run ({KFP_RUN_ID_LABEL}="
            f"{labels.get(KFP_RUN_ID_LABEL, '(none)')}, this run is {label_value(spec.kfp_run_id)})"
        )
    return None


@dataclass
class _Limits:
    """The clocks of one wait: the step's deadline, pushed back by the time the job spends
    queued (suspended), and the total time queued, bounded by `queue_timeout`."""

    deadline: float
    timeout: float
    queue_timeout: float
    queued_before: float = 0.0  # seconds queued in earlier spells
    queued_since: float | None = None

    def queue(self, now: float) -> bool:
        """The job is suspended at `now`; True when a spell of queueing starts."""
        if self.queued_since is None:
            self.queued_since = now
            return True
        return False

    def admit(self, now: float) -> float | None:
        """The job runs at `now`; the seconds of the spell that ended, if one did."""
        if self.queued_since is None:
            return None
        spell = now - self.queued_since
        self.queued_before += spell
        self.queued_since = None
        return spell

    def queued(self, now: float) -> float:
        current = now - self.queued_since if self.queued_since is not None else 0.0
        return self.queued_before + current

    def remaining(self, now: float) -> float:
        """Seconds until the step's deadline or, while queued, the queue's, whichever first."""
        left = self.deadline + self.queued(now) - now
        if self.queued_since is not None:
            left = min(left, self.queue_timeout - self.queued(now))
        return left


class ClusterLauncher:
    """Runs a `StepJob` as a training-job custom resource and waits for it to finish.

    Subclasses set `kind` and implement `render`. `api` is a
    `kubernetes.client.CustomObjectsApi` (created on first use, after loading
    the in-cluster config or a kubeconfig, when None); `pods` reads the job's
    pods and logs (`KubePods` by default); `clock` and `sleep` are injectable
    for tests.
    """

    kind: ClassVar[JobKind]

    def __init__(
        self,
        api: CustomObjectsAPI | None = None,
        pods: PodsAPI | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        request_timeout: float = 60.0,
    ) -> None:
        self._api = api
        self._pods = pods
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

    @property
    def pods(self) -> PodsAPI:
        if self._pods is None:
            self._pods = KubePods(request_timeout=self.request_timeout)
        return self._pods

    def launch(
        self,
        job: StepJob,
        spec: ClusterSpec,
        timeout_seconds: float,
        poll_seconds: float = 10.0,
        keep: bool = False,
        log: Log = print,
        queue_timeout_seconds: float | None = None,
    ) -> None:
        """Create (or adopt) the job, wait until it succeeds, delete it.

        The job is kept, not deleted, when `keep` is true or
        `spec.delete_after_done` is false. Raises `DKDError` when the job fails
        (with the failure condition's message and the last
        `spec.log_tail_lines` lines of the failing pod's log), when one of its
        pods is stuck for `spec.stuck_pod_grace_seconds` (Unschedulable: for
        `queue_timeout_seconds`), when it has been suspended (queued) for
        `queue_timeout_seconds` in all (default: `timeout_seconds`), when it has not
        finished after `timeout_seconds` plus the time it was queued (counted from
        the call, creation included), or when the API refuses it.
        """
        queue_timeout = timeout_seconds if queue_timeout_seconds is None else queue_timeout_seconds
        if not timeout_seconds > 0 or not poll_seconds > 0 or not queue_timeout > 0:
            raise DKDError(
                f"timeout_seconds, queue_timeout_seconds and poll_seconds must be > 0, got "
                f"{timeout_seconds}, {queue_timeout} and {poll_seconds}"
            )
        keep = keep or not spec.delete_after_done
        manifest = self.render(job, spec)
        k, ns, name = self.kind, spec.namespace, job.name
        deadline = self._clock() + timeout_seconds
        ours = False  # the job exists and is ours: delete it when done (unless keep)
        try:
            with _sigterm_raises(f"{k.kind} {ns}/{name}"):
                adopted = self._create(manifest, spec, deadline, poll_seconds, log)
                ours = True
                verb = "exists from an earlier attempt: adopted" if adopted else "created"
                queue = f" (Kueue queue {spec.kueue_queue})" if spec.kueue_queue else ""
                log(f"{k.kind} {ns}/{name} {verb}{queue}; waiting up to {timeout_seconds:g} s")
                limits = _Limits(deadline, timeout_seconds, queue_timeout)
                self._wait(spec, name, limits, poll_seconds, keep, log)
        finally:
            if ours and not keep:
                self._delete(ns, name, poll_seconds, log)
            elif ours:
                log(
                    f"{k.kind} {ns}/{name} kept for inspection; remove it with "
                    f"kubectl delete {k.plural}.{k.group} -n {ns} {name}"
                )

    # -- steps of launch ------------------------------------------------------------

    def _get(self, ns: str, name: str) -> Any:
        k = self.kind
        return self.api.get_namespaced_custom_object(
            k.group, k.version, ns, k.plural, name, _request_timeout=self.request_timeout
        )

    def _create(
        self,
        manifest: dict[str, Any],
        spec: ClusterSpec,
        deadline: float,
        poll_seconds: float,
        log: Log,
    ) -> bool:
        """Create the job; True when a job of that name existed and is adopted instead."""
        k, ns, name = self.kind, spec.namespace, manifest["metadata"]["name"]
        replaced = False
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                self.api.create_namespaced_custom_object(
                    k.group,
                    k.version,
                    ns,
                    k.plural,
                    manifest,
                    # Refuse fields the CRD does not know instead of dropping them silently.
                    field_validation="Strict",
                    _request_timeout=self.request_timeout,
                )
                return False
            except Exception as e:
                status = api_status(e)
                if status == 409:
                    # A retry of the step (or an earlier attempt of this create that
                    # reached the server after all): adopt the job if it is ours.
                    if self._adopt(spec, name, replaced, deadline, poll_seconds, log):
                        return True
                    replaced = True
                    continue
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
        raise DKDError(f"cannot create {k.kind} {ns}/{name}: it exists again after being replaced")

    def _adopt(
        self,
        spec: ClusterSpec,
        name: str,
        replaced: bool,
        deadline: float,
        poll_seconds: float,
        log: Log,
    ) -> bool:
        """A job named `name` exists: True to adopt it; False once a failed one of ours is
        deleted (create it anew); `DKDError` when it is not ours."""
        k, ns = self.kind, spec.namespace
        try:
            existing = self._get(ns, name)
        except Exception as e:
            if api_status(e) == 404:
                return False  # gone in between: create it
            raise DKDError(
                f"{k.kind} {ns}/{name} exists and cannot be read: {api_error_message(e)}"
            ) from e
        problem = ownership_problem(existing, spec)
        if problem is not None:
            raise DKDError(
                f"{k.kind} {ns}/{name} already exists and {problem}; not touching it: delete it "
                f"(kubectl delete {k.plural}.{k.group} -n {ns} {name}) or pick another job name"
            )
        failed = true_condition(conditions_of(existing), k.failure)
        if failed is None:
            return True
        if replaced:
            raise DKDError(f"{k.kind} {ns}/{name} failed again right after being replaced")
        why = ": ".join(str(failed[f]) for f in ("reason", "message") if failed.get(f))
        log(
            f"{k.kind} {ns}/{name} exists from an earlier attempt and failed "
            f"({why or 'no message'}); deleting it to run the step again"
        )
        if not self._delete(ns, name, poll_seconds, log, propagation="Foreground"):
            raise DKDError(f"cannot replace the failed {k.kind} {ns}/{name}: it cannot be deleted")
        gone_by = min(deadline, self._clock() + _REPLACE_SECONDS)
        while self._clock() < gone_by:  # Foreground: gone only once its pods are
            try:
                self._get(ns, name)
            except Exception as e:
                if api_status(e) == 404:
                    return False
                if not is_transient(e):
                    raise DKDError(
                        f"cannot read {k.kind} {ns}/{name}: {api_error_message(e)}"
                    ) from e
            self._sleep(min(poll_seconds, max(gone_by - self._clock(), 0.0)))
        raise DKDError(
            f"{k.kind} {ns}/{name} of an earlier attempt was not gone {_REPLACE_SECONDS} s after "
            "its deletion (a finalizer?)"
        )

    def _wait(
        self,
        spec: ClusterSpec,
        name: str,
        limits: _Limits,
        poll_seconds: float,
        keep: bool,
        log: Log,
    ) -> None:
        k, ns = self.kind, spec.namespace
        conditions: list[Mapping[str, Any]] = []
        state: str | None = None
        admission: str | None = None
        stuck_since: dict[str, float] = {}
        while True:
            try:
                obj = self._get(ns, name)
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
                    raise DKDError(self._failure_message(spec, name, failed))
                if true_condition(conditions, k.success) is not None:
                    log(f"{k.kind} {ns}/{name}: {k.success}")
                    return
                now = self._clock()
                if is_suspended(obj, k):
                    if limits.queue(now):
                        log(f"{k.kind} {ns}/{name}: suspended, queued for admission")
                    status = self._admission_status(ns, obj)
                    if status != admission:
                        log(f"{k.kind} {ns}/{name}: queued: {status}")
                        admission = status
                    if limits.queued(now) >= limits.queue_timeout:
                        raise DKDError(
                            f"{k.kind} {ns}/{name} was queued (suspended) for "
                            f"{limits.queued(now):g} s without being admitted: {admission}; "
                            f"giving up (queue_timeout_seconds={limits.queue_timeout:g})"
                        )
                else:
                    waited = limits.admit(now)
                    if waited is not None:
                        log(f"{k.kind} {ns}/{name}: admitted after {waited:g} s in the queue")
                        admission = None
                    latest = _latest_true(conditions)
                    now_state = describe_conditions([latest]) if latest else None
                    if now_state and now_state != state:
                        message = latest.get("message") if latest else None
                        text = f"{now_state}: {message}" if message else now_state
                        log(f"{k.kind} {ns}/{name}: {text}")
                        state = now_state
                    self._check_pods(spec, name, stuck_since, limits.queue_timeout, log)
            now = self._clock()
            remaining = limits.remaining(now)
            if remaining <= 0:
                fate = (
                    "it is kept (delete_after_done=False)"
                    if keep
                    else "it is deleted now (set delete_after_done=False to keep it)"
                )
                queued = limits.queued(now)
                extra = f" (plus {queued:g} s queued)" if queued else ""
                raise DKDError(
                    f"{k.kind} {ns}/{name} did not finish within the timeout of "
                    f"{limits.timeout:g} s{extra}; last conditions: "
                    f"{describe_conditions(conditions)}; {fate}"
                )
            self._sleep(min(poll_seconds, remaining))

    def _admission_status(self, ns: str, obj: Mapping[str, Any] | None) -> str:
        """One line on the suspended job's Kueue Workload: its newest condition and message."""
        uid = ((obj or {}).get("metadata") or {}).get("uid")
        if not uid:
            return "no Kueue Workload found (the job has no uid yet)"
        try:
            found = self.api.list_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, ns, KUEUE_WORKLOADS,
                label_selector=f"{KUEUE_JOB_UID_LABEL}={uid}",
                _request_timeout=self.request_timeout,
            )  # fmt: skip
        except Exception as e:
            if api_status(e) is None and not is_transient(e):
                raise
            return f"cannot read its Kueue Workload ({api_error_message(e)})"
        items = [i for i in (found or {}).get("items") or [] if isinstance(i, Mapping)]
        if not items:
            return "no Kueue Workload for it (yet): is Kueue managing this job kind?"
        workload = items[0]
        wl_name = (workload.get("metadata") or {}).get("name", "?")
        conditions = conditions_of(workload)
        if not conditions:
            return f"Workload {wl_name}: pending, no conditions yet"
        latest = conditions[-1]
        text = describe_conditions([latest])
        message = latest.get("message")
        return f"Workload {wl_name}: {text}" + (f": {message}" if message else "")

    def _check_pods(
        self,
        spec: ClusterSpec,
        name: str,
        stuck_since: dict[str, float],
        unschedulable_grace: float,
        log: Log,
    ) -> None:
        """Raise `DKDError` when a pod of the job has been stuck for its grace period:
        `spec.stuck_pod_grace_seconds`, or `unschedulable_grace` for an Unschedulable pod
        (waiting for GPUs to free up or a node to be added is queueing, not an error).

        `stuck_since` maps pod names to when they were first seen stuck. Errors
        listing pods are logged and otherwise ignored: watching pods only
        shortens the wait, the job's own conditions decide.
        """
        k, ns = self.kind, spec.namespace
        selector = f"{k.pod_label}={name}"
        try:
            pods = self.pods.list_pods(ns, selector)
        except Exception as e:
            if api_status(e) is None and not is_transient(e):
                raise
            log(f"{k.kind} {ns}/{name}: cannot list its pods ({api_error_message(e)})")
            return
        now = self._clock()
        seen = set()
        for pod in pods:
            stuck = stuck_reason(pod)
            pod_name = pod.metadata.name
            if stuck is None:
                continue
            reason, message = stuck
            key = f"{pod_name}/{reason}"
            seen.add(key)
            since = stuck_since.setdefault(key, now)
            if since == now:
                log(f"{k.kind} {ns}/{name}: pod {pod_name} is {reason}: {message}")
            if reason == UNSCHEDULABLE:
                grace, setting = unschedulable_grace, "queue_timeout_seconds"
            else:
                grace, setting = spec.stuck_pod_grace_seconds, "stuck_pod_grace_seconds"
            if now - since >= grace:
                raise DKDError(
                    f"{k.kind} {ns}/{name}: pod {pod_name} is stuck in {reason} for "
                    f"{now - since:g} s ({message}); giving up instead of waiting for the "
                    f"timeout ({setting}={grace:g})"
                )
        for key in set(stuck_since) - seen:  # recovered: start over if it sticks again
            del stuck_since[key]

    def _failure_message(self, spec: ClusterSpec, name: str, failed: Mapping[str, Any]) -> str:
        k, ns = self.kind, spec.namespace
        why = ": ".join(str(failed[f]) for f in ("reason", "message") if failed.get(f))
        selector = f"{k.pod_label}={name}"
        try:
            logs = failing_pod_log(self.pods, ns, selector, k.container, spec.log_tail_lines)
        except Exception as e:
            logs = f"(could not read the pod log: {api_error_message(e)})"
        return (
            f"{k.kind} {ns}/{name} failed: {why or 'no message'}\n"
            f"--- log of the failing pod ({selector}) ---\n{logs.rstrip()}"
        )

    def _delete(
        self, ns: str, name: str, poll_seconds: float, log: Log, propagation: str = "Background"
    ) -> bool:
        """Delete the job; True when it is deleted or already gone, False after a warning."""
        k = self.kind
        for attempt in range(1, _DELETE_ATTEMPTS + 1):
            try:
                self.api.delete_namespaced_custom_object(
                    k.group,
                    k.version,
                    ns,
                    k.plural,
                    name,
                    propagation_policy=propagation,
                    _request_timeout=self.request_timeout,
                )
                log(f"{k.kind} {ns}/{name} deleted")
                return True
            except Exception as e:
                if api_status(e) == 404:
                    return True  # already gone: fine
                if is_transient(e) and attempt < _DELETE_ATTEMPTS:
                    self._sleep(min(poll_seconds, 5.0))
                    continue
                # Never mask the outcome of the job (or the error in flight) with this one.
                log(f"warning: could not delete {k.kind} {ns}/{name}: {api_error_message(e)}")
                return False
        return False
