"""The report's numbers, as plain rows: per-class IoU by step, forgetting, increments,
published results beside ours, training figures and provenance.

Channels are classes: channel c of step t is the same class at every later
step (the label -> channel table only grows, docs/method.md §1), so one run's
per-class IoU forms a class x step matrix in which a class has no value before
the step that added it. The classes of step s's increment are the channels
step s added: channels len(iou of step s-1) .. len(iou of step s) - 1 (step 0:
background and the base classes). Values are percent.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from dkd_core.report.published import Published
from dkd_core.report.runs import RunInput, methods, seed_stats

NOT_LEARNED = math.nan


def learned_at(steps: Sequence[dict]) -> list[int]:
    """The step that added each channel of the last step."""
    out: list[int] = []
    for t, m in enumerate(steps):
        out += [t] * (len(m["iou"]) - len(out))
    return out


def class_iou_matrix(steps: Sequence[dict]) -> list[list[float]]:
    """[class][step] IoU; NaN before the step that added the class (never 0)."""
    width = len(steps[-1]["iou"])
    return [
        [m["iou"][c] if c < len(m["iou"]) else NOT_LEARNED for m in steps] for c in range(width)
    ]


def mean_matrix(runs: Sequence[RunInput]) -> list[list[float]]:
    """The per-class IoU matrix averaged over the seeds of one method."""
    matrices = [class_iou_matrix(r.steps) for r in runs]
    return [
        [statistics.fmean(m[c][t] for m in matrices) for t in range(len(matrices[0][0]))]
        for c in range(len(matrices[0]))
    ]


def forgetting(steps: Sequence[dict]) -> list[dict]:
    """Per class learned before the last step: IoU at the step that added it, IoU after the
    last step, and their difference (positive = forgotten). Classes of the last step have
    nothing to forget and are left out."""
    last = len(steps) - 1
    names = steps[-1]["channel_names"]
    rows = []
    for c, t in enumerate(learned_at(steps)):
        if t == last:
            continue
        learned, final = steps[t]["iou"][c], steps[last]["iou"][c]
        rows.append(
            {"channel": c, "class": names[c], "learned_at": t, "iou_learned": learned,
             "iou_last": final, "forgetting": learned - final}
        )  # fmt: skip
    return rows


def method_forgetting(runs: Sequence[RunInput]) -> list[dict]:
    """`forgetting` per class, mean (and sample std) over the seeds of one method."""
    per_seed = [forgetting(r.steps) for r in runs]
    rows = []
    for i, row in enumerate(per_seed[0]):
        out = dict(row)
        for key in ("iou_learned", "iou_last", "forgetting"):
            stats = seed_stats([seed[i][key] for seed in per_seed])
            out[key], out[f"{key}_std"] = stats["mean"], stats["std"]
        rows.append(out)
    return rows


def align_by_class(
    rows_by_method: dict[str, list[dict]],
) -> tuple[list[str], dict[str, list[dict | None]]]:
    """Per-class rows of several methods (or settings with other class sets) side by side:
    the union of their classes in order of first appearance, and per method its row of
    each class (None where the method has no such row)."""
    names = list(dict.fromkeys(r["class"] for rows in rows_by_method.values() for r in rows))
    aligned = {}
    for method, rows in rows_by_method.items():
        by_name = {r["class"]: r for r in rows}
        aligned[method] = [by_name.get(n) for n in names]
    return names, aligned


def increments(steps: Sequence[dict]) -> list[dict]:
    """Per evaluated step t: the mIoU of each increment s <= t's classes ("by_increment",
    keyed by s; step 0's increment includes background)."""
    added = learned_at(steps)
    rows = []
    for t, m in enumerate(steps):
        by_increment = {}
        for s in range(t + 1):
            ious = [m["iou"][c] for c in range(len(m["iou"])) if added[c] == s]
            by_increment[s] = statistics.fmean(ious) if ious else None
        rows.append({"step": t, "by_increment": by_increment})
    return rows


def method_increments(runs: Sequence[RunInput]) -> list[dict]:
    """`increments` of one method: mean and std over its seeds per (step, increment)."""
    per_seed = [increments(r.steps) for r in runs]
    return [
        {"step": row["step"],
         "by_increment": {s: seed_stats([seed[t]["by_increment"][s] for seed in per_seed])
                          for s in row["by_increment"]}}
        for t, row in enumerate(per_seed[0])
    ]  # fmt: skip


def grouped(runs: Sequence[RunInput]) -> dict[str, list[RunInput]]:
    """Runs by method, methods in the order they first appear."""
    return {m: [r for r in runs if r.method == m] for m in methods(runs)}


def published_rows(ours: dict[str, dict], published: Sequence[Published]) -> list[dict]:
    """Our methods' final-step figures (`ours`: method -> aggregate row) and the published ones."""
    rows = [
        {"source": "ours", "method": method,
         **{k: row[k]["mean"] for k in ("old", "new", "all", "hiou")},
         "std": {k: row[k]["std"] for k in ("old", "new", "all", "hiou")}, "n": row["all"]["n"]}
        for method, row in ours.items()
    ]  # fmt: skip
    rows += [
        {"source": p.source, "method": p.method, "old": p.old, "new": p.new, "all": p.all,
         "hiou": p.hiou, "std": None, "n": None}
        for p in published
    ]  # fmt: skip
    return rows


def _loss_terms(log: Sequence[dict]) -> list[str]:
    return [k for k in log[0] if k not in ("iteration", "lr")] if log else []


def training_row(log: Sequence[dict] | None, provenance: dict | None) -> dict:
    """One step's training figures: final loss terms (mean of the last tenth of the log),
    learning rate at the first and last record, wall time and throughput."""
    row: dict = {"iterations": None, "lr_first": None, "lr_last": None, "final_loss": {}}
    if log:
        tail = log[-max(1, len(log) // 10) :]
        row["iterations"] = log[-1]["iteration"]
        row["lr_first"], row["lr_last"] = log[0].get("lr"), log[-1].get("lr")
        row["final_loss"] = {
            k: statistics.fmean(r[k] for r in tail if isinstance(r.get(k), int | float))
            for k in _loss_terms(log)
            if any(isinstance(r.get(k), int | float) for r in tail)
        }
    p = provenance or {}
    row["wall_seconds"] = p.get("wall_seconds")
    row["images_per_second"] = p.get("images_per_second")
    row["finished"] = p.get("finished")
    return row


def hardware_summary(hardware: dict | None) -> str:
    """e.g. '4 x NVIDIA H100 (world size 8), torch 2.13.0, CUDA 12.6' or 'CPU (16 cores) ...'."""
    if not hardware:
        return "–"
    gpus = hardware.get("gpus") or []
    if gpus:
        names = sorted(set(gpus))
        devices = f"{len(gpus)} x {', '.join(names)}"
    else:
        devices = f"CPU {hardware.get('processor') or ''} ({hardware.get('cpu_count')} cores)"
    parts = [devices.replace("  ", " "), f"{hardware.get('world_size', 1)} process(es)"]
    parts.append(f"torch {hardware.get('torch')}")
    if hardware.get("cuda") and gpus:
        parts.append(f"CUDA {hardware['cuda']}")
    parts.append(f"host {hardware.get('host')}")
    if hardware.get("numerics"):
        from dkd_core.provenance import numerics_summary

        parts.append(f"CPU numerics: {numerics_summary(hardware['numerics'])}")
    return ", ".join(parts)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_changes(configs: Sequence[dict | None]) -> list[dict]:
    """Per step t > 0: the config keys whose value differs from step 0's."""
    if not configs or configs[0] is None:
        return []
    base = flatten(configs[0])
    rows = []
    for t, config in enumerate(configs[1:], start=1):
        if config is None:
            continue
        flat = flatten(config)
        changed = {k: (base.get(k), v) for k, v in flat.items() if base.get(k) != v}
        rows.append({"step": t, "changed": changed})
    return rows
