"""Render the kustomizations under k8s/ without the kustomize binary.

This is a small, strict implementation of the subset of kustomize
(kustomize.config.k8s.io/v1beta1) that this repository's manifests use. For
those manifests `kubectl kustomize DIR` (kustomize v5) and `kustomize build DIR`
give the same objects; tests/unit/test_manifests.py compares the two when
kubectl is installed. Supported:

- `resources`: YAML files (several documents each) and directories holding a
  kustomization (nested kustomizations, built recursively). Files must lie
  inside the kustomization's directory (kustomize's default load restriction);
  directories may be anywhere. A resource id (group, kind, namespace, name)
  registered twice is an error.
- `namespace`: set on every namespaced object; `Namespace` objects are renamed
  to it; in RoleBindings, ServiceAccount subjects naming a ServiceAccount of the
  same build get the new namespace (what kustomize does).
- `labels`: entries with `pairs`, added to every object's metadata.labels
  (`includeSelectors` and `includeTemplates` must be false or absent).
- `configMapGenerator`: `files` (`path` or `key=path`) and `literals`
  (`key=value`), with `options` / `generatorOptions` `labels` and `annotations`.
  Name hashing is not implemented: `generatorOptions.disableNameSuffixHash:
  true` is required, so names are stable.
- `patches` (from `path` or inline `patch`, with an optional `target`: group,
  version, kind, name, namespace; kind and name are anchored regular
  expressions): a list is a JSON6902 patch (ops `add`, `replace`, `remove`); a
  mapping is a strategic-merge patch, simplified: mappings merge recursively,
  `null` deletes a key, lists of mappings that all have a `name` merge by name
  (containers, env, volumes ...; the patch's items first, then the others, as
  kustomize orders them), other lists are replaced. Objects outside the
  built-in API groups get a JSON merge patch (lists replaced), as in kustomize.
- Transformers run in kustomize's order: patches, namespace, labels.
- Output order: kustomize's legacy order (Namespace, ServiceAccount, Role, ...).

Not supported, and an error when present: every other kustomization key
(`commonLabels`, `commonAnnotations`, `namePrefix`/`nameSuffix`, `images`,
`replicas`, `secretGenerator`, `components`, `patchesStrategicMerge`,
`patchesJson6902`, `replacements`, `vars`, `helmCharts`, `crds`, ...),
`kind: Component`, remote resources (URLs), `$patch` directives, label or
annotation selectors in patch targets, JSON6902 ops other than add, replace and
remove, and generator `behavior` other than `create`.

    python tools/kustomize_lite.py build k8s/overlays/kind    # YAML on stdout
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "labels",
        "configMapGenerator",
        "generatorOptions",
        "patches",
    }
)
API_VERSION = "kustomize.config.k8s.io/v1beta1"

#: Kinds that are not namespaced (built-in ones; custom resources here are namespaced).
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "StorageClass",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PriorityClass",
        "RuntimeClass",
        "IngressClass",
        "CSIDriver",
        "CSINode",
        "VolumeAttachment",
        "APIService",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ClusterTrainingRuntime",
    }
)

#: API groups whose objects get a strategic-merge patch (others: JSON merge patch).
BUILTIN_GROUPS = frozenset(
    {
        "",
        "apps",
        "batch",
        "autoscaling",
        "policy",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "storage.k8s.io",
        "scheduling.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
    }
)

#: kustomize's legacy output order (api/resid/gvk.go): these kinds first, in this order ...
ORDER_FIRST = (
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
)
# ... these last, and every other kind in between, by group_version_kind.
ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


class KustomizeError(Exception):
    """The kustomization cannot be rendered (unsupported feature or a mistake in it)."""


# -- small helpers -----------------------------------------------------------------


def split_api_version(api_version: str) -> tuple[str, str]:
    """`apps/v1` -> ("apps", "v1"); `v1` -> ("", "v1")."""
    group, _, version = api_version.rpartition("/")
    return group, version


def resource_id(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name) of an object."""
    group, _ = split_api_version(str(obj.get("apiVersion", "")))
    meta = obj.get("metadata") or {}
    return group, str(obj.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name"))


def _describe(obj: dict[str, Any]) -> str:
    group, kind, namespace, name = resource_id(obj)
    where = f"{namespace}/" if namespace else ""
    return f"{kind}.{group or 'core'} {where}{name}"


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _load_documents(path: Path) -> list[dict[str, Any]]:
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as e:
        raise KustomizeError(f"{path}: not valid YAML: {e}") from e
    out = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"{path}: every document must be an object with apiVersion/kind")
        if doc.get("kind") in ("List",) or str(doc.get("kind", "")).endswith("List"):
            raise KustomizeError(f"{path}: List objects are not supported")
        if not (doc.get("metadata") or {}).get("name"):
            raise KustomizeError(f"{path}: a {doc['kind']} has no metadata.name")
        out.append(doc)
    return out


def find_kustomization(directory: Path) -> Path:
    """The kustomization file of `directory`; KustomizeError when there is none."""
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise KustomizeError(f"{directory}: no kustomization file ({', '.join(KUSTOMIZATION_FILES)})")


# -- patches -----------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], where: str) -> Any:
    node = doc
    for part in parts:
        if isinstance(node, dict):
            if part not in node:
                raise KustomizeError(f"{where}: path element {part!r} does not exist")
            node = node[part]
        elif isinstance(node, list):
            node = node[_index(part, len(node), where)]
        else:
            raise KustomizeError(f"{where}: cannot descend into {type(node).__name__} at {part!r}")
    return node


def _index(part: str, length: int, where: str, allow_end: bool = False) -> int:
    if not part.isdigit():
        raise KustomizeError(f"{where}: {part!r} is not a list index")
    index = int(part)
    if index > length or (index == length and not allow_end):
        raise KustomizeError(f"{where}: index {index} out of range (length {length})")
    return index


def apply_json6902(obj: dict[str, Any], ops: list[Any], where: str) -> dict[str, Any]:
    """Apply JSON6902 operations `add`, `replace`, `remove` to a copy of `obj`."""
    doc = copy.deepcopy(obj)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise KustomizeError(f"{where}: each JSON6902 operation needs `op` and `path`")
        kind, path = op["op"], str(op["path"])
        here = f"{where} ({kind} {path})"
        if kind not in ("add", "replace", "remove"):
            raise KustomizeError(f"{here}: op {kind!r} is not supported (add, replace, remove)")
        parts = _pointer(path)
        if not parts:
            raise KustomizeError(f"{here}: cannot {kind} the whole document")
        parent = _walk(doc, parts[:-1], here)
        last = parts[-1]
        if kind in ("add", "replace") and "value" not in op:
            raise KustomizeError(f"{here}: needs a `value`")
        value = copy.deepcopy(op.get("value"))
        if isinstance(parent, dict):
            if kind != "add" and last not in parent:
                raise KustomizeError(f"{here}: {last!r} does not exist")
            if kind == "remove":
                del parent[last]
            else:
                parent[last] = value
        elif isinstance(parent, list):
            if kind == "add":
                index = len(parent) if last == "-" else _index(last, len(parent), here, True)
                parent.insert(index, value)
            elif kind == "replace":
                parent[_index(last, len(parent), here)] = value
            else:
                del parent[_index(last, len(parent), here)]
        else:
            raise KustomizeError(f"{here}: the parent is not an object or a list")
    return doc


def _named_list(items: Any) -> bool:
    return (
        isinstance(items, list)
        and bool(items)
        and all(isinstance(i, dict) and "name" in i for i in items)
    )


def strategic_merge(base: Any, patch: Any, where: str, lists_by_name: bool = True) -> Any:
    """The simplified strategic merge (or, with `lists_by_name=False`, JSON merge) patch."""
    if isinstance(patch, dict):
        if any(str(k).startswith("$") for k in patch):
            raise KustomizeError(f"{where}: `$patch`/`$setElementOrder` directives not supported")
        if not isinstance(base, dict):
            base = {}
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(base.get(key), value, where, lists_by_name)
        return out
    if lists_by_name and _named_list(patch) and (base is None or _named_list(base)):
        # kustomize's order: the patch's items first (merged into the base's item of the same
        # name), then the base's items the patch does not name.
        by_name = {item["name"]: item for item in base or []}
        merged = [
            strategic_merge(by_name[item["name"]], item, where, lists_by_name)
            if item["name"] in by_name
            else copy.deepcopy(item)
            for item in patch
        ]
        named = {item["name"] for item in patch}
        merged += [copy.deepcopy(item) for item in base or [] if item["name"] not in named]
        return merged
    return copy.deepcopy(patch)


def _matches(obj: dict[str, Any], target: dict[str, Any], where: str) -> bool:
    unsupported = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unsupported:
        raise KustomizeError(f"{where}: target keys {sorted(unsupported)} are not supported")
    group, version = split_api_version(str(obj.get("apiVersion", "")))
    _, kind, namespace, name = resource_id(obj)
    checks = (
        ("group", group, False),
        ("version", version, False),
        ("kind", kind, True),
        ("name", name, True),
        ("namespace", namespace, False),
    )
    for key, actual, regex in checks:
        if key not in target:
            continue
        wanted = str(target[key])
        if regex:
            if not re.fullmatch(wanted, actual):
                return False
        elif wanted != actual:
            return False
    return True


def apply_patches(
    resources: list[dict[str, Any]], patches: list[Any], root: Path
) -> list[dict[str, Any]]:
    for n, entry in enumerate(patches):
        where = f"{root}: patches[{n}]"
        if not isinstance(entry, dict) or set(entry) - {"path", "patch", "target", "options"}:
            raise KustomizeError(f"{where}: expected path or patch, and an optional target")
        if entry.get("options"):
            raise KustomizeError(f"{where}: patch options are not supported")
        if ("path" in entry) == ("patch" in entry):
            raise KustomizeError(f"{where}: give exactly one of `path` and `patch`")
        if "path" in entry:
            file = root / entry["path"]
            if not _inside(file, root):
                raise KustomizeError(f"{where}: {entry['path']} is outside {root}")
            text = file.read_text(encoding="utf-8")
        else:
            text = entry["patch"]
        body = yaml.safe_load(text)
        target = entry.get("target")
        if isinstance(body, list):
            if not isinstance(target, dict):
                raise KustomizeError(f"{where}: a JSON6902 patch needs a target")
        elif isinstance(body, dict):
            if target is None:
                group, version = split_api_version(str(body.get("apiVersion", "")))
                target = {
                    "group": group,
                    "version": version,
                    "kind": re.escape(str(body.get("kind", ""))),
                    "name": re.escape(str((body.get("metadata") or {}).get("name", ""))),
                }
        else:
            raise KustomizeError(f"{where}: a patch is a list (JSON6902) or an object (merge)")
        hits = [i for i, obj in enumerate(resources) if _matches(obj, target, where)]
        if not hits:
            raise KustomizeError(f"{where}: the target {target} matches no resource")
        for i in hits:
            obj = resources[i]
            if isinstance(body, list):
                resources[i] = apply_json6902(obj, body, f"{where} on {_describe(obj)}")
            else:
                patch = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
                patch["metadata"] = {
                    k: v for k, v in (body.get("metadata") or {}).items() if k != "name"
                }
                group, _ = split_api_version(str(obj.get("apiVersion", "")))
                resources[i] = strategic_merge(
                    obj, patch, f"{where} on {_describe(obj)}", group in BUILTIN_GROUPS
                )
                if not resources[i]["metadata"]:
                    resources[i]["metadata"] = obj["metadata"]
    return resources


# -- generators and transformers -----------------------------------------------------


def _options(entry: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = set(entry) - {"labels", "annotations", "disableNameSuffixHash"}
    if unknown:
        raise KustomizeError(f"{where}: options {sorted(unknown)} are not supported")
    return entry


def generate_configmaps(k: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    generators = k.get("configMapGenerator") or []
    general = _options(k.get("generatorOptions") or {}, f"{root}: generatorOptions")
    out = []
    for n, gen in enumerate(generators):
        where = f"{root}: configMapGenerator[{n}]"
        unknown = set(gen) - {"name", "namespace", "files", "literals", "behavior", "options"}
        if unknown:
            raise KustomizeError(f"{where}: keys {sorted(unknown)} are not supported")
        if gen.get("behavior", "create") != "create":
            raise KustomizeError(f"{where}: only behavior `create` is supported")
        own = _options(gen.get("options") or {}, f"{where}.options")
        if not own.get("disableNameSuffixHash", general.get("disableNameSuffixHash", False)):
            raise KustomizeError(
                f"{where}: name hashing is not implemented; set "
                "generatorOptions.disableNameSuffixHash: true"
            )
        data: dict[str, str] = {}
        for spec in gen.get("files") or []:
            key, _, rel = str(spec).rpartition("=")
            file = root / rel
            if not _inside(file, root):
                raise KustomizeError(f"{where}: {rel} is outside {root}")
            try:
                data[key or Path(rel).name] = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise KustomizeError(f"{where}: {rel} is not UTF-8 (binaryData unsupported)") from e
        for spec in gen.get("literals") or []:
            key, sep, value = str(spec).partition("=")
            if not sep:
                raise KustomizeError(f"{where}: literal {spec!r} is not key=value")
            data[key] = value
        metadata: dict[str, Any] = {"name": gen["name"]}
        if gen.get("namespace"):
            metadata["namespace"] = gen["namespace"]
        labels = {**(general.get("labels") or {}), **(own.get("labels") or {})}
        annotations = {**(general.get("annotations") or {}), **(own.get("annotations") or {})}
        if labels:
            metadata["labels"] = {str(a): str(b) for a, b in labels.items()}
        if annotations:
            metadata["annotations"] = {str(a): str(b) for a, b in annotations.items()}
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return out


def set_namespace(resources: list[dict[str, Any]], namespace: str) -> None:
    service_accounts = {
        (obj.get("metadata") or {}).get("name")
        for obj in resources
        if obj.get("kind") == "ServiceAccount" and obj.get("apiVersion") == "v1"
    }
    for obj in resources:
        kind = obj.get("kind")
        meta = obj.setdefault("metadata", {})
        if kind == "Namespace":
            meta["name"] = namespace
            continue
        if kind not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        if kind in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects") or []:
                if (
                    subject.get("kind") == "ServiceAccount"
                    and subject.get("name") in service_accounts
                ):
                    subject["namespace"] = namespace


def add_labels(resources: list[dict[str, Any]], entries: list[Any], root: Path) -> None:
    for n, entry in enumerate(entries):
        where = f"{root}: labels[{n}]"
        if not isinstance(entry, dict) or set(entry) - {
            "pairs",
            "includeSelectors",
            "includeTemplates",
        }:
            raise KustomizeError(f"{where}: only `pairs` (and false include* flags) supported")
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise KustomizeError(f"{where}: includeSelectors/includeTemplates are not supported")
        pairs = {str(k): str(v) for k, v in (entry.get("pairs") or {}).items()}
        for obj in resources:
            labels = obj.setdefault("metadata", {}).get("labels") or {}
            obj["metadata"]["labels"] = {**labels, **pairs}


# -- building ----------------------------------------------------------------------


def _read_kustomization(directory: Path) -> tuple[dict[str, Any], Path]:
    file = find_kustomization(directory)
    k = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(k, dict):
        raise KustomizeError(f"{file}: not a mapping")
    unknown = sorted(set(k) - SUPPORTED_KEYS)
    if unknown:
        raise KustomizeError(
            f"{file}: unsupported kustomization keys {unknown} (tools/kustomize_lite.py renders "
            "a subset; use kubectl kustomize, or extend it)"
        )
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{file}: kind {k.get('kind')!r} is not supported")
    if k.get("apiVersion", API_VERSION) != API_VERSION:
        raise KustomizeError(f"{file}: apiVersion {k.get('apiVersion')!r} is not {API_VERSION}")
    return k, file


def _accumulate(directory: Path, stack: tuple[Path, ...]) -> list[dict[str, Any]]:
    directory = directory.resolve()
    if directory in stack:
        raise KustomizeError(f"{directory}: cycle in resources")
    k, file = _read_kustomization(directory)
    resources: list[dict[str, Any]] = []
    for entry in k.get("resources") or []:
        entry = str(entry)
        if "://" in entry or entry.startswith(("github.com/", "git@")):
            raise KustomizeError(f"{file}: remote resource {entry!r} is not supported")
        path = directory / entry
        if path.is_dir():
            resources += _accumulate(path, (*stack, directory))
        elif path.is_file():
            if not _inside(path, directory):
                raise KustomizeError(f"{file}: file {entry!r} is outside {directory}")
            resources += _load_documents(path)
        else:
            raise KustomizeError(f"{file}: resource {entry!r} does not exist")
    resources += generate_configmaps(k, directory)
    seen: dict[tuple[str, str, str, str], str] = {}
    for obj in resources:
        rid = resource_id(obj)
        if rid in seen:
            raise KustomizeError(f"{file}: {_describe(obj)} is defined twice")
        seen[rid] = _describe(obj)
    resources = apply_patches(resources, k.get("patches") or [], directory)
    if k.get("namespace"):
        set_namespace(resources, str(k["namespace"]))
    add_labels(resources, k.get("labels") or [], directory)
    return resources


def _order_key(obj: dict[str, Any]) -> tuple[int, str, str, str]:
    group, version = split_api_version(str(obj.get("apiVersion", "")))
    kind = str(obj.get("kind", ""))
    if kind in ORDER_FIRST:
        rank = ORDER_FIRST.index(kind) - len(ORDER_FIRST)
    elif kind in ORDER_LAST:
        rank = 1 + ORDER_LAST.index(kind)
    else:
        rank = 0
    gvk = f"{group or '~G'}_{version or '~V'}_{kind or '~K'}"
    _, _, namespace, name = resource_id(obj)
    return rank, gvk, namespace, name


def build(directory: str | Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` would print, in kustomize's legacy order."""
    resources = _accumulate(Path(directory), ())
    return sorted(resources, key=_order_key)


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump(objects: Iterable[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream."""
    return yaml.dump_all(
        list(objects), Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="render a kustomization directory to YAML")
    build_cmd.add_argument("directory")
    build_cmd.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        text = dump(build(args.directory))
    except KustomizeError as e:
        print(f"kustomize_lite: error: {e}", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
