"""`python -m dkd_core evaluate`: test metrics of a checkpoint (SPEC §7).

The checkpoint's metadata says which task, step and config trained it; the
same test split is rebuilt from the run's manifest (or built, when the data
lives elsewhere now and `data.root=...` is overridden).
"""

from __future__ import annotations

import json
from pathlib import Path

from dkd_core import distributed
from dkd_core.checkpoint import load_model_checkpoint
from dkd_core.config import config_from_dict
from dkd_core.data import eval_loader
from dkd_core.errors import DKDError
from dkd_core.evaluate import SegmentationReport
from dkd_core.train import RunPaths, evaluate_model, step_data, task_of


def evaluate_checkpoint(
    checkpoint: Path, overrides: list[str], whole_image: bool, output: str | None
) -> tuple[SegmentationReport, Path, list[str]]:
    info = distributed.init_distributed()
    try:
        model, meta = load_model_checkpoint(checkpoint, map_location=info.device)
        if "config" not in meta or "step" not in meta:
            raise DKDError(
                f"{checkpoint}: metadata has no training config/step (converted reference "
                "checkpoints need the data given: train-time config is unknown)"
            )
        extra = ["data.whole_image_eval=true"] if whole_image else []
        config = config_from_dict(meta["config"], [*overrides, *extra], source=str(checkpoint))
        step = task_of(config).step(meta["step"])
        if tuple(model.classes_per_step) != step.classes_per_step:
            raise DKDError(
                f"{checkpoint}: heads {list(model.classes_per_step)} do not match "
                f"step {step.index} of {step.task_name} ({list(step.classes_per_step)})"
            )
        data = step_data(config, step, RunPaths(Path(config.run.output)), info)
        test_set, channel_names = data.test, data.channel_names
        c = config.data
        loader = eval_loader(test_set, c.eval_batch_size, info.rank, info.world_size, c.num_workers)
        report = evaluate_model(model, loader, step, info.device)
        out = Path(output) if output else checkpoint.parent / "eval" / "metrics.json"
        if info.is_main:
            out.parent.mkdir(parents=True, exist_ok=True)
            results = {**report.to_dict(), "channel_names": channel_names}
            out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        return report, out, channel_names
    finally:
        distributed.cleanup()
