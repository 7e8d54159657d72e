"""What trained a step: when, on which machine, with which code (`provenance.json`).

`python -m dkd_core train` records each attempt that trains a step (not one
that finds the step already complete) in `step_<t>/provenance.json`, beside
the checkpoint, so the report can say what produced a number:

    started, finished, wall_seconds   the attempt, UTC ISO 8601 and seconds
    resumed_from_iteration            0, or the periodic checkpoint it resumed
    last_logged_iteration             the train log's last record
    images_per_second                 images trained by the attempt / its wall time
                                      (end to end: data setup, evaluation and
                                      checkpoint writes included)
    git_revision                      the code (see `git_revision`)
    hardware                          host, platform, Python, torch, CUDA, devices,
                                      processes (WORLD_SIZE), and `numerics`: what
                                      decides CPU float results (see `cpu_numerics`)

Only the process of rank 0 writes it. The checkpoint's meta.json holds the
resolved config, the task and the metrics; this file adds what meta.json does
not know.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dkd_core.storage import join, open_store

PROVENANCE_FILE = "provenance.json"
#: Set in the container image at build time (docker/Dockerfile: ARG GIT_REVISION).
REVISION_ENV = "DKD_GIT_REVISION"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def git_revision() -> str | None:
    """The code's revision: `$DKD_GIT_REVISION` (images), else `git rev-parse HEAD` of the
    source checkout with `-dirty` when it has uncommitted changes; None when neither is known."""
    given = os.environ.get(REVISION_ENV, "").strip()
    if given:
        return given

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(_SOURCE_ROOT), *args],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if dirty else head


#: Environment variables that change which CPU kernels run, hence the CPU's float results.
NUMERICS_ENV = (
    "ONEDNN_MAX_CPU_ISA",  # oneDNN (convolutions): the newest instruction set it may use
    "DNNL_MAX_CPU_ISA",  # the same, by its older name
    "ATEN_CPU_CAPABILITY",  # torch's own vectorised kernels (BN, losses, reductions)
    "MKL_CBWR",  # MKL's conditional numerical reproducibility: its code path (BLAS)
    "MKL_ENABLE_INSTRUCTIONS",
)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; the platform's processor elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The vector instruction sets the CPU offers, of those torch's kernels choose between."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    offered = set(value.split())
                    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                    return [flag for flag in wanted if flag in offered]
    except OSError:
        pass
    return []


def cpu_numerics() -> dict:
    """What decides a CPU step's float results, beyond the config and the code:

    cpu_model, cpu_flags             the machine (its vector instruction sets)
    cpu_capability                   the ISA of torch's own kernels (ATen dispatch)
    blas, onednn                     the libraries torch was built with (MKL, oneDNN)
    threads                          torch's intra-op threads: a reduction's order
    env                              the settings that cap those ISAs (NUMERICS_ENV)

    Two machines with equal values here compute the same bytes for the same run; other
    CPU models or capabilities may round differently (docs/reproducibility.md).
    """
    import torch

    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([0-9.]+)", config)
    onednn = re.search(r"(?:MKL-DNN|oneDNN) (v[0-9.]+)", config)
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    libraries = {
        "blas": f"MKL {mkl.group(1)}" if mkl else (blas.group(1) if blas else None),
        "onednn": f"oneDNN {onednn.group(1)}" if onednn else None,
    }
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **libraries,
        "threads": torch.get_num_threads(),
        "env": {name: os.environ[name] for name in NUMERICS_ENV if os.environ.get(name)},
    }


def numerics_summary(numerics: dict | None) -> str:
    """One line: 'AMD EPYC, AVX512 (torch kernels), 2 threads, MKL 2024.2, oneDNN v3.12.0'."""
    if not numerics:
        return "–"
    parts = [
        str(numerics.get("cpu_model") or "CPU ?"),
        f"{numerics.get('cpu_capability')} (torch kernels)",
        f"{numerics.get('threads')} threads",
    ]
    parts += [str(numerics[k]) for k in ("blas", "onednn") if numerics.get(k)]
    parts += [f"{k}={v}" for k, v in sorted((numerics.get("env") or {}).items())]
    return ", ".join(parts)


def numerics_key(hardware: dict | None) -> tuple | None:
    """What must be equal for two training attempts to round alike: the devices and, on
    CPU, `cpu_numerics`. None when the record predates it (unknown)."""
    if not hardware or "numerics" not in hardware:
        return None
    numerics = dict(hardware["numerics"] or {})
    env = tuple(sorted((numerics.pop("env", None) or {}).items()))
    flags = tuple(numerics.pop("cpu_flags", None) or ())
    devices = (hardware.get("device"), tuple(sorted(hardware.get("gpus") or [])))
    return (*devices, tuple(sorted(numerics.items())), flags, env)


def hardware() -> dict:
    """This machine as training saw it: host, software versions, devices, processes."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": "cuda" if gpus else "cpu",
        "gpus": gpus,  # this node's
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "numerics": cpu_numerics(),
    }


def _read_or_none(uri: str) -> bytes | None:
    store = open_store(uri)
    return store.read_bytes(uri) if store.exists(uri) else None


def _last_logged_iteration(train_log_uri: str) -> int | None:
    import json

    data = _read_or_none(train_log_uri)
    last = None
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        try:
            iteration = json.loads(line).get("iteration")
        except (ValueError, AttributeError):
            continue
        if isinstance(iteration, int):
            last = iteration
    return last


@dataclass
class TrainingAttempt:
    """One `train` command on one step: `begin` before training, `finish` after it."""

    checkpoint: str  # the step's final checkpoint URI
    started: str
    clock: float
    meta_before: bytes | None
    resumed_from: int
    revision: str | None  # the code that started, not what the checkout holds at the end

    @classmethod
    def begin(cls, checkpoint: str, periodic: str) -> TrainingAttempt:
        from dkd_core.storage import latest_checkpoint

        resumed_from = 0
        latest = latest_checkpoint(periodic)
        if latest is not None:
            meta = open_store(latest).read_json(join(latest, "meta.json"))
            resumed_from = int(meta.get("training", {}).get("iteration", 0))
        meta_before = _read_or_none(join(checkpoint, "meta.json"))
        return cls(
            checkpoint, utc_now(), time.monotonic(), meta_before, resumed_from, git_revision()
        )

    def finish(self, batch_size: int, train_log: str, restarted: bool = False) -> str | None:
        """Write provenance.json when this attempt trained the step; its URI, or None
        when the step was already complete (its meta.json is unchanged)."""
        meta_after = _read_or_none(join(self.checkpoint, "meta.json"))
        if meta_after is None or meta_after == self.meta_before:
            return None
        wall = time.monotonic() - self.clock
        resumed = 0 if restarted else self.resumed_from
        last = _last_logged_iteration(train_log)
        images = (last - resumed) * batch_size if last is not None and last > resumed else None
        record = {
            "started": self.started,
            "finished": utc_now(),
            "wall_seconds": round(wall, 3),
            "resumed_from_iteration": resumed,
            "last_logged_iteration": last,
            "images_per_second": round(images / wall, 3) if images and wall > 0 else None,
            "batch_size": batch_size,
            "git_revision": self.revision,
            "hardware": hardware(),
        }
        uri = provenance_beside(self.checkpoint)
        open_store(uri).write_json(uri, record)
        return uri


def provenance_beside(checkpoint: str) -> str:
    """The provenance.json of the step whose final checkpoint is `checkpoint`."""
    from dkd_core.locations import parent

    return join(parent(checkpoint), PROVENANCE_FILE)
