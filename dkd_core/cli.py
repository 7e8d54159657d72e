"""`python -m dkd_core <command>`: the package's command line.

Each command prints a short human summary (or JSON with `--json`) and exits 0
only on success. Bad input (`DKDError`) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from dkd_core.errors import DKDError


def _parse_task(spec: str):
    """'voc:15-1' or 'toy:4-1:6' (custom datasets name their class count) -> Task."""
    from dkd_core.tasks import get_task

    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise DKDError(f"--task {spec!r}: expected DATASET:NAME (e.g. voc:15-1) or DATASET:NAME:K")
    num_classes = int(parts[2]) if len(parts) == 3 else None
    return get_task(parts[0], parts[1], num_classes=num_classes)


def cmd_convert_reference(args: argparse.Namespace) -> dict:
    from dkd_core.checkpoint import save_model_checkpoint
    from dkd_core.compat import load_reference_checkpoint

    classes = None
    if args.classes_per_step:
        classes = [int(n) for n in args.classes_per_step.split(",")]
    model = load_reference_checkpoint(args.input, classes_per_step=classes)
    meta: dict = {"source": {"kind": "reference-checkpoint", "path": str(args.input)}}
    if args.task:
        task = _parse_task(args.task)
        step = task.step(len(model.classes_per_step) - 1)
        if step.classes_per_step != model.classes_per_step:
            raise DKDError(
                f"{args.input}: heads {list(model.classes_per_step)} do not match "
                f"{args.task} step {step.index}, which has {list(step.classes_per_step)}"
            )
        meta["task"] = {"dataset": task.dataset, "name": task.name, "setting": args.setting}
        meta["step"] = step.index
        meta["channel_to_label"] = list(step.channel_to_label)
    save_model_checkpoint(args.output, model, meta)
    return {
        "output": str(args.output),
        "backbone": model.backbone_name,
        "classes_per_step": list(model.classes_per_step),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dkd_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "convert-reference",
        help="convert an authors' checkpoint (.pth) into our checkpoint folder",
        description="Read a checkpoint saved by the authors' DKD code (weights_only, no pickle "
        "code) and write OUT/model.safetensors + OUT/meta.json.",
    )
    p.add_argument("input", help="the authors' .pth checkpoint")
    p.add_argument("output", help="checkpoint folder to write")
    p.add_argument("--classes-per-step", help="expected heads, e.g. 15,1,1 (checked)")
    p.add_argument("--task", help="task the checkpoint was trained on, e.g. voc:15-1")
    p.add_argument("--setting", default="overlap", choices=("overlap", "disjoint"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=cmd_convert_reference)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except DKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    else:
        print(", ".join(f"{k}: {v}" for k, v in result.items()))
    return 0
