"""Writes the report of one or more runs (`runs.RunInput`): table, plots, HTML, Markdown.

Output, in one folder: `report.md`, `report.html` (plots embedded, for the
Kubeflow UI), `miou_steps.png`, `per_class_iou.png` and `summary.json`. With
several seeds of a method the table shows mean ± std over the seeds, and
`summary.json` keeps every seed's values.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dkd_core.errors import DKDError
from dkd_core.report.runs import FIGURES, RunInput, aggregate, methods, step_table


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    steps_plot: Path
    classes_plot: Path
    summary: Path


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _fmt_stats(stats: dict) -> str:
    """`mean` for one seed, `mean ± std` for several."""
    if stats["std"] is None:
        return _fmt(stats["mean"])
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _mean_rows(rows: list[dict]) -> list[dict]:
    """Aggregated rows as plain step rows of their means."""
    return [{"step": r["step"], **{k: r[k]["mean"] for k in FIGURES}} for r in rows]


def _plot_steps(rows: list[dict], path: Path) -> None:
    """mIoU across steps; `rows` are one method's aggregated rows (error bars: std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    steps = [r["step"] for r in rows]
    for key, style in (("old", "o-"), ("new", "s-"), ("all", "^-"), ("hiou", "d--")):
        points = [(r["step"], r[key]["mean"], r[key]["std"] or 0.0)
                  for r in rows if r[key]["mean"] is not None]  # fmt: skip
        if points:
            x, y, err = zip(*points, strict=True)
            label = key if key != "hiou" else "hIoU"
            ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=label)
    ax.set_xticks(steps)
    ax.set_xlabel("CISS step")
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_classes(last: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, iou = last["channel_names"], last["iou"]
    new = set(last.get("new_channels", []))
    colors = ["tab:orange" if c in new else "tab:blue" for c in range(len(iou))]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(iou)), 3.8), dpi=110)
    ax.bar(range(len(iou)), iou, color=colors)
    ax.set_xticks(range(len(iou)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class IoU after the last step (orange: added after step 0)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_report(runs: Sequence[RunInput], out_dir: Path, title: str = "DKD run") -> ReportFiles:
    """Write the report of `runs` (each with its steps' metrics, step 0 first) to `out_dir`."""
    if not runs or not any(r.steps for r in runs):
        raise DKDError("no step metrics given: nothing to report")
    rows = aggregate(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        out_dir / "report.md", out_dir / "report.html", out_dir / "miou_steps.png",
        out_dir / "per_class_iou.png", out_dir / "summary.json",
    )  # fmt: skip
    first = methods(runs)[0]
    first_rows = [r for r in rows if r["method"] == first]
    _plot_steps(first_rows, files.steps_plot)
    last = runs[0].steps[-1]
    _plot_classes(last, files.classes_plot)

    several = len(methods(runs)) > 1
    columns = (["method"] if several else []) + ["step", "old", "new", "all", "hIoU"]
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"

    def cells(r: dict) -> list[str]:
        return (
            ([r["method"]] if several else [])
            + [str(r["step"])]
            + [_fmt_stats(r[k]) for k in FIGURES]
        )

    table = header + "".join("| " + " | ".join(cells(r)) + " |\n" for r in rows)
    seeds = {m: [r.seed for r in runs if r.method == m] for m in methods(runs)}
    seed_note = "".join(
        f" {m}: {len(s)} seeds ({', '.join(map(str, s))}), mean ± sample std."
        for m, s in seeds.items()
        if len(s) > 1
    )
    new_channels = set(last.get("new_channels", []))
    classes = "| class | IoU |\n|---|---|\n" + "".join(
        f"| {name}{' *' if c in new_channels else ''} | {iou:.2f} |\n"
        for c, (name, iou) in enumerate(zip(last["channel_names"], last["iou"], strict=True))
    )
    files.markdown.write_text(
        f"# {title}\n\nmIoU (%) on the test set after each step; old = background and "
        f"base classes, new = classes added later.{seed_note}\n\n{table}\n"
        f"![mIoU across steps]({files.steps_plot.name})\n\n"
        f"## Per-class IoU after step {len(runs[0].steps) - 1}, {runs[0].label} "
        f"(* = added after step 0)\n\n{classes}\n![per-class IoU]({files.classes_plot.name})\n"
    )

    def embed(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'

    html_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(r)) + "</tr>" for r in rows
    )
    html_header = "".join(f"<th>{c}</th>" for c in columns)
    files.html.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:right}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(seed_note.strip())}</p>"
        f"<table><tr>{html_header}</tr>"
        f"{html_rows}</table>{embed(files.steps_plot)}<h2>Per-class IoU</h2>"
        f"{embed(files.classes_plot)}</body></html>\n"
    )
    summary = {
        "title": title,
        # The first method's per-step means (a single run: its own values).
        "steps": _mean_rows(first_rows),
        "aggregate": rows,
        "runs": [
            {"method": r.method, "seed": r.seed, "steps": step_table(r.steps, r.label)}
            for r in runs
        ],
    }
    files.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return files
