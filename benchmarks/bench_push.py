"""`data push` files/s against the serial `fput_object` loop, same files, same S3 server, one run.

The baseline is the loop docs/deploy.md used to paste: one `fput_object` after another.
`data push` (dkd_core.prepare.push) lists the prefix once and uploads with `--workers`
threads. Both upload the same generated VOC-layout dataset (`--files` files: images,
labels, two lists; small random bytes) to moto's S3 server, started in its own process
on 127.0.0.1 (tests/s3_server.py's server, as a separate process so that its request
handling does not share this process's interpreter lock). A second push, which finds
everything there and uploads nothing, is timed too.

    nice -n 10 python benchmarks/bench_push.py [--files 30000] [--workers 16] [--json out.json]

Local PUTs are far cheaper than through `kubectl port-forward` or a real network, where
a serial loop waits out every round trip; the ratio here is a lower bound of the gain.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minio import Minio

from dkd_core.prepare.push import PUSH_WORKERS, push_dataset, training_files

KEY = "testing"  # moto accepts any key


def make_files(root: Path, count: int, size: int = 512) -> None:
    """A VOC-layout folder with `count` files: (count - 2) / 2 image/label pairs and 2 lists."""
    pairs = (count - 2) // 2
    ids = [f"2008_{i:06d}" for i in range(pairs)]
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for i in ids:
        (root / "JPEGImages" / f"{i}.jpg").write_bytes(os.urandom(size))
        (root / "SegmentationClassAug" / f"{i}.png").write_bytes(os.urandom(size))
    split = len(ids) * 9 // 10
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train_aug.txt").write_text("".join(f"{i}\n" for i in ids[:split]))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in ids[split:]))


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return server, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("moto's server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=30_000)
    p.add_argument("--workers", type=int, default=PUSH_WORKERS)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    server, endpoint = start_moto()
    try:
        os.environ.update(
            S3_ENDPOINT=f"http://{endpoint}", AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=KEY
        )
        client = Minio(endpoint, access_key=KEY, secret_key=KEY, secure=False)
        for bucket in ("serial", "push"):
            client.make_bucket(bucket)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "VOC2012"
            make_files(root, args.files)
            files = training_files(root)

            started = time.perf_counter()
            for rel in files:  # the loop docs/deploy.md used to paste
                client.fput_object("serial", f"VOC2012/{rel}", str(root / rel))
            serial = time.perf_counter() - started

            started = time.perf_counter()
            first = push_dataset(root, "s3://push/VOC2012", workers=args.workers, progress=False)
            pushed = time.perf_counter() - started

            started = time.perf_counter()
            again = push_dataset(root, "s3://push/VOC2012", workers=args.workers, progress=False)
            second = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()

    assert first.uploaded == len(files) and again.uploaded == 0
    result = {
        "files": len(files),
        "workers": args.workers,
        "serial_seconds": round(serial, 2),
        "serial_files_per_s": round(len(files) / serial, 1),
        "push_seconds": round(pushed, 2),
        "push_files_per_s": round(len(files) / pushed, 1),
        "speedup": round(serial / pushed, 2),
        "second_push_seconds": round(second, 2),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
