"""`python -m dkd_core <command>`: the package's command line.

Each command prints a short human summary (or JSON with `--json`) and exits 0
only on success. Bad input (`DKDError`) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from dkd_core.errors import DKDError, user_message


def _parse_task(spec: str):
    """'voc:15-1' or 'toy:4-1:6' (custom datasets name their class count) -> Task."""
    from dkd_core.tasks import get_task

    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise DKDError(f"--task {spec!r}: expected DATASET:NAME (e.g. voc:15-1) or DATASET:NAME:K")
    if len(parts) == 3 and not parts[2].isdigit():
        raise DKDError(f"--task {spec!r}: the class count K must be a whole number")
    num_classes = int(parts[2]) if len(parts) == 3 else None
    return get_task(parts[0], parts[1], num_classes=num_classes)


def cmd_convert_reference(args: argparse.Namespace) -> dict:
    from dkd_core.checkpoint import save_model_checkpoint
    from dkd_core.compat import load_reference_checkpoint, reference_meta
    from dkd_core.weights import local_file

    classes = None
    if args.classes_per_step:
        classes = [int(n) for n in args.classes_per_step.split(",")]
    local = local_file(args.input, what="checkpoint")  # a path, https:// or s3:// URI
    model = load_reference_checkpoint(local, classes_per_step=classes)
    source = {"kind": "reference-checkpoint", "path": str(args.input)}
    meta: dict = {"source": source}
    if args.task:
        meta = reference_meta(model, _parse_task(args.task), args.setting, source, args.input)
    save_model_checkpoint(args.output, model, meta)
    return {
        "output": str(args.output),
        "backbone": model.backbone_name,
        "classes_per_step": list(model.classes_per_step),
    }


def cmd_fetch_weights(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from dkd_core.download import sha256_file
    from dkd_core.storage import is_remote, join, local_path, open_store
    from dkd_core.weights import resolve_weights

    local = resolve_weights(args.reference, progress=not args.json)
    uri = str(local)
    if args.dest:
        uri = join(args.dest, local.name)
        target = uri if is_remote(uri) else str(local_path(uri))
        if is_remote(uri) or not (Path(target).exists() and Path(target).samefile(local)):
            open_store(uri).upload_file(local, target)
    if not args.json:
        print(f"pretrained={uri}")
    return {"weights": uri, "sha256": sha256_file(local)}


def cmd_fetch_checkpoints(args: argparse.Namespace) -> dict:
    from dkd_core.releases import fetch_release

    result = fetch_release(args.name, args.dest, progress=not args.json)
    if not args.json:
        for checkpoint in result["checkpoints"]:
            print(checkpoint)
    return result


def _setup_logging() -> None:
    """INFO logs from rank 0 only; other ranks speak only on warnings."""
    import logging
    import os

    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def cmd_train(args: argparse.Namespace) -> dict:
    import os

    from dkd_core.config import load_config
    from dkd_core.locations import StepLocations
    from dkd_core.provenance import TrainingAttempt
    from dkd_core.sharing import apply_threads
    from dkd_core.train import train_step

    _setup_logging()
    # A fixed thread count per process, whatever runs beside it: the weights' bytes
    # depend on it (dkd_core/sharing.py); provenance.json records it.
    apply_threads()
    config = load_config(args.config, args.overrides)
    where = StepLocations.of_run(config.run.output, args.step)
    where = StepLocations(args.checkpoint_out or where.checkpoint, where.manifest)
    # Rank 0 records the attempt beside the checkpoint (provenance.json): train.py
    # stays about training, and every launcher runs this command.
    main_process = os.environ.get("RANK", "0") == "0"
    attempt = TrainingAttempt.begin(where.checkpoint, where.periodic) if main_process else None
    final = train_step(
        config, args.step, teacher=args.teacher, checkpoint_out=args.checkpoint_out,
        manifest=args.manifest, restart=args.restart,
    )  # fmt: skip
    if attempt is not None:
        attempt.finish(config.data.batch_size, where.train_log, restarted=args.restart)
    if main_process:
        _write_samples(final, args.manifest, args.samples)
    return {"step": args.step, "checkpoint": final}


def _write_samples(checkpoint: str, manifest: str | None, count: int | None) -> None:
    """The report's sample predictions beside a final checkpoint (`dkd_core.samples`).

    Made here, where the step's data is already mirrored, so that the pipeline's
    evaluate task, which finds them, need not download the dataset. A failure is
    a warning, not a failed step: the checkpoint is final, and the evaluate task
    or `report --run` make the samples again when they are missing.
    """
    import logging

    from dkd_core.samples import DEFAULT_COUNT, ensure_samples

    count = DEFAULT_COUNT if count is None else count
    if count <= 0:
        return
    try:
        ensure_samples(checkpoint, manifest, count)
    except (DKDError, OSError) as e:
        logging.getLogger(__name__).warning("no sample predictions for the report: %s", e)


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from dkd_core.evaluate_cli import evaluate_checkpoint
    from dkd_core.sharing import apply_threads

    _setup_logging()
    apply_threads()
    overrides = [*([f"data.root={args.data}"] if args.data else []), *args.overrides]
    report, out, channel_names = evaluate_checkpoint(
        args.checkpoint, overrides, args.whole_image, args.output, args.manifest
    )
    if not args.json:
        print(report.format_table(channel_names))
    return {"metrics": str(out), **report.to_dict()} if args.json else {"metrics": str(out)}


def cmd_toy_data(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from dkd_core.data import make_toy_dataset

    layout = make_toy_dataset(
        Path(args.output), classes=args.classes, images=args.images, size=args.size,
        seed=args.seed, overwrite=args.force,
    )  # fmt: skip
    return {
        "output": str(args.output),
        "classes": layout.num_classes,
        "train": len(layout.samples("train")),
        "val": len(layout.samples("val")),
    }


def cmd_split(args: argparse.Namespace) -> dict:
    from dkd_core.config import load_config
    from dkd_core.step_data import write_split_manifest

    _setup_logging()
    config = load_config(args.config, args.overrides)
    path, manifest = write_split_manifest(config, args.reference_npy, args.manifest)
    counts = [
        {"step": s["step"], "train": len(s["train"]), "val": len(s["val"]), "test": len(s["test"])}
        for s in manifest["steps"]
    ]
    if not args.json:
        for c in counts:
            print(f"step {c['step']}: train {c['train']}, val {c['val']}, test {c['test']}")
    return {"manifest": str(path), "steps": counts}


def _parse_labels(pairs: Sequence[str], sources: Sequence[str]) -> dict[str, str]:
    """`--label SOURCE=NAME` pairs; SOURCE must be one of the --run / --history values."""
    labels = {}
    for pair in pairs:
        source, sep, name = pair.rpartition("=")
        if not sep or not source or not name:
            raise DKDError(f"--label {pair!r}: expected RUN=NAME, e.g. results/ft=fine-tuning")
        if source not in sources:
            raise DKDError(
                f"--label {pair!r}: {source!r} is not one of the --run/--history values {list(sources)}"
            )
        labels[source] = name
    return labels


def cmd_report(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from dkd_core.report import RunInput, build_report, run_from_folder, run_from_history

    sources = [*(args.run or []), *(args.history or [])]
    if args.samples is not None and args.samples < 0:
        raise DKDError(f"--samples {args.samples}: expected a number of images >= 0")
    if bool(args.metrics) == bool(sources):
        raise DKDError("report: give --run and/or --history (repeatable), or --metrics alone")
    labels = _parse_labels(args.label or [], sources)
    if args.metrics:
        steps = []
        for p in args.metrics:
            try:
                steps.append(json.loads(Path(p).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise DKDError(f"{p}: cannot read step metrics ({e})") from e
        runs = [RunInput(steps)]
    else:
        runs = [run_from_folder(r, labels.get(r)) for r in args.run or []]
        runs += [run_from_history(h, labels.get(h)) for h in args.history or []]
    computed = 0
    if args.samples != 0 and not args.metrics:
        computed = _ensure_samples(runs, args)
    default = Path(args.run[0]) / "report" if len(args.run or []) == 1 else Path("report")
    output = Path(args.output) if args.output else default
    files = build_report(runs, output, title=args.title)
    return {
        "report": str(files.markdown), "html": str(files.html), "runs": len(runs),
        "steps": sum(len(r.steps) for r in runs), "samples_computed": computed,
    }  # fmt: skip


def _ensure_samples(runs, args: argparse.Namespace) -> int:
    """Predict the sample images of every step that has a checkpoint and no samples yet;
    the number of steps predicted. A step whose data is not reachable here is skipped
    with a warning (the report then notes that its samples are missing)."""
    import logging

    from dkd_core.samples import DEFAULT_COUNT, ensure_samples
    from dkd_core.storage import join, open_store

    _setup_logging()
    log = logging.getLogger("dkd_core.report")
    computed = 0
    for run in runs:
        for t, step in enumerate(run.steps):
            checkpoint = step.get("checkpoint")
            if not checkpoint:
                continue
            if not open_store(checkpoint).exists(join(checkpoint, "meta.json")):
                continue
            count, manifest = args.samples or DEFAULT_COUNT, run.info.get("manifest")
            try:
                if ensure_samples(checkpoint, manifest, count, args.recompute_samples):
                    computed += 1
            except DKDError as e:
                log.warning("%s, step %d: samples not computed: %s", run.label, t, e)
    return computed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dkd_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "convert-reference",
        help="convert an authors' checkpoint (.pth) into our checkpoint folder",
        description="Read a checkpoint saved by the authors' DKD code (weights_only, no pickle "
        "code) and write OUT/model.safetensors + OUT/meta.json.",
    )
    p.add_argument("input", help="the authors' .pth checkpoint (path, https:// or s3:// URI)")
    p.add_argument("output", help="checkpoint folder to write")
    p.add_argument("--classes-per-step", help="expected heads, e.g. 15,1,1 (checked)")
    p.add_argument("--task", help="task the checkpoint was trained on, e.g. voc:15-1")
    p.add_argument("--setting", default="overlap", choices=("overlap", "disjoint"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_convert_reference)

    p = sub.add_parser(
        "fetch", help="download model inputs: ImageNet weights, authors' checkpoints"
    )
    fetch = p.add_subparsers(dest="what", required=True)
    p = fetch.add_parser(
        "weights",
        help="download and verify a weight file, or copy it into a folder or bucket",
        description="Fetch NAME_OR_URI (torchvision:resnet101, https://..., s3://..., a path) "
        "into the cache, check its torch.hub name prefix, and copy it to --dest; prints the "
        "value to pass as the pipelines' pretrained parameter.",
    )
    p.add_argument("reference", metavar="NAME_OR_URI")
    p.add_argument("--dest", help="folder or s3:// prefix to copy the file into")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_fetch_weights)
    p = fetch.add_parser(
        "checkpoints",
        help="download one of the authors' release zips and convert its checkpoints",
        description="NAME: a release zip the authors' README links (e.g. voc_overlapped_15-1), "
        "or the URL, s3:// URI or path of a copy of one. Each checkpoint becomes "
        "DEST/step_<t>/checkpoint, ready for `evaluate --checkpoint ... --data ROOT`.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--dest", help="folder or s3:// prefix (default: results/authors/NAME)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_fetch_checkpoints)

    p = sub.add_parser("train", help="train one CISS step (alone or under torchrun)")
    p.add_argument(
        "--config", required=True, help="benchmark YAML, e.g. pipelines/configs/toy.yaml"
    )
    p.add_argument("--step", type=int, required=True, help="CISS step to train (0 = base)")
    p.add_argument("--teacher", help="previous step's checkpoint URI (default: from run.output)")
    p.add_argument(
        "--checkpoint-out", help="URI of this step's final checkpoint (default: from run.output)"
    )
    p.add_argument(
        "--manifest", help="split manifest URI (default: <run.output>/split/manifest.json)"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="train the step again from scratch: delete its final and periodic checkpoints, "
        "train log, metrics and exemplar memory first (needed when settings changed)",
    )
    p.add_argument(
        "--samples", type=int, metavar="N",
        help="test images to predict for the report's qualitative figure, into "
        "eval/samples/ beside the checkpoint (0: none; default: the report's count)",
    )  # fmt: skip
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.01")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="test metrics of a checkpoint (docs/method.md §7)")
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint URI (model.safetensors + meta.json)"
    )
    p.add_argument("--manifest", help="split manifest URI (default: from the checkpoint's config)")
    p.add_argument("--data", help="dataset root (as data.root=; needed for converted checkpoints)")
    p.add_argument(
        "--whole-image", action="store_true", help="evaluate whole images, not 512 crops"
    )
    p.add_argument(
        "--output", help="metrics JSON to write (default: <checkpoint>/../eval/metrics.json)"
    )
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=/data/VOC2012")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("toy-data", help="generate the toy dataset (VOC layout)")
    p.add_argument("output", help="folder to write")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--force", action="store_true", help="overwrite a folder that already holds files"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_toy_data)

    p = sub.add_parser("split", help="build the per-step split manifest of a run")
    p.add_argument("--config", required=True)
    p.add_argument("--reference-npy", help="folder with the authors' published .npy split lists")
    p.add_argument(
        "--manifest", help="manifest URI to write (default: <run.output>/split/manifest.json)"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/VOC2012")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_split)

    p = sub.add_parser(
        "report",
        help="tables, figures and HTML/Markdown report of a run, or a comparison of runs",
        description="Report one run, or compare several: --run/--history may repeat; runs "
        "with the same --label are seeds of one method (mean ± sample std).",
    )
    p.add_argument(
        "--run", action="append", help="run folder or s3:// URI (step_*/eval/metrics.json); repeat"
    )
    p.add_argument(
        "--metrics", nargs="+", help="metrics.json of each step, step 0 first (one run, alone)"
    )
    p.add_argument(
        "--history", action="append",
        help="a pipeline's history JSON (step metrics with checkpoint URIs); repeat",
    )  # fmt: skip
    p.add_argument(
        "--label", action="append", metavar="RUN=NAME",
        help="method name of a --run/--history (default: the folder's name); repeat",
    )  # fmt: skip
    p.add_argument(
        "--samples", type=int, default=None, metavar="N",
        help="predict N fixed test images per step where missing (default: as many as the "
        "evaluate component, dkd_core.samples.DEFAULT_COUNT; 0: do not compute)",
    )  # fmt: skip
    p.add_argument(
        "--no-samples", dest="samples", action="store_const", const=0,
        help="do not compute missing sample predictions (same as --samples 0)",
    )  # fmt: skip
    p.add_argument(
        "--recompute-samples", action="store_true", help="predict the samples again even if present"
    )
    p.add_argument("--output", help="folder to write (default: <run>/report, or ./report)")
    p.add_argument("--title", default="DKD run")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_report)

    from dkd_core.prepare.cli import add_data_commands

    add_data_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every failure a user can cause is one line on stderr, exit 2;
    Ctrl-C says where training stopped, exit 130 (128 + SIGINT, as shells report it)."""
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        print(f"error: {message}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    else:
        print(", ".join(f"{k}: {v}" for k, v in result.items()))
    return 0
