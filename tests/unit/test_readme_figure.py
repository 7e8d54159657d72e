"""`make readme-figure`: the README's figure is the report's mIoU-per-step figure, smaller."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dkd_core.errors import DKDError
from tools import readme_figure


def _stats(mean):
    return {"mean": mean, "std": None, "n": 1, "values": [mean]}


def _summary(path):
    rows = [
        {"method": "DKD", "step": 0, "old": _stats(89.4), "new": _stats(None),
         "all": _stats(89.4), "hiou": _stats(None)},
        {"method": "DKD", "step": 1, "old": _stats(89.1), "new": _stats(68.0),
         "all": _stats(85.6), "hiou": _stats(77.1)},
    ]  # fmt: skip
    path.write_text(json.dumps({"aggregate": rows}))
    return path


def test_the_figure_is_drawn_at_the_readme_resolution(tmp_path):
    out = readme_figure.draw(_summary(tmp_path / "summary.json"), tmp_path / "docs" / "f.png")
    width, height = Image.open(out).size
    # The report's figure is 13 x 3.4 inches: about 880 px wide at README_DPI, not 1,430.
    assert 800 <= width <= 950 and 180 <= height <= 300
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]  # no temporary left behind


def test_a_summary_without_rows_is_one_line_and_keeps_the_old_figure(tmp_path):
    out = tmp_path / "f.png"
    out.write_bytes(b"old")
    (tmp_path / "summary.json").write_text(json.dumps({"steps": []}))
    with pytest.raises(DKDError, match=r"summary\.json: no 'aggregate' rows"):
        readme_figure.draw(tmp_path / "summary.json", out)
    with pytest.raises(DKDError, match="run `make demo` first"):
        readme_figure.draw(tmp_path / "missing.json", out)
    assert out.read_bytes() == b"old"
    assert readme_figure.main([str(tmp_path / "missing.json"), str(out)]) == 2
