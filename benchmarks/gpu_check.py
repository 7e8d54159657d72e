"""The CUDA path on one GPU: environment, correctness, a CISS step, throughput, input pipeline.

    python benchmarks/gpu_check.py [--reference-dir DIR] [--json build/gpu_check.json]
    python benchmarks/gpu_check.py --tiny --device cpu      # the same code on CPU, in seconds

Five stages (`gpucheck/`), each in its own process under a hard time limit
(`gpucheck.settings`; the GPU preset adds up to under 8 minutes): a stage
that fails or runs out of time is recorded with what it had measured, and the
others still run. Everything is written as JSON (atomically); a short table is
printed last. Exit code 0 only when every stage finished and every check passed;
2 for bad arguments.

Runs with whatever torch the machine has: the repository root is put on
sys.path, so dkd_core need not be installed (installing it would pull our
pinned torch). The environment stage names any package that is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from gpucheck import report  # noqa: E402
from gpucheck.settings import GPU, STAGES, TINY, Settings  # noqa: E402
from gpucheck.stage_io import kill_tree  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the CPU-sized preset (tiny ResNet, 64 px)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: the preset's)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument(
        "--budget", action="append", default=[], metavar="STAGE=SECONDS",
        help="override one stage's time limit (repeatable)",
    )  # fmt: skip
    p.add_argument("--reference-dir", help="a checkout of the authors' DKD code (outside git)")
    p.add_argument("--json", default="build/gpu_check.json", help="where the figures go")
    p.add_argument("--scratch", help="working folder (default: a temporary one, removed after)")
    p.add_argument("--run-stage", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    settings = TINY if args.tiny else GPU
    if args.device:
        settings = dataclasses.replace(settings, device=args.device)
    budgets = dict(settings.budgets)
    for item in args.budget:
        stage, sep, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if not sep or stage not in STAGES or value <= 0:
            raise ValueError(
                f"--budget {item!r}: expected STAGE=SECONDS with STAGE one of "
                f"{', '.join(STAGES)} and SECONDS > 0"
            )
        budgets[stage] = value
    return dataclasses.replace(settings, budgets=budgets)


def check_reference_dir(path: str) -> str:
    """The absolute path of a folder holding the authors' models/model.py and models/loss.py."""
    root = Path(path).resolve()
    missing = [f for f in ("models/model.py", "models/loss.py") if not (root / f).is_file()]
    if missing:
        raise ValueError(
            f"--reference-dir {path}: expected a checkout of the authors' DKD code; "
            f"missing {', '.join(missing)}"
        )
    return str(root)


# -- one stage, in the child process ---------------------------------------------------


def run_stage(args: argparse.Namespace) -> int:
    from gpucheck.stage_io import Deadline, StageResult

    settings = Settings.from_file(args.settings)
    result = StageResult(args.result)
    deadline = Deadline(settings.budgets[args.run_stage] - 2)  # leave time to write and exit
    module = {"env": "environment"}.get(args.run_stage, args.run_stage)
    try:
        stage = importlib.import_module(f"gpucheck.{module}")
        stage.run(
            settings, result, deadline, scratch=Path(args.scratch),
            reference_dir=args.reference_dir,
        )  # fmt: skip
    except Exception as e:
        import traceback

        traceback.print_exc()
        result.set("error", f"{type(e).__name__}: {e}")
        return 1
    return 0


# -- the driver ------------------------------------------------------------------------


def launch(stage: str, args, settings_file: Path, scratch: Path, budget: float) -> dict:
    """Run one stage in a child process; its figures, however it ended."""
    result_file = scratch / f"{stage}.json"
    result_file.unlink(missing_ok=True)
    command = [
        sys.executable, str(Path(__file__).resolve()), "--run-stage", stage,
        "--settings", str(settings_file), "--result", str(result_file), "--scratch", str(scratch),
    ]  # fmt: skip
    if args.reference_dir:
        command += ["--reference-dir", args.reference_dir]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "DKD_CACHE": str(scratch / "cache"),
    }
    print(f"== {stage} (budget {budget:.0f} s)", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=budget)
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        kill_tree(proc)  # the stage with its loader workers and torchrun's workers

        rc, status = None, "timed out"
    seconds = time.monotonic() - started
    try:
        figures = json.loads(result_file.read_text())
    except (OSError, ValueError):
        figures = {"checks": []}
    error = figures.pop("error", None)
    if status == "failed" and error is None:
        error = f"exited with code {rc}"
    if status == "timed out":
        error = f"killed at its {budget:g} s budget; figures up to then kept"
    return {"status": status, "seconds": round(seconds, 1), "error": error, **figures}


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(payload, f, indent=2)
    os.replace(f.name, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_stage:
        return run_stage(args)
    try:
        settings = settings_from(args)
        if args.reference_dir:
            args.reference_dir = check_reference_dir(args.reference_dir)
    except ValueError as e:
        print(f"gpu_check.py: {e}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        scratch = Path(args.scratch or tmp).resolve()
        scratch.mkdir(parents=True, exist_ok=True)
        settings_file = scratch / "settings.json"
        settings_file.write_text(settings.to_json())
        stages: dict[str, dict] = {}
        for stage in args.stages:
            missing = stages.get("env", {}).get("missing")
            if stage != "env" and missing:
                stages[stage] = {"status": "skipped", "seconds": 0, "checks": [],
                                 "error": f"missing packages: {', '.join(missing)}"}  # fmt: skip
                continue
            stages[stage] = launch(stage, args, settings_file, scratch, settings.budgets[stage])
    payload = {
        "settings": dataclasses.asdict(settings),
        "reference_dir_given": bool(args.reference_dir),
        "seconds": round(time.monotonic() - started, 1),
        "stages": stages,
        "summary": report.summary(stages),
    }
    payload["passed"] = payload["summary"]["passed"]
    write_json_atomic(Path(args.json), payload)
    print(report.table(payload))
    print(f"figures: {args.json}")
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
