"""`fetch checkpoints`: a release zip in the authors' layout, served over HTTP, becomes our
checkpoint folders; `evaluate` and `report` take them as they take our runs."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from dkd_core import cli
from dkd_core.compat import to_reference_state_dict
from dkd_core.data import make_toy_dataset
from dkd_core.model import DeepLabV3
from dkd_core.releases import RELEASE_NAMES, RELEASES, release_of
from dkd_core.tasks import get_task
from tests.http_server import serve_files

pytestmark = pytest.mark.integration
HEADS = [get_task("voc", "19-1", "overlap").step(t).classes_per_step for t in (0, 1)]
RUN = (
    "saved_voc/models/overlap_19-1_DKD"  # where the authors' trainer saves (utils/parse_config.py)
)


def authors_checkpoint(classes: tuple[int, ...], seed: int) -> bytes:
    """A `torch.save` file as the authors' trainer writes it (base/base_trainer.py
    `_save_checkpoint`: arch, epoch, state_dict, optimizer, lr_scheduler, scaler, monitor_best)."""
    torch.manual_seed(seed)
    model = DeepLabV3(classes, backbone="resnet18", output_stride=16)
    state = {
        "arch": "DeepLabV3", "epoch": 60, "state_dict": to_reference_state_dict(model),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
        "lr_scheduler": {"last_epoch": 60}, "scaler": {"scale": 65536.0}, "monitor_best": 0.0,
    }  # fmt: skip
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def authors_config(step: int) -> bytes:
    task = {"name": "19-1", "step": step, "setting": "overlap", "idxs_path": "./data/"}
    return json.dumps({"name": "DKD", "data_loader": {"args": {"task": task}}}).encode()


def release_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{RUN}/step_0/config.json", authors_config(0))
        z.writestr(f"{RUN}/step_0/checkpoint-epoch60.pth", authors_checkpoint(HEADS[0], 0))
        z.writestr(f"{RUN}/step_1/config.json", authors_config(1))
        z.writestr(f"{RUN}/step_1/checkpoint-epoch60.pth", authors_checkpoint(HEADS[1], 1))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def voc_like(tmp_path_factory) -> Path:
    """A toy dataset with VOC's 20 classes (VOC layout), small enough to evaluate at once."""
    root = tmp_path_factory.mktemp("voc20") / "data"
    make_toy_dataset(root, classes=20, images=40, size=32, seed=0)
    return root


def test_fetch_checkpoints_then_evaluate_and_report(tmp_path, monkeypatch, capsys, voc_like):
    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    dest = tmp_path / "authors"
    with serve_files({"v1.0/voc_overlapped_19-1.zip": release_zip()}) as server:
        url = server.url("v1.0/voc_overlapped_19-1.zip")
        assert cli.main(["fetch", "checkpoints", url, "--dest", str(dest)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[:2] == [str(dest / "step_0" / "checkpoint"), str(dest / "step_1" / "checkpoint")]
    meta = json.loads((dest / "step_1" / "checkpoint" / "meta.json").read_text())
    assert meta["task"] == {"dataset": "voc", "name": "19-1", "setting": "overlap"}
    assert meta["step"] == 1 and meta["model"]["classes_per_step"] == list(HEADS[1])
    assert meta["source"]["kind"] == "authors-release" and meta["source"]["method"] == "DKD"
    assert meta["source"]["member"] == f"{RUN}/step_1/checkpoint-epoch60.pth"

    fast = ["data.crop_size=32", "data.num_workers=0", "train.progress=false"]
    for step in (0, 1):
        checkpoint = str(dest / f"step_{step}" / "checkpoint")
        assert (
            cli.main(["evaluate", "--checkpoint", checkpoint, "--data", str(voc_like), *fast]) == 0
        )
        table = capsys.readouterr().out
        assert "mIoU all" in table and "background" in table
    assert cli.main(["evaluate", "--checkpoint", checkpoint]) == 2  # no data: one line
    assert capsys.readouterr().err.strip() == (
        f"error: {checkpoint}: a converted checkpoint does not say where its data is; "
        "pass --data ROOT (or data.root=ROOT)"
    )

    out = tmp_path / "report"
    assert cli.main(["report", "--run", str(dest), "--samples", "0", "--output", str(out)]) == 0
    summary = (out / "report.md").read_text()
    assert "56.95" in summary and "76.13" in summary  # the README's DKD 19-1 cell
    assert "68.14" in summary  # and DKD-M's


def test_release_names_are_the_readmes_zips():
    assert len(RELEASE_NAMES) == len(RELEASES) == 18
    release, url = release_of("voc_overlapped_5_3_memory")
    assert (release.dataset, release.task, release.setting, release.method) == (
        "voc", "5-3", "overlap", "DKD-M",
    )  # fmt: skip
    assert (
        url
        == "https://github.com/cvlab-yonsei/DKD/releases/download/v1.0/voc_overlapped_5_3_memory.zip"
    )
    release, url = release_of("s3://mirror/dkd/voc_disjoint_15-1.zip")
    assert (release.task, release.setting, release.method, url) == (
        "15-1", "disjoint", "DKD", "s3://mirror/dkd/voc_disjoint_15-1.zip",
    )  # fmt: skip
    with pytest.raises(Exception, match=r"^'voc_15-1': not one of the authors' release zips"):
        release_of("voc_15-1")


def test_a_file_that_is_not_a_zip_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "voc_overlapped_19-1.zip"
    bad.write_bytes(b"<html>not found</html>")
    assert cli.main(["fetch", "checkpoints", str(bad), "--dest", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: not a readable zip file") and "\n" not in err
    assert not (tmp_path / "out").exists()
