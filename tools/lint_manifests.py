"""Render every kustomization under k8s/ and validate what comes out (`make lint-manifests`).

- Renderer: `kubectl kustomize` (kustomize as kubectl ships it, the tool `kubectl apply -k`
  uses); a missing kubectl is one clear error.
- Built-in objects: `kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)`
  (the OpenAPI schemas of Kubernetes 1.37, unknown fields rejected).
- Custom resources: the openAPIV3Schema of their CRD at the version we pin (tests/schemas,
  see extract.py there: PyTorchJob, TrainJob, ClusterTrainingRuntime, PodMonitor), closed
  by `strict_schema` so that unknown fields are rejected as the API server does.
- The example manifests under k8s/base (not rendered by any overlay) and
  k8s/monitoring/dashboard.json (must be valid JSON) are checked too.

    python tools/lint_manifests.py [KUSTOMIZATION_DIR ...]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERNETES_VERSION = "1.37.0"
K8S = REPO / "k8s"
OVERLAYS_DIR = K8S / "overlays"
#: Kustomizations applied on their own, besides the overlays.
STANDALONE = (K8S / "base" / "trainer-runtime",)
SCHEMAS = REPO / "tests" / "schemas"
EXAMPLES = (K8S / "base" / "pytorchjob-example.yaml", K8S / "base" / "trainjob-example.yaml")
DASHBOARD = K8S / "monitoring" / "dashboard.json"

#: (apiVersion, kind) of custom resources -> schema file under tests/schemas.
CRD_SCHEMAS = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-v1.schema.json",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjob-v1alpha1.schema.json",
    (
        "trainer.kubeflow.org/v1alpha1",
        "ClusterTrainingRuntime",
    ): "clustertrainingruntime-v1alpha1.schema.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-v1.schema.json",
}


class ManifestError(Exception):
    """A kustomization that cannot be rendered."""


def kustomizations() -> list[Path]:
    """Every overlay under k8s/overlays, then the standalone kustomizations."""
    found = sorted(
        d for d in OVERLAYS_DIR.iterdir() if d.is_dir() and (d / "kustomization.yaml").is_file()
    )
    return [*found, *STANDALONE]


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization, as `kubectl kustomize` renders them."""
    if shutil.which("kubectl") is None:
        raise ManifestError(
            "kubectl not found: install kubectl >= 1.31 (it renders kustomizations with "
            "`kubectl kustomize`), https://kubernetes.io/docs/tasks/tools/"
        )
    command = ["kubectl", "kustomize", str(directory)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ManifestError(f"{' '.join(command)}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a CRD's openAPIV3Schema that rejects unknown fields.

    CRD schemas are structural: the API server prunes or (with field validation
    Strict, kubectl's default) rejects any field a schema with `properties` does not
    list, unless it says `x-kubernetes-preserve-unknown-fields: true`. jsonschema
    allows extra keys unless told otherwise, so every such object gets
    `additionalProperties: false` (maps, i.e. `additionalProperties` schemas, stay
    as they are).
    """
    out = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for item in node:
                close(item)

    close(out)
    return out


@functools.cache
def crd_validator(schema_file: str) -> jsonschema.Draft7Validator:
    """A validator for the CRD schema in tests/schemas/`schema_file`, unknown fields rejected."""
    schema = strict_schema(json.loads((SCHEMAS / schema_file).read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    # No format checker: int32/int64/date-time and int-or-string are OpenAPI formats.
    return jsonschema.Draft7Validator(schema)


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def is_custom(obj: dict[str, Any]) -> bool:
    return (obj.get("apiVersion"), obj.get("kind")) in CRD_SCHEMAS


def validate_builtin(obj: dict[str, Any]) -> list[str]:
    """Errors of a built-in object against the Kubernetes OpenAPI schemas (strict)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        return [f"{describe(obj)}: {path}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [
            f"{describe(obj)}: no Kubernetes {KUBERNETES_VERSION} schema for "
            f"{obj.get('apiVersion')} {obj.get('kind')} (a custom resource needs an entry in "
            "CRD_SCHEMAS)"
        ]
    return []


def validate_custom(obj: dict[str, Any]) -> list[str]:
    """Errors of a custom resource against its CRD's openAPIV3Schema (unknown fields too)."""
    validator = crd_validator(CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])])
    return [
        f"{describe(obj)}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def validate(objects: Iterable[dict[str, Any]]) -> list[str]:
    errors: list[str] = []
    for obj in objects:
        errors += validate_custom(obj) if is_custom(obj) else validate_builtin(obj)
    return errors


def _report(what: str, errors: list[str], detail: str = "") -> bool:
    print(f"{'ok  ' if not errors else 'FAIL'} {what}{detail}")
    for error in errors:
        print(f"     {error}")
    return bool(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kustomization", nargs="*", help="directories (default: all)")
    args = parser.parse_args(argv)
    targets = [Path(o) for o in args.kustomization] or kustomizations()
    failed = False
    for target in targets:
        try:
            objects = render(target)
        except ManifestError as e:
            print(f"FAIL {target}: {e}")
            failed = True
            continue
        detail = f" ({len(objects)} objects, Kubernetes {KUBERNETES_VERSION})"
        failed |= _report(str(target), validate(objects), detail)
    for example in EXAMPLES:
        docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
        failed |= _report(str(example.relative_to(REPO)), validate(docs))
    try:
        json.loads(DASHBOARD.read_text(encoding="utf-8"))
        failed |= _report(str(DASHBOARD.relative_to(REPO)), [])
    except ValueError as e:
        failed |= _report(str(DASHBOARD.relative_to(REPO)), [str(e)])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
