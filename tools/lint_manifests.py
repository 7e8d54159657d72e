"""Render every overlay under k8s/overlays and validate what comes out (`make lint-manifests`).

- Renderer: `kustomize build` or `kubectl kustomize` when installed, else
  tools/kustomize_lite.py (the subset our manifests use; same objects).
- Built-in objects: `kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)`
  (the OpenAPI schemas of Kubernetes 1.37, unknown fields rejected).
- Custom resources: the CRD schema of their kind under tests/schemas (PyTorchJob, TrainJob
  from the operators' CRDs; PodMonitor from a hand-written subset), with jsonschema.
- k8s/base/pytorchjob-example.yaml (not rendered by any overlay) and
  k8s/monitoring/dashboard.json (must be valid JSON) are checked too.

    python tools/lint_manifests.py [--renderer auto|lite|kubectl|kustomize] [OVERLAY ...]
"""

from __future__ import annotations

import argparse
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
if str(REPO) not in sys.path:  # run as a script: make `tools` importable
    sys.path.insert(0, str(REPO))

from tools import kustomize_lite  # noqa: E402

KUBERNETES_VERSION = "1.37.0"
OVERLAYS_DIR = REPO / "k8s" / "overlays"
SCHEMAS = REPO / "tests" / "schemas"
EXAMPLE_PYTORCHJOB = REPO / "k8s" / "base" / "pytorchjob-example.yaml"
DASHBOARD = REPO / "k8s" / "monitoring" / "dashboard.json"

#: (apiVersion, kind) of custom resources -> schema file under tests/schemas.
CRD_SCHEMAS = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-v1.schema.json",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjob-v1alpha1.schema.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-v1.subset.schema.json",
}


def overlays() -> list[Path]:
    """Every overlay directory (one with a kustomization file) under k8s/overlays."""
    return sorted(
        d
        for d in OVERLAYS_DIR.iterdir()
        if d.is_dir() and any((d / n).is_file() for n in kustomize_lite.KUSTOMIZATION_FILES)
    )


def render(directory: Path, renderer: str = "lite") -> list[dict[str, Any]]:
    """The objects of a kustomization, rendered by `renderer` (lite, kubectl or kustomize)."""
    if renderer == "lite":
        return kustomize_lite.build(directory)
    command = {
        "kubectl": ["kubectl", "kustomize", str(directory)],
        "kustomize": ["kustomize", "build", str(directory)],
    }[renderer]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise kustomize_lite.KustomizeError(f"{' '.join(command)}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pick_renderer(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if shutil.which("kustomize"):
        return "kustomize"
    if shutil.which("kubectl"):
        probe = subprocess.run(
            ["kubectl", "kustomize", "--help"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return "kubectl"
    return "lite"


@functools.cache
def crd_validator(schema_file: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / schema_file).read_text())
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
    """Errors of a custom resource against its CRD's openAPIV3Schema."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--renderer", choices=("auto", "lite", "kubectl", "kustomize"), default="auto"
    )
    parser.add_argument("overlay", nargs="*", help="overlay directories (default: all)")
    args = parser.parse_args(argv)
    renderer = pick_renderer(args.renderer)
    targets = [Path(o) for o in args.overlay] or overlays()
    failed = False
    for overlay in targets:
        try:
            objects = render(overlay, renderer)
        except kustomize_lite.KustomizeError as e:
            print(f"FAIL {overlay}: {e}")
            failed = True
            continue
        errors = validate(objects)
        status = "ok  " if not errors else "FAIL"
        print(
            f"{status} {overlay} ({len(objects)} objects, {renderer}, Kubernetes {KUBERNETES_VERSION})"
        )
        for error in errors:
            print(f"     {error}")
        failed |= bool(errors)
    example = [d for d in yaml.safe_load_all(EXAMPLE_PYTORCHJOB.read_text()) if d]
    errors = validate(example)
    print(f"{'ok  ' if not errors else 'FAIL'} {EXAMPLE_PYTORCHJOB.relative_to(REPO)}")
    for error in errors:
        print(f"     {error}")
    failed |= bool(errors)
    try:
        json.loads(DASHBOARD.read_text(encoding="utf-8"))
        print(f"ok   {DASHBOARD.relative_to(REPO)}")
    except ValueError as e:
        print(f"FAIL {DASHBOARD.relative_to(REPO)}: {e}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
