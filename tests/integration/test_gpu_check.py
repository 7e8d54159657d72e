"""benchmarks/gpu_check.py: the same code that runs on a GPU, on CPU with the tiny preset."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"

# A stand-in with the interface of the authors' models/model.py and models/loss.py
# (their code is GPL and never part of this repository). Its model is ours, tiny;
# like theirs, it imports torchvision.models.utils, which the loader must provide.
STAND_IN_MODEL = """
    import torch.nn as nn
    from torchvision.models.utils import load_state_dict_from_url  # noqa: F401, as theirs

    from dkd_core.model import DeepLabV3 as Ours


    class DeepLabV3(nn.Module):
        def __init__(self, output_stride=16, norm_act="bn_sync", backbone_pretrained=False,
                     classes=None, freeze_all_bn=False):
            super().__init__()
            self.net = Ours(classes, backbone="tiny", output_stride=8, aspp_channels=32)

        def forward(self, x, ret_intermediate=False):
            out = self.net(x, decompose=ret_intermediate)
            extra = {"pos_reg": out.pos, "neg_reg": out.neg} if ret_intermediate else {}
            return out.logits, extra

        def freeze_bn(self, affine_freeze=False):
            self.net.freeze_bn()

        def freeze_dropout(self):
            pass

        def get_backbone_params(self):
            return [p for p in self.net.backbone.parameters() if p.requires_grad]

        def get_aspp_params(self):
            return [p for p in self.net.aspp.parameters() if p.requires_grad]

        def get_classifer_params(self):
            return [*self.net.aux_head.parameters(), *self.net.step_heads.parameters()]

        def get_old_classifer_params(self):
            return [*self.net.aux_head.parameters(), *self.net.step_heads[:-1].parameters()]

        def get_new_classifer_params(self):
            return list(self.net.step_heads[-1].parameters())
"""
STAND_IN_LOSS = """
    import torch
    import torch.nn as nn


    class WBCELoss(nn.Module):
        def __init__(self, ignore_index=255, pos_weight=None, reduction="none",
                     n_old_classes=0, n_new_classes=0):
            super().__init__()
            self.n_old_classes = n_old_classes
            self.criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction=reduction)

        def forward(self, logit, label):
            channels = torch.arange(logit.shape[1], device=label.device) + self.n_old_classes
            target = (label.unsqueeze(1) == channels.view(1, -1, 1, 1)).float()
            loss = self.criterion(logit.permute(0, 2, 3, 1), target.permute(0, 2, 3, 1))
            return loss.permute(0, 3, 1, 2)


    class KDLoss(nn.Module):
        def __init__(self, pos_weight=None, reduction="mean"):
            super().__init__()
            self.criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction=reduction)

        def forward(self, logit, logit_old=None):
            return self.criterion(logit, logit_old)


    class ACLoss(nn.Module):
        def __init__(self, reduction="none"):
            super().__init__()
            self.criterion = nn.BCEWithLogitsLoss(reduction=reduction)

        def forward(self, logit):
            return self.criterion(logit, torch.zeros_like(logit))
"""


def stand_in_reference(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "model.py").write_text(textwrap.dedent(STAND_IN_MODEL))
    (root / "models" / "loss.py").write_text(textwrap.dedent(STAND_IN_LOSS))
    return root


def run_check(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@pytest.mark.slow
def test_cpu_path_runs_every_stage_and_reports_sane_figures(tmp_path):
    out = tmp_path / "gpu_check.json"
    reference = stand_in_reference(tmp_path / "reference")
    # The stage budgets keep a GPU run under its 8 minutes; here they are widened so that
    # a loaded CI machine tests what the stages compute, not how fast it is.
    stage_names = ("env", "correctness", "ciss", "throughput", "pipeline")
    wide = [f"--budget={stage}=900" for stage in stage_names]
    result = run_check("--json", str(out), "--reference-dir", str(reference), *wide, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    stages = report["stages"]
    assert list(stages) == ["env", "correctness", "ciss", "throughput", "pipeline"]
    assert all(s["status"] == "ok" for s in stages.values()), stages
    assert report["passed"] and report["summary"]["failed_checks"] == []

    env = stages["env"]
    assert env["environment"]["torch"] and env["missing"] == []
    assert env["packages"]["torch"]["pinned"] and env["packages"]["minio"]["found"]
    assert finite(env["matmul_bf16_tflops"]) and env["matmul_bf16_tflops"] > 0

    modes = {m["mode"]: m for m in stages["correctness"]["modes"]}
    assert set(modes) == {"fp32", "bf16", "fp16"}  # TF32 only on CUDA
    for m in modes.values():
        assert m["finite"]
        names = {"logits", "pos", "neg", "teacher_logits", "gradient"}
        names |= {f"loss.{t}" for t in ("mbce", "kd", "dkd_pos", "dkd_neg", "ac", "total")}
        assert names <= set(m["relative_error"])
        assert all(finite(e) for e in m["relative_error"].values())
    assert max(modes["fp32"]["relative_error"].values()) <= 1e-3
    assert 0 < modes["bf16"]["relative_error"]["logits"] < 1  # bf16 rounds; it is measured

    ciss = stages["ciss"]
    step1 = ciss["step1"]
    assert step1["finite"] and step1["falling"]
    assert step1["last_third_mean"] < step1["first_third_mean"]
    assert step1["resumed_from_iteration"] > 0 and step1["final_checkpoint"]
    assert step1["iterations"][-1] == report["settings"]["step1_iterations"]
    assert step1["periodic_left"] == []  # periodic checkpoints are removed at the end
    group = ciss["process_group"]
    assert group["backend"] == "gloo" and [r["step"] for r in group["runs"]] == [0, 1]
    assert all(r["first_loss_relative_difference"] < 1e-4 for r in group["runs"])

    rows = stages["throughput"]["rows"]
    measured = {r["config"] for r in rows if "images_per_second" in r}
    assert measured == {
        "ours_fp32", "ours_bf16", "ours_bf16_cl", "ours_bf16_cl_compile", "reference_fp16_amp",
    }  # fmt: skip
    for r in rows:
        assert finite(r["images_per_second"]) and r["images_per_second"] > 0
        assert finite(r["last_loss"]) and r["flops_per_image"] > 0
    ref = next(r for r in rows if r["config"] == "reference_fp16_amp")
    assert ref["weights"].startswith("their own initialisation")  # the stand-in's layout differs
    assert stages["throughput"]["flops_per_image"]["step1"] > 0
    assert all(finite(v) and v > 0 for v in report["summary"]["mfu"].values())
    assert report["summary"]["speedup_over_reference"]

    rates = stages["pipeline"]["rates"]
    assert [r["workers"] for r in rates] == [0, 2]
    assert all(r["images_per_second"] > 0 for r in rates)
    assert set(report["summary"]["pipeline_vs_training"]) == {"0", "2"}

    table = result.stdout[result.stdout.rindex("GPU check on") :]
    assert "relative error vs fp32 CPU" in table and "reference_fp16_amp" in table
    assert table.rstrip().endswith(f"figures: {out}") and "PASSED" in table


def test_a_stage_out_of_time_is_recorded_and_the_others_still_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = run_check(
        "--json", str(out), "--stages", "correctness", "env", "--budget", "correctness=0.5",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    stages = json.loads(out.read_text())["stages"]
    assert stages["correctness"]["status"] == "timed out"
    assert "killed at its 0.5 s budget" in stages["correctness"]["error"]
    assert stages["env"]["status"] == "ok" and stages["env"]["matmul_bf16_tflops"] > 0
    assert "FAILED: correctness: timed out" in result.stdout


def test_the_reference_row_is_skipped_with_a_note_without_reference_dir():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpucheck.reference import reference_available
        from gpucheck.settings import GPU
        from gpucheck.throughput import rows_in_priority_order
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert "no --reference-dir" in reference_available(None)
    rows = rows_in_priority_order(GPU)
    assert rows[0] == ("ours_fp32", 16, 1) and ("reference_fp16_amp", 8, 0) in rows
    assert [r for r in rows if r[0].endswith("compile")] == rows[-4:]  # compile rows last
    assert len(rows) == 5 * 2 * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reference-dir", "/nonexistent/DKD"], "--reference-dir /nonexistent/DKD: expected"),
        (["--budget", "ciss"], "--budget 'ciss': expected STAGE=SECONDS"),
        (["--budget", "nope=3"], "--budget 'nope=3': expected STAGE=SECONDS"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, args, message):
    result = run_check("--json", str(tmp_path / "out.json"), *args, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.json").exists()
