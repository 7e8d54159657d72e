"""`python -m pipelines <command>`: compile, submit or run a benchmark's Kubeflow pipeline.

  compile NAME [--launcher L] [--output build/NAME.yaml]   IR YAML for a cluster
  submit NAME [--host URL] [--namespace NS] [--experiment E] [--param k=v ...]
  run NAME --data DIR [--output build/NAME] [--param k=v ...]   locally, with kfp.local
  demo [--output build/demo]       the toy benchmark end to end on this machine

NAME is a config under pipelines/configs/ (e.g. voc_15-1) or a YAML path. Bad
input is one line on stderr and exit code 2.
"""

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from components import IMAGE
from dkd_core.errors import DKDError
from pipelines import builder

DEMO_IMAGES = 500
#: The demo's only changes to the toy config: no metrics server, no progress bar in the log.
DEMO_OVERRIDES = ("train.metrics_port=-1", "train.progress=false")


def _add_compile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="config name (pipelines/configs/NAME.yaml) or path")
    p.add_argument(
        "--launcher", default="pytorchjob", choices=("pytorchjob", "trainjob", "local"),
        help="how each step is trained: a PyTorchJob, a TrainJob, or torchrun in the "
        "component's pod (default: pytorchjob)",
    )  # fmt: skip
    p.add_argument("--image", default=IMAGE, help=f"components' and jobs' image ({IMAGE})")
    p.add_argument(
        "--gpus-per-pod", type=int, default=1, help="default GPUs (= processes) per pod (1)"
    )
    p.add_argument(
        "--s3-secret", default=builder.DEFAULT_S3_SECRET,
        help=f"Secret with the S3 keys, for the component pods ({builder.DEFAULT_S3_SECRET})",
    )  # fmt: skip
    p.add_argument(
        "--s3-secret-key", action="append", default=None, metavar="KEY=ENV",
        help="map a key of --s3-secret to an env var (default: accesskey=AWS_ACCESS_KEY_ID, "
        "secretkey=AWS_SECRET_ACCESS_KEY); repeat for each key",
    )  # fmt: skip
    p.add_argument(
        "--job-s3-secret", default=None,
        help="Secret injected into the training jobs' pods under its own key names "
        "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); default: --s3-secret",
    )  # fmt: skip
    p.add_argument(
        "--s3-endpoint", default=builder.DEFAULT_S3_ENDPOINT,
        help=f"S3 endpoint seen from the pods ({builder.DEFAULT_S3_ENDPOINT})",
    )  # fmt: skip


def _compile_options(args: argparse.Namespace) -> dict:
    keys = None
    if args.s3_secret_key:
        keys = {}
        for item in args.s3_secret_key:
            key, sep, env = item.partition("=")
            if not sep or not key or not env:
                raise DKDError(
                    f"--s3-secret-key {item!r}: expected KEY=ENV, e.g. accesskey=AWS_ACCESS_KEY_ID"
                )
            keys[key] = env
    return {
        "launcher": args.launcher,
        "image": args.image,
        "gpus_per_pod": args.gpus_per_pod,
        "s3_secret": args.s3_secret,
        "s3_secret_keys": keys,
        "job_s3_secret": args.job_s3_secret,
        "s3_endpoint": args.s3_endpoint,
    }


def _add_param_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="pipeline parameter, e.g. epochs=10 or overrides=[optim.lr=0.01]; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="config override added to the overrides parameter, e.g. optim.lr=0.01; repeatable",
    )  # fmt: skip


def cmd_compile(args: argparse.Namespace) -> int:
    output = Path(args.output or f"build/{Path(args.name).stem}.yaml")
    path = builder.compile_pipeline(args.name, output, **_compile_options(args))
    print(f"compiled {args.name} ({args.launcher}) -> {path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from dkd_core.config import load_config
    from pipelines.params import parse_params
    from pipelines.submit import check_dataset_uri, resolve_host, submit

    host = resolve_host(args.host)  # before compiling: a missing host is the first thing to say
    options = _compile_options(args)
    config = builder.config_path(args.name)
    pipeline = builder.build_pipeline(config, **options)
    params = parse_params(pipeline, args.param)
    if args.override:
        params["overrides"] = [*params.get("overrides", []), *args.override]
    resolved = load_config(config, params.get("overrides", []))  # a typo fails here, not later
    check_dataset_uri(params.get("dataset_uri", resolved.data.root))
    if args.namespace and "namespace" not in params:
        params["namespace"] = args.namespace  # the jobs run where the pipeline runs
    with tempfile.TemporaryDirectory() as tmp:
        package = builder.compile_pipeline(config, Path(tmp) / "pipeline.yaml", **options)
        result = submit(
            package,
            pipeline.name,
            pipeline.description or "",
            params,
            host=host,
            namespace=args.namespace,
            experiment=args.experiment,
            token=args.token,
        )
    print(f"run {result.run_id} started: {result.url}")
    return 0


def cmd_run(args: argparse.Namespace, overrides: Sequence[str] = ()) -> int:
    from pipelines.local import format_run, run_local

    config = builder.config_path(args.name)
    output = Path(args.output or f"build/{Path(args.name).stem}")
    run = run_local(config, args.data, output, args.param, [*overrides, *args.override])
    print(format_run(run))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dkd_core.data import make_toy_dataset

    data = Path(args.data)
    if not (data / "class_names.txt").is_file():  # written last by make_toy_dataset
        print(f"generating the toy dataset in {data} ({DEMO_IMAGES} images) ...", flush=True)
        started = time.perf_counter()
        make_toy_dataset(data, classes=6, images=DEMO_IMAGES, size=64, seed=0)
        print(f"toy dataset ready in {time.perf_counter() - started:.1f} s", flush=True)
    args.name = "toy"
    return cmd_run(args, DEMO_OVERRIDES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile a benchmark's pipeline to IR YAML")
    _add_compile_options(p)
    p.add_argument("--output", help="YAML file to write (default: build/NAME.yaml)")
    p.set_defaults(handler=cmd_compile)

    p = sub.add_parser("submit", help="compile, upload and start a run on Kubeflow Pipelines")
    _add_compile_options(p)
    _add_param_options(p)
    p.add_argument("--host", help="KFP API/UI address (default: $KFP_HOST)")
    p.add_argument("--token", help="bearer token for the KFP endpoint (default: $KFP_TOKEN)")
    p.add_argument("--namespace", help="KFP namespace (multi-user); also the jobs' namespace")
    p.add_argument("--experiment", help="experiment (created if missing; default: the pipeline)")
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("run", help="run a benchmark's pipeline locally with kfp.local (CPU)")
    p.add_argument("name", metavar="NAME", help="config name (pipelines/configs/NAME.yaml) or path")
    p.add_argument("--data", required=True, help="dataset folder (or s3:// URI)")
    p.add_argument("--output", help="output folder (default: build/NAME)")
    _add_param_options(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("demo", help="generate the toy dataset if needed and run its pipeline")
    p.add_argument("--data", default="data/toy", help="toy dataset folder (default: data/toy)")
    p.add_argument("--output", default="build/demo", help="output folder (default: build/demo)")
    _add_param_options(p)
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except DKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
