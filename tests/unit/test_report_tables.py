"""Report numbers: class x step matrix, forgetting, increments, published results, figure size."""

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from dkd_core.cli import main
from dkd_core.errors import DKDError
from dkd_core.report import build_report, run_from_folder, tables
from dkd_core.report.figures import DPI, MAX_HEIGHT, MAX_WIDTH, forgetting_figure, heatmap_figure
from dkd_core.report.published import PAPER, README, published_for
from tests.unit.report_synthetic import step_metrics, write_run


def metrics(ious):
    return {"iou": ious, "channel_names": [f"c{i}" for i in range(len(ious))]}


# Steps of a 2-1-2 task: step 0 adds channels 0-2 (bg + 2), step 1 adds 3, step 2 adds 4-5.
STEPS = [
    metrics([90.0, 80.0, 70.0]),
    metrics([88.0, 60.0, 65.0, 50.0]),
    metrics([85.0, 40.0, 60.0, 45.0, 30.0, 20.0]),
]


def test_class_matrix_is_blank_before_a_class_is_learned_never_zero():
    matrix = tables.class_iou_matrix(STEPS)
    assert tables.learned_at(STEPS) == [0, 0, 0, 1, 2, 2]
    assert matrix[1] == [80.0, 60.0, 40.0]
    assert math.isnan(matrix[3][0]) and matrix[3][1:] == [50.0, 45.0]
    assert all(math.isnan(v) for v in matrix[4][:2]) and matrix[4][2] == 30.0


def test_forgetting_is_iou_when_learned_minus_iou_after_the_last_step():
    rows = tables.forgetting(STEPS)
    assert [r["class"] for r in rows] == ["c0", "c1", "c2", "c3"]  # c4, c5: last step's
    assert [r["forgetting"] for r in rows] == [5.0, 40.0, 10.0, 5.0]
    assert rows[3] == {"channel": 3, "class": "c3", "learned_at": 1, "iou_learned": 50.0,
                       "iou_last": 45.0, "forgetting": 5.0}  # fmt: skip


def test_increments_split_the_new_classes_by_the_step_that_added_them():
    rows = tables.increments(STEPS)
    assert rows[0]["by_increment"] == {0: 80.0}
    assert rows[1]["by_increment"] == {0: pytest.approx(71.0), 1: 50.0}
    assert rows[2]["by_increment"] == {0: pytest.approx(61.6667, abs=1e-4), 1: 45.0, 2: 25.0}


def test_published_numbers_are_looked_up_by_benchmark():
    voc = published_for("voc", "15-1", "overlap")
    assert [(p.source, p.method) for p in voc] == [
        (README, "DKD"), (README, "DKD-M"), (PAPER, "DKD"), (PAPER, "DKD-M"),
    ]  # fmt: skip
    assert (voc[0].hiou, voc[0].all) == (57.46, 70.50)
    assert (voc[1].hiou, voc[1].all) == (64.09, 72.95)
    assert (voc[3].old, voc[3].new, voc[3].all) == (78.8, 52.3, 72.5)
    ade = published_for("ade", "100-10", "overlap")
    assert (ade[0].hiou, ade[0].all) == (26.79, 34.53)
    assert (ade[2].old, ade[2].new, ade[2].all) == (41.6, 19.5, 34.3)
    disjoint = published_for("voc", "15-1", "disjoint")
    assert [(p.method, p.hiou, p.all) for p in disjoint] == [
        ("DKD", 54.21, 68.48), ("DKD-M", 60.32, 70.78),
    ]  # fmt: skip
    assert published_for("toy", "4-1", "overlap") == ()


# Every cell of the authors' README tables (cvlab-yonsei/DKD at fb4693f, README.md),
# (dataset, task, setting) -> (DKD hIoU, DKD mIoU all, DKD-M hIoU, DKD-M mIoU all).
README_CELLS = {
    ("voc", "19-1", "overlap"): (56.95, 76.13, 68.14, 77.04),
    ("voc", "15-5", "overlap"): (67.17, 73.95, 68.96, 74.84),
    ("voc", "15-1", "overlap"): (57.46, 70.50, 64.09, 72.95),
    ("voc", "10-1", "overlap"): (57.21, 60.43, 64.89, 66.20),
    ("voc", "5-3", "overlap"): (61.32, 58.98, 65.02, 63.32),
    ("voc", "19-1", "disjoint"): (57.98, 75.90, 67.12, 76.84),
    ("voc", "15-5", "disjoint"): (64.35, 72.21, 65.04, 72.53),
    ("voc", "15-1", "disjoint"): (54.21, 68.48, 60.32, 70.78),
    ("ade", "100-50", "overlap"): (29.42, 35.55, 29.45, 35.58),
    ("ade", "100-10", "overlap"): (26.79, 34.53, 27.44, 34.83),
    ("ade", "50-50", "overlap"): (34.77, 34.39, 34.78, 34.39),
}


def test_every_readme_cell_is_published():
    for key, (hiou, all_, m_hiou, m_all) in README_CELLS.items():
        rows = [p for p in published_for(*key) if p.source == README]
        assert [(p.method, p.hiou, p.all) for p in rows] == [
            ("DKD", hiou, all_), ("DKD-M", m_hiou, m_all),
        ], key  # fmt: skip


def _png_size(path):
    with Image.open(path) as im:
        return im.size


@pytest.mark.parametrize("classes_per_step", [[100, 10, 10, 10, 10, 10]])
def test_figures_of_150_classes_stay_within_the_page(tmp_path, classes_per_step):
    steps = [step_metrics(classes_per_step, t) for t in range(len(classes_per_step))]
    names = steps[-1]["channel_names"]
    assert len(names) == 151
    heat = heatmap_figure(
        names, tables.class_iou_matrix(steps), tables.learned_at(steps), tmp_path / "h.png", "t"
    )
    bars = forgetting_figure({"DKD": tables.forgetting(steps)}, tmp_path / "f.png")
    limit = ((MAX_WIDTH + 0.3) * DPI, (MAX_HEIGHT + 0.3) * DPI)  # + the saved margin
    for path in (heat, bars):
        width, height = _png_size(path)
        assert width <= limit[0] and height <= limit[1], (path.name, width, height)
    # Classes as rows in panels: at least 8 pixels of height per class row.
    assert _png_size(heat)[1] / math.ceil(151 / 4) >= 8


def test_report_of_a_run_folder_has_published_numbers_provenance_and_notes(tmp_path):
    run = write_run(tmp_path / "run", [2, 1, 1], seed=4, task=("voc", "15-1", "overlap"))
    (run / "step_1" / "train_log.jsonl").unlink()
    files = build_report([run_from_folder(str(run), "DKD")], tmp_path / "out", "t")
    md = files.markdown.read_text()
    summary = json.loads(files.summary.read_text())
    # Published numbers beside ours, labelled as the authors'.
    assert f"| {README} | DKD | – | – | 70.50 | 57.46 |" in md
    assert f"| {PAPER} | DKD-M | 78.80 | 52.30 | 72.50 | – |" in md
    assert summary["published"][0]["source"] == "ours"
    # Provenance: the seed from meta.json, checkpoint URI, model sha256, revision, hardware.
    (prov,) = [p for p in summary["provenance"] if p["step"] == 1]
    assert prov["seed"] == 4 and prov["model_sha256"] == f"{1:064x}"
    assert prov["checkpoint"] == str(run / "step_1" / "checkpoint")
    assert prov["git_revision"] == "abc123" and prov["hardware"]["world_size"] == 4
    assert "4 x NVIDIA H100, 4 process(es), torch 2.13.0, CUDA 12.6, host node-1" in md
    assert "optim.lr 0.01 → 0.001" in md  # config of later steps against step 0
    # A missing train log is a note, not a failure; the other steps' curves are drawn.
    assert any("step 1: no train log" in n for n in summary["notes"])
    assert (tmp_path / "out" / "training_loss.png").is_file()
    assert "Notes" in files.html.read_text()


def test_run_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DKDError, match="no step metrics found under"):
        run_from_folder(str(tmp_path))
    run = write_run(tmp_path / "gap", [2, 1, 1])
    (run / "step_1" / "eval" / "metrics.json").unlink()
    with pytest.raises(DKDError, match=r"steps \[0, 2\]; expected steps 0 to 2 without a gap"):
        run_from_folder(str(run))
    metrics = run / "step_0" / "eval" / "metrics.json"
    metrics.write_text(json.dumps(step_metrics([2, 1], 0)))
    (run / "step_1" / "eval" / "metrics.json").write_text(
        json.dumps({k: v for k, v in step_metrics([2, 1], 1).items() if k != "iou"})
    )
    with pytest.raises(DKDError) as error:
        run_from_folder(str(run))
    assert str(error.value) == (
        f"{run / 'step_1' / 'eval' / 'metrics.json'}: step 1 has no field 'iou'; "
        "expected the metrics `evaluate` writes"
    )


def test_cli_compares_labelled_runs_and_aggregates_seeds(tmp_path, capsys):
    a = write_run(tmp_path / "dkd1", [2, 1, 1], seed=1, task=("toy", "2-1", "overlap"))
    b = write_run(tmp_path / "dkd2", [2, 1, 1], seed=2, task=("toy", "2-1", "overlap"))
    c = write_run(tmp_path / "ft", [2, 1, 1], seed=1, task=("toy", "2-1", "overlap"),
                  forgetting=20.0)  # fmt: skip
    out = tmp_path / "cmp"
    argv = ["report", "--run", str(a), "--run", str(b), "--run", str(c), "--output", str(out),
            "--label", f"{a}=DKD", "--label", f"{b}=DKD", "--label", f"{c}=fine-tuning",
            "--no-samples", "--json"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["runs"] == 3 and printed["samples_computed"] == 0
    summary = json.loads((out / "summary.json").read_text())
    groups = {(r["method"], r["step"]): r for r in summary["aggregate"]}
    assert groups[("DKD", 0)]["seeds"] == [1, 2] and groups[("fine-tuning", 0)]["seeds"] == [1]
    assert groups[("DKD", 2)]["all"]["n"] == 2
    forgetting = summary["forgetting"]
    assert forgetting["fine-tuning"][1]["forgetting"] == 40.0  # 20 points per later step
    assert forgetting["DKD"][1]["forgetting"] == 12.0
    md = (out / "report.md").read_text()
    assert "| DKD | 0 |" in md and "| fine-tuning | 2 |" in md
    assert "DKD: 2 seeds (1, 2), mean ± sample std." in md


def test_cli_label_errors(tmp_path, capsys):
    run = write_run(tmp_path / "r", [2, 1])
    assert main(["report", "--run", str(run), "--label", "elsewhere=FT"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --label 'elsewhere=FT': 'elsewhere' is not one of")
    assert main(["report", "--run", str(run), "--label", "FT"]) == 2
    assert "expected RUN=NAME" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "give --run and/or --history" in capsys.readouterr().err


def test_toy_forgetting_benchmark_reports_its_runs_as_a_comparison(tmp_path, monkeypatch):
    """The benchmark's runs share step 0 per seed; each method x seed is one report run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "toy_forgetting", Path(__file__).parents[2] / "benchmarks" / "toy_forgetting.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # The checkpoints below hold only what the benchmark reads: their metrics.
    monkeypatch.setattr(
        bench, "read_meta", lambda uri: json.loads(Path(uri, "meta.json").read_text())
    )

    def checkpoint(name, metrics):
        folder = tmp_path / name / "checkpoint"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(
            json.dumps(
                {
                    "metrics": metrics,
                    "weights": {"file": "model.safetensors", "sha256": "0" * 64, "bytes": 1},
                }
            )
        )
        return str(folder)

    checkpoints = {}
    for method, forgetting in (("fine-tuning", 30.0), ("DKD", 5.0)):
        for seed in (1, 2):
            steps = [step_metrics([2, 1], t, seed, forgetting) for t in range(2)]
            shared = checkpoint(f"base{seed}-{method}", steps[0])
            checkpoints.setdefault(method, {})[seed] = [
                shared, checkpoint(f"{method}{seed}", steps[1])
            ]  # fmt: skip
    runs = bench.comparison_runs(checkpoints)
    assert [(r.method, r.seed) for r in runs] == [
        ("fine-tuning", 1), ("fine-tuning", 2), ("DKD", 1), ("DKD", 2),
    ]  # fmt: skip
    assert runs[0].steps[1]["checkpoint"] == checkpoints["fine-tuning"][1][1]
    files = build_report(runs, tmp_path / "report")
    summary = json.loads(files.summary.read_text())
    assert summary["forgetting"]["fine-tuning"][1]["forgetting"] == 30.0
    assert summary["forgetting"]["DKD"][1]["forgetting"] == 5.0
    assert "fine-tuning: 2 seeds (1, 2)" in files.markdown.read_text()


def test_settings_with_other_steps_and_classes_are_compared_class_by_class(tmp_path):
    longer = write_run(tmp_path / "a", [2, 1, 1], task=("toy", "2-1", "overlap"))
    shorter = write_run(tmp_path / "b", [2, 1], task=("toy", "2-1", "overlap"), forgetting=10.0)
    files = build_report(
        [run_from_folder(str(longer), "three steps"), run_from_folder(str(shorter), "two steps")],
        tmp_path / "out",
    )
    summary = json.loads(files.summary.read_text())
    assert [r["class"] for r in summary["forgetting"]["three steps"]] == [
        "background", "class_001", "class_002", "class_003",
    ]  # fmt: skip
    assert [r["forgetting"] for r in summary["forgetting"]["two steps"]] == [10.0, 10.0, 10.0]
    md = files.markdown.read_text()
    # class_003 is only a class of the longer run: the shorter's cells stay blank.
    assert "| class_003 | 1 | 78.00 → 72.00 |  | 6.00 |  |" in md
