"""k8s/: every overlay renders and validates, and the deployment keeps its promises.

Rendered with tools/kustomize_lite.py (no kustomize binary needed; compared with
`kubectl kustomize` when kubectl is installed). Built-in objects are validated against the
Kubernetes 1.37 OpenAPI schemas in strict mode, custom resources against their CRD schemas
(tests/schemas). Then: RBAC is exactly what the launchers need, no Secret carries a real
value, every container runs as non-root without privilege escalation, the example PyTorchJob
agrees with what dkd_core.launch renders, and the Grafana dashboard only queries metrics that
dkd_core.metrics exports (or DCGM's).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from dkd_core.launch.cluster import BASE_LABELS, ClusterSpec
from dkd_core.launch.job import StepJob, job_name
from dkd_core.launch.pytorchjob import render_pytorchjob
from tools import kustomize_lite
from tools.kustomize_lite import KustomizeError

REPO = Path(__file__).parents[2]
K8S = REPO / "k8s"
SCHEMAS = REPO / "tests" / "schemas"
KUBERNETES_VERSION = "1.37.0"
OVERLAYS = {"minio": "dkd", "kfp-object-store": "kubeflow", "kind": "kubeflow"}
EXAMPLE = K8S / "base" / "pytorchjob-example.yaml"
DASHBOARD = K8S / "monitoring" / "dashboard.json"
SECRET_TEMPLATE = K8S / "base" / "minio" / "credentials-secret.template.yaml"
PLACEHOLDER = "CHANGE_ME"

CRD_SCHEMAS = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-v1.schema.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-v1.subset.schema.json",
}
#: The Role's rules, as (apiGroup, resource, verb): exactly what dkd_core.launch calls.
ROLE_RULES = {
    *(
        (g, r, v)
        for g, r in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs"))
        for v in ("create", "get", "list", "watch", "delete")
    ),
    *(("", "pods", v) for v in ("get", "list", "watch")),
    ("", "pods/log", "get"),
}
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


# -- rendering -----------------------------------------------------------------------


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize_lite.build(K8S / "overlays" / overlay))


def all_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for overlay in OVERLAYS:
        for obj in rendered(overlay):
            yield overlay, obj


def example() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    return doc


@cache
def crd_validator(schema_file: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / schema_file).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)  # no format checker: OpenAPI formats


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def test_every_overlay_is_tested() -> None:
    found = {d.name for d in (K8S / "overlays").iterdir() if (d / "kustomization.yaml").is_file()}
    assert found == set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_sets_its_namespace(overlay: str) -> None:
    namespace = OVERLAYS[overlay]
    for obj in rendered(overlay):
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == namespace
        else:
            assert obj["metadata"].get("namespace") == namespace, name_of(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_resources_pass_kubernetes_schemas(overlay: str) -> None:
    builtin = [o for o in rendered(overlay) if (o["apiVersion"], o["kind"]) not in CRD_SCHEMAS]
    assert builtin
    for obj in builtin:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_pass_their_crd_schemas(overlay: str) -> None:
    custom = [o for o in rendered(overlay) if (o["apiVersion"], o["kind"]) in CRD_SCHEMAS]
    assert {o["kind"] for o in custom} == {"PodMonitor"}
    for obj in custom:
        validator = crd_validator(CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])])
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
        assert errors == [], name_of(obj)


def test_podmonitor_subset_schema_rejects_mistakes() -> None:
    validator = crd_validator("podmonitor-v1.subset.schema.json")
    (good,) = [o for o in rendered("minio") if o["kind"] == "PodMonitor"]
    assert validator.is_valid(good)
    for path, value in (
        (("spec", "podMetricsEndpoints", 0, "intervall"), "15s"),  # misspelt field
        (("spec", "podMetricsEndpoints", 0, "interval"), "15 seconds"),
        (("spec", "podMetricsEndpoints", 0, "scheme"), "ftp"),
        (("spec", "selector", "matchLabel"), {}),
    ):
        bad = json.loads(json.dumps(good))
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert not validator.is_valid(bad), path
    no_selector = json.loads(json.dumps(good))
    del no_selector["spec"]["selector"]
    assert not validator.is_valid(no_selector)


def test_unknown_kinds_are_not_silently_skipped() -> None:
    for _, obj in all_objects():
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        # SchemaNotFoundError for anything kubernetes_validate does not know.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_lite_renderer_matches_kubectl_kustomize(overlay: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 and "unknown command" in out.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert out.returncode == 0, out.stderr
    reference = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert list(rendered(overlay)) == reference


# -- the pieces of each overlay ------------------------------------------------------------


def kinds(overlay: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for obj in rendered(overlay):
        out.setdefault(obj["kind"], []).append(obj["metadata"]["name"])
    return out


def test_overlay_contents() -> None:
    common = {
        "ServiceAccount": ["dkd-pipeline-runner"],
        "Role": ["dkd-pipeline-runner"],
        "RoleBinding": ["dkd-pipeline-runner"],
        "PodTemplate": ["dkd-train"],
        "PodMonitor": ["dkd-training"],
        "ConfigMap": ["dkd-grafana-dashboard"],
    }
    minio = {
        "PersistentVolumeClaim": ["dkd-minio-data"],
        "Deployment": ["dkd-minio"],
        "Service": ["dkd-minio"],
        "Job": ["dkd-minio-buckets"],
    }
    assert kinds("kfp-object-store") == common
    assert kinds("kind") == {**common, **minio}
    assert kinds("minio") == {**common, **minio, "Namespace": ["dkd"]}


def test_minio_buckets_job_creates_the_buckets_with_a_pinned_mc() -> None:
    for overlay in ("minio", "kind"):
        (job,) = [o for o in rendered(overlay) if o["kind"] == "Job"]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert re.fullmatch(
            r"(quay\.io/)?minio/mc:RELEASE\.\d{4}-\d\d-\d\dT[\d-]+Z", container["image"]
        )
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["BUCKETS"].split() == ["dkd-datasets", "dkd-runs"]
        assert container["envFrom"] == [{"secretRef": {"name": "minio-credentials"}}]
        assert "mc mb --ignore-existing" in container["args"][0]


def test_kind_overlay_is_small_and_cpu_only() -> None:
    objects = {name_of(o): o for o in rendered("kind")}
    spec = objects["PodTemplate/dkd-train"]["template"]["spec"]
    assert "nodeSelector" not in spec and "tolerations" not in spec
    resources = spec["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {})
    assert resources["requests"] == {"cpu": "500m", "memory": "1Gi"}
    minio = objects["Deployment/dkd-minio"]["spec"]["template"]["spec"]["containers"][0]
    assert minio["resources"]["requests"]["memory"] == "256Mi"
    assert minio["readinessProbe"]  # the strategic merge kept the rest of the container
    pvc = objects["PersistentVolumeClaim/dkd-minio-data"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_kfp_object_store_overlay_uses_kfps_secret_and_endpoint() -> None:
    objects = {name_of(o): o for o in rendered("kfp-object-store")}
    (container,) = objects["PodTemplate/dkd-train"]["template"]["spec"]["containers"]
    assert "envFrom" not in container
    env = {e["name"]: e for e in container["env"]}
    assert env["S3_ENDPOINT"]["value"] == "http://minio-service.kubeflow:9000"
    for var, key in (("AWS_ACCESS_KEY_ID", "accesskey"), ("AWS_SECRET_ACCESS_KEY", "secretkey")):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "mlpipeline-minio-artifact", "key": key}


# -- RBAC ------------------------------------------------------------------------------


def rule_triples(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_exactly_the_launchers_needs(overlay: str) -> None:
    objects = rendered(overlay)
    namespace = OVERLAYS[overlay]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert rule_triples(role) == ROLE_RULES
    assert "*" not in json.dumps(role["rules"])
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    subjects = {(s["kind"], s["name"], s.get("namespace")) for s in binding["subjects"]}
    assert ("ServiceAccount", "dkd-pipeline-runner", namespace) in subjects
    # ... and KFP's own account, under which the pipeline steps run.
    assert ("ServiceAccount", "pipeline-runner", "kubeflow") in subjects
    assert all(kind == "ServiceAccount" and ns for kind, _, ns in subjects)


def test_no_cluster_wide_rbac_in_any_manifest() -> None:
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                assert doc.get("kind") not in ("ClusterRole", "ClusterRoleBinding"), path


# -- secrets and credentials -------------------------------------------------------------


def test_no_secret_in_any_overlay_carries_a_value() -> None:
    for overlay, obj in all_objects():
        if obj["kind"] != "Secret":
            continue
        for field in ("data", "stringData"):
            for key, value in (obj.get(field) or {}).items():
                assert PLACEHOLDER in str(value), f"{overlay}: {name_of(obj)} {field}.{key}"


def test_secret_template_has_placeholders_and_covers_every_reference() -> None:
    (template,) = [d for d in yaml.safe_load_all(SECRET_TEMPLATE.read_text()) if d]
    assert template["kind"] == "Secret" and template["metadata"]["name"] == "minio-credentials"
    assert "data" not in template
    values = template["stringData"]
    assert all(PLACEHOLDER in v for v in values.values())
    assert "kubectl" in SECRET_TEMPLATE.read_text()  # says how to create the real one
    # Every key read from minio-credentials exists in the template, and the whole Secret
    # gives dkd_core.storage what it needs (endpoint and both keys).
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT"} <= set(values)
    for _, obj in all_objects():
        for ref in find_key(obj, "secretKeyRef"):
            if ref["name"] == "minio-credentials":
                assert ref["key"] in values
    # The template is not rendered: applying an overlay never overwrites the real Secret.
    assert not [o for _, o in all_objects() if o["kind"] == "Secret"]


def find_key(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from find_key(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from find_key(item, key)


SECRET_NAME = re.compile(r"(?i)(password|passwd|secret_?key|secret_access_key|access_?key|token)")
KEY_PATTERNS = (
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)minioadmin"),  # MinIO's default root credentials
    re.compile(r"(?i)\b(ghp|gho|github_pat|glpat|xox[bap])[-_][A-Za-z0-9_]{10,}"),
)
RANDOM_TOKEN = re.compile(r"(?<![A-Za-z0-9+/:])[A-Za-z0-9+/]{32,}={0,2}(?![A-Za-z0-9+/])")


def deployment_files() -> list[Path]:
    files = [p for p in K8S.rglob("*") if p.is_file()]
    files += [p for p in (REPO / "docker").rglob("*") if p.is_file()]
    files += [REPO / "deploy.mk", *(REPO / "tools").glob("*.py")]
    return files


ASSIGNMENT = re.compile(r"(?=(?<![\w-])([A-Za-z_][\w-]*)[ \t]*[=:][ \t]*([^\s#,)]*))")


def secret_assignments(text: str) -> list[str]:
    """`NAME=value` / `NAME: value` where NAME says secret and value is not a placeholder.

    Allowed values: empty (a mapping follows, e.g. a secretKeyRef), CHANGE_ME, a reference
    ($VAR, {{ template }}), a command substitution made at run time ("x-$(openssl rand ...)"),
    an upper-case variable name, true/false.
    """
    out = []
    for name, raw in ASSIGNMENT.findall(text):
        value = raw.strip("\"'")
        if not SECRET_NAME.search(name) or not value:
            continue
        if (
            PLACEHOLDER in value
            or value.startswith(("$", "{{"))
            or "$(" in value  # made at run time, e.g. "dkd-$(openssl rand -hex 6)"
            or value in ("true", "false")
            or re.fullmatch(r"[A-Z][A-Z0-9_]*", value)
        ):
            continue
        out.append(f"{name}={value[:4]}...")
    return out


def looks_random(token: str) -> bool:
    """Long, mixed-case, with digits and many distinct characters; paths are split at '/'."""
    if "/" in token:
        return any(looks_random(part) for part in token.split("/") if len(part) >= 20)
    return (
        len(token) >= 20
        and len(set(token)) >= 16
        and bool(re.search(r"[a-z]", token))
        and bool(re.search(r"[A-Z]", token))
        and bool(re.search(r"[0-9]", token))
    )


def test_no_manifest_or_image_file_contains_something_like_a_key() -> None:
    for path in deployment_files():
        text = path.read_text(encoding="utf-8")
        for pattern in KEY_PATTERNS:
            assert not pattern.search(text), f"{path}: matches {pattern.pattern}"
        for match in RANDOM_TOKEN.finditer(text):
            assert not looks_random(match.group()), f"{path}: {match.group()[:8]}... looks random"
        assert secret_assignments(text) == [], path


def test_secret_scan_catches_real_looking_values() -> None:
    assert looks_random("wJalrXUtnFEMIK7MDENG/bPxRfiCYEXAMPLEKEY")
    assert not looks_random("/template/spec/volumes/0/emptyDir/sizeLimit")
    assert not looks_random("a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5")
    assert KEY_PATTERNS[0].search("AKIAIOSFODNN7EXAMPLE")
    assert (
        secret_assignments('--from-literal=AWS_SECRET_ACCESS_KEY="$(openssl rand -hex 24)"') == []
    )
    assert secret_assignments("AWS_SECRET_ACCESS_KEY: CHANGE_ME\nMINIO_ROOT_PASSWORD: $PASS") == []
    assert secret_assignments("automountServiceAccountToken: false") == []
    assert secret_assignments("env: MINIO_SECRET_KEY=minio123") == ["MINIO_SECRET_KEY=mini..."]
    assert secret_assignments("--from-literal=AWS_SECRET_ACCESS_KEY=hunter2 x") != []
    assert secret_assignments("  password: swordfish") != []


# -- pod security ---------------------------------------------------------------------------


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield obj["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "PodTemplate":
        yield obj["template"]["spec"]
    elif kind == "Pod":
        yield obj["spec"]
    elif kind == "PyTorchJob":
        for replica in obj["spec"]["pytorchReplicaSpecs"].values():
            yield replica["template"]["spec"]


def every_pod_spec() -> Iterator[tuple[str, dict[str, Any]]]:
    for overlay, obj in all_objects():
        for spec in pod_specs(obj):
            yield f"{overlay}: {name_of(obj)}", spec
    for spec in pod_specs(example()):
        yield "pytorchjob-example.yaml", spec


def test_every_workload_is_checked() -> None:
    names = {where for where, _ in every_pod_spec()}
    assert "kind: Deployment/dkd-minio" in names
    assert "kind: Job/dkd-minio-buckets" in names
    assert "kfp-object-store: PodTemplate/dkd-train" in names
    assert "pytorchjob-example.yaml" in names


def test_every_container_runs_as_non_root_without_privilege_escalation() -> None:
    for where, spec in every_pod_spec():
        pod = spec.get("securityContext") or {}
        assert pod.get("runAsUser", 1) != 0, where
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            ctx = container.get("securityContext") or {}
            what = f"{where} container {container['name']}"
            assert ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, what
            assert ctx.get("runAsUser", pod.get("runAsUser", 1)) != 0, what
            assert ctx.get("allowPrivilegeEscalation") is False, what
            assert ctx.get("privileged", False) is False, what
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], what
            assert not ctx.get("capabilities", {}).get("add"), what
            seccomp = ctx.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", what
            assert ctx.get("readOnlyRootFilesystem") is True, what
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{what}: a read-only root needs a writable /tmp"


def test_containers_have_valid_resources_and_pinned_images() -> None:
    for where, spec in every_pod_spec():
        for container in spec["containers"]:
            what = f"{where} container {container['name']}"
            image = container["image"]
            name, _, tag = image.split("@")[0].rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, what
            resources = container.get("resources") or {}
            assert resources.get("requests"), what
            assert resources.get("limits", {}).get("memory"), what
            for section in resources.values():
                for value in section.values():
                    assert QUANTITY.match(str(value)), f"{what}: {value!r}"


# -- training pods: PodTemplate, example PyTorchJob and launcher agree ------------------


def podtemplate(overlay: str = "minio") -> dict[str, Any]:
    (obj,) = [o for o in rendered(overlay) if o["kind"] == "PodTemplate"]
    return obj


def is_subset(small: Any, big: Any, path: str = "") -> list[str]:
    """Where `small` is not contained in `big` (lists of named objects match by name)."""
    if isinstance(small, dict):
        if not isinstance(big, dict):
            return [f"{path}: not an object"]
        out = []
        for key, value in small.items():
            if key not in big:
                out.append(f"{path}/{key}: missing")
            else:
                out += is_subset(value, big[key], f"{path}/{key}")
        return out
    if (
        isinstance(small, list)
        and small
        and all(isinstance(i, dict) and "name" in i for i in small)
    ):
        if not isinstance(big, list):
            return [f"{path}: not a list"]
        by_name = {i.get("name"): i for i in big if isinstance(i, dict)}
        out = []
        for item in small:
            if item["name"] not in by_name:
                out.append(f"{path}[{item['name']}]: missing")
            else:
                out += is_subset(item, by_name[item["name"]], f"{path}[{item['name']}]")
        return out
    return [] if small == big else [f"{path}: {small!r} != {big!r}"]


def test_example_pytorchjob_passes_the_crd_schema() -> None:
    doc = example()
    errors = [e.message for e in crd_validator("pytorchjob-v1.schema.json").iter_errors(doc)]
    assert errors == []
    assert set(doc["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}


def test_example_pytorchjob_contains_what_the_launcher_renders() -> None:
    """dkd_core.launch's manifest, with the PodTemplate's settings, is part of the example."""
    settings = podtemplate()["template"]["spec"]
    (container,) = settings["containers"]
    shm = next(v for v in settings["volumes"] if v["name"] == "dshm")
    spec = ClusterSpec(
        namespace="dkd",
        image=container["image"],
        gpus_per_pod=container["resources"]["limits"]["nvidia.com/gpu"],
        cpu_request=container["resources"]["requests"]["cpu"],
        memory_request=container["resources"]["requests"]["memory"],
        memory_limit=container["resources"]["limits"]["memory"],
        shm_size=shm["emptyDir"]["sizeLimit"],
        s3_secret=container["envFrom"][0]["secretRef"]["name"],
        node_selector=settings["nodeSelector"],
        tolerations=settings["tolerations"],
    )
    job = StepJob(
        name=job_name("voc_15-1", 1),
        config_uri="s3://dkd-runs/voc_15-1/config.yaml",
        step=1,
        overrides=("data.root=s3://dkd-datasets/VOC2012", "run.output=s3://dkd-runs/voc_15-1"),
        teacher="s3://dkd-runs/voc_15-1/step_0/checkpoint",
        nproc_per_node=4,
        nodes=2,
    )
    launched = render_pytorchjob(job, spec)
    del launched["metadata"]["namespace"]  # the example is applied with -n
    assert is_subset(launched, example()) == []


def test_example_pytorchjob_carries_the_podtemplate_settings() -> None:
    settings = json.loads(json.dumps(podtemplate()["template"]))
    restart = settings["spec"].pop("restartPolicy")
    replicas = example()["spec"]["pytorchReplicaSpecs"]
    assert is_subset(settings, replicas["Master"]["template"]) == []
    assert all(r["restartPolicy"] == restart == "OnFailure" for r in replicas.values())
    # Only rank 0 (on the Master) serves metrics; otherwise the Worker is the same pod.
    worker_settings = json.loads(json.dumps(settings))
    del worker_settings["spec"]["containers"][0]["ports"]
    assert is_subset(worker_settings, replicas["Worker"]["template"]) == []


# -- monitoring -------------------------------------------------------------------------


def test_podmonitor_scrapes_the_launchers_pods_on_the_metrics_port() -> None:
    from dkd_core.metrics import DEFAULT_PORT

    (monitor,) = [o for o in rendered("minio") if o["kind"] == "PodMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= BASE_LABELS.items()  # the labels dkd_core.launch puts on pods
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    template = podtemplate()["template"]
    assert selector.items() <= template["metadata"]["labels"].items()
    ports = template["spec"]["containers"][0]["ports"]
    assert {"name": "metrics", "containerPort": DEFAULT_PORT, "protocol": "TCP"} in ports
    # MinIO's pods are not scraped as training pods.
    for obj in rendered("minio"):
        if obj["kind"] in ("Deployment", "Job"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert not selector.items() <= labels.items(), name_of(obj)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_configmap_is_the_json_file(overlay: str) -> None:
    (cm,) = [o for o in rendered(overlay) if o["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == "dkd-grafana-dashboard"  # no hash suffix: stable
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"] == {"dkd-training.json": DASHBOARD.read_text(encoding="utf-8")}


PROMQL_WORDS = frozenset(
    {
        # aggregation operators and modifiers, binary keywords, literals
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio", "by", "without", "on",
        "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
        "atan2", "inf", "nan", "start", "end",
    }
)  # fmt: skip
IDENT = re.compile(r"(?<![\w.:$])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or keywords.

    Strings, label matchers `{...}`, ranges `[...]`, Grafana variables ($x, ${x}) and the
    label lists of by/without/on/ignoring/group_left/group_right are removed first; what
    stays and is not followed by `(` nor a PromQL keyword is a metric name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", "{}", text)
    text = re.sub(r"\[[^\[\]]*\]", "[]", text)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "0", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", r"\1", text)
    names = set()
    for match in IDENT.finditer(text):
        word = match.group()
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):  # durations never reach here, but be safe
            continue
        names.add(word)
    return names


def test_promql_metric_name_parser() -> None:
    expr = (
        "histogram_quantile(0.9, sum by (le, run) (rate(dkd_step_duration_seconds_bucket"
        '{run=~"$run", term="sum"}[$__rate_interval]))) / on (run) group_left(task) '
        "sum(dkd_loss) without (term) + max_over_time(dkd_eval_miou[5m] offset 1h) > bool 0"
        " or DCGM_FI_DEV_GPU_UTIL"
    )
    assert metric_names(expr) == {
        "dkd_step_duration_seconds_bucket",
        "dkd_loss",
        "dkd_eval_miou",
        "DCGM_FI_DEV_GPU_UTIL",
    }
    assert metric_names('rate(foo{le="0.5"}[1m]) * 2e3') == {"foo"}


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def allowed_metric(name: str) -> bool:
    from dkd_core.metrics import METRIC_NAMES

    if name.startswith("DCGM_FI_"):
        return True
    for suffix in ("", "_bucket", "_sum", "_count", "_created"):
        if name.endswith(suffix) and name[: len(name) - len(suffix)] in METRIC_NAMES:
            return True
    return name.endswith("_created") and name[: -len("_created")] + "_total" in METRIC_NAMES


def test_dashboard_queries_only_exported_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    used: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        unknown = sorted(n for n in names if not allowed_metric(n))
        assert unknown == [], f"{title}: {unknown} are not in dkd_core.metrics.METRIC_NAMES"
        used |= names
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r'label_values\(\{__name__=~"([\w|]+)"[^{}]*\},\s*(\w+)\)', query)
            assert match and all(allowed_metric(n) for n in match.group(1).split("|")), query
    from dkd_core.metrics import METRIC_NAMES

    shown = {n for n in METRIC_NAMES if any(u.startswith(n) for u in used)}
    assert shown == set(METRIC_NAMES), f"not on the dashboard: {set(METRIC_NAMES) - shown}"


def test_dashboard_has_the_promised_panels() -> None:
    board = dashboard()
    assert board["uid"] == "dkd-training"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "run", "run_id", "task", "ciss_step"} <= variables
    exprs = "\n".join(e for _, e in dashboard_exprs())
    for needle in (
        "by (namespace, run, run_id, ciss_step, term) (dkd_loss",
        "rate(dkd_samples_total",
        "histogram_quantile(0.99, sum by (le, namespace, run, run_id, ciss_step) "
        "(rate(dkd_iteration_duration_seconds_bucket",
        "by (namespace, run, run_id, ciss_step, group) (dkd_learning_rate",
        "dkd_checkpoint_save_seconds_bucket",
        "dkd_dataloader_wait_seconds_bucket",
        "dkd_compute_seconds_bucket",
        "last_over_time(dkd_eval_miou_ratio",
        "DCGM_FI_DEV_GPU_UTIL{exported_namespace=",
        'DCGM_FI_DEV_FB_USED{exported_pod="", namespace=',
    ):
        assert needle in exprs, needle
    units = {
        p["title"]: p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        for p in board["panels"]
    }
    assert units["GPU framebuffer used (DCGM)"] == "mbytes"  # DCGM_FI_DEV_FB_USED is in MiB
    assert units["Test mIoU after each CISS step"] == "percentunit"  # 0-1 ratios
    selectors = ('namespace=~"$namespace"', 'run=~"$run"', 'run_id=~"$run_id"')
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if "DCGM_FI_" in expr:  # GPUs are selected by pod: namespace and $gpu_pods
                assert 'namespace=~"$namespace"' in expr and "$gpu_pods" in expr, panel["title"]
            else:
                assert all(s in expr for s in selectors), panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


# -- kind and install.sh -------------------------------------------------------------------


def test_kind_cluster_config_pins_its_node_image() -> None:
    config = yaml.safe_load((K8S / "kind" / "cluster.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    for node in config["nodes"]:
        assert re.fullmatch(r"kindest/node:v1\.37\.\d+@sha256:[0-9a-f]{64}", node["image"])


def test_install_script_is_strict_and_pins_every_version() -> None:
    script = K8S / "kind" / "install.sh"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    for tool in ("docker", "kind", "kubectl"):
        assert re.search(rf"^need {tool} ", text, re.M), tool
    assert "docker info" in text
    versions = dict(re.findall(r'^(\w+_VERSION)="\$\{\w+:-([^}]+)\}"', text, re.M))
    assert versions == {
        "KFP_VERSION": "2.17.0",
        "TRAINING_OPERATOR_VERSION": "v1.9.4",
        "TRAINER_VERSION": "v2.3.0",
        "PROMETHEUS_OPERATOR_VERSION": "v0.91.0",
    }
    for ref in re.findall(r"\?ref=([^\"\s]+)", text):
        assert ref.startswith("${") and ref.endswith("_VERSION}"), ref
    assert "ref=master" not in text and ":latest" not in text
    assert "env/platform-agnostic" in text and "overlays/standalone" in text
    assert "k8s/overlays/kind" in text
    assert "--for=condition=Available" in text


# -- the renderer itself ------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


CM = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: cm
data:
  a: "1"
"""


def test_lite_rejects_unsupported_kustomization_keys(tmp_path: Path) -> None:
    write_tree(tmp_path, {"kustomization.yaml": "resources: [cm.yaml]\ncommonLabels: {a: b}\n"})
    (tmp_path / "cm.yaml").write_text(CM)
    with pytest.raises(KustomizeError, match=r"unsupported kustomization keys.*commonLabels"):
        kustomize_lite.build(tmp_path)


def test_lite_requires_stable_generator_names(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {"kustomization.yaml": "configMapGenerator:\n- name: x\n  literals: [a=b]\n"},
    )
    with pytest.raises(KustomizeError, match="disableNameSuffixHash"):
        kustomize_lite.build(tmp_path)


def test_lite_refuses_files_outside_the_kustomization(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text(CM)
    write_tree(tmp_path, {"sub/kustomization.yaml": "resources: [../cm.yaml]\n"})
    with pytest.raises(KustomizeError, match="outside"):
        kustomize_lite.build(tmp_path / "sub")


def test_lite_patches_namespace_and_labels(tmp_path: Path) -> None:
    deployment = """
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
    spec:
      template:
        spec:
          containers:
            - name: a
              image: a:1
              env: [{name: X, value: "1"}]
            - name: b
              image: b:1
    """
    write_tree(
        tmp_path,
        {
            "base/kustomization.yaml": "resources: [deployment.yaml, cm.yaml]\n",
            "base/deployment.yaml": deployment,
            "base/cm.yaml": CM,
            "overlay/kustomization.yaml": """
            namespace: ns
            labels:
              - pairs: {team: dkd}
            resources: [../base]
            patches:
              - patch: |-
                  apiVersion: apps/v1
                  kind: Deployment
                  metadata:
                    name: web
                  spec:
                    template:
                      spec:
                        containers:
                          - name: a
                            image: a:2
                            env: [{name: Y, value: "2"}]
              - target: {kind: ConfigMap, name: c.}
                patch: |-
                  - op: replace
                    path: /data/a
                    value: "2"
                  - op: add
                    path: /data/b~1c
                    value: "3"
            """,
        },
    )
    objects = {o["kind"]: o for o in kustomize_lite.build(tmp_path / "overlay")}
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert containers[0] == {  # kustomize's order: the patch's items, then the others
        "name": "a",
        "image": "a:2",
        "env": [{"name": "Y", "value": "2"}, {"name": "X", "value": "1"}],
    }
    assert containers[1] == {"name": "b", "image": "b:1"}
    assert objects["ConfigMap"]["data"] == {"a": "2", "b/c": "3"}
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == "ns"
        assert obj["metadata"]["labels"] == {"team": "dkd"}
    assert list(objects) == ["ConfigMap", "Deployment"]  # kustomize's legacy order
    if shutil.which("kubectl"):  # the same objects as kustomize itself
        out = subprocess.run(
            ["kubectl", "kustomize", str(tmp_path / "overlay")],
            capture_output=True,
            text=True,
            check=True,
        )
        reference = [d for d in yaml.safe_load_all(out.stdout) if d]
        assert kustomize_lite.build(tmp_path / "overlay") == reference


def test_lite_json6902_errors_name_the_problem(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "cm.yaml": CM,
            "kustomization.yaml": """
            resources: [cm.yaml]
            patches:
              - target: {kind: ConfigMap}
                patch: |-
                  - op: move
                    from: /data/a
                    path: /data/b
            """,
        },
    )
    with pytest.raises(KustomizeError, match="op 'move' is not supported"):
        kustomize_lite.build(tmp_path)
