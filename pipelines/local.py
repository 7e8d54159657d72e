"""Run a benchmark's pipeline on this machine with `kfp.local` (the `local` launcher, CPU).

Artifact URIs are then local paths under `<output>/kfp/`, so nothing needs S3.
`run_local(...)` returns the per-step mIoU (mean and per seed), the report files
(copied to `<output>/report/`) and the wall time of each task.

Several seeds: kfp.local 2.17 runs a `dsl.ParallelFor` with up to two iterations
(and at most its parallelism) at once, in threads (`kfp/local/orchestrator/enhanced_dag_orchestrator.py`,
`ParallelExecutor`), each in its own folder `for-loop-N-iteration-<i>/`. Their
tasks have the same names, so the lines of a task with a seed are prefixed with
`[seed N]` and the wall times are listed per seed. The chains share the machine
as `dkd_core.sharing` says: fixed threads per training process, only as many
chains at once as the cores hold, disjoint GPUs (`machine_share`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dkd_core.config import load_config
from dkd_core.errors import DKDError
from dkd_core.sharing import (
    Allotment,
    Slots,
    allot,
    threads_per_process,
    usable_cores,
    visible_gpus,
)
from dkd_core.storage import is_remote
from pipelines.builder import build_pipeline, run_seeds
from pipelines.params import add_overrides, apply_seeds, parse_params

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"^Executing task '([^']+)'")
_FINISHED = re.compile(r"^Task '([^']+)' finished with status (\w+)")
# kfp.local's records about a task's inputs and outputs (a dump of its artifacts).
_KFP_LOCAL_NOISE = re.compile(r"^(Streamed logs:|Task '[^']+' (outputs:|has no outputs))")
#: The prefix of the lines the KFP executor (`kfp.dsl.executor_main`) logs in a task.
EXECUTOR_PREFIX = "[KFP Executor "
#: kfp.local runs a task in the thread that logs its start and finish: the seed of the
#: task a thread runs (its `seed` input; None for split and report), set when it starts.
_task_seed = threading.local()


def task_seed(full_command: Sequence[str]) -> int | None:
    """The `seed` input of a task from its command line (the `--executor_input` JSON)."""
    for flag, value in itertools.pairwise(full_command):
        if flag == "--executor_input":
            try:
                seed = json.loads(value)["inputs"]["parameterValues"].get("seed")
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
            return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return None


class TaskClock(logging.Filter):
    """Wall time of each kfp.local task, from the start/finish records kfp.local logs.

    Installed as a filter on the root logger (kfp.local swaps the root logger's
    handlers, not its filters); it lets every record through unchanged. A task
    inside the seeds' loop is named `<task> (seed N)`: the loop's iterations run
    tasks of the same names at once, each in its own thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = {}
        self._started: dict[tuple[int, str], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = _ANSI.sub("", record.getMessage())
        except Exception:  # a record we cannot format is not ours
            return True
        if m := _STARTED.match(message):
            _task_seed.value = None
            with self._lock:
                self._started[(record.thread or 0, m.group(1))] = record.created
        elif m := _FINISHED.match(message):
            seed = getattr(_task_seed, "value", None)
            name = m.group(1) if seed is None else f"{m.group(1)} (seed {seed})"
            with self._lock:
                started = self._started.pop((record.thread or 0, m.group(1)), None)
                if started is not None:
                    self.seconds[name] = record.created - started
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


#: kfp.local indents a task's output by 4 spaces (`logging_utils.indented_print`, which
#: swaps `builtins.print`: not safe while two tasks run at once), so the lines a task
#: prints are written here with that indent, not through `print`.
TASK_INDENT = "    "


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@contextlib.contextmanager
def parallel_tasks_logging() -> Iterator[None]:
    """The root logger's level held at INFO and `builtins.print` put back after the run.

    kfp.local 2.17 sets both per task and restores them when the task ends
    (`logging_utils.local_logger_context`, `indented_print`). The seeds' loop runs
    two tasks at once in threads, so one task's restore lands in the middle of the
    other: the other's records, "finished" among them, are dropped (the level is back
    to WARNING), and `print` may stay indented after the run.
    """
    import builtins

    root = logging.getLogger()
    level, printer = root.level, builtins.print
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)
        builtins.print = printer


def _run_task_quietly(
    full_command: list[str], env_vars: dict[str, str] | None = None, label_seeds: bool = False
) -> int:
    """kfp.local's `run_local_subprocess` (same command, environment and merged
    stdout/stderr), showing the component's lines as they come and the KFP executor's
    only when the task fails: then its whole output is printed again, executor input
    included, so the failure can be read in full. With `label_seeds` the component's
    lines of a task with a seed start with `[seed N] `."""
    import os

    env = {**os.environ, **env_vars} if env_vars else None
    output: list[str] = []
    executor = ExecutorLines()
    seed = task_seed(full_command) if label_seeds else None
    label = "" if seed is None else f"[seed {seed}] "
    with subprocess.Popen(
        full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env=env,
    ) as process:  # fmt: skip
        assert process.stdout is not None
        for line in iter(process.stdout.readline, ""):
            output.append(line)
            if not executor.is_executor(line):
                _write(f"{TASK_INDENT}{label}{line}")
        code = process.wait()
    if code != 0:
        _write(f"--- the task failed (exit code {code}); its whole output: ---\n")
        _write("".join(output))
        _write("--- end of the failed task's output ---\n")
    return code


class _HideKfpLocalNoise(logging.Filter):
    """Drops kfp.local's per-task input/output dumps from the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not _KFP_LOCAL_NOISE.match(_ANSI.sub("", record.getMessage()))
        except Exception:  # a record we cannot format is not ours
            return True


@contextlib.contextmanager
def quiet_tasks(verbose: bool, label_seeds: bool = False) -> Iterator[None]:
    """Unless `verbose`, show what the tasks print and when they start and finish, not
    the KFP executor's logs nor kfp.local's artifact dumps (a failing task still shows
    all of its output); with `label_seeds`, a task's lines name its seed. kfp.local
    (2.17) has no option for this: its SubprocessRunner prints every line of
    `run_local_subprocess`, which is swapped for the duration. Either way the seed of
    the task is noted for `TaskClock`."""
    from kfp.local import subprocess_task_handler

    original = subprocess_task_handler.run_local_subprocess

    def run(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        _task_seed.value = task_seed(full_command)
        if verbose:
            return original(full_command, env_vars)
        return _run_task_quietly(full_command, env_vars, label_seeds)

    hide = _HideKfpLocalNoise()
    subprocess_task_handler.run_local_subprocess = run
    if not verbose:
        logging.getLogger().addFilter(hide)
    try:
        yield
    finally:
        subprocess_task_handler.run_local_subprocess = original
        logging.getLogger().removeFilter(hide)


def machine_share(config_path: str | Path, arguments: Mapping[str, Any], chains: int) -> Allotment:
    """How the `chains` of a local run share this machine (`dkd_core.sharing.allot`): the
    threads of each training process are `$DKD_CPU_THREADS` or every usable core, never
    a function of the chains, so a seed's weights are the same bytes alone or beside
    others; only as many chains as the cores hold run at once."""
    processes = max(1, int(arguments.get("gpus_per_pod", 0) or 0))
    cores = usable_cores()
    threads = threads_per_process(processes=processes, cores=cores)
    gpus = visible_gpus()
    return allot(chains, cores, processes, threads, gpus, processes if gpus else 0)


@contextlib.contextmanager
def shared_machine(share: Allotment) -> Iterator[None]:
    """Each task's process gets its chain's share (threads, GPUs: `Allotment.env`) of one
    of `share.concurrent` places, taken while it runs, so two chains running at once
    never get the same GPUs. Wraps kfp.local's subprocess runner (as `quiet_tasks`)."""
    from kfp.local import subprocess_task_handler

    inner = subprocess_task_handler.run_local_subprocess
    slots = Slots(share.concurrent)

    def run(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        with slots.take() as slot:
            return inner(full_command, {**(env_vars or {}), **share.env(slot)})

    subprocess_task_handler.run_local_subprocess = run
    try:
        yield
    finally:
        subprocess_task_handler.run_local_subprocess = inner


@dataclass
class LocalRun:
    """What a local run produced."""

    # per step: step, old, new, all, hiou (percent; new None at 0): the mean over the seeds
    steps: list[dict[str, Any]]
    report_dir: Path  # report.md, report.html, PNGs, summary.json, history.json
    artifacts: dict[str, str]  # pipeline outputs: report, markdown, plots, history -> local path
    seconds: float  # the whole run
    task_seconds: dict[str, float] = field(default_factory=dict)  # per kfp task, in run order
    # summary.json's "aggregate": per step, each figure's mean, std, n and per-seed values
    aggregate: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # in the order of the seeds parameter

    @property
    def html(self) -> Path:
        return self.report_dir / "report.html"

    @property
    def markdown(self) -> Path:
        return self.report_dir / "report.md"


def run_local(
    config_path: str | Path,
    data: str | Path | None,
    output: str | Path,
    params: Sequence[str] | Mapping[str, Any] = (),
    overrides: Sequence[str] = (),
    verbose: bool = False,
    seeds: str | Sequence[int] | None = None,
    gpus: int = 0,
) -> LocalRun:
    """Run the pipeline of `config_path` with `kfp.local` on the dataset at `data`.

    `data` None: the config's `data.root`. `gpus` is the default of the `gpus_per_pod`
    parameter: each train step runs under torchrun with that many processes, one per
    GPU of this machine (0: one process, on this machine's GPU if it has one, else CPU).

    `params` are pipeline parameters (`key=value` strings or a mapping; see
    `python -m pipelines run --help`), `overrides` config overrides appended to
    the `overrides` parameter, `seeds` the `seeds` parameter (`1,2,3` or a list; one
    chain of steps per seed; default: the config's train.seed). The KFP executor's
    logs are shown only when `verbose` or when a task fails (`quiet_tasks`). Raises
    `DKDError` when the data is missing, a seed or override is bad, or a task fails.
    """
    from kfp import local

    option = "--data"
    if data is None:
        data, option = load_config(config_path).data.root, f"data.root of {config_path}"
    if not is_remote(str(data)):
        if not Path(data).is_dir():
            raise DKDError(f"dataset folder {data} does not exist ({option})")
        data = Path(data).resolve()
    output = Path(output).resolve()
    pipeline = build_pipeline(config_path, launcher="local", gpus_per_pod=gpus, cluster=False)
    arguments = apply_seeds(parse_params(pipeline, params), None if seeds is None else str(seeds))
    arguments["dataset_uri"] = str(data)
    # The tasks run here: they use this environment's S3_ENDPOINT (if any), not the cluster's.
    arguments.setdefault("s3_endpoint", "")
    add_overrides(arguments, overrides)
    chains = run_seeds(config_path, arguments)  # a typo or bad seed fails here, not in a task
    share = machine_share(config_path, arguments, len(chains))
    # kfp.local runs a ParallelFor's iterations at once up to its parallelism (at most 2).
    pipeline = build_pipeline(
        config_path, launcher="local", gpus_per_pod=0, cluster=False,
        parallel_seeds=share.concurrent,
    )  # fmt: skip
    given = {o.partition("=")[0].strip() for o in arguments.get("overrides", [])}
    if share.concurrent > 1 and "train.metrics_port" not in given:
        # Two chains train at once on this machine: their exporters cannot both take the
        # default port, so each takes a free one.
        add_overrides(arguments, ["train.metrics_port=0"])
    workers = load_config(config_path, list(arguments.get("overrides", []))).data.num_workers
    if workers > share.workers and "data.num_workers" not in given:
        add_overrides(arguments, [f"data.num_workers={share.workers}"])  # result-neutral
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output / "kfp"))
    started = time.perf_counter()
    quiet = quiet_tasks(verbose, label_seeds=len(chains) > 1)
    with TaskClock() as clock, quiet, shared_machine(share), parallel_tasks_logging(), \
            warnings.catch_warnings():  # fmt: skip
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
    return LocalRun(
        summary["steps"], report_dir, artifacts, seconds, clock.seconds,
        aggregate=summary["aggregate"], seeds=[r["seed"] for r in summary["runs"]],
    )  # fmt: skip


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
    """The per-step mIoU table, the wall time of each task and where the report is.

    One seed: a row per step. Several: per step a row of mean ± sample std over the
    seeds, then a row per seed with its own values.
    """

    def fmt(value: float | None) -> str:
        return "     -" if value is None else f"{value:6.2f}"

    figures = ("old", "new", "all", "hiou")
    if len(run.seeds) > 1:

        def stats(s: dict) -> str:
            if s["mean"] is None:
                return f"{'-':>14}"
            return f"{s['mean']:6.2f} ± {s['std']:5.2f}" if s["std"] is not None else fmt(s["mean"])

        lines = [
            f"mean ± sample std over {len(run.seeds)} seeds ({', '.join(map(str, run.seeds))})",
            f"step  seed  {'old':>14} {'new':>14} {'all':>14} {'hIoU':>14}",
        ]
        for row in run.aggregate:
            lines.append(f"{row['step']:>4}  mean  " + " ".join(stats(row[k]) for k in figures))
            for i, seed in enumerate(row["seeds"]):
                values = " ".join(f"{fmt(row[k]['values'][i]):>14}" for k in figures)
                lines.append(f"{'':>4}  {seed:>4}  {values}")
    else:
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
