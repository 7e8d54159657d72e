"""Live training metrics for Prometheus, and the step's final figures for a Pushgateway.

One `TrainingMetrics` per CISS step and process. Rank 0 builds it enabled and
calls `serve()`; every other rank builds it with `enabled=False`, which turns
every method into a cheap no-op. Each instance owns its registries, so tests
and several runs in one process never collide (the global registry is not
touched).

Identity. Every series carries `run` (the config's run name), `run_id`,
`task` and `ciss_step`, fixed when the instance is built. `run_id` tells runs
apart that share a run name (a pipeline run again): it is `$DKD_RUN_ID` when
set (a pipeline step sets it to its Kubeflow Pipelines run id), else the id
recorded in the checkpoint being resumed or in the teacher's checkpoint, else
a new random id (`resolve_run_id`); the trainer records it in every checkpoint.
The only other labels come from small, closed sets (`LOSS_TERMS`, `LR_GROUPS`,
`EVAL_GROUPS`), so the number of series stays bounded.

Live and final. The live endpoint exposes everything. The Pushgateway gets
only `FINAL_METRIC_NAMES`: the test results and the `dkd_final_*` figures of
a finished step, never a live gauge, so a finished step never looks alive.
Its group is {job="dkd", run, run_id, task, ciss_step} (plus `namespace`
when `$POD_NAMESPACE` is set, as the downward API does): `delete_pushed()` at
the start of a step removes what an earlier attempt of the same step pushed,
and the final `push()` replaces the group. The final figures are also served
live, and `wait_for_scrape()` holds the process until Prometheus has read
them once, so they reach Prometheus without a Pushgateway too.

Units follow Prometheus' conventions: seconds, bytes, 0–1 ratios; counters
end in `_total`, gauges never do. Phases are timed apart: waiting for the
data loader, computing an iteration, saving a checkpoint. A scrape reads a
consistent snapshot: observations and scrapes take the same lock, so the
iteration, loss and learning rate of one scrape belong together.

`METRIC_NAMES` lists the names as Prometheus stores them; a histogram also
has `<name>_bucket`, `<name>_sum` and `<name>_count`. The Grafana dashboard
(k8s/monitoring/dashboard.json) is checked against it.

Wiring in `train`, roughly:

    metrics = TrainingMetrics(run_name, resolve_run_id(recorded), task, step, enabled=is_main)
    metrics.serve(port, address); metrics.delete_pushed(); metrics.set_plan(stop)
    ...  # per iteration
    metrics.observe_iteration(iteration=..., epoch=..., samples=batch_size,
                              learning_rates=..., data_wait_seconds=..., compute_seconds=...,
                              losses=averaged_over_processes)  # on logged iterations
    metrics.observe_checkpoint(seconds, nbytes)
    ...
    metrics.observe_evaluation(report.miou_old, ..., report.pixel_accuracy)  # percent in
    metrics.finish(iterations=stop, checkpoint_bytes=size)
    metrics.push(); metrics.wait_for_scrape(); metrics.close()
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Self

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    delete_from_gateway,
    push_to_gateway,
)

from dkd_core.errors import DKDError
from dkd_core.metrics_http import SCRAPE_WAIT_MAX_SECONDS, ScrapeServer

log = logging.getLogger("dkd_core.metrics")

DEFAULT_PORT = 9400
PORT_ENV = "DKD_METRICS_PORT"
PUSHGATEWAY_ENV = "PUSHGATEWAY_URL"
RUN_ID_ENV = "DKD_RUN_ID"
NAMESPACE_ENV = "POD_NAMESPACE"
PUSH_JOB = "dkd"

# A run id is a label value and a Pushgateway path segment: keep it plain (UUIDs fit).
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# Names as stored by Prometheus; the dashboard is checked against this tuple.
FINAL_METRIC_NAMES: tuple[str, ...] = (
    "dkd_eval_miou_ratio",
    "dkd_eval_pixel_accuracy_ratio",
    "dkd_final_iterations",
    "dkd_final_loss",
    "dkd_final_checkpoint_bytes",
)
METRIC_NAMES: tuple[str, ...] = (
    "dkd_iteration_duration_seconds",
    "dkd_dataloader_wait_seconds",
    "dkd_compute_seconds",
    "dkd_samples_total",
    "dkd_loss",
    "dkd_learning_rate",
    "dkd_epoch",
    "dkd_iteration",
    "dkd_iterations_planned",
    "dkd_progress_ratio",
    "dkd_checkpoint_save_seconds",
    "dkd_checkpoint_bytes",
    "dkd_checkpoints_saved_total",
    "dkd_gpu_memory_allocated_bytes",
    "dkd_gpu_memory_peak_bytes",
    "dkd_info",
    *FINAL_METRIC_NAMES,
)

# Labels on every series, with values fixed per instance.
CONST_LABELS: tuple[str, ...] = ("run", "run_id", "task", "ciss_step")

# The closed sets of values for the other labels.
LOSS_TERMS: frozenset[str] = frozenset({"mbce", "kd", "dkd_pos", "dkd_neg", "ac", "total"})
LR_GROUPS: frozenset[str] = frozenset(
    {"backbone", "aspp", "classifiers", "old_classifiers", "new_classifier"}
)
EVAL_GROUPS: tuple[str, ...] = ("old", "new", "all", "hiou")

# Histogram buckets, in seconds: a toy iteration takes milliseconds, a small local
# checkpoint save about 0.02 s, a large upload minutes.
ITERATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DATA_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                      120.0, 300.0)  # fmt: skip


def metrics_port() -> int:
    """The port to serve metrics on: `$DKD_METRICS_PORT`, else 9400."""
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        raise DKDError(f"{PORT_ENV}: expected a port number, got {raw!r}") from None
    if not -1 <= port <= 65535:  # -1 turns the server off, 0 picks a free port
        raise DKDError(f"{PORT_ENV}: expected a port in 0..65535, or -1 for none, got {port}")
    return port


def resolve_run_id(recorded: str | None = None) -> str:
    """The run identity: `$DKD_RUN_ID`, else `recorded` (from a checkpoint), else a new id."""
    raw = os.environ.get(RUN_ID_ENV, "").strip()
    if raw:
        if not RUN_ID_PATTERN.fullmatch(raw):
            raise DKDError(
                f"{RUN_ID_ENV}: expected 1 to 128 letters, digits or '._:-' (e.g. a Kubeflow "
                f"Pipelines run id), got {raw!r}"
            )
        return raw
    return recorded if recorded else uuid.uuid4().hex[:12]


def _check_known(kind: str, names: Iterable[str], allowed: frozenset[str]) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; expected some of {sorted(allowed)}")


class TrainingMetrics:
    """The Prometheus metrics of one CISS training step.

    Series that only make sense once observed (losses, learning rates, GPU
    memory, test results, final figures) appear on their first observation;
    the histograms and counters are exposed from the start, at zero.
    """

    registry: CollectorRegistry  # everything, served live
    final_registry: CollectorRegistry  # FINAL_METRIC_NAMES only, pushed

    def __init__(
        self, run: str, run_id: str, task: str, ciss_step: int, enabled: bool = True
    ) -> None:
        if ciss_step < 0:
            raise ValueError(f"ciss_step must be >= 0, got {ciss_step}")
        self.enabled = enabled
        self.run_id = run_id
        self.registry = CollectorRegistry(auto_describe=True)
        self.final_registry = CollectorRegistry(auto_describe=True)
        self._const = (run, run_id, task, str(ciss_step))
        self._planned = 0
        self._losses: dict[str, float] = {}
        self._lock = threading.Lock()  # observations and scrapes: one consistent snapshot
        self._http = ScrapeServer(self.registry, self._lock)
        self._final_set_at: float | None = None
        if not enabled:
            return
        live = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, CONST_LABELS, registry=live, buckets=buckets)

        def gauge(name: str, doc: str, *extra: str, final: bool = False) -> Gauge:
            g = Gauge(name, doc, (*CONST_LABELS, *extra), registry=live)
            if final:
                self.final_registry.register(g)
            return g

        self._iteration_seconds = histogram(
            "dkd_iteration_duration_seconds",
            "Wall time of one training iteration: data-loader wait plus compute "
            "(checkpoint saves excluded).",
            ITERATION_BUCKETS,
        )
        self._data_wait = histogram(
            "dkd_dataloader_wait_seconds", "Time waiting for the next batch.", DATA_WAIT_BUCKETS
        )
        self._compute_seconds = histogram(
            "dkd_compute_seconds",
            "Forward, backward and optimizer step of one iteration.",
            ITERATION_BUCKETS,
        )
        self._samples = Counter(
            "dkd_samples",
            "Training images processed, all processes together.",
            CONST_LABELS,
            registry=live,
        )
        self._loss = gauge(
            "dkd_loss", "Loss terms of the last logged iteration, averaged over processes.", "term"
        )
        self._lr = gauge("dkd_learning_rate", "Learning rate of each parameter group.", "group")
        self._epoch = gauge("dkd_epoch", "Epoch of the last iteration (from 0).")
        self._iteration = gauge("dkd_iteration", "Iterations completed in this step.")
        self._planned_gauge = gauge(
            "dkd_iterations_planned", "Iterations this step is planned to run."
        )
        self._progress = gauge("dkd_progress_ratio", "Iterations completed / planned (0..1).")
        self._checkpoint_seconds = histogram(
            "dkd_checkpoint_save_seconds",
            "Wall time of one checkpoint save, upload included.",
            CHECKPOINT_BUCKETS,
        )
        self._checkpoint_bytes = gauge("dkd_checkpoint_bytes", "Size of the last checkpoint.")
        self._checkpoints_saved = Counter(
            "dkd_checkpoints_saved", "Checkpoints saved.", CONST_LABELS, registry=live
        )
        self._gpu_allocated = gauge(
            "dkd_gpu_memory_allocated_bytes", "CUDA memory allocated by tensors (current device)."
        )
        self._gpu_peak = gauge(
            "dkd_gpu_memory_peak_bytes", "Peak CUDA memory allocated by tensors (current device)."
        )
        self._info = Info("dkd", "Description of the running step.", CONST_LABELS, registry=live)
        self._miou = gauge(
            "dkd_eval_miou_ratio", "Test mIoU after the step (0..1).", "group", final=True
        )
        self._pixel_accuracy = gauge(
            "dkd_eval_pixel_accuracy_ratio",
            "Test pixel accuracy after the step (0..1).",
            final=True,
        )
        self._final_iterations = gauge(
            "dkd_final_iterations", "Iterations the finished step ran.", final=True
        )
        self._final_loss = gauge(
            "dkd_final_loss",
            "Loss terms of the finished step's last logged iteration, averaged over processes.",
            "term",
            final=True,
        )
        self._final_checkpoint_bytes = gauge(
            "dkd_final_checkpoint_bytes", "Size of the finished step's checkpoint.", final=True
        )

        # Zero-valued from the start: rate() and histogram_quantile() work from the first scrape.
        for metric in (
            self._iteration_seconds,
            self._data_wait,
            self._compute_seconds,
            self._samples,
            self._checkpoint_seconds,
            self._checkpoints_saved,
        ):
            metric.labels(*self._const)

    # -- serving ---------------------------------------------------------------------------

    def serve(self, port: int, addr: str) -> int:
        """Serve `/metrics` from a daemon thread; returns the bound port (`port=0`: a free one).

        Call on rank 0 only. A disabled instance starts nothing and returns 0.
        `addr` is an IPv4 or IPv6 address ("::" for every interface of both).
        """
        if not self.enabled:
            return 0
        bound = self._http.start(port, addr)
        log.info("serving training metrics on %s:%d/metrics", addr, bound)
        return bound

    def wait_for_scrape(self, max_seconds: float = SCRAPE_WAIT_MAX_SECONDS) -> bool:
        """Wait until /metrics was read after `finish()`; True once read.

        Returns at once when nothing ever scraped this process (nobody is
        watching) or nothing was finished; else waits up to 2.5 of the observed
        scrape intervals (at least 1 s, at most `max_seconds`).
        """
        if not self.enabled or self._final_set_at is None:
            return False
        return self._http.wait_for_scrape_after(self._final_set_at, max_seconds)

    def close(self) -> None:
        """Stop the HTTP server, if started, and free its port. Safe to call twice."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- observations ----------------------------------------------------------------------

    def set_info(self, *, backbone: str, world_size: int) -> None:
        """Describe the step in `dkd_info` (a constant 1 with descriptive labels)."""
        if not self.enabled:
            return
        with self._lock:
            self._info.labels(*self._const).info(
                {"backbone": backbone, "world_size": str(world_size)}
            )

    def set_plan(self, planned_iterations: int) -> None:
        """The number of iterations this step will run; `dkd_progress_ratio` divides by it."""
        if not self.enabled:
            return
        if planned_iterations < 0:
            raise ValueError(f"planned_iterations must be >= 0, got {planned_iterations}")
        with self._lock:
            self._planned = planned_iterations
            self._planned_gauge.labels(*self._const).set(planned_iterations)

    def observe_iteration(
        self,
        *,
        iteration: int,
        epoch: int,
        samples: int,
        learning_rates: Mapping[str, float],
        data_wait_seconds: float,
        compute_seconds: float,
        losses: Mapping[str, float] | None = None,
    ) -> None:
        """Record one finished training iteration.

        `iteration` counts completed iterations, `samples` is the number of
        images it processed on all ranks together, `learning_rates` (keys in
        `LR_GROUPS`) are the ones the next iteration uses, as the scheduler has
        stepped. `losses` (keys in `LOSS_TERMS`), on logged iterations only,
        are averaged over all processes, as the train log has them. Unknown
        keys are a ValueError, before anything is recorded.
        """
        if not self.enabled:
            return
        _check_known("learning-rate group(s)", learning_rates, LR_GROUPS)
        _check_known("loss term(s)", losses or {}, LOSS_TERMS)
        const = self._const
        with self._lock:
            if losses is not None:
                for term, value in losses.items():
                    self._loss.labels(*const, term).set(float(value))
                self._losses = {term: float(value) for term, value in losses.items()}
            self._iteration_seconds.labels(*const).observe(data_wait_seconds + compute_seconds)
            self._data_wait.labels(*const).observe(data_wait_seconds)
            self._compute_seconds.labels(*const).observe(compute_seconds)
            self._samples.labels(*const).inc(samples)
            for group, lr in learning_rates.items():
                self._lr.labels(*const, group).set(float(lr))
            self._epoch.labels(*const).set(epoch)
            self._iteration.labels(*const).set(iteration)
            if self._planned > 0:
                self._progress.labels(*const).set(iteration / self._planned)

    def observe_checkpoint(self, seconds: float, nbytes: int) -> None:
        """Record one saved checkpoint: how long saving took and its size in bytes."""
        if not self.enabled:
            return
        with self._lock:
            self._checkpoint_seconds.labels(*self._const).observe(seconds)
            self._checkpoint_bytes.labels(*self._const).set(nbytes)
            self._checkpoints_saved.labels(*self._const).inc()

    def observe_gpu_memory(self) -> None:
        """Record CUDA memory of the current device; a no-op unless this process uses CUDA."""
        if not self.enabled:
            return
        import torch  # here, not at import: rendering a job manifest reads only DEFAULT_PORT

        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        allocated, peak = torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
        with self._lock:
            self._gpu_allocated.labels(*self._const).set(allocated)
            self._gpu_peak.labels(*self._const).set(peak)

    def observe_evaluation(
        self,
        miou_old: float | None,
        miou_new: float | None,
        miou_all: float | None,
        hiou: float | None,
        pixel_accuracy: float | None,
    ) -> None:
        """Record the step's test results, given in percent (as `SegmentationReport` has them).

        They are exposed as 0–1 ratios (value / 100). A None value (step 0 has
        no new classes, hence no mIoU new or hIoU) leaves its series unset.
        """
        if not self.enabled:
            return
        values = dict(zip(EVAL_GROUPS, (miou_old, miou_new, miou_all, hiou), strict=True))
        with self._lock:
            for group, value in values.items():
                if value is not None:
                    self._miou.labels(*self._const, group).set(value / 100)
            if pixel_accuracy is not None:
                self._pixel_accuracy.labels(*self._const).set(pixel_accuracy / 100)

    def finish(self, *, iterations: int, checkpoint_bytes: int) -> None:
        """The finished step's figures: iterations run, last logged losses, checkpoint size."""
        if not self.enabled:
            return
        with self._lock:
            self._final_iterations.labels(*self._const).set(iterations)
            for term, value in self._losses.items():
                self._final_loss.labels(*self._const, term).set(value)
            self._final_checkpoint_bytes.labels(*self._const).set(checkpoint_bytes)
            self._final_set_at = time.monotonic()

    # -- Pushgateway -----------------------------------------------------------------------

    def grouping_key(self) -> dict[str, str]:
        """This step's Pushgateway group (besides job="dkd")."""
        key = dict(zip(CONST_LABELS, self._const, strict=True))
        namespace = os.environ.get(NAMESPACE_ENV, "").strip()
        return {"namespace": namespace, **key} if namespace else key

    def _gateway(self, action: str, gateway_url: str | None, call: Callable[[str], None]) -> bool:
        if not self.enabled:
            return False
        url = gateway_url or os.environ.get(PUSHGATEWAY_ENV, "").strip()
        if not url:
            return False
        try:
            call(url)
        except Exception as exc:  # any failure: log and carry on, monitoring never stops training
            log.warning("could not %s metrics at %s: %s", action, url, exc)
            return False
        return True

    def push(self, gateway_url: str | None = None, timeout: float = 10.0) -> bool:
        """Replace this step's group in the Pushgateway with the final figures.

        The gateway is `gateway_url`, else `$PUSHGATEWAY_URL`. Returns True once
        pushed; False when disabled, without a URL, or when the push fails (a
        warning is logged).
        """

        def put(url: str) -> None:
            with self._lock:  # a consistent copy, like a scrape
                push_to_gateway(url, PUSH_JOB, self.final_registry, self.grouping_key(), timeout)

        return self._gateway("push", gateway_url, put)

    def delete_pushed(self, gateway_url: str | None = None, timeout: float = 10.0) -> bool:
        """Delete this step's group from the Pushgateway: call when the step starts (again)."""
        return self._gateway(
            "delete pushed",
            gateway_url,
            lambda url: delete_from_gateway(url, PUSH_JOB, self.grouping_key(), timeout),
        )
