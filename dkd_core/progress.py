"""Progress lines of a training step (iteration/total, loss, speed, ETA) and of a series of runs.

One plain line at a time, never a carriage-return bar: it reads the same in a terminal,
in `kubectl logs` of a job's pod, in the Kubeflow UI's log tab and in a file, and a
step of thousands of iterations writes tens of lines, not thousands. A line is written
only on an iteration whose loss terms were just averaged over all processes (every
`train.log_every`), so the loss shown is the train log's, and at the last iteration.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

log = logging.getLogger("dkd_core.progress")
T = TypeVar("T")


def bars_wanted(progress: bool) -> bool:
    """Whether to draw tqdm bars (dataset sync, split building): only when `progress` is
    on and stderr is a terminal. In a pod log or a pipe every refresh of a bar becomes a
    line of its own."""
    return progress and sys.stderr.isatty()


def format_duration(seconds: float) -> str:
    """`42s`, `3m07s`, `2h05m`: short enough for a log line, exact enough for an ETA."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLine:
    """Writes `step 1: iteration 120/300 (40%), loss 0.4213, 2.3 it/s, ETA 1m18s`.

    `update(iteration, losses)` is called after every iteration; `losses` (term ->
    value, with `total`) is given on the iterations whose terms were averaged, None
    otherwise. A line is written on such an iteration when `every_seconds` have passed
    since the last line (the first such iteration always gets one, so a run shows at
    once that it trains and how fast), and on the last iteration. Speed and ETA count
    only the iterations trained by this process (a resumed step starts at `start`).
    """

    def __init__(
        self,
        label: str,
        total: int,
        start: int = 0,
        every_seconds: float = 30.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] = log.info,
    ) -> None:
        self.label, self.total, self.start = label, total, start
        self.every_seconds, self.enabled = every_seconds, enabled
        self._clock, self._emit = clock, emit
        self._started = clock()
        self._last_line: float | None = None
        self._loss: float | None = None

    def update(self, iteration: int, losses: Mapping[str, float] | None = None) -> str | None:
        """The line written for `iteration`, if one was due; None otherwise."""
        if not self.enabled:
            return None
        if losses is not None and "total" in losses:
            self._loss = float(losses["total"])
        now = self._clock()
        last = iteration >= self.total
        due = losses is not None and (
            self._last_line is None or now - self._last_line >= self.every_seconds
        )
        if not (due or last):
            return None
        line = self.format(iteration, now - self._started)
        self._emit(line)
        self._last_line = now
        return line

    def format(self, iteration: int, elapsed: float) -> str:
        percent = 100 * iteration / self.total if self.total else 100.0
        parts = [f"{self.label}: iteration {iteration}/{self.total} ({percent:.0f}%)"]
        parts.append("loss -" if self._loss is None else f"loss {self._loss:.4f}")
        trained = iteration - self.start
        rate = trained / elapsed if elapsed > 0 and trained > 0 else None
        if rate is not None:
            parts.append(f"{rate:.3g} it/s")
        if iteration >= self.total:
            parts.append(f"done in {format_duration(elapsed)}")
        elif rate is not None:
            parts.append(f"ETA {format_duration((self.total - iteration) / rate)}")
        return ", ".join(parts)


class RunSeries:
    """A line when each run of a fixed series starts and when it finishes, for scripts
    that train many steps in a row (a benchmark): which run, how long it took, how long
    the series has run and, from the mean run so far, how long it has left.

        [3/14] seed 1 KD-only step 1: started (elapsed 3m12s)
        [3/14] seed 1 KD-only step 1: done in 1m40s (elapsed 4m52s, ETA 18m14s)
    """

    def __init__(
        self,
        total: int,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        self.total, self.finished = total, 0
        self._clock, self._emit = clock, emit
        self._started = clock()

    def run(self, label: str, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`work(*args, **kwargs)`, with its start and finish lines."""
        prefix = f"[{self.finished + 1}/{self.total}] {label}"
        began = self._clock()
        self._emit(f"{prefix}: started (elapsed {format_duration(began - self._started)})")
        result = work(*args, **kwargs)
        now = self._clock()
        self.finished += 1
        elapsed = now - self._started
        left = self.total - self.finished
        eta = f", ETA {format_duration(elapsed / self.finished * left)}" if left > 0 else ""
        self._emit(
            f"{prefix}: done in {format_duration(now - began)} "
            f"(elapsed {format_duration(elapsed)}{eta})"
        )
        return result
