"""Draw the README's result figure from a demo's report (`make readme-figure`).

The figure is the report's own mIoU-per-step figure (`dkd_core.report.figures.steps_figure`,
the `miou_steps.png` of every report), drawn again from the report's `summary.json` at a
lower resolution so that the copy kept in git stays small:

    python tools/readme_figure.py build/demo/report/summary.json docs/demo_miou_steps.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from dkd_core.errors import DKDError
from dkd_core.report import figures

#: About 880 px wide for the report's 13-inch figure: a README page's width.
README_DPI = 68
ROW_KEYS = ("method", "step", *(key for key, _ in figures.FIGURES))


def rows_by_method(summary: dict, source: Path) -> dict[str, list[dict]]:
    """The report's aggregated rows (`summary.json`'s `aggregate`), grouped by method."""
    rows = summary.get("aggregate") if isinstance(summary, dict) else None
    if not isinstance(rows, list) or not rows:
        raise DKDError(f"{source}: no 'aggregate' rows; expected a report's summary.json")
    grouped: dict[str, list[dict]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise DKDError(f"{source}: aggregate row {i} lacks {missing[0]!r}")
        grouped.setdefault(row["method"], []).append(row)
    return grouped


def draw(summary_path: Path, out: Path, dpi: int = README_DPI) -> Path:
    """Write the figure of the report whose `summary.json` is `summary_path` to `out`."""
    try:
        summary = json.loads(summary_path.read_text())
    except FileNotFoundError:
        raise DKDError(f"{summary_path}: not found; run `make demo` first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DKDError(f"{summary_path}: cannot read the report's summary ({exc})") from None
    grouped = rows_by_method(summary, summary_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Drawn beside `out` and moved into place: a failed draw leaves the old figure whole.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".readme-figure.") as tmp:
        drawn = figures.steps_figure(grouped, (), Path(tmp) / out.name, dpi=dpi)
        os.replace(drawn, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="a report's summary.json")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--dpi", type=int, default=README_DPI)
    args = parser.parse_args(argv)
    try:
        print(draw(args.summary, args.output, args.dpi))
    except DKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
