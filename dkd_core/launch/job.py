"""What to run for one CISS step, independent of where it runs.

A `StepJob` names the job and holds the arguments of
`python -m dkd_core train`; `StepJob.command()` is the `torchrun` command line
every backend runs (locally, in a PyTorchJob pod, in a TrainJob node).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from dkd_core.errors import DKDError

#: Kubernetes object names of both operators must be RFC 1035 labels (a DNS-1123
#: label that starts with a letter): the training operator's webhook checks
#: `NameIsDNS1035Label` and the TrainJob CRD has the same rule as a CEL validation.
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX_LENGTH = 63

#: Length `job_name` keeps names to. Child objects add suffixes to the job name and
#: must themselves stay within 63 characters: PyTorchJob services are named
#: `<job>-worker-<i>`, JobSet pods `<job>-node-0-<i>-<5 random>`; 40 leaves room.
JOB_NAME_LENGTH = 40

_OVERRIDE_RE = re.compile(r"^[A-Za-z_][\w.\-]*=")


def validate_name(name: str) -> str:
    """Return `name` if it can name a PyTorchJob/TrainJob; raise `DKDError` otherwise."""
    if not isinstance(name, str) or not name:
        raise DKDError("job name: must be a non-empty string")
    if len(name) > NAME_MAX_LENGTH:
        raise DKDError(
            f"job name {name!r}: {len(name)} characters, at most {NAME_MAX_LENGTH} allowed "
            "(use dkd_core.launch.job_name to build one)"
        )
    if not NAME_RE.match(name):
        raise DKDError(
            f"job name {name!r}: must be lowercase letters, digits and '-', start with a "
            "letter and end with a letter or digit (RFC 1035 label; use "
            "dkd_core.launch.job_name to build one)"
        )
    return name


def _slug(text: str) -> str:
    """Lowercase `text`, turn every run of other characters into one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def job_name(run: str, step: int, suffix: str = "", max_length: int = JOB_NAME_LENGTH) -> str:
    """A valid job name for step `step` of run `run`, e.g. `("voc_15-1", 3) -> "dkd-voc-15-1-step-3"`.

    `suffix` (e.g. a pipeline task id, to keep reruns apart) is appended after
    sanitising. When the result would exceed `max_length`, the run part is cut
    and a 6-hex-digit hash of the full name is added, so distinct long names
    stay distinct.
    """
    if step < 0:
        raise DKDError(f"job_name: step must be >= 0, got {step}")
    if not 20 <= max_length <= NAME_MAX_LENGTH:
        raise DKDError(f"job_name: max_length must be in [20, {NAME_MAX_LENGTH}], got {max_length}")
    run_part = _slug(run)
    tail = f"step-{step}" + (f"-{_slug(suffix)}" if _slug(suffix) else "")
    full = "-".join(p for p in ("dkd", run_part, tail) if p)
    if len(full) <= max_length:
        return validate_name(full)
    digest = hashlib.sha256(f"{run}\0{step}\0{suffix}".encode()).hexdigest()[:6]
    keep = max_length - len("dkd--") - len(tail) - len(digest) - 1
    if keep < 1:  # a very long suffix: cut the tail instead, the hash keeps it unique
        return validate_name(f"dkd-{tail[: max_length - len(digest) - 5].rstrip('-')}-{digest}")
    cut = run_part[:keep].rstrip("-")
    return validate_name("-".join(p for p in ("dkd", cut, tail, digest) if p))


@dataclass(frozen=True)
class StepJob:
    """One CISS training step, as every launcher needs it.

    `nodes` pods run `nproc_per_node` processes each; with more than one node
    the operator (PyTorchJob, TrainJob) sets torchrun's `PET_*` variables
    (master address and port, node rank), so the command hard-codes neither.
    """

    name: str
    config_uri: str
    step: int
    overrides: tuple[str, ...] = ()
    teacher: str | None = None
    nproc_per_node: int = 1
    nodes: int = 1
    checkpoint_out: str | None = None  # URI of the step's final checkpoint (a pipeline's Model)
    manifest: str | None = None  # URI of the run's split manifest

    def __post_init__(self) -> None:
        validate_name(self.name)
        if not isinstance(self.config_uri, str) or not self.config_uri.strip():
            raise DKDError(f"job {self.name}: config_uri must be a non-empty path or URI")
        for field in ("step", "nproc_per_node", "nodes"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise DKDError(f"job {self.name}: {field} must be an integer, got {value!r}")
        if self.step < 0:
            raise DKDError(f"job {self.name}: step must be >= 0, got {self.step}")
        if self.nproc_per_node < 1 or self.nodes < 1:
            raise DKDError(
                f"job {self.name}: nproc_per_node and nodes must be >= 1, "
                f"got {self.nproc_per_node} and {self.nodes}"
            )
        if isinstance(self.overrides, str):
            raise DKDError(f"job {self.name}: overrides must be a sequence of 'key=value' strings")
        object.__setattr__(self, "overrides", tuple(self.overrides))
        for o in self.overrides:
            if not isinstance(o, str) or not _OVERRIDE_RE.match(o):
                raise DKDError(
                    f"job {self.name}: override {o!r} is not 'dotted.key=value' "
                    "(e.g. optim.lr=0.01)"
                )
        for field in ("teacher", "checkpoint_out", "manifest"):
            value = getattr(self, field)
            if value is not None and not value.strip():
                raise DKDError(f"job {self.name}: {field} must be a path/URI or None")

    def train_args(self) -> list[str]:
        """Arguments after `-m dkd_core`: `train --config ... --step ... [--teacher ...] [k=v ...]`."""
        args = ["train", "--config", self.config_uri, "--step", str(self.step)]
        for flag, value in (
            ("--teacher", self.teacher),
            ("--checkpoint-out", self.checkpoint_out),
            ("--manifest", self.manifest),
        ):
            if value is not None:
                args += [flag, value]
        return [*args, *self.overrides]

    def command(self) -> list[str]:
        """The `torchrun` command line of this step.

        One node: `--standalone` (a local rendezvous on a free port). Several
        nodes: only `--nnodes`/`--nproc_per_node`; torchrun reads the master
        address, port and node rank from the `PET_*` variables the operator sets.
        """
        launcher = ["torchrun"]
        if self.nodes == 1:
            launcher.append("--standalone")
        launcher += ["--nnodes", str(self.nodes), "--nproc_per_node", str(self.nproc_per_node)]
        return [*launcher, "-m", "dkd_core", *self.train_args()]
