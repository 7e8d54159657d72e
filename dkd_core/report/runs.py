"""What a report is made of: runs (one chain of steps each), grouped by method, seeds aggregated.

A *run* is one configuration trained once, step 0 to the last, under one seed:
its input is each step's test metrics (the `metrics.json` that `train` and
`evaluate` write, with `channel_names`; a pipeline's history entries also carry
the step's `checkpoint`). Runs with the same `method` are seeds of one
configuration: their old / new / all mIoU and hIoU are aggregated per step as
mean and sample standard deviation (n - 1 in the denominator), the way
class-incremental papers report five-run means. Runs of different methods are
compared side by side.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from dkd_core.errors import DKDError

REQUIRED = ("miou_old", "miou_all", "iou", "channel_names")
#: The per-step figures of the step table (keys of `step_table`'s rows).
FIGURES = ("old", "new", "all", "hiou")


@dataclass(frozen=True)
class RunInput:
    """One run: its steps' test metrics (step 0 first), its method and seed."""

    steps: list[dict]
    method: str = "DKD"
    seed: int | None = None
    # Extra facts about the run for the report (e.g. provenance); free-form.
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.method if self.seed is None else f"{self.method}, seed {self.seed}"


def step_table(steps: Sequence[dict], label: str = "the run") -> list[dict]:
    """One row per step: old / new / all mIoU and hIoU (percent)."""
    rows = []
    for t, m in enumerate(steps):
        missing = [k for k in REQUIRED if k not in m]
        if missing:
            raise DKDError(
                f"metrics of step {t} of {label} lack {missing}; expected the output of evaluate"
            )
        rows.append(
            {"step": t, "old": m["miou_old"], "new": m.get("miou_new"),
             "all": m["miou_all"], "hiou": m.get("hiou")}
        )  # fmt: skip
    return rows


def methods(runs: Sequence[RunInput]) -> list[str]:
    """The methods of `runs`, in the order they first appear."""
    return list(dict.fromkeys(r.method for r in runs))


def seed_stats(values: list[float | None]) -> dict:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0, "values": values}
    std = statistics.stdev(present) if len(present) > 1 else None
    return {"mean": statistics.fmean(present), "std": std, "n": len(present), "values": values}


def aggregate(runs: Sequence[RunInput]) -> list[dict]:
    """Per method and step: mean, std (None for one seed), n and the per-seed values of
    each figure, plus the seeds in the order of `values`.

    The seeds of one method must have the same number of steps (they ran the same
    task) and distinct seeds; otherwise it is a `DKDError` naming the method.
    """
    if not runs:
        raise DKDError("no runs given: nothing to report")
    out = []
    for method in methods(runs):
        group = [r for r in runs if r.method == method]
        seeds = [r.seed for r in group]
        if len(group) > 1 and (None in seeds or len(set(seeds)) != len(seeds)):
            raise DKDError(
                f"method {method!r} has {len(group)} runs with seeds {seeds}: "
                "expected one seed per run, each different"
            )
        tables = [step_table(r.steps, r.label) for r in group]
        lengths = {len(t) for t in tables}
        if len(lengths) != 1:
            raise DKDError(
                f"the seeds of method {method!r} have different numbers of steps "
                f"({', '.join(f'seed {s}: {len(t)}' for s, t in zip(seeds, tables, strict=True))})"
            )
        for t in range(lengths.pop()):
            row = {"method": method, "step": t, "seeds": seeds}
            for key in FIGURES:
                row[key] = seed_stats([table[t][key] for table in tables])
            out.append(row)
    return out
