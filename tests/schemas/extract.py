"""Regenerate the CRD schemas that rendered manifests are validated against.

The tests must run without the CRD files, so we keep only the `openAPIV3Schema`
of the served version of each CRD, as compact JSON, next to this script. Each
output's `$comment` names the repository, tag and path it came from. Download
the CRDs into one directory (file names as below), then:

    python tests/schemas/extract.py CRD_DIR   # default CRD_DIR: /work/shared/schemas

Sources (all Apache-2.0), fetched from https://raw.githubusercontent.com/<repo>/<tag>/<path>:

- kubeflow/trainer v1.9.4 `manifests/base/crds/kubeflow.org_pytorchjobs.yaml` -> PyTorchJob v1
- kubeflow/trainer v2.3.0 `manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml`
  -> TrainJob v1alpha1
- kubeflow/trainer v2.3.0 `manifests/base/crds/trainer.kubeflow.org_clustertrainingruntimes.yaml`
  -> ClusterTrainingRuntime v1alpha1
- prometheus-operator/prometheus-operator v0.91.0
  `example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml` -> PodMonitor v1

The schemas are stored as upstream wrote them; `tools/lint_manifests.strict_schema`
closes every object with `properties` (`additionalProperties: false`) when validating,
as the API server's structural schemas reject unknown fields.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_CRD_DIR = Path("/work/shared/schemas")
MAX_BYTES = 1_500_000


@dataclass(frozen=True)
class Source:
    repo: str
    tag: str
    path: str  # of the CRD file in `repo` at `tag`
    version: str  # the CRD version whose schema we keep
    output: str

    @property
    def crd_file(self) -> str:
        return self.path.rsplit("/", 1)[-1]


_TRAINER_CRDS = "manifests/base/crds"
SOURCES = (
    Source(
        "kubeflow/trainer",
        "v1.9.4",
        f"{_TRAINER_CRDS}/kubeflow.org_pytorchjobs.yaml",
        "v1",
        "pytorchjob-v1.schema.json",
    ),
    Source(
        "kubeflow/trainer",
        "v2.3.0",
        f"{_TRAINER_CRDS}/trainer.kubeflow.org_trainjobs.yaml",
        "v1alpha1",
        "trainjob-v1alpha1.schema.json",
    ),
    Source(
        "kubeflow/trainer",
        "v2.3.0",
        f"{_TRAINER_CRDS}/trainer.kubeflow.org_clustertrainingruntimes.yaml",
        "v1alpha1",
        "clustertrainingruntime-v1alpha1.schema.json",
    ),
    Source(
        "prometheus-operator/prometheus-operator",
        "v0.91.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
        "v1",
        "podmonitor-v1.schema.json",
    ),
)


def served_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The `openAPIV3Schema` of `version` in a CustomResourceDefinition; it must be served."""
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            if not v.get("served", False):
                raise SystemExit(f"{crd['metadata']['name']}: version {version} is not served")
            return v["schema"]["openAPIV3Schema"]
    raise SystemExit(f"{crd['metadata']['name']}: no version {version}")


def extract(src: Source, crd_dir: Path, out_dir: Path = HERE) -> Path:
    """Write `out_dir/src.output` from the CRD file in `crd_dir`; return its path."""
    docs = [d for d in yaml.safe_load_all((crd_dir / src.crd_file).read_text()) if d]
    crd = next(d for d in docs if d.get("kind") == "CustomResourceDefinition")
    schema = {
        "$comment": (
            f"openAPIV3Schema of {crd['spec']['names']['kind']} {src.version}, extracted by "
            f"tests/schemas/extract.py from {src.repo} {src.tag} {src.path} "
            "(Apache-2.0, Copyright The Kubeflow Authors / The prometheus-operator Authors)."
        ),
        **served_schema(crd, src.version),
    }
    out = out_dir / src.output
    text = json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n"
    if len(text.encode()) > MAX_BYTES:
        raise SystemExit(f"{out.name}: {len(text.encode())} bytes, over {MAX_BYTES}")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out


def main(argv: list[str]) -> int:
    crd_dir = Path(argv[0]) if argv else DEFAULT_CRD_DIR
    missing = [s.crd_file for s in SOURCES if not (crd_dir / s.crd_file).is_file()]
    if missing:
        print(f"extract.py: {crd_dir} lacks {', '.join(missing)} (see this script's docstring)")
        return 1
    for src in SOURCES:
        out = extract(src, crd_dir)
        print(f"{out.relative_to(HERE.parent.parent)}: {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
