"""Run a step as a local process: `python -m torch.distributed.run ...` in this venv."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dkd_core.errors import DKDError
from dkd_core.launch.job import StepJob
from dkd_core.sharing import THREADS_ENV, threads_per_process

TAIL_LINES = 50


def local_command(job: StepJob) -> list[str]:
    """`job.command()` with `torchrun` replaced by this interpreter's `-m torch.distributed.run`.

    (A bare `torchrun` might come from another environment on PATH.)
    """
    if job.nodes != 1:
        raise DKDError(
            f"job {job.name}: the local backend runs one node, got nodes={job.nodes} "
            "(use the pytorchjob or trainjob backend)"
        )
    _torchrun, *args = job.command()
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run_local(
    job: StepJob,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
    cwd: str | Path | None = None,
    argv: Sequence[str] | None = None,
    timeout_seconds: float | None = None,
) -> None:
    """Run `job` as a subprocess, stream its output to `log` line by line, fail loudly.

    `env` is added to (not substituted for) this process's environment, with
    `PYTHONUNBUFFERED=1` so lines arrive as they are printed, and each process's CPU
    threads (`dkd_core.sharing.threads_per_process`) unless given. stdout and stderr
    are merged. `argv` replaces the command (for tests and debugging). Raises
    `DKDError` with the exit code and the last 50 lines when the process fails,
    or when it is still running after `timeout_seconds` (it is then terminated).
    """
    command = list(argv) if argv is not None else local_command(job)
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    # Each of the job's processes gets cores // processes threads (unless set), where
    # torchrun would give several processes 1 thread each (OMP_NUM_THREADS unset).
    threads = threads_per_process(full_env, processes=job.nproc_per_node)
    full_env.setdefault(THREADS_ENV, str(threads))
    full_env.setdefault("OMP_NUM_THREADS", str(threads))
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            env=full_env,
            cwd=cwd,
        )
    except OSError as e:
        raise DKDError(f"job {job.name}: cannot start {command[0]!r}: {e}") from e
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        proc.terminate()

    timer = threading.Timer(timeout_seconds, stop) if timeout_seconds else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\r\n")
            tail.append(line)
            log(line)
        code = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:  # interrupted (e.g. KeyboardInterrupt): do not leave it running
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if timed_out.is_set():
        raise DKDError(
            f"job {job.name}: still running after {timeout_seconds:g} s; terminated. "
            f"Last lines:\n" + ("\n".join(tail) or "(no output)")
        )
    if code != 0:
        last = "\n".join(tail) or "(no output)"
        raise DKDError(
            f"job {job.name} (step {job.step}) failed with exit code {code}; "
            f"last {len(tail)} lines of output:\n{last}"
        )
