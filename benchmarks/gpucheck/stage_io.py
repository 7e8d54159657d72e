"""How a stage reports: a JSON result file rewritten atomically after every figure.

The driver reads the file when the stage's process ends, however it ends, so a
stage killed at its time limit still leaves every figure it had written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: a non-finite figure is written as null (and fails its check)."""
    return value if math.isfinite(value) else None


class StageResult:
    """One stage's figures: `set` and `check` rewrite `path` each time (write + rename)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {"checks": []}
        self._write()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self._write()

    def append(self, key: str, value: Any) -> None:
        self.data.setdefault(key, []).append(value)
        self._write()

    def check(self, name: str, passed: bool, detail: str) -> bool:
        """A pass/fail verdict with the figures behind it, in words."""
        self.data["checks"].append({"name": name, "passed": bool(passed), "detail": detail})
        self._write()
        print(f"[{'ok' if passed else 'FAILED'}] {name}: {detail}", flush=True)
        return bool(passed)

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, allow_nan=False))
        os.replace(tmp, self.path)


class Deadline:
    """The time a stage has left; parts that would not fit are skipped, not started."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (torchrun starts its workers in new sessions)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started, then reap it."""
    for _ in range(2):  # a second pass for anything started while the first ran
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    proc.wait()
