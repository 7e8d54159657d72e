"""Forgetting on the toy benchmark: fine-tuning vs KD-only vs DKD, same step recipe.

All three methods share step 0 (trained once per seed) and every incremental
setting (frozen BN, heads initialised from the auxiliary classifier, learning
rate, pos_weight); they differ only in the loss terms:

    fine-tuning  mbce + ac
    KD-only      mbce + ac + kd
    DKD          mbce + ac + kd + dkd_pos + dkd_neg

Prints a line when each training run starts and finishes (elapsed time, ETA), then,
for every step, mIoU of old classes (with background, as the reference reports), of
new classes, of all, hIoU, and the base-class mean without background — the
forgetting figure. Mean and sample std over the seeds; --json keeps each seed's values.

It also writes the comparison report of the runs (`dkd_core.report`, as
`python -m dkd_core report --run A --run B --label ...` does for run folders):
the three methods overlaid in the same plots and tables, seeds aggregated as
mean ± sample std, with each step's sample predictions, in `<output>/report/`
(report.html, report.md, summary.json and the PNGs).

    python benchmarks/toy_forgetting.py [--seeds 1 2] [--data build/toy] [--json out.json]
        [--no-report]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from dkd_core.checkpoint import read_meta
from dkd_core.config import load_config, result_digest
from dkd_core.data import make_toy_dataset
from dkd_core.progress import RunSeries
from dkd_core.report import RunInput, build_report
from dkd_core.samples import DEFAULT_COUNT, write_samples
from dkd_core.step_data import task_of
from dkd_core.train import train_step

CONFIG = Path(__file__).parents[1] / "pipelines" / "configs" / "toy.yaml"
METHODS = {
    "fine-tuning": ["loss.kd=0", "loss.dkd_pos=0", "loss.dkd_neg=0"],
    "KD-only": ["loss.dkd_pos=0", "loss.dkd_neg=0"],
    "DKD": [],
}


def figures(meta_metrics: dict, base_classes: int) -> dict:
    iou = meta_metrics["iou"]
    return {
        "old": meta_metrics["miou_old"],
        "new": meta_metrics["miou_new"],
        "all": meta_metrics["miou_all"],
        "hiou": meta_metrics["hiou"],
        "base_no_bg": statistics.fmean(iou[1 : 1 + base_classes]),
    }


def comparison_runs(checkpoints: dict[str, dict[int, list[str]]]) -> list[RunInput]:
    """One report run per method and seed: each step's metrics (from its checkpoint's
    meta.json) with the checkpoint URI, so the report finds the train log, provenance
    and samples beside it. Step 0 is the seed's shared checkpoint in every method."""
    return [
        RunInput(
            [{"checkpoint": uri, **read_meta(uri)["metrics"]} for uri in uris],
            method=method,
            seed=seed,
        )
        for method, by_seed in checkpoints.items()
        for seed, uris in by_seed.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data", default="build/toy/data", help="toy dataset (made if missing)")
    parser.add_argument("--output", default="build/toy_forgetting")
    parser.add_argument("--json", help="also write the table to this file")
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
        help="the methods to train (default: all three)",
    )  # fmt: skip
    parser.add_argument(
        "--no-report", action="store_true", help="skip the comparison report (<output>/report)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = parser.parse_args()
    chosen = {m: METHODS[m] for m in args.methods}

    logging.basicConfig(level=logging.WARNING)
    data = Path(args.data)
    if not (data / "ImageSets").is_dir():
        make_toy_dataset(data, classes=6, images=500, size=64, seed=0)
    results: dict[str, dict[int, list[dict]]] = {m: {} for m in chosen}
    checkpoints: dict[str, dict[int, list[str]]] = {m: {} for m in chosen}
    started = time.perf_counter()
    steps = task_of(load_config(CONFIG, args.overrides)).num_steps
    # Every seed trains step 0 once, then steps 1.. for each method: a line per run.
    runs = RunSeries(len(args.seeds) * (1 + len(chosen) * (steps - 1)))
    for seed in args.seeds:
        common = [f"data.root={data}", f"train.seed={seed}", "train.checkpoint_every=0"]
        common += ["train.progress=false"]
        common += args.overrides
        # Each run folder is named by the digest of its result-affecting settings, so a run
        # with other settings (overrides, an edited toy.yaml) never reuses a finished step.
        base = load_config(CONFIG, common)
        base = load_config(
            CONFIG, [*common, f"run.output={args.output}/base-{result_digest(base)}"]
        )
        task = task_of(base)
        step0 = runs.run(f"seed {seed} step 0 (shared)", train_step, base, 0)
        base_classes = task.classes_per_step[0]
        step0_figures = figures(read_meta(step0)["metrics"], base_classes)
        for method, loss_overrides in chosen.items():
            config = load_config(CONFIG, [*common, *loss_overrides])
            out = f"run.output={args.output}/{method}-{result_digest(config)}"
            config = load_config(CONFIG, [*common, *loss_overrides, out])
            rows = [step0_figures]
            teacher = step0
            checkpoints[method][seed] = [step0]
            for t in range(1, task.num_steps):
                label = f"seed {seed} {method} step {t}"
                teacher = runs.run(label, train_step, config, t, teacher=teacher)
                rows.append(figures(read_meta(teacher)["metrics"], base_classes))
                checkpoints[method][seed].append(teacher)
            results[method][seed] = rows
            print(f"seed {seed} {method}: done ({time.perf_counter() - started:.0f} s)", flush=True)

    print(
        f"\nToy {task.name} ({task.num_steps} steps), seeds {args.seeds}; mean ± sample std (n - 1)"
    )
    header = f"{'method':<12} {'step':>4} {'old':>12} {'new':>12} {'all':>12} {'hIoU':>12} {'base w/o bg':>12}"
    print(header)
    table = []
    for method in chosen:
        for t in range(task.num_steps):
            row = {"method": method, "step": t}
            cells = []
            for key in ("old", "new", "all", "hiou", "base_no_bg"):
                values = [results[method][s][t][key] for s in args.seeds]
                if any(v is None for v in values):
                    row[key] = None
                    cells.append(f"{'-':>12}")
                    continue
                mean = statistics.fmean(values)
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[key] = {"mean": mean, "std": std, "values": values}
                cells.append(f"{mean:>6.1f} ± {std:>3.1f}")
            table.append(row)
            print(f"{method:<12} {t:>4} " + " ".join(cells))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    if not args.no_report:
        for uri in {u for by_seed in checkpoints.values() for us in by_seed.values() for u in us}:
            write_samples(uri, count=DEFAULT_COUNT)  # the same images for every step
        files = build_report(
            comparison_runs(checkpoints), Path(args.output) / "report",
            title=f"Toy {task.name}: fine-tuning vs KD-only vs DKD",
        )  # fmt: skip
        print(f"report: {files.html}")


if __name__ == "__main__":
    main()
