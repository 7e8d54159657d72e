"""The report's figures (matplotlib, Agg), sized for a page at any class count.

Every figure stays within MAX_WIDTH x MAX_HEIGHT inches at DPI: per-class
figures list classes as rows and, past ROWS_PER_PANEL classes, continue in
panels side by side (ADE20K's 150 classes: three panels of 50), so labels keep
a legible size instead of the figure growing with the class count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dkd_core.report.published import Published

DPI = 110
MAX_WIDTH = 14.0  # inches
MAX_HEIGHT = 16.0
ROWS_PER_PANEL = 50
#: Cell values are printed in the heatmap up to this many classes.
ANNOTATE_UP_TO = 40
FIGURES = (("old", "old classes (with background)"), ("new", "new classes"),
           ("all", "all classes"), ("hiou", "hIoU"))  # fmt: skip
METHOD_COLOURS = plt.get_cmap("tab10").colors


def size(width: float, height: float) -> tuple[float, float]:
    """A figure size (inches) within MAX_WIDTH x MAX_HEIGHT."""
    return min(width, MAX_WIDTH), min(height, MAX_HEIGHT)


def _save(fig, path: Path, dpi: int = DPI) -> Path:
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return path


def _panels(count: int) -> list[range]:
    """Row ranges of at most ROWS_PER_PANEL rows, balanced."""
    n = max(1, math.ceil(count / ROWS_PER_PANEL))
    size = math.ceil(count / n)
    return [range(i, min(i + size, count)) for i in range(0, count, size)]


def _class_font(rows: int) -> float:
    return 9 if rows <= 20 else 8 if rows <= 35 else 7


def steps_figure(
    rows_by_method: Mapping[str, list[dict]],
    published: Sequence[Published],
    path: Path,
    dpi: int = DPI,
) -> Path:
    """mIoU of old / new / all classes and hIoU after each step, one line per method
    (error bars: sample std over seeds); the authors' final-step figures as markers.
    A lower `dpi` gives the same figure in fewer pixels (the README's copy)."""
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), sharey=True)
    for ax, (key, label) in zip(axes, FIGURES, strict=True):
        for i, (method, rows) in enumerate(rows_by_method.items()):
            points = [(r["step"], r[key]["mean"], r[key]["std"] or 0.0)
                      for r in rows if r[key]["mean"] is not None]  # fmt: skip
            if points:
                x, y, err = zip(*points, strict=True)
                ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1.5,
                            color=METHOD_COLOURS[i % 10], label=method)  # fmt: skip
        last = max(r["step"] for rows in rows_by_method.values() for r in rows)
        markers = {"README": ("*", "black"), "paper": ("D", "dimgray")}
        for p in published:
            value = getattr(p, key)
            if value is None:
                continue
            kind = "README" if "README" in p.source else "paper"
            marker, colour = markers[kind]
            ax.plot([last + 0.15], [value], marker=marker, ms=9 if marker == "*" else 5,
                    color=colour, ls="none", label=f"authors' {kind}: {p.method}")  # fmt: skip
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.set_xticks(range(last + 1))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%)")
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    labels.sort(key=lambda lab: lab.startswith("authors'"))  # ours first, in method order
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center",
               ncol=min(6, len(labels)), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, -0.02))  # fmt: skip
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, path, dpi)


def heatmap_figure(
    names: Sequence[str],
    matrix: Sequence[Sequence[float]],
    added: Sequence[int],
    path: Path,
    title: str,
) -> Path:
    """Class x step IoU; blank (hatched) where the class is not learned yet."""
    data = np.ma.masked_invalid(np.asarray(matrix, dtype=float))  # [C, T]
    classes, steps = data.shape
    panels = _panels(classes)
    rows = len(panels[0])
    annotate = classes <= ANNOTATE_UP_TO and steps <= 12
    label_width = 0.09 * max(len(n) for n in names) + 0.5
    cell = min(0.9, max(0.42, 4.0 / steps))  # inches per step column: wide for few steps
    width = len(panels) * (label_width + cell * steps + 0.25) + 1.2
    height = 0.22 * rows + 1.6
    fig, axes = plt.subplots(
        1, len(panels), figsize=size(width, height), squeeze=False, layout="constrained"
    )
    # Masked (not learned) cells are transparent over a hatched background, so "blank"
    # cannot be read as a low IoU.
    cmap = plt.get_cmap("viridis").with_extremes(bad=(1, 1, 1, 0))
    image = None
    for ax, rng in zip(axes[0], panels, strict=True):
        block = data[rng.start : rng.stop]
        ax.add_patch(plt.Rectangle((-0.5, -0.5), steps, len(rng), facecolor="white",
                                   hatch="////", edgecolor="#c8ccd4", lw=0, zorder=0))  # fmt: skip
        image = ax.imshow(block, cmap=cmap, vmin=0, vmax=100, aspect="auto",
                          interpolation="nearest", zorder=1)  # fmt: skip
        ax.set_yticks(range(len(rng)), [names[c] for c in rng], fontsize=_class_font(rows))
        ax.set_xticks(range(steps), [str(t) for t in range(steps)], fontsize=8)
        ax.set_xlabel("after step")
        ax.tick_params(axis="y", length=0)
        for r, c in enumerate(rng):  # a line where each increment begins
            if c > 0 and added[c] != added[c - 1]:
                ax.axhline(r - 0.5, color="black", lw=0.8, zorder=2)
        if annotate:
            for r in range(block.shape[0]):
                for t in range(steps):
                    if not np.ma.is_masked(block[r, t]):
                        v = float(block[r, t])
                        ax.text(t, r, f"{v:.0f}", ha="center", va="center", fontsize=7,
                                color="white" if v < 60 else "black", zorder=3)  # fmt: skip
    bar = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.03 if len(panels) > 1 else 0.08,
                       pad=0.02, aspect=40)  # fmt: skip
    bar.set_label("IoU (%)")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def forgetting_figure(rows_by_method: Mapping[str, list[dict]], path: Path) -> Path:
    """Per class learned before the last step: IoU when learned minus IoU after the last
    step (IoU points; > 0 = forgotten), one bar per method, classes as rows."""
    from dkd_core.report.tables import align_by_class

    names, aligned = align_by_class(dict(rows_by_method))
    panels = _panels(len(names))
    rows = len(panels[0])
    m = len(aligned)
    label_width = 0.09 * max(len(n) for n in names) + 0.5
    fig, axes = plt.subplots(
        1, len(panels), figsize=size(len(panels) * (label_width + 3.4) + 0.5,
                                 (0.2 + 0.06 * (m - 1)) * rows + 1.8),
        squeeze=False, sharex=True,
    )  # fmt: skip
    values = [r["forgetting"] for rs in aligned.values() for r in rs if r is not None]
    lo, hi = min(0.0, *values), max(0.0, *values)
    pad = 0.05 * (hi - lo or 1.0)
    height = 0.8 / m
    for ax, rng in zip(axes[0], panels, strict=True):
        for i, (method, rs) in enumerate(aligned.items()):
            y = np.arange(len(rng)) - 0.4 + height * (i + 0.5)
            vals = [rs[c]["forgetting"] if rs[c] else np.nan for c in rng]
            errs = [(rs[c].get("forgetting_std") or 0.0) if rs[c] else 0.0 for c in rng]
            ax.barh(y, vals, height=height, xerr=errs if any(errs) else None,
                    color=METHOD_COLOURS[i % 10], label=method, capsize=2)  # fmt: skip
        ax.set_yticks(range(len(rng)), [names[c] for c in rng], fontsize=_class_font(rows))
        ax.set_ylim(len(rng) - 0.5, -0.5)
        ax.set_xlim(lo - pad, hi + pad)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("forgetting (IoU points)")
        ax.grid(axis="x", alpha=0.3)
    h = fig.get_size_inches()[1]
    fig.suptitle("IoU when learned minus IoU after the last step (> 0: forgotten)",
                 fontsize=11, y=1 - 0.05 / h, va="top")  # fmt: skip
    top = 1 - 0.4 / h
    if m > 1:  # the methods' legend between the title and the panels
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=m,
                   fontsize=9, frameon=False, bbox_to_anchor=(0.5, 1 - 0.3 / h))  # fmt: skip
        top = 1 - 0.65 / h
    fig.tight_layout(rect=(0, 0, 1, top))
    return _save(fig, path)


def loss_figure(logs_by_method: Mapping[str, Sequence[Sequence[dict] | None]], path: Path) -> Path:
    """Each loss term and the learning rate against iteration, the steps one after another
    (dashed lines between them); one line style per method."""
    styles = ["-", "--", ":", "-."]
    terms: list[str] = []
    for logs in logs_by_method.values():
        for log in logs:
            for k in log[0] if log else {}:
                if k not in ("iteration", "lr") and k not in terms:
                    terms.append(k)
    # The total in black, drawn thicker; each term in its own colour.
    others = [t for t in terms if t != "total"]
    colours = {t: plt.get_cmap("tab10").colors[i % 10] for i, t in enumerate(others)}
    colours["total"] = "black"
    terms = (["total"] if "total" in terms else []) + others
    fig, (ax_loss, ax_lr) = plt.subplots(
        2, 1, figsize=(12, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    boundaries: list[tuple[float, int]] = []
    for i, logs in enumerate(logs_by_method.values()):
        offset = 0
        for t, log in enumerate(logs):
            if i == 0:
                boundaries.append((offset, t))
            if not log:
                continue
            x = np.array([r["iteration"] for r in log], dtype=float) + offset
            for term in terms:
                y = [r.get(term) for r in log]
                if any(v is not None for v in y):
                    y = np.array([np.nan if v is None else max(v, 1e-6) for v in y])
                    ax_loss.plot(x, y, styles[i % 4], color=colours[term],
                                 lw=1.8 if term == "total" else 1.1)  # fmt: skip
            ax_lr.plot(x, [r.get("lr") for r in log], styles[i % 4], color="tab:gray", lw=1.3)
            offset = x[-1]
    for x0, t in boundaries:
        for ax in (ax_loss, ax_lr):
            ax.axvline(x0, color="gray", ls="--", lw=0.7)
        ax_loss.text(x0, 1.01, f" step {t}", transform=ax_loss.get_xaxis_transform(),
                     fontsize=8, va="bottom")  # fmt: skip
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (log scale)")
    ax_loss.grid(alpha=0.3, which="both")
    from matplotlib.lines import Line2D

    proxies = [Line2D([], [], color=colours[t], lw=1.5, label=t) for t in terms]
    if len(logs_by_method) > 1:
        proxies += [Line2D([], [], color="tab:gray", ls=styles[i % 4], lw=1.2, label=m)
                    for i, m in enumerate(logs_by_method)]  # fmt: skip
    ax_loss.legend(handles=proxies, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                   frameon=False)  # fmt: skip
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration (steps concatenated)")
    ax_lr.grid(alpha=0.3)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.tight_layout()
    return _save(fig, path)


def throughput_figure(values_by_method: Mapping[str, Sequence[float | None]], path: Path) -> Path:
    """Training throughput per step (images/s, end to end), one bar per method."""
    m = len(values_by_method)
    steps = max(len(v) for v in values_by_method.values())
    fig, ax = plt.subplots(figsize=size(max(5.0, 0.5 * steps * m + 2.5), 3.2))
    width = 0.8 / m
    for i, (method, values) in enumerate(values_by_method.items()):
        x = np.arange(len(values)) - 0.4 + width * (i + 0.5)
        ax.bar(x, [v or 0.0 for v in values], width=width, color=METHOD_COLOURS[i % 10],
               label=method)  # fmt: skip
    ax.set_xticks(range(steps))
    ax.set_xlabel("step")
    ax.set_ylabel("images / s")
    ax.grid(axis="y", alpha=0.3)
    if m > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Training throughput (whole attempt: setup, evaluation, checkpoints included)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)
