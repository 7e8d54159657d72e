"""k8s/: every kustomization renders and validates, and the deployment keeps its promises.

Rendered with `kubectl kustomize` (tools/lint_manifests.render; skipped with a reason where
kubectl is missing, CI has it). Built-in objects are validated against the Kubernetes 1.37
OpenAPI schemas in strict mode, custom resources against the real CRD schemas at the versions
we pin (tests/schemas), unknown fields rejected. Then: RBAC is exactly what the launchers call,
no Secret carries a real value, every container runs as non-root without privilege escalation,
the files generated from dkd_core.launch (PodTemplate, example jobs) are up to date, our
ClusterTrainingRuntime gives TrainJob pods what the PodMonitor scrapes, and the Grafana
dashboard only queries metrics that dkd_core.metrics exports (or DCGM's).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dkd_core.launch.cluster import BASE_LABELS, DEFAULT_RUNTIME, KFP_RUN_ID_LABEL, ClusterSpec
from tools import gen_manifests, lint_manifests
from tools.lint_manifests import CRD_SCHEMAS

REPO = Path(__file__).parents[2]
K8S = REPO / "k8s"
KUBERNETES_VERSION = lint_manifests.KUBERNETES_VERSION
OVERLAYS = {
    "minio": "dkd",
    "kfp-object-store": "kubeflow",
    "kfp-object-store-monitoring": "kubeflow",
    "kind": "kubeflow",
}
#: Overlays that grant the launchers' RBAC (kfp-object-store-monitoring only monitors).
WITH_RBAC = ("minio", "kfp-object-store", "kind")
#: Overlays with the PodMonitor and dashboard (they need the Prometheus operator's CRDs).
MONITORED = ("minio", "kfp-object-store-monitoring", "kind")
RUNTIME_DIR = K8S / "base" / "trainer-runtime"
EXAMPLE = K8S / "base" / "pytorchjob-example.yaml"
TRAINJOB_EXAMPLE = K8S / "base" / "trainjob-example.yaml"
DASHBOARD = K8S / "monitoring" / "dashboard.json"
SECRET_TEMPLATE = K8S / "base" / "minio" / "credentials-secret.template.yaml"
PLACEHOLDER = "CHANGE_ME"

#: The Role's rules, as (apiGroup, resource, verb): exactly what dkd_core.launch calls
#: (test_role_grants_exactly_the_calls_the_launchers_make records them).
ROLE_RULES = {
    *(
        (g, r, v)
        for g, r in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs"))
        for v in ("create", "get", "delete")
    ),
    ("", "pods", "list"),
    ("", "pods/log", "get"),
    ("kueue.x-k8s.io", "workloads", "list"),
}
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


# -- rendering -----------------------------------------------------------------------


@cache
def _render(directory: Path) -> tuple[dict[str, Any], ...]:
    return tuple(lint_manifests.render(directory))


def render(directory: Path) -> tuple[dict[str, Any], ...]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: manifests are rendered with `kubectl kustomize`")
    return _render(directory)


def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return render(K8S / "overlays" / overlay)


def all_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for overlay in OVERLAYS:
        for obj in rendered(overlay):
            yield overlay, obj


def load_one(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


def example() -> dict[str, Any]:
    return load_one(EXAMPLE)


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def crd_errors(obj: dict[str, Any]) -> list[str]:
    return lint_manifests.validate_custom(obj)


def test_every_overlay_is_tested() -> None:
    found = {d.name for d in (K8S / "overlays").iterdir() if (d / "kustomization.yaml").is_file()}
    assert found == set(OVERLAYS)
    assert RUNTIME_DIR in lint_manifests.kustomizations()


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
    # only the monitoring overlays need a CRD beyond Kubernetes (the Prometheus operator's)
    assert {o["kind"] for o in custom} == ({"PodMonitor"} if overlay in MONITORED else set())
    for obj in custom:
        assert crd_errors(obj) == [], name_of(obj)


def test_the_real_podmonitor_crd_rejects_mistakes() -> None:
    """The schema is prometheus-operator v0.91.0's own, closed against unknown fields."""
    (good,) = [o for o in rendered("minio") if o["kind"] == "PodMonitor"]
    assert crd_errors(good) == []
    for path, value in (
        (("spec", "podMetricsEndpoints", 0, "intervall"), "15s"),  # misspelt field
        (("spec", "podMetricsEndpoints", 0, "interval"), "15 seconds"),
        (("spec", "podMetricsEndpoints", 0, "scheme"), "ftp"),
        (("spec", "selector", "matchLabel"), {}),
        (("spec", "podTargetLabel"), []),
    ):
        bad = json.loads(json.dumps(good))
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert crd_errors(bad), path
    no_selector = json.loads(json.dumps(good))
    del no_selector["spec"]["selector"]
    assert crd_errors(no_selector)


def test_strict_schema_closes_objects_but_not_maps() -> None:
    schema = {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"a": {"type": "string"}}},
            "spec": {"type": "object", "properties": {"a": {"type": "string"}}},
        },
    }  # fmt: skip
    strict = lint_manifests.strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["spec"]["additionalProperties"] is False
    assert strict["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in strict["properties"]["free"]
    assert "additionalProperties" not in schema  # the original is left alone


def test_unknown_kinds_are_not_silently_skipped() -> None:
    for _, obj in all_objects():
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        # SchemaNotFoundError for anything kubernetes_validate does not know.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_lint_manifests_passes_and_names_a_missing_kubectl(monkeypatch, capsys) -> None:
    render(RUNTIME_DIR)  # skips without kubectl
    assert lint_manifests.main([]) == 0
    monkeypatch.setattr(lint_manifests.shutil, "which", lambda name: None)
    with pytest.raises(lint_manifests.ManifestError, match="kubectl not found"):
        lint_manifests.render(RUNTIME_DIR)
    assert not (REPO / "tools" / "kustomize_lite.py").exists()


# -- the pieces of each overlay ------------------------------------------------------------


def kinds(overlay: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for obj in rendered(overlay):
        out.setdefault(obj["kind"], []).append(obj["metadata"]["name"])
    return out


def test_overlay_contents() -> None:
    monitoring = {"PodMonitor": ["dkd-training"], "ConfigMap": ["dkd-grafana-dashboard"]}
    launching = {
        "ServiceAccount": ["dkd-pipeline-runner"],
        "Role": ["dkd-pipeline-runner"],
        "RoleBinding": ["dkd-pipeline-runner"],
        "PodTemplate": ["dkd-train"],
    }
    common = {**launching, **monitoring}
    minio = {
        "PersistentVolumeClaim": ["dkd-minio-data"],
        "Deployment": ["dkd-minio"],
        "Service": ["dkd-minio"],
        "Job": ["dkd-minio-buckets"],
    }
    assert kinds("kfp-object-store") == launching  # applies without the Prometheus operator
    assert kinds("kfp-object-store-monitoring") == monitoring
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
    assert env["S3_ENDPOINT"]["value"] == "http://seaweedfs.kubeflow:9000"
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


@pytest.mark.parametrize("overlay", WITH_RBAC)
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


class RecordingApi:
    """Records (apiGroup, resource, verb) of every call a launcher makes; answers from a script."""

    def __init__(self, calls: set, script: list) -> None:
        self.calls, self.script = calls, list(script)

    def _answer(self, group: str, plural: str, verb: str) -> Any:
        self.calls.add((group, plural, verb))
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            raise item
        return item

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        return self._answer(group, plural, "create")

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        return self._answer(group, plural, "get")

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.calls.add((group, plural, "delete"))

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kw):
        self.calls.add((group, plural, "list"))
        return {"items": []}


class RecordingCore:
    """CoreV1Api stand-in for KubePods: records pod calls, returns one failed pod."""

    def __init__(self, calls: set) -> None:
        self.calls = calls

    def list_namespaced_pod(self, namespace, label_selector, **kw):
        from types import SimpleNamespace as NS

        self.calls.add(("", "pods", "list"))
        term = NS(terminated=NS(exit_code=1), waiting=None)
        cs = NS(name="pytorch", state=term, last_state=None)
        cs_node = NS(name="node", state=term, last_state=None)
        pod = NS(
            metadata=NS(name="p", deletion_timestamp=None),
            status=NS(phase="Failed", container_statuses=[cs, cs_node], conditions=[]),
        )
        return NS(items=[pod])

    def read_namespaced_pod_log(self, name, namespace, **kw):
        self.calls.add(("", "pods/log", "get"))
        return "Traceback ..."


def test_role_grants_exactly_the_calls_the_launchers_make() -> None:
    """Run both launchers through success, failure (log read) and a retry's 409 with the
    real KubePods over recording fakes: the calls made are the Role's rules, no more."""
    from kubernetes.client.exceptions import ApiException

    from dkd_core.errors import DKDError
    from dkd_core.launch import KubePods, PyTorchJobLauncher, StepJob, TrainJobLauncher

    calls: set[tuple[str, str, str]] = set()
    job = StepJob(name="dkd-a", config_uri="c.yaml", step=0)
    spec = ClusterSpec(namespace="dkd", image="img", s3_secret="s", s3_secret_env={"A": "a"})
    labels = spec.all_labels()

    def status(ctype: str) -> dict[str, Any]:
        return {"metadata": {"labels": labels, "uid": "u"}, "status": {"conditions": [
            {"type": ctype, "status": "True"}]}}  # fmt: skip

    for launcher_cls, done in ((PyTorchJobLauncher, "Succeeded"), (TrainJobLauncher, "Complete")):
        for script in (
            [{}, status(done)],
            [{}, status("Failed")],
            [ApiException(status=409), status("Running"), status(done)],
            [{}, status("Suspended"), status(done)],  # queued: its Kueue Workload is read
        ):
            launcher = launcher_cls(
                RecordingApi(calls, script), KubePods(RecordingCore(calls)), sleep=lambda s: None
            )
            with contextlib.suppress(DKDError):  # the Failed script fails, as it should
                launcher.launch(job, spec, 60, log=lambda line: None)
    (role,) = [o for o in rendered("minio") if o["kind"] == "Role"]
    assert calls == ROLE_RULES == rule_triples(role)


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


def test_example_jobs_pass_their_crd_schemas() -> None:
    doc = example()
    assert crd_errors(doc) == []
    assert set(doc["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert crd_errors(load_one(TRAINJOB_EXAMPLE)) == []


def test_generated_manifests_are_what_the_launcher_renders() -> None:
    """podtemplate.yaml and the examples are generated from ClusterSpec: never stale."""
    assert gen_manifests.stale() == [], "run: python tools/gen_manifests.py"
    settings = podtemplate()["template"]
    defaults = ClusterSpec(namespace="x", image="dkd:0.1.0", s3_secret="minio-credentials")
    (container,) = settings["spec"]["containers"]
    assert container["resources"] == defaults.resources()
    assert settings["spec"]["volumes"] == defaults.volumes()
    assert settings["spec"]["tolerations"] == list(defaults.tolerations)
    assert settings["spec"]["automountServiceAccountToken"] is False


def test_a_changed_default_makes_the_podtemplate_stale(monkeypatch) -> None:
    original = gen_manifests.podtemplate_spec()
    assert gen_manifests.PODTEMPLATE not in gen_manifests.stale()
    changed = ClusterSpec(**{**original.__dict__, "memory_limit": "48Gi"})
    monkeypatch.setattr(gen_manifests, "podtemplate_spec", lambda: changed)
    assert gen_manifests.PODTEMPLATE in gen_manifests.stale()
    assert gen_manifests.main(["--check"]) == 1


# -- TrainJob runtime ------------------------------------------------------------------


def runtime() -> dict[str, Any]:
    (obj,) = render(RUNTIME_DIR)
    return obj


def runtime_node(obj: dict[str, Any]) -> dict[str, Any]:
    (rjob,) = obj["spec"]["template"]["spec"]["replicatedJobs"]
    return rjob


def test_our_runtime_passes_the_real_crd_and_trainers_webhook() -> None:
    obj = runtime()
    assert (obj["apiVersion"], obj["kind"]) == (
        "trainer.kubeflow.org/v1alpha1",
        "ClusterTrainingRuntime",
    )
    assert crd_errors(obj) == []
    assert "namespace" not in obj["metadata"]  # cluster-scoped
    assert obj["metadata"]["name"] == DEFAULT_RUNTIME == ClusterSpec("a", "b").trainjob_runtime
    assert obj["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}  # upstream's torch policy
    # Trainer v2.3's runtime webhook (validateReplicatedJobs): a replicated job labelled as
    # the trainer ancestor has 1 replica and a container named `node`.
    rjob = runtime_node(obj)
    assert rjob["name"] == "node" and rjob.get("replicas", 1) == 1
    assert (
        rjob["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"]
        == "trainer"
    )
    assert [c["name"] for c in rjob["template"]["spec"]["template"]["spec"]["containers"]] == [
        "node"
    ]
    bad = json.loads(json.dumps(obj))
    bad["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["templat"] = {}
    assert crd_errors(bad)


def test_trainjob_pods_are_scraped_like_pytorchjob_pods() -> None:
    """The runtime declares the same `metrics` port the PyTorchJob container does, and the
    pods carry the labels the PodMonitor selects."""
    pod = runtime_node(runtime())["template"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["ports"] == [ClusterSpec.metrics_port()]
    (pytorch,) = podtemplate()["template"]["spec"]["containers"]
    assert pytorch["ports"] == container["ports"]
    (monitor,) = [o for o in rendered("minio") if o["kind"] == "PodMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == container["ports"][0]["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # What a TrainJob cannot patch, the runtime sets as the PyTorchJob pods have it.
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    assert container["imagePullPolicy"] == ClusterSpec("a", "b").image_pull_policy


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
    # Metrics carry the pipeline run id label the launcher puts on the pods.
    assert KFP_RUN_ID_LABEL in monitor["spec"]["podTargetLabels"]
    # MinIO's pods are not scraped as training pods.
    for obj in rendered("minio"):
        if obj["kind"] in ("Deployment", "Job"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert not selector.items() <= labels.items(), name_of(obj)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.mark.parametrize("overlay", MONITORED)
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
