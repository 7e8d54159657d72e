"""The run report: per-step mIoU table, old/new/all across steps, per-class IoU.

Input: the metrics of each step's test evaluation (the `metrics.json` that
`train` and `evaluate` write, with `channel_names`). Output, in one folder:
`report.md`, `report.html` (plots embedded, for the Kubeflow UI), `miou_steps.png`,
`per_class_iou.png` and `summary.json`. `python -m dkd_core report` runs it.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dkd_core.errors import DKDError

REQUIRED = ("miou_old", "miou_all", "iou", "channel_names")


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    steps_plot: Path
    classes_plot: Path
    summary: Path


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def step_table(steps: Sequence[dict]) -> list[dict]:
    """One row per step: old / new / all mIoU and hIoU (percent)."""
    rows = []
    for t, m in enumerate(steps):
        missing = [k for k in REQUIRED if k not in m]
        if missing:
            raise DKDError(f"metrics of step {t} lack {missing}; expected the output of evaluate")
        rows.append(
            {"step": t, "old": m["miou_old"], "new": m.get("miou_new"),
             "all": m["miou_all"], "hiou": m.get("hiou")}
        )  # fmt: skip
    return rows


def _plot_steps(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    steps = [r["step"] for r in rows]
    for key, style in (("old", "o-"), ("new", "s-"), ("all", "^-"), ("hiou", "d--")):
        points = [(r["step"], r[key]) for r in rows if r[key] is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=key if key != "hiou" else "hIoU")
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


def build_report(steps: Sequence[dict], out_dir: Path, title: str = "DKD run") -> ReportFiles:
    """Write the report of a run whose step metrics are `steps` (step 0 first)."""
    if not steps:
        raise DKDError("no step metrics given: nothing to report")
    rows = step_table(steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        out_dir / "report.md", out_dir / "report.html", out_dir / "miou_steps.png",
        out_dir / "per_class_iou.png", out_dir / "summary.json",
    )  # fmt: skip
    _plot_steps(rows, files.steps_plot)
    _plot_classes(steps[-1], files.classes_plot)

    last = steps[-1]
    header = "| step | old | new | all | hIoU |\n|---|---|---|---|---|\n"
    table = header + "".join(
        f"| {r['step']} | {_fmt(r['old'])} | {_fmt(r['new'])} | {_fmt(r['all'])} | "
        f"{_fmt(r['hiou'])} |\n"
        for r in rows
    )
    classes = "| class | IoU |\n|---|---|\n" + "".join(
        f"| {name}{' *' if c in set(last.get('new_channels', [])) else ''} | {iou:.2f} |\n"
        for c, (name, iou) in enumerate(zip(last["channel_names"], last["iou"], strict=True))
    )
    files.markdown.write_text(
        f"# {title}\n\nmIoU (%) on the test set after each step; old = background and "
        f"base classes, new = classes added later.\n\n{table}\n"
        f"![mIoU across steps]({files.steps_plot.name})\n\n"
        f"## Per-class IoU after step {len(steps) - 1} (* = added after step 0)\n\n"
        f"{classes}\n![per-class IoU]({files.classes_plot.name})\n"
    )

    def embed(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'

    html_rows = "".join(
        f"<tr><td>{r['step']}</td><td>{_fmt(r['old'])}</td><td>{_fmt(r['new'])}</td>"
        f"<td>{_fmt(r['all'])}</td><td>{_fmt(r['hiou'])}</td></tr>"
        for r in rows
    )
    files.html.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:right}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>"
        "<table><tr><th>step</th><th>old</th><th>new</th><th>all</th><th>hIoU</th></tr>"
        f"{html_rows}</table>{embed(files.steps_plot)}<h2>Per-class IoU</h2>"
        f"{embed(files.classes_plot)}</body></html>\n"
    )
    files.summary.write_text(json.dumps({"title": title, "steps": rows}, indent=2) + "\n")
    return files
