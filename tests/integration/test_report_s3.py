"""The report of runs in S3: run folders and pipeline histories whose checkpoints are s3:// URIs."""

from __future__ import annotations

import json

import pytest

from dkd_core.report import build_report, run_from_folder, run_from_history
from dkd_core.storage import open_store
from tests.s3_server import S3Endpoint, s3
from tests.unit.report_synthetic import write_run

pytestmark = pytest.mark.integration
FIXTURES = (s3,)  # imported so that pytest finds the fixture in this module


def upload(folder, uri: str) -> None:
    store = open_store(uri)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        store.upload_file(path, f"{uri}/{path.relative_to(folder).as_posix()}")


def test_report_reads_everything_beside_s3_checkpoints(s3: S3Endpoint, tmp_path):
    local = write_run(tmp_path / "run", [2, 1, 1], seed=7, task=("voc", "15-1", "overlap"),
                      samples=2)  # fmt: skip
    run_uri = s3.uri("runs/voc-15-1")
    upload(local, run_uri)

    run = run_from_folder(run_uri, "DKD")
    assert run.seed == 7 and run.steps[2]["checkpoint"] == f"{run_uri}/step_2/checkpoint"
    files = build_report([run], tmp_path / "from-folder")
    summary = json.loads(files.summary.read_text())
    assert summary["notes"] == []  # meta, provenance, train log and samples all found in S3
    assert summary["provenance"][1]["checkpoint"] == f"{run_uri}/step_1/checkpoint"
    assert summary["published"][1]["method"] == "DKD"  # the benchmark, from S3 meta.json
    assert (tmp_path / "from-folder" / "samples.png") in files.figures

    # A pipeline's history names each step's checkpoint URI (its Model artifact).
    history = [{"step": t, "checkpoint": f"{run_uri}/step_{t}/checkpoint", **json.loads(
        (local / f"step_{t}" / "eval" / "metrics.json").read_text())} for t in range(3)]  # fmt: skip
    history_uri = s3.uri("pipeline/history.json")
    open_store(history_uri).write_json(history_uri, history)
    files = build_report([run_from_history(history_uri)], tmp_path / "from-history")
    again = json.loads(files.summary.read_text())
    assert again["training"]["DKD"] == summary["training"]["DKD"]  # train logs, provenance
    assert [p["model_sha256"] for p in again["provenance"]] == [f"{t:064x}" for t in range(3)]
