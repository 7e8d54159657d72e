"""Run a benchmark's pipeline on this machine with `kfp.local` (the `local` launcher, CPU).

Artifact URIs are then local paths under `<output>/kfp/`, so nothing needs S3.
`run_local(...)` returns the per-step mIoU, the report files (copied to
`<output>/report/`) and the wall time of each task.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dkd_core.config import load_config
from dkd_core.errors import DKDError
from dkd_core.storage import is_remote
from pipelines.builder import build_pipeline
from pipelines.params import parse_params

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"^Executing task '([^']+)'")
_FINISHED = re.compile(r"^Task '([^']+)' finished with status (\w+)")
# kfp.local's records about a task's inputs and outputs (a dump of its artifacts).
_KFP_LOCAL_NOISE = re.compile(r"^(Streamed logs:|Task '[^']+' (outputs:|has no outputs))")
#: The prefix of the lines the KFP executor (`kfp.dsl.executor_main`) logs in a task.
EXECUTOR_PREFIX = "[KFP Executor "


class TaskClock(logging.Filter):
    """Wall time of each kfp.local task, from the start/finish records kfp.local logs.

    Installed as a filter on the root logger (kfp.local swaps the root logger's
    handlers, not its filters); it lets every record through unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = _ANSI.sub("", record.getMessage())
        except Exception:  # a record we cannot format is not ours
            return True
        if m := _STARTED.match(message):
            self._started[m.group(1)] = record.created
        elif (m := _FINISHED.match(message)) and m.group(1) in self._started:
            self.seconds[m.group(1)] = record.created - self._started.pop(m.group(1))
        return True

    def __enter__(self) -> TaskClock:
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(self)


class ExecutorLines:
    """Tells the KFP executor's own lines in a task's output from the component's: its
    log lines (`EXECUTOR_PREFIX`) and the JSON dump of the executor input that follows
    `Got executor_input:` (about 100 lines per task, the same parameters every time)."""

    def __init__(self) -> None:
        self._in_dump = False

    def is_executor(self, line: str) -> bool:
        """Whether `line` (the next line of the output) is the executor's."""
        if self._in_dump:
            self._in_dump = line.rstrip("\n") != "}"  # json.dumps(indent=4) closes at column 0
            return True
        if line.startswith(EXECUTOR_PREFIX):
            self._in_dump = line.rstrip().endswith("Got executor_input:")
            return True
        return False


def _run_task_quietly(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
    """kfp.local's `run_local_subprocess` (same command, environment and merged
    stdout/stderr), showing the component's lines as they come and the KFP executor's
    only when the task fails: then its whole output is printed again, executor input
    included, so the failure can be read in full."""
    import os

    env = {**os.environ, **env_vars} if env_vars else None
    output: list[str] = []
    executor = ExecutorLines()
    with subprocess.Popen(
        full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env=env,
    ) as process:  # fmt: skip
        assert process.stdout is not None
        for line in iter(process.stdout.readline, ""):
            output.append(line)
            if not executor.is_executor(line):
                print(line, end="", flush=True)
        code = process.wait()
    if code != 0:
        print(f"--- the task failed (exit code {code}); its whole output: ---")
        for line in output:
            print(line, end="")
        print("--- end of the failed task's output ---", flush=True)
    return code


class _HideKfpLocalNoise(logging.Filter):
    """Drops kfp.local's per-task input/output dumps from the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not _KFP_LOCAL_NOISE.match(_ANSI.sub("", record.getMessage()))
        except Exception:  # a record we cannot format is not ours
            return True


@contextlib.contextmanager
def quiet_tasks(verbose: bool) -> Iterator[None]:
    """Unless `verbose`, show what the tasks print and when they start and finish, not
    the KFP executor's logs nor kfp.local's artifact dumps (a failing task still shows
    all of its output). kfp.local (2.17) has no option for this: its SubprocessRunner
    prints every line of `run_local_subprocess`, which is swapped for the duration."""
    if verbose:
        yield
        return
    from kfp.local import subprocess_task_handler

    original = subprocess_task_handler.run_local_subprocess
    hide = _HideKfpLocalNoise()
    subprocess_task_handler.run_local_subprocess = _run_task_quietly
    logging.getLogger().addFilter(hide)
    try:
        yield
    finally:
        subprocess_task_handler.run_local_subprocess = original
        logging.getLogger().removeFilter(hide)


@dataclass
class LocalRun:
    """What a local run produced."""

    steps: list[dict[str, Any]]  # per step: step, old, new, all, hiou (percent; new None at 0)
    report_dir: Path  # report.md, report.html, PNGs, summary.json, history.json
    artifacts: dict[str, str]  # pipeline outputs: report, markdown, plots, history -> local path
    seconds: float  # the whole run
    task_seconds: dict[str, float] = field(default_factory=dict)  # per kfp task, in run order

    @property
    def html(self) -> Path:
        return self.report_dir / "report.html"

    @property
    def markdown(self) -> Path:
        return self.report_dir / "report.md"


def run_local(
    config_path: str | Path,
    data: str | Path,
    output: str | Path,
    params: Sequence[str] | Mapping[str, Any] = (),
    overrides: Sequence[str] = (),
    verbose: bool = False,
) -> LocalRun:
    """Run the pipeline of `config_path` with `kfp.local` on the dataset at `data`.

    `params` are pipeline parameters (`key=value` strings or a mapping; see
    `python -m pipelines run --help`), `overrides` config overrides appended to
    the `overrides` parameter. The KFP executor's logs are shown only when
    `verbose` or when a task fails (`quiet_tasks`). Raises `DKDError` when the data
    is missing or a task fails.
    """
    from kfp import local

    if not is_remote(str(data)):
        if not Path(data).is_dir():
            raise DKDError(f"dataset folder {data} does not exist (--data)")
        data = Path(data).resolve()
    output = Path(output).resolve()
    pipeline = build_pipeline(config_path, launcher="local", gpus_per_pod=0, cluster=False)
    arguments = parse_params(pipeline, params)
    arguments["dataset_uri"] = str(data)
    # The tasks run here: they use this environment's S3_ENDPOINT (if any), not the cluster's.
    arguments.setdefault("s3_endpoint", "")
    if overrides:
        arguments["overrides"] = [*arguments.get("overrides", []), *overrides]
    load_config(config_path, arguments.get("overrides", []))  # a typo fails here, not in a task
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output / "kfp"))
    started = time.perf_counter()
    with TaskClock() as clock, quiet_tasks(verbose), warnings.catch_warnings():
        # The components name the dkd image; here they run in this environment, on purpose.
        warnings.filterwarnings("ignore", message="You may be attemping", category=RuntimeWarning)
        try:
            task = pipeline(**arguments)
        except RuntimeError as e:
            raise DKDError(
                f"local pipeline run failed: {_ANSI.sub('', str(e))} (its log is above; "
                f"outputs under {output / 'kfp'})"
            ) from e
    seconds = time.perf_counter() - started
    artifacts = {name: artifact.path for name, artifact in task.outputs.items()}
    report_dir = _collect_report(artifacts, output / "report")
    summary = json.loads((report_dir / "summary.json").read_text())
    return LocalRun(summary["steps"], report_dir, artifacts, seconds, clock.seconds)


def _collect_report(artifacts: Mapping[str, str], report_dir: Path) -> Path:
    """Copy the report's artifacts into one folder with their usual names."""
    if report_dir.exists():
        shutil.rmtree(report_dir)
    shutil.copytree(artifacts["plots"], report_dir)
    shutil.copyfile(artifacts["report"], report_dir / "report.html")
    shutil.copyfile(artifacts["markdown"], report_dir / "report.md")
    shutil.copyfile(artifacts["history"], report_dir / "history.json")
    return report_dir


def format_run(run: LocalRun) -> str:
    """The per-step mIoU table, the wall time of each task and where the report is."""

    def fmt(value: float | None) -> str:
        return "     -" if value is None else f"{value:6.2f}"

    lines = ["step    old    new    all   hIoU"]
    lines += [
        f"{r['step']:>4} {fmt(r['old'])} {fmt(r['new'])} {fmt(r['all'])} {fmt(r['hiou'])}"
        for r in run.steps
    ]
    if run.task_seconds:
        lines.append("")
        lines.append("wall time per task:")
        width = max(len(name) for name in run.task_seconds)
        lines += [f"  {name:<{width}} {s:7.1f} s" for name, s in run.task_seconds.items()]
    lines.append(f"total {run.seconds:.1f} s")
    lines.append(f"report: {run.markdown}")
    lines.append(f"        {run.html}")
    return "\n".join(lines)
