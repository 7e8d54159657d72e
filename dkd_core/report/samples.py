"""The qualitative figure: fixed test images, their ground truth and each step's prediction.

Reads what `dkd_core.samples` wrote beside each step's checkpoint
(`eval/samples/`), through `dkd_core.storage`. Rows are images; columns the
evaluated view, the last step's ground truth (every class seen by then) and
the prediction after each step, all in the dataset's palette, with a legend of
the classes that appear. Only images every step predicted are shown.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dkd_core.data import voc_palette
from dkd_core.report.figures import MAX_WIDTH, _save, plt, size
from dkd_core.report.inputs import StepFacts
from dkd_core.storage import join, open_store

IGNORE = 255


def common_ids(steps: Sequence[StepFacts]) -> list[str]:
    """The sample ids every step has, in the order of the last step's index; [] if a step has none."""
    if not steps or any(s.samples is None for s in steps):
        return []
    present = set.intersection(*(set(s.samples["ids"]) for s in steps))
    return [i for i in steps[-1].samples["ids"] if i in present]


def _read(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(open_store(uri).read_bytes(uri)))


def qualitative_figure(steps: Sequence[StepFacts], path: Path, title: str) -> Path | None:
    """The grid of images x (image, ground truth, step 0 ... T predictions); None without samples."""
    ids = common_ids(steps)
    if not ids:
        return None
    palette = voc_palette()  # [256, 3]
    names = {int(k): v for k, v in steps[-1].samples.get("class_names", {}).items()}
    columns = 2 + len(steps)
    cell = min(1.7, (MAX_WIDTH - 1.0) / columns)
    seen: set[int] = set()
    grids = []
    for sample_id in ids:
        last = steps[-1].samples["folder"]
        panels = [np.asarray(_read(join(last, f"{sample_id}_image.png")).convert("RGB"))]
        label = np.asarray(_read(join(last, f"{sample_id}_label.png")))  # [H, W] labels
        seen |= set(np.unique(label).tolist())
        panels.append(palette[label])
        for s in steps:
            prediction = np.asarray(_read(join(s.samples["folder"], f"{sample_id}.png")))
            seen |= set(np.unique(prediction).tolist())
            panels.append(palette[prediction])
        grids.append(panels)
    legend_rows = math.ceil(len(seen) / 8)
    bottom = 0.22 * legend_rows + 0.15  # inches for the legend
    aspect = max(p.shape[0] / p.shape[1] for panels in grids for p in panels)  # height / width
    margin = 0.9  # inches left of the panels, for the image ids
    row_height = cell * min(aspect, 1.5)
    head = 0.75  # inches above the panels: the title and the column headings
    height = row_height * len(ids) + head + bottom
    width = cell * columns + margin
    fig, axes = plt.subplots(len(ids), columns, figsize=size(width, height), squeeze=False)
    for r, (sample_id, panels) in enumerate(zip(ids, grids, strict=True)):
        for c, (ax, panel) in enumerate(zip(axes[r], panels, strict=True)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                heading = ["image", "ground truth"][c] if c < 2 else f"step {c - 2}"
                ax.set_title(heading, fontsize=9)
            if c == 0:
                ax.set_ylabel(sample_id, fontsize=7, rotation=0, ha="right", va="center")
    legend = [
        plt.Rectangle((0, 0), 1, 1, color=palette[v] / 255.0, label=names.get(v, str(v)))
        for v in sorted(seen)
        if v != IGNORE
    ]
    if IGNORE in seen:
        legend.append(plt.Rectangle((0, 0), 1, 1, color=palette[IGNORE] / 255.0, label="ignored"))
    fig.legend(handles=legend, loc="lower center", ncol=min(8, len(legend)), fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle(title, fontsize=11, y=1 - 0.08 / height, va="top")
    fig.subplots_adjust(left=margin / width, right=0.995, top=1 - head / height,
                        bottom=bottom / height, wspace=0.04, hspace=0.04)  # fmt: skip
    return _save(fig, path)
