"""`python -m dkd_core data fetch|push`: the command line of `dkd_core.prepare`."""

from __future__ import annotations

import argparse
from typing import Any

from dkd_core.prepare import PUSH_WORKERS


def cmd_data_push(args: argparse.Namespace) -> dict:
    from dkd_core.prepare.push import push_dataset
    from dkd_core.progress import bars_wanted

    result = push_dataset(
        args.source, args.dest, workers=args.workers, format=args.format,
        progress=bars_wanted(True),
    )  # fmt: skip
    return {
        "dest": args.dest, "files": result.files, "uploaded": result.uploaded,
        "skipped": result.skipped, "bytes_uploaded": result.bytes_uploaded,
    }  # fmt: skip


def cmd_data_fetch(args: argparse.Namespace) -> dict:
    from dkd_core.prepare.fetch import fetch_dataset
    from dkd_core.progress import bars_wanted

    return fetch_dataset(
        args.dataset, args.dest, mirror=args.mirror, archives=args.archives,
        checksums=args.checksums, workers=args.workers, progress=bars_wanted(True),
    )  # fmt: skip


def add_data_commands(sub: Any) -> None:
    """`data fetch` and `data push`, under the command line's subparsers `sub`."""
    data = sub.add_parser("data", help="get a dataset: fetch the official archives, push to S3")
    commands = data.add_subparsers(dest="data_command", required=True)

    p = commands.add_parser(
        "fetch",
        help="download, verify and lay out VOC 2012 + SBD or ADE20K into a folder or s3:// prefix",
        description="Download the official archives (resumed after an interruption, checked "
        "against the checksums public sources state), extract what training reads beside "
        "DEST, verify it, then move it to DEST (a folder) or push it (an s3:// prefix).",
    )
    p.add_argument("dataset", choices=("voc", "ade"))
    p.add_argument("dest", help="dataset folder to create, or an s3:// / minio:// prefix")
    p.add_argument("--mirror", help="fetch URL/<archive name> instead of the official URLs")
    p.add_argument("--archives", help="folder holding the archives already (no download)")
    p.add_argument(
        "--checksums",
        help="sha256 sums of the archives, as `sha256sum` writes them; replace the pinned ones",
    )
    p.add_argument(
        "--workers", type=int, default=PUSH_WORKERS, help="parallel uploads to an s3:// DEST"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_data_fetch)

    p = commands.add_parser(
        "push",
        help="upload a dataset's training files to s3://, in parallel, skipping what is there",
        description="Upload the images, labels, split lists and class names training reads "
        "(not VOC's Annotations or SegmentationObject). Objects already there with the same "
        "size and content hash are skipped: a push killed half way finishes on the next run.",
    )
    p.add_argument("source", help="local dataset folder (VOC, ADE20K or dataset.yaml layout)")
    p.add_argument("dest", help="s3:// or minio:// prefix, e.g. s3://mlpipeline/shared/VOC2012")
    p.add_argument("--workers", type=int, default=PUSH_WORKERS, help="parallel uploads")
    p.add_argument("--format", choices=("voc", "ade", "palette"), help="default: detected")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_data_push)
