"""Stage 1: what the machine is, and the matrix rate that MFU is measured against.

Reports the GPU, driver, CUDA/cuDNN/NCCL and torch versions, the TF32 and
cuDNN flags, and each package dkd_core imports: the version found beside the
version pinned in pyproject.toml (the device's own torch is used as it is;
the check never needs our pins). A missing package is named, with how to
bring it (docs/benchmarks.md, "GPU check"). Then the bf16 rate of one square matrix
product, the denominator of every MFU figure.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch

from gpucheck.stage_io import Deadline, StageResult

REPO = Path(__file__).resolve().parents[2]
# Import name -> distribution name, for every third-party package dkd_core imports at module level.
PACKAGES = {
    "numpy": "numpy", "PIL": "pillow", "yaml": "pyyaml", "safetensors": "safetensors",
    "tqdm": "tqdm", "minio": "minio", "prometheus_client": "prometheus-client",
}  # fmt: skip


def pinned_versions() -> dict[str, str]:
    """Distribution name -> pinned version, from pyproject.toml's dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        pins[name.strip().lower()] = version.strip()
    return pins


def packages() -> dict[str, dict]:
    pins = pinned_versions()
    found = {}
    for module, dist in {"torch": "torch", **PACKAGES}.items():
        present = importlib.util.find_spec(module) is not None
        version = None
        if present:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
        found[dist] = {"found": version if present else None, "pinned": pins.get(dist)}
    return found


def _nvidia_smi() -> dict:
    """Driver version and GPU name from nvidia-smi, when it is there."""
    if shutil.which("nvidia-smi") is None:
        return {}
    query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.splitlines()[0]  # fmt: skip
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    name, driver, memory, clock = (part.strip() for part in out.split(","))
    return {"name": name, "driver": driver, "memory": memory, "max_sm_clock": clock}


def _nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def describe(device: torch.device) -> dict:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": len(__import__("os").sched_getaffinity(0)),
        "torch": torch.__version__,
        "device": str(device),
        "cudnn_conv_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "nccl": _nccl_version(),
            "driver": _nvidia_smi().get("driver"),
        })  # fmt: skip
    return info


def matmul_rate(device: torch.device, n: int, repeats: int = 10) -> float:
    """bf16 FLOP/s of an n x n x n matrix product (mean of `repeats` after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def missing_packages(found: dict[str, dict]) -> list[str]:
    return [dist for dist, v in found.items() if v["found"] is None]


def run(settings, result: StageResult, deadline: Deadline, **_) -> None:
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {settings.device}: torch {torch.__version__} sees no GPU")
    info = describe(device)
    result.set("environment", info)
    found = packages()
    result.set("packages", found)
    missing = missing_packages(found)
    result.set("missing", missing)
    mismatched = [
        f"{d} {v['found']} (pinned {v['pinned']})"
        for d, v in found.items()
        if v["found"] and v["pinned"] and re.sub(r"\+.*", "", v["found"]) != v["pinned"]
    ]
    result.set("versions_differing_from_pins", mismatched)
    result.check(
        "packages",
        not missing,
        "all present" if not missing else f"missing {', '.join(missing)}: carry them as wheels",
    )
    rate = matmul_rate(device, settings.matmul_size)
    result.set("matmul_bf16_tflops", rate / 1e12)
    result.check("matmul", rate > 0, f"bf16 {settings.matmul_size}^3: {rate / 1e12:.1f} TFLOP/s")
