"""Live training metrics for Prometheus, and a final push to a Pushgateway.

One `TrainingMetrics` per CISS step and process. Rank 0 builds it enabled and
calls `serve()`; every other rank builds it with `enabled=False`, which turns
every method into a cheap no-op. Each instance owns its own `CollectorRegistry`,
so tests and several runs in one process never collide (the global default
registry is not touched).

Every series carries the labels `run`, `task` and `ciss_step`, fixed when the
instance is built. The only other labels come from small, closed sets
(`LOSS_TERMS`, `LR_GROUPS`, `EVAL_GROUPS`); unknown values are rejected, so the
number of series stays bounded.

`METRIC_NAMES` is the list of names as Prometheus exposes them (a counter with
its `_total`); a histogram also exposes `<name>_bucket`, `<name>_sum` and
`<name>_count`, and prometheus_client adds a `<name>_created` gauge to
counters and histograms. The Grafana dashboard is checked against this list.

Wiring in `train._train_step`, roughly:

    metrics = TrainingMetrics(config.run.name, task_name, step.index, enabled=info.is_main)
    metrics.serve(metrics_port())
    metrics.set_plan(max_iterations)
    ...  # per iteration: time waiting for the batch and the whole iteration
    metrics.observe_iteration(iteration=..., epoch=..., seconds=..., samples=batch_size,
                              losses={k: v.item() ...}, learning_rates={g["name"]: g["lr"] ...},
                              data_wait_seconds=...)
    ...
    metrics.observe_evaluation(report.miou_old, report.miou_new, report.miou_all,
                               report.hiou, report.pixel_accuracy)
    metrics.push()
    metrics.close()
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    push_to_gateway,
    start_http_server,
)

from dkd_core.errors import DKDError

log = logging.getLogger("dkd_core.metrics")

DEFAULT_PORT = 9400
PORT_ENV = "DKD_METRICS_PORT"
PUSHGATEWAY_ENV = "PUSHGATEWAY_URL"

# Names as exposed; the dashboard is checked against this tuple.
METRIC_NAMES: tuple[str, ...] = (
    "dkd_step_duration_seconds",
    "dkd_samples_per_second",
    "dkd_loss",
    "dkd_learning_rate",
    "dkd_epoch",
    "dkd_iteration",
    "dkd_iterations_total_planned",
    "dkd_progress_ratio",
    "dkd_checkpoint_save_seconds",
    "dkd_checkpoint_bytes",
    "dkd_checkpoints_saved_total",
    "dkd_dataloader_wait_seconds",
    "dkd_gpu_memory_allocated_bytes",
    "dkd_gpu_memory_peak_bytes",
    "dkd_eval_miou",
    "dkd_eval_pixel_accuracy",
    "dkd_info",
)

# Labels on every series, with values fixed per instance.
CONST_LABELS: tuple[str, ...] = ("run", "task", "ciss_step")

# The closed sets of values for the other labels.
LOSS_TERMS: frozenset[str] = frozenset({"mbce", "kd", "dkd_pos", "dkd_neg", "ac", "total"})
LR_GROUPS: frozenset[str] = frozenset(
    {"backbone", "aspp", "classifiers", "old_classifiers", "new_classifier"}
)
EVAL_GROUPS: tuple[str, ...] = ("old", "new", "all", "hiou")

# Histogram buckets, in seconds.
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
CHECKPOINT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
DATA_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


def _check_known(kind: str, names: Mapping[str, float], allowed: frozenset[str]) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; expected some of {sorted(allowed)}")


class TrainingMetrics:
    """The Prometheus metrics of one CISS training step.

    Series that only make sense once observed (loss terms, learning-rate groups,
    GPU memory, evaluation results) appear on their first observation; the
    histograms and the checkpoint counter are exposed from the start, at zero.
    """

    registry: CollectorRegistry

    def __init__(self, run: str, task: str, ciss_step: int, enabled: bool = True) -> None:
        if ciss_step < 0:
            raise ValueError(f"ciss_step must be >= 0, got {ciss_step}")
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        self._const = (run, task, str(ciss_step))
        self._planned = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        if not enabled:
            return

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, CONST_LABELS, registry=self.registry, buckets=buckets)

        def gauge(name: str, doc: str, *extra: str) -> Gauge:
            return Gauge(name, doc, (*CONST_LABELS, *extra), registry=self.registry)

        self._step_seconds = histogram(
            "dkd_step_duration_seconds", "Wall time of one training iteration.", STEP_BUCKETS
        )
        self._samples_per_second = gauge(
            "dkd_samples_per_second", "Training samples per second in the last iteration."
        )
        self._loss = gauge("dkd_loss", "Last observed value of each loss term.", "term")
        self._lr = gauge("dkd_learning_rate", "Learning rate of each parameter group.", "group")
        self._epoch = gauge("dkd_epoch", "Current epoch (from 0).")
        self._iteration = gauge("dkd_iteration", "Iterations completed in this step.")
        self._planned_gauge = gauge(
            "dkd_iterations_total_planned", "Iterations this step is planned to run."
        )
        self._progress = gauge("dkd_progress_ratio", "Iterations completed / planned (0..1).")
        self._checkpoint_seconds = histogram(
            "dkd_checkpoint_save_seconds", "Wall time of one checkpoint save.", CHECKPOINT_BUCKETS
        )
        self._checkpoint_bytes = gauge("dkd_checkpoint_bytes", "Size of the last checkpoint.")
        self._checkpoints_saved = Counter(
            "dkd_checkpoints_saved", "Checkpoints saved.", CONST_LABELS, registry=self.registry
        )
        self._data_wait = histogram(
            "dkd_dataloader_wait_seconds",
            "Time spent waiting for the next batch.",
            DATA_WAIT_BUCKETS,
        )
        self._gpu_allocated = gauge(
            "dkd_gpu_memory_allocated_bytes", "CUDA memory allocated by tensors (current device)."
        )
        self._gpu_peak = gauge(
            "dkd_gpu_memory_peak_bytes", "Peak CUDA memory allocated by tensors (current device)."
        )
        self._miou = gauge("dkd_eval_miou", "Test mIoU after the step, in percent.", "group")
        self._pixel_accuracy = gauge(
            "dkd_eval_pixel_accuracy", "Test pixel accuracy after the step, in percent."
        )
        self._info = Info("dkd", "Description of the run.", CONST_LABELS, registry=self.registry)

        # Zero-valued from the start: rate() and histogram_quantile() work from the first scrape.
        for metric in (
            self._step_seconds,
            self._checkpoint_seconds,
            self._data_wait,
            self._checkpoints_saved,
        ):
            metric.labels(*self._const)

    # -- serving ---------------------------------------------------------------------------

    def serve(self, port: int = DEFAULT_PORT, addr: str = "0.0.0.0") -> int:
        """Serve `/metrics` from a daemon thread; returns the bound port (`port=0`: a free one).

        Call on rank 0 only. A disabled instance starts nothing and returns 0.
        """
        if not self.enabled:
            return 0
        if self._server is not None:
            raise RuntimeError(f"metrics already served on port {self._server.server_port}")
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        bound = self._server.server_port
        log.info("serving training metrics on %s:%d/metrics", addr, bound)
        return bound

    def close(self) -> None:
        """Stop the HTTP server, if started, and free its port. Safe to call twice."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

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
        """Describe the run in `dkd_info` (a constant 1 with descriptive labels)."""
        if not self.enabled:
            return
        self._info.labels(*self._const).info({"backbone": backbone, "world_size": str(world_size)})

    def set_plan(self, planned_iterations: int) -> None:
        """The number of iterations this step will run; `dkd_progress_ratio` divides by it."""
        if not self.enabled:
            return
        if planned_iterations < 0:
            raise ValueError(f"planned_iterations must be >= 0, got {planned_iterations}")
        self._planned = planned_iterations
        self._planned_gauge.labels(*self._const).set(planned_iterations)

    def observe_iteration(
        self,
        *,
        iteration: int,
        epoch: int,
        seconds: float,
        samples: int,
        losses: Mapping[str, float],
        learning_rates: Mapping[str, float],
        data_wait_seconds: float,
    ) -> None:
        """Record one finished training iteration.

        `iteration` counts completed iterations; `seconds` is the iteration's wall
        time (data wait included) and `samples` the images it processed on all
        ranks together. `losses` keys must be in `LOSS_TERMS`, `learning_rates`
        keys in `LR_GROUPS` (else ValueError, before anything is recorded).
        """
        if not self.enabled:
            return
        _check_known("loss term(s)", losses, LOSS_TERMS)
        _check_known("learning-rate group(s)", learning_rates, LR_GROUPS)
        const = self._const
        self._step_seconds.labels(*const).observe(seconds)
        self._data_wait.labels(*const).observe(data_wait_seconds)
        if seconds > 0:
            self._samples_per_second.labels(*const).set(samples / seconds)
        for term, value in losses.items():
            self._loss.labels(*const, term).set(float(value))
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
        self._gpu_allocated.labels(*self._const).set(torch.cuda.memory_allocated())
        self._gpu_peak.labels(*self._const).set(torch.cuda.max_memory_allocated())

    def observe_evaluation(
        self,
        miou_old: float | None,
        miou_new: float | None,
        miou_all: float | None,
        hiou: float | None,
        pixel_accuracy: float | None,
    ) -> None:
        """Record the step's test results (percent, as in `SegmentationReport`).

        A None value (step 0 has no new classes, hence no mIoU new or hIoU)
        leaves its series unset.
        """
        if not self.enabled:
            return
        values = dict(zip(EVAL_GROUPS, (miou_old, miou_new, miou_all, hiou), strict=True))
        for group, value in values.items():
            if value is not None:
                self._miou.labels(*self._const, group).set(value)
        if pixel_accuracy is not None:
            self._pixel_accuracy.labels(*self._const).set(pixel_accuracy)

    # -- pushing ---------------------------------------------------------------------------

    def push(self, gateway_url: str | None = None, job: str = "dkd", timeout: float = 10.0) -> bool:
        """Push every series to a Pushgateway, grouped by {run, task, ciss_step}.

        The gateway is `gateway_url`, else `$PUSHGATEWAY_URL`. Returns True once
        pushed; False when disabled, without a URL, or when the push fails (a
        warning is logged: monitoring never stops training).
        """
        if not self.enabled:
            return False
        url = gateway_url or os.environ.get(PUSHGATEWAY_ENV, "").strip()
        if not url:
            return False
        grouping_key = dict(zip(CONST_LABELS, self._const, strict=True))
        try:
            push_to_gateway(
                url, job=job, registry=self.registry, grouping_key=grouping_key, timeout=timeout
            )
        except Exception as exc:  # any failure: log and carry on
            log.warning("could not push metrics to %s: %s", url, exc)
            return False
        return True
