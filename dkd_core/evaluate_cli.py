"""`python -m dkd_core evaluate`: test metrics of a checkpoint (docs/method.md §7).

The checkpoint's metadata says which task, step and config trained it; the
same test split is rebuilt from the run's manifest (or built, when the data
lives elsewhere now and `data.root=...` is overridden). Checkpoint, manifest
and output may be s3:// URIs.
"""

from __future__ import annotations

from dkd_core import distributed
from dkd_core.checkpoint import open_model_checkpoint
from dkd_core.config import config_from_dict
from dkd_core.data import eval_loader
from dkd_core.errors import DKDError
from dkd_core.evaluate import SegmentationReport
from dkd_core.locations import cache_dir, parent, run_manifest_uri
from dkd_core.step_data import step_data, task_of
from dkd_core.storage import join, open_store
from dkd_core.train import evaluate_model


def evaluate_checkpoint(
    checkpoint: str,
    overrides: list[str],
    whole_image: bool,
    output: str | None,
    manifest: str | None = None,
) -> tuple[SegmentationReport, str, list[str]]:
    """Evaluate; returns the report, the metrics URI written and the channel names."""
    info = distributed.init_distributed()
    try:
        model, meta, _ = open_model_checkpoint(checkpoint, cache_dir("checkpoints"), info.device)
        extra = ["data.whole_image_eval=true"] if whole_image else []
        config = config_from_dict(
            _trained_config(checkpoint, meta, overrides), [*overrides, *extra], str(checkpoint)
        )
        step = task_of(config).step(meta["step"])
        if tuple(model.classes_per_step) != step.classes_per_step:
            raise DKDError(
                f"{checkpoint}: heads {list(model.classes_per_step)} do not match "
                f"step {step.index} of {step.task_name} ({list(step.classes_per_step)})"
            )
        manifest = manifest or run_manifest_uri(config.run.output)
        data = step_data(config, step, manifest, info, read_only=True)
        c = config.data
        loader = eval_loader(
            data.test, c.eval_batch_size, info.rank, info.world_size, c.num_workers
        )
        report = evaluate_model(model, loader, step, info.device)
        out = output or join(parent(checkpoint), "eval", "metrics.json")
        if info.is_main:
            results = {**report.to_dict(), "channel_names": data.channel_names}
            open_store(out).write_json(out, results)
        return report, out, data.channel_names
    finally:
        distributed.cleanup()


def _trained_config(checkpoint: str, meta: dict, overrides: list[str]) -> dict:
    """The config a checkpoint was trained with; for a converted one (the authors'), the
    task of its metadata, with the data root the user gives, in a run beside it."""
    if "step" not in meta:
        raise DKDError(
            f"{checkpoint}: metadata has no step; convert the checkpoint with --task "
            "(convert-reference --task voc:15-1) so that its task and step are known"
        )
    if "config" in meta:
        return meta["config"]
    if not isinstance(meta.get("task"), dict):
        raise DKDError(f"{checkpoint}: metadata has no training config and no task")
    if not any(o.partition("=")[0].strip() == "data.root" for o in overrides):
        raise DKDError(
            f"{checkpoint}: a converted checkpoint does not say where its data is; "
            "pass --data ROOT (or data.root=ROOT)"
        )
    return {"task": meta["task"], "run": {"output": parent(parent(checkpoint))}}
