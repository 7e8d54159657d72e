"""Regenerate the CRD schemas the launcher tests validate rendered manifests against.

The tests must run without the CRD files, so we keep only the `openAPIV3Schema`
of the served version of each CRD, as compact JSON, next to this script:

    python tests/schemas/extract.py [CRD_DIR]   # default CRD_DIR: /work/shared/schemas

Sources (Apache-2.0):
- kubeflow/trainer release-1.9, `kubeflow.org_pytorchjobs.yaml` -> PyTorchJob v1
- kubeflow/trainer release-2.3, `trainer.kubeflow.org_trainjobs.yaml` -> TrainJob v1alpha1
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
    crd_file: str
    version: str
    release: str
    output: str


SOURCES = (
    Source("kubeflow.org_pytorchjobs.yaml", "v1", "release-1.9", "pytorchjob-v1.schema.json"),
    Source(
        "trainer.kubeflow.org_trainjobs.yaml",
        "v1alpha1",
        "release-2.3",
        "trainjob-v1alpha1.schema.json",
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
            f"tests/schemas/extract.py from {src.crd_file} of kubeflow/trainer {src.release} "
            "(Apache-2.0, Copyright The Kubeflow Authors)."
        ),
        **served_schema(crd, src.version),
    }
    out = out_dir / src.output
    text = json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n"
    if len(text.encode()) > MAX_BYTES:
        raise SystemExit(f"{out.name}: {len(text.encode())} bytes, over {MAX_BYTES}")
    out.write_text(text)
    return out


def main(argv: list[str]) -> int:
    crd_dir = Path(argv[0]) if argv else DEFAULT_CRD_DIR
    for src in SOURCES:
        out = extract(src, crd_dir)
        print(f"{out.relative_to(HERE.parent.parent)}: {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
