"""`python -m pipelines <command>`: compile, submit or run a benchmark's Kubeflow pipeline.

  compile NAME --image IMG [--launcher L] [--output build/NAME.yaml] [--seeds 1,2,3]
         IR YAML for a cluster
  submit NAME --image IMG --data s3://... [--host URL] [--namespace NS] [--experiment E]
         [--param k=v ...] [--seeds 1,2,3]
  render-job NAME --step N --launcher pytorchjob|trainjob --image IMG [--param k=v ...]
         [--seed N]   the job manifest a train step creates (pipe to kubectl apply
         --dry-run=server -f -)
  run NAME [--data DIR] [--gpus N] [--output build/NAME] [--param k=v ...] [--seeds 1,2]
         [--verbose]   on this machine, with kfp.local: each train step under torchrun
         with N processes, one per GPU (default 0: one process, on the GPU if there is
         one, else the CPU); the dataset defaults to the config's data.root
  demo [--output build/demo] [--seeds 1,2] [--verbose]   the toy benchmark end to end here

--seeds runs one chain of steps per seed in the same run (the split is shared) and
reports mean ± sample std per step; default: the config's train.seed.

NAME is a config under pipelines/configs/ (e.g. voc_15-1) or a YAML path; compile and
submit also take prepare-voc and prepare-ade, which fetch a dataset into the object store
(--data s3://..., --param mirror=URL). Bad input is one line on stderr and exit code 2.
"""

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from dkd_core.errors import DKDError
from pipelines.jobspec import DEFAULT_S3_ENDPOINT, DEFAULT_S3_SECRET

DEMO_IMAGES = 500
#: The demo's only changes to the toy config: no metrics server; a progress line every 10 s
#: (its steps train for a minute or two, the default 30 s suits real benchmarks).
DEMO_OVERRIDES = ("train.metrics_port=-1", "train.progress_seconds=10")


def _add_compile_options(p: argparse.ArgumentParser, launchers: Sequence[str]) -> None:
    p.add_argument("name", metavar="NAME", help="config name (pipelines/configs/NAME.yaml) or path")
    p.add_argument(
        "--launcher", default="pytorchjob", choices=launchers,
        help="how each step is trained: a PyTorchJob, a TrainJob, or torchrun in the "
        "component's pod (default: pytorchjob)",
    )  # fmt: skip
    p.add_argument(
        "--image", default=None,
        help="image of the components and default of the jobs' image parameter, e.g. "
        "registry.example.org/ml/dkd:0.1.0 (make images push IMAGE=...); required",
    )  # fmt: skip
    p.add_argument(
        "--gpus-per-pod", type=int, default=1,
        help="default of the gpus_per_pod parameter: GPUs (= processes) per pod (1)",
    )  # fmt: skip
    p.add_argument(
        "--s3-secret", default=DEFAULT_S3_SECRET,
        help=f"Secret with the S3 keys, for the component pods ({DEFAULT_S3_SECRET})",
    )  # fmt: skip
    p.add_argument(
        "--s3-secret-keys", "--s3-secret-key", action="append", default=None,
        metavar="KEY=ENV[,KEY=ENV]", dest="s3_secret_keys",
        help="map keys of --s3-secret to env vars (default: accesskey=AWS_ACCESS_KEY_ID,"
        "secretkey=AWS_SECRET_ACCESS_KEY)",
    )  # fmt: skip
    p.add_argument(
        "--job-s3-secret", default=None,
        help="Secret with the S3 keys for the training jobs' pods (default: --s3-secret, "
        "with its key mapping)",
    )  # fmt: skip
    p.add_argument(
        "--job-s3-secret-keys", action="append", default=None, metavar="KEY=ENV[,KEY=ENV]",
        help="map keys of the jobs' Secret to env vars (default for a --job-s3-secret: "
        "AWS_ACCESS_KEY_ID=AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY=AWS_SECRET_ACCESS_KEY)",
    )  # fmt: skip
    p.add_argument(
        "--parallel-seeds", type=int, default=0, metavar="N",
        help="how many seeds' chains run at once (default 0: all); a ParallelFor's "
        "parallelism is fixed when compiling",
    )  # fmt: skip
    p.add_argument(
        "--s3-endpoint", default=DEFAULT_S3_ENDPOINT,
        help=f"default of the s3_endpoint parameter, as seen from the pods ({DEFAULT_S3_ENDPOINT})",
    )  # fmt: skip


def _key_mapping(option: str, values: Sequence[str] | None) -> dict[str, str] | None:
    """`KEY=ENV[,KEY=ENV]` values (repeatable) as {key: env}; None when not given."""
    if values is None:
        return None
    keys: dict[str, str] = {}
    for item in (i.strip() for v in values for i in v.split(",")):
        key, sep, env = item.partition("=")
        if not sep or not key or not env:
            raise DKDError(f"{option} {item!r}: expected KEY=ENV, e.g. accesskey=AWS_ACCESS_KEY_ID")
        keys[key] = env
    return keys


def _compile_options(args: argparse.Namespace) -> dict:
    return {
        "launcher": args.launcher,
        "image": args.image,
        "gpus_per_pod": args.gpus_per_pod,
        "s3_secret": args.s3_secret,
        "s3_secret_keys": _key_mapping("--s3-secret-keys", args.s3_secret_keys),
        "job_s3_secret": args.job_s3_secret,
        "job_s3_secret_keys": _key_mapping("--job-s3-secret-keys", args.job_s3_secret_keys),
        "s3_endpoint": args.s3_endpoint,
        "parallel_seeds": args.parallel_seeds,
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


def _add_seeds_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--seeds", default=None, metavar="S1,S2,...",
        help=f"{what}: distinct integers >= 0, one chain of steps (train.seed=S) per seed, "
        "aggregated in one report (default: the config's train.seed)",
    )  # fmt: skip


def _add_verbose_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose", action="store_true",
        help="also show the KFP executor's logs and kfp.local's artifact dumps of every task "
        "(shown anyway for a task that fails)",
    )  # fmt: skip


def _prepare_pipeline(args: argparse.Namespace):
    """The `prepare-voc`/`prepare-ade` pipeline of the command line's options."""
    from pipelines.prepare import build_prepare_pipeline

    return build_prepare_pipeline(
        args.name, image=args.image, s3_secret=args.s3_secret, s3_endpoint=args.s3_endpoint,
        s3_secret_keys=_key_mapping("--s3-secret-keys", args.s3_secret_keys),
    )  # fmt: skip


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines import builder
    from pipelines.prepare import PREPARE_PIPELINES

    output = Path(args.output or f"build/{Path(args.name).stem}.yaml")
    if args.name in PREPARE_PIPELINES:
        builder.check_output(output)
        path = builder.write_ir(_prepare_pipeline(args), output)
        print(f"compiled {args.name} (image {args.image}) -> {path}")
        return 0
    path = builder.compile_pipeline(args.name, output, seeds=args.seeds, **_compile_options(args))
    print(f"compiled {args.name} ({args.launcher}, image {args.image}) -> {path}")
    return 0


def submit_request(args: argparse.Namespace) -> tuple[Path, dict]:
    """The config and the run's parameters of `submit`, checked before anything is compiled."""
    from pipelines import builder
    from pipelines.params import add_overrides, apply_seeds, parse_params
    from pipelines.submit import check_dataset_uri

    options = _compile_options(args)
    config = builder.config_path(args.name)
    pipeline = builder.build_pipeline(config, **options)
    params = apply_seeds(parse_params(pipeline, args.param), args.seeds)
    if args.data:
        if params.get("dataset_uri", args.data) != args.data:
            raise DKDError("--data and --param dataset_uri name different datasets: give one")
        params["dataset_uri"] = args.data
    add_overrides(params, args.override)
    builder.run_seeds(config, params, cluster=True)  # a typo or a bad seed fails here
    if "dataset_uri" not in params:
        raise DKDError(
            "no dataset: pass DATA=s3://bucket/prefix (make submit) or --data s3://bucket/prefix"
        )
    job_secret, _ = builder.job_s3_access(
        args.s3_secret, options["s3_secret_keys"], args.job_s3_secret
    )
    profile_secrets = tuple(
        dict.fromkeys(s for s in (args.s3_secret, job_secret) if s == builder.DEFAULT_S3_SECRET)
    )
    check_dataset_uri(params["dataset_uri"], namespace=args.namespace,
                      profile_secrets=profile_secrets)  # fmt: skip
    return config, params


def _submit_prepare(args: argparse.Namespace, host: str) -> int:
    """Submit `prepare-voc`/`prepare-ade`: DATA is the prefix to fill, which may be empty."""
    from pipelines import builder
    from pipelines.params import parse_params
    from pipelines.submit import check_dataset_uri, submit

    pipeline = _prepare_pipeline(args)
    params = parse_params(pipeline, args.param)
    if args.data:
        if params.get("dataset_uri", args.data) != args.data:
            raise DKDError("--data and --param dataset_uri name different prefixes: give one")
        params["dataset_uri"] = args.data
    if "dataset_uri" not in params:
        raise DKDError(
            f"{args.name}: where to? pass DATA=s3://bucket/prefix (make submit) or --data s3://..."
        )
    profile_secrets = (args.s3_secret,) if args.s3_secret == builder.DEFAULT_S3_SECRET else ()
    check_dataset_uri(
        params["dataset_uri"], namespace=args.namespace, profile_secrets=profile_secrets,
        must_hold_objects=False,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        package = builder.write_ir(pipeline, Path(tmp) / "pipeline.yaml")
        result = submit(
            package, pipeline.name, pipeline.description or "", params, host=host,
            namespace=args.namespace, experiment=args.experiment, token=args.token,
        )  # fmt: skip
    print(f"run {result.run_id} started: {result.url}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines import builder
    from pipelines.prepare import PREPARE_PIPELINES
    from pipelines.submit import resolve_host, submit

    host = resolve_host(args.host)  # before compiling: a missing host is the first thing to say
    if args.name in PREPARE_PIPELINES:
        return _submit_prepare(args, host)
    config, params = submit_request(args)
    pipeline = builder.build_pipeline(config, **_compile_options(args))
    with tempfile.TemporaryDirectory() as tmp:
        package = builder.compile_pipeline(
            config, Path(tmp) / "pipeline.yaml", **_compile_options(args)
        )
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


def cmd_render_job(args: argparse.Namespace) -> int:
    from pipelines.render import render_step, to_yaml

    params = list(args.param)
    if args.pods_per_step is not None:
        params.append(f"pods_per_step={args.pods_per_step}")
    if args.data:
        params.append(f"dataset_uri={args.data}")
    options = _compile_options(args)
    options.pop("launcher")
    manifest = render_step(
        args.name, args.step, args.launcher, params, args.namespace, seed=args.seed,
        overrides=args.override, **options,
    )  # fmt: skip
    sys.stdout.write(to_yaml(manifest))
    return 0


def cmd_run(args: argparse.Namespace, overrides: Sequence[str] = ()) -> int:
    from pipelines import builder
    from pipelines.local import format_run, run_local

    config = builder.config_path(args.name)
    output = Path(args.output or f"build/{Path(args.name).stem}")
    run = run_local(
        config, args.data, output, args.param, [*overrides, *args.override], args.verbose,
        seeds=args.seeds, gpus=args.gpus,
    )  # fmt: skip
    print(format_run(run))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dkd_core.data import make_toy_dataset
    from dkd_core.data.toy import toy_is_current
    from pipelines.params import seed_list

    if args.seeds is not None:
        seed_list(args.seeds)  # a bad --seeds fails before the dataset is generated
    data = Path(args.data)
    if not toy_is_current(data):
        older = (data / "class_names.txt").is_file()  # written last by make_toy_dataset
        what = "again (it was drawn by an older generator)" if older else ""
        print(f"generating the toy dataset in {data} ({DEMO_IMAGES} images) {what}...", flush=True)
        started = time.perf_counter()
        make_toy_dataset(data, classes=6, images=DEMO_IMAGES, size=64, seed=0, overwrite=older)
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
    launchers = ("pytorchjob", "trainjob", "local")

    p = sub.add_parser("compile", help="compile a benchmark's pipeline to IR YAML")
    _add_compile_options(p, launchers)
    p.add_argument("--output", help="YAML file to write (default: build/NAME.yaml)")
    _add_seeds_option(p, "default of the seeds parameter")
    p.set_defaults(handler=cmd_compile)

    p = sub.add_parser("submit", help="compile, upload and start a run on Kubeflow Pipelines")
    _add_compile_options(p, launchers)
    _add_param_options(p)
    p.add_argument("--data", help="dataset_uri of the run: s3://bucket/prefix (or minio://)")
    p.add_argument("--host", help="KFP API/UI address (default: $KFP_HOST)")
    p.add_argument("--token", help="bearer token for the KFP endpoint (default: $KFP_TOKEN)")
    p.add_argument(
        "--namespace", help="KFP namespace (multi-user: the profile); the pipeline, experiment "
        "and run live there, and the jobs run there unless the namespace parameter is set",
    )  # fmt: skip
    p.add_argument("--experiment", help="experiment (created if missing; default: the pipeline)")
    _add_seeds_option(p, "the run's seeds parameter")
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser(
        "render-job", help="print the job manifest a train step creates (YAML)",
        description="Print the PyTorchJob or TrainJob a train step of the pipeline creates, "
        "from the pipeline's parameters (pipe it to kubectl apply --dry-run=server -f -).",
    )  # fmt: skip
    _add_compile_options(p, ("pytorchjob", "trainjob"))
    _add_param_options(p)
    p.add_argument("--step", type=int, required=True, help="CISS step (0 = base step)")
    p.add_argument(
        "--seed", type=int, default=None,
        help="the chain's seed: train.seed of the job (default: the first of the seeds parameter)",
    )  # fmt: skip
    p.add_argument("--pods-per-step", type=int, default=None, help="pods of the job (1)")
    p.add_argument("--data", help="dataset_uri parameter (default: s3://DATASET)")
    p.add_argument(
        "--namespace", default="kubeflow",
        help="the component pod's namespace, used when the namespace parameter is empty "
        "(default: kubeflow)",
    )  # fmt: skip
    p.set_defaults(handler=cmd_render_job)

    p = sub.add_parser(
        "run", help="run a benchmark's pipeline on this machine with kfp.local (its GPUs or CPU)"
    )
    p.add_argument("name", metavar="NAME", help="config name (pipelines/configs/NAME.yaml) or path")
    p.add_argument("--data", help="dataset folder (or s3:// URI); default: the config's data.root")
    p.add_argument(
        "--gpus", type=int, default=0, metavar="N",
        help="processes per train step under torchrun, one per GPU (the gpus_per_pod "
        "parameter); default 0: one process, on the GPU if there is one, else the CPU",
    )  # fmt: skip
    p.add_argument("--output", help="output folder (default: build/NAME)")
    _add_param_options(p)
    _add_seeds_option(p, "the run's seeds")
    _add_verbose_option(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("demo", help="generate the toy dataset if needed and run its pipeline")
    p.add_argument("--data", default="data/toy", help="toy dataset folder (default: data/toy)")
    p.set_defaults(gpus=0)
    p.add_argument("--output", default="build/demo", help="output folder (default: build/demo)")
    _add_param_options(p)
    _add_seeds_option(p, "the run's seeds")
    _add_verbose_option(p)
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
