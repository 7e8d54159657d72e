"""The demo's wall time with one seed and with several, side by side in one run.

Runs `python -m pipelines demo` (kfp.local) with `--seeds 1` and then with
`--seeds 1,2,3` into fresh folders, and prints each wall time, their ratio (the
chains of a local run share the machine: `dkd_core.sharing`), the load average
before and after each, and whether seed 1's per-step figures are the same in
both runs (they must be: a chain's thread count never depends on the others).

    python benchmarks/demo_seeds.py [--seeds 1,2,3] [--output build/demo_seeds] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_demo(seeds: str, output: Path, data: Path) -> dict:
    if output.exists():
        shutil.rmtree(output)
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipelines", "demo", "--seeds", seeds, "--output", str(output),
         "--data", str(data)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    summary = json.loads((output / "report" / "summary.json").read_text())
    per_seed = {run["seed"]: run["steps"] for run in summary["runs"]}
    return {
        "seeds": seeds, "seconds": round(seconds, 1), "load_before": load_before,
        "load_after": os.getloadavg(), "aggregate": summary["aggregate"], "per_seed": per_seed,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="the several-seed run (default 1,2,3)")
    parser.add_argument("--output", default="build/demo_seeds")
    parser.add_argument("--data", default="data/toy", help="the demo's dataset (made if missing)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    first = args.seeds.split(",")[0].strip()
    one = run_demo(first, Path(args.output) / "one", Path(args.data))
    print(f"seed {first}: {one['seconds']:.0f} s (load {one['load_before'][0]:.1f})", flush=True)
    several = run_demo(args.seeds, Path(args.output) / "several", Path(args.data))
    ratio = several["seconds"] / one["seconds"]
    same = several["per_seed"][int(first)] == one["per_seed"][int(first)]
    print(f"seeds {args.seeds}: {several['seconds']:.0f} s (load "
          f"{several['load_before'][0]:.1f}), {ratio:.2f}x one seed")  # fmt: skip
    print(f"seed {first}'s figures equal in both runs: {same}")
    last = several["aggregate"][-1]["all"]
    print(f"last step all-mIoU over seeds {args.seeds}: {last['mean']:.2f} ± {last['std']:.2f} "
          f"(sample std), per seed {[round(v, 2) for v in last['values']]}")  # fmt: skip
    print(f"machine: {os.cpu_count()} CPUs; load averages (1, 5, 15 min) noted per run")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"one": one, "several": several, "ratio": ratio, "seed_equal": same}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
