"""What the model and training benchmarks share: arguments, child processes, peak memory.

Each configuration runs in a fresh child process (the same script with
`--one ...`), so peak memory (RSS on CPU, allocator peak on CUDA) belongs to
that configuration alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch


def parser(doc: str, one_metavar: tuple[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backbone", default="resnet101")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels-last", action="store_true", help="NHWC (CUDA only)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--one", nargs=2, metavar=one_metavar, help=argparse.SUPPRESS)
    return p


def run_child(script: str, args: argparse.Namespace, one: tuple) -> dict:
    """Run `script --one ...` with this run's other arguments; its last stdout line is JSON."""
    passthrough = [a for a in sys.argv[1:] if a not in ("--json", args.json)]
    cmd = [sys.executable, script, *passthrough, "--one", *map(str, one)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
