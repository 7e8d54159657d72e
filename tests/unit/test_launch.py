"""Launchers: manifests valid against the operators' CRD schemas, the wait loop, local runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

from dkd_core.errors import DKDError
from dkd_core.launch import (
    LAUNCHERS,
    ClusterSpec,
    KubePods,
    PyTorchJobLauncher,
    StepJob,
    TrainJobLauncher,
    job_name,
    label_value,
    launch_step,
    local_command,
    render_job,
    render_pytorchjob,
    render_trainjob,
    run_local,
    validate_name,
)
from dkd_core.launch.watch import failing_pod_log, pick_failing_pod, stuck_reason
from tools.lint_manifests import crd_validator

REPO = Path(__file__).parents[2]
SCHEMAS = REPO / "tests" / "schemas"
# The CRDs' schemas with unknown fields rejected, as the API server does (strict_schema).
PYTORCHJOB_SCHEMA = crd_validator("pytorchjob-v1.schema.json")
TRAINJOB_SCHEMA = crd_validator("trainjob-v1alpha1.schema.json")


def schema_errors(validator: jsonschema.Draft7Validator, manifest: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]


def assert_valid(validator: jsonschema.Draft7Validator, manifest: dict) -> None:
    assert schema_errors(validator, manifest) == []
    # What the API receives is JSON: the manifest must survive the round trip.
    assert json.loads(json.dumps(manifest)) == manifest


def make_job(nodes: int = 1, nproc: int = 1, **kw: Any) -> StepJob:
    return StepJob(
        name=job_name("voc_15-1", 3),
        config_uri="s3://runs/voc_15-1/config.yaml",
        step=3,
        overrides=("optim.lr=0.001", "data.root=s3://data/VOC2012"),
        teacher="s3://runs/voc_15-1/step_2/checkpoint",
        nproc_per_node=nproc,
        nodes=nodes,
        **kw,
    )


def make_spec(gpus: int = 0, **kw: Any) -> ClusterSpec:
    base: dict[str, Any] = {
        "namespace": "dkd",
        "image": "registry.example/dkd:0.1.0",
        "gpus_per_pod": gpus,
        "cpu_request": "4",
        "cpu_limit": "8",
        "memory_request": "16Gi",
        "memory_limit": "32Gi",
        "shm_size": "8Gi",
        "s3_secret": "dkd-s3",
        "s3_secret_env": {"AWS_ACCESS_KEY_ID": "accesskey", "AWS_SECRET_ACCESS_KEY": "secretkey"},
        "env": (("S3_ENDPOINT", "http://minio:9000"),),
        "service_account": "dkd-runner",
        "node_selector": (("nvidia.com/gpu.present", "true"),),
        "tolerations": ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        "active_deadline_seconds": 7200,
        "labels": (("dkd-run", "voc-15-1"),),
    }
    return ClusterSpec(**{**base, **kw})


# -- job names ------------------------------------------------------------------------


def test_job_name_sanitises_run_and_step():
    assert job_name("voc_15-1", 3) == "dkd-voc-15-1-step-3"
    assert job_name("ADE 100/50", 0) == "dkd-ade-100-50-step-0"
    assert job_name("voc_15-1", 3, suffix="Try_2") == "dkd-voc-15-1-step-3-try-2"


def test_job_name_shortens_long_runs_with_a_hash_that_keeps_them_apart():
    a = job_name("benchmark-" + "x" * 80 + "-a", 12)
    b = job_name("benchmark-" + "x" * 80 + "-b", 12)
    assert a != b and len(a) <= 40 and len(b) <= 40
    assert a.startswith("dkd-benchmark-") and "-step-12-" in a
    assert validate_name(a) == a
    long_suffix = job_name("voc", 1, suffix="y" * 100)
    assert len(long_suffix) <= 40 and validate_name(long_suffix)
    assert len(job_name("r" * 100, 1, max_length=63)) == 63


@pytest.mark.parametrize(
    "bad",
    ["", "Dkd-step", "dkd_step", "dkd.step", "1dkd", "dkd-", "-dkd", "a" * 64, "dkd step"],
)
def test_invalid_job_names_are_rejected(bad):
    with pytest.raises(DKDError, match="job name"):
        validate_name(bad)
    with pytest.raises(DKDError, match="job name"):
        StepJob(name=bad, config_uri="c.yaml", step=0)


def test_step_job_validates_its_fields():
    with pytest.raises(DKDError, match="override"):
        StepJob(name="dkd-a", config_uri="c.yaml", step=1, overrides=("--evil",))
    with pytest.raises(DKDError, match="override"):
        StepJob(name="dkd-a", config_uri="c.yaml", step=1, overrides=("noequals",))
    with pytest.raises(DKDError, match=">= 1"):
        StepJob(name="dkd-a", config_uri="c.yaml", step=1, nodes=0)
    with pytest.raises(DKDError, match="step"):
        StepJob(name="dkd-a", config_uri="c.yaml", step=-1)
    with pytest.raises(DKDError, match="config_uri"):
        StepJob(name="dkd-a", config_uri=" ", step=1)
    job = StepJob(name="dkd-a", config_uri="c.yaml", step=1, overrides=["a.b=1"])  # type: ignore[arg-type]
    assert job.overrides == ("a.b=1",)


def test_command_single_node_is_standalone_and_multi_node_relies_on_pet_env():
    one = make_job(nodes=1, nproc=2).command()
    assert one[:7] == ["torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m"]
    assert one[7:] == [
        "dkd_core",
        "train",
        "--config",
        "s3://runs/voc_15-1/config.yaml",
        "--step",
        "3",
        "--teacher",
        "s3://runs/voc_15-1/step_2/checkpoint",
        "optim.lr=0.001",
        "data.root=s3://data/VOC2012",
    ]
    three = make_job(nodes=3, nproc=4).command()
    assert three[:5] == ["torchrun", "--nnodes", "3", "--nproc_per_node", "4"]
    assert "--standalone" not in three
    joined = " ".join(three)
    assert "master" not in joined and "port" not in joined and "rdzv" not in joined
    no_teacher = StepJob(name="dkd-a", config_uri="c.yaml", step=0).command()
    assert "--teacher" not in no_teacher and no_teacher[-4:] == [
        "--config",
        "c.yaml",
        "--step",
        "0",
    ]


def test_cluster_spec_validates_and_normalises():
    spec = make_spec(labels={"team": "seg"}, env={"A": "1"}, node_selector={"pool": "gpu"})
    assert spec.labels == (("team", "seg"),) and spec.env == (("A", "1"),)
    with pytest.raises(DKDError, match="clean_pod_policy"):
        make_spec(clean_pod_policy="Sometimes")
    with pytest.raises(DKDError, match="quantity"):
        make_spec(memory_limit="32 GB")
    with pytest.raises(DKDError, match="namespace"):
        make_spec(namespace="My_NS")
    with pytest.raises(DKDError, match="gpus_per_pod"):
        make_spec(gpus=-1)
    with pytest.raises(DKDError, match="label"):
        make_spec(labels={"team": "not ok!"})
    with pytest.raises(DKDError, match="image_pull_policy"):
        make_spec(image_pull_policy="Sometimes")


# -- PyTorchJob manifests ---------------------------------------------------------------


@pytest.mark.parametrize("gpus", [0, 2])
@pytest.mark.parametrize("nodes", [1, 3])
def test_pytorchjob_manifest_is_valid_and_complete(gpus, nodes):
    job, spec = make_job(nodes=nodes, nproc=max(gpus, 1)), make_spec(gpus)
    m = render_pytorchjob(job, spec)
    assert_valid(PYTORCHJOB_SCHEMA, m)

    assert (m["apiVersion"], m["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert m["metadata"]["name"] == "dkd-voc-15-1-step-3"
    assert m["metadata"]["namespace"] == "dkd"
    assert m["metadata"]["labels"]["dkd-run"] == "voc-15-1"
    s = m["spec"]
    assert s["nprocPerNode"] == str(max(gpus, 1))
    assert s["runPolicy"] == {
        "cleanPodPolicy": "Running",
        "backoffLimit": 3,
        "activeDeadlineSeconds": 7200,
        "ttlSecondsAfterFinished": 3600,
    }
    replicas = s["pytorchReplicaSpecs"]
    if nodes == 1:
        assert set(replicas) == {"Master"}
    else:
        assert set(replicas) == {"Master", "Worker"} and replicas["Worker"]["replicas"] == 2
    assert replicas["Master"]["replicas"] == 1
    for rs in replicas.values():
        assert rs["restartPolicy"] == "OnFailure"
        pod = rs["template"]["spec"]
        assert rs["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dkd"
        [c] = pod["containers"]
        assert c["name"] == "pytorch"
        assert c["image"] == "registry.example/dkd:0.1.0"
        assert c["imagePullPolicy"] == "IfNotPresent"
        assert c["command"] == job.command()
        assert c["command"][:2] == ["torchrun", "--standalone" if nodes == 1 else "--nnodes"]
        res = c["resources"]
        assert res["requests"] == {"cpu": "4", "memory": "16Gi"}
        if gpus:
            assert res["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2}
        else:
            assert "nvidia.com/gpu" not in res["limits"]
        assert c["volumeMounts"] == [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ]
        assert pod["volumes"] == [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "100Gi"}},
        ]
        assert pod["automountServiceAccountToken"] is False
        # Secret keys mapped to the variable names the store reads (KFP's Secret style).
        assert "envFrom" not in c
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
        assert env == {
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
            "S3_ENDPOINT": "http://minio:9000",
            "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "dkd-s3", "key": "accesskey"}},
            "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "dkd-s3", "key": "secretkey"}},
        }
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert rs["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        assert rs["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
        assert pod["serviceAccountName"] == "dkd-runner"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_pytorchjob_takes_a_whole_secret_without_a_key_mapping():
    spec = ClusterSpec(namespace="default", image="dkd:dev", s3_secret="dkd-s3")
    m = render_pytorchjob(StepJob(name="dkd-a", config_uri="c.yaml", step=0), spec)
    [c] = m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert c["envFrom"] == [{"secretRef": {"name": "dkd-s3"}}]


def test_pytorchjob_minimal_spec_omits_unset_fields():
    spec = ClusterSpec.from_params(
        {
            "namespace": "default",
            "image": "dkd:dev",
            "ttl_seconds_after_finished": "",
            "cpu_request": "",
            "memory_request": None,
            "memory_limit": "",
            "tolerations": [],
        }
    )
    m = render_pytorchjob(StepJob(name="dkd-a", config_uri="c.yaml", step=0), spec)
    assert_valid(PYTORCHJOB_SCHEMA, m)
    pod = m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    [c] = pod["containers"]
    assert "envFrom" not in c and c["resources"] == {}
    assert not {"serviceAccountName", "nodeSelector", "tolerations"} & set(pod)
    assert m["spec"]["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3}


def test_schema_check_catches_broken_manifests():
    m = render_pytorchjob(make_job(nodes=3), make_spec())
    m["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "2"
    assert any("replicas" in e for e in schema_errors(PYTORCHJOB_SCHEMA, m))

    m = render_pytorchjob(make_job(), make_spec())
    m["spec"]["nprocPerNode"] = 1  # a string in v1
    assert any("nprocPerNode" in e for e in schema_errors(PYTORCHJOB_SCHEMA, m))

    m = render_pytorchjob(make_job(), make_spec())
    del m["spec"]["pytorchReplicaSpecs"]
    assert schema_errors(PYTORCHJOB_SCHEMA, m)

    m = render_pytorchjob(make_job(), make_spec())
    m["spec"]["nprocPerNodes"] = "1"  # a typo the API server would refuse (or prune)
    assert any("nprocPerNodes" in e for e in schema_errors(PYTORCHJOB_SCHEMA, m))
    m = render_pytorchjob(make_job(), make_spec())
    m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["portz"] = []
    assert any("portz" in e for e in schema_errors(PYTORCHJOB_SCHEMA, m))

    t = render_trainjob(make_job(), make_spec())
    t["spec"]["trainer"]["numProcPerNode"] = "2"  # int32 in release 2.3
    assert any("numProcPerNode" in e for e in schema_errors(TRAINJOB_SCHEMA, t))


def test_render_rejects_jobs_the_pods_cannot_run():
    with pytest.raises(DKDError, match="gpus_per_pod"):
        render_pytorchjob(make_job(nproc=4), make_spec(gpus=2))
    long_name = StepJob(name="d" * 58, config_uri="c.yaml", step=0, nodes=3)
    with pytest.raises(DKDError, match="too long for a PyTorchJob"):
        render_pytorchjob(long_name, make_spec())
    with pytest.raises(DKDError, match="too long for a TrainJob"):
        render_trainjob(long_name, make_spec())


# -- TrainJob manifests -------------------------------------------------------------------


@pytest.mark.parametrize("gpus", [0, 2])
@pytest.mark.parametrize("nodes", [1, 3])
def test_trainjob_manifest_is_valid_and_complete(gpus, nodes):
    job, spec = make_job(nodes=nodes, nproc=max(gpus, 1)), make_spec(gpus)
    m = render_trainjob(job, spec)
    assert_valid(TRAINJOB_SCHEMA, m)

    assert (m["apiVersion"], m["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert m["metadata"]["labels"]["dkd-run"] == "voc-15-1"
    s = m["spec"]
    assert s["runtimeRef"] == {
        "name": "dkd-torch-distributed",
        "kind": "ClusterTrainingRuntime",
        "apiGroup": "trainer.kubeflow.org",
    }
    assert s["activeDeadlineSeconds"] == 7200
    t = s["trainer"]
    assert t["image"] == "registry.example/dkd:0.1.0"
    assert t["command"] == job.command()
    assert t["numNodes"] == nodes and t["numProcPerNode"] == max(gpus, 1)
    limits = t["resourcesPerNode"]["limits"]
    assert limits.get("nvidia.com/gpu") == (gpus or None)
    assert t["resourcesPerNode"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    env = {e["name"]: e for e in t["env"]}
    assert env["PYTHONUNBUFFERED"]["value"] == "1"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "dkd-s3", "key": "accesskey"}
    }
    [patch] = s["runtimePatches"]
    [rjob] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "100Gi"}},
    ]
    [c] = pod["containers"]
    assert c["name"] == "node"
    assert c["volumeMounts"] == [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["serviceAccountName"] == "dkd-runner"
    assert pod["tolerations"][0]["operator"] == "Exists"


def test_trainjob_needs_secret_keys_for_s3_and_takes_a_runtime():
    with pytest.raises(DKDError, match="s3_secret_env"):
        render_trainjob(make_job(), make_spec(s3_secret_env=()))
    m = render_trainjob(make_job(), make_spec(s3_secret=None), runtime="dkd-torch")
    assert m["spec"]["runtimeRef"]["name"] == "dkd-torch"
    assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in m["spec"]["trainer"]["env"])
    assert (
        TrainJobLauncher(runtime="dkd-torch").render(make_job(), make_spec())["spec"]["runtimeRef"][
            "name"
        ]
        == "dkd-torch"
    )


def test_rendering_needs_no_kubernetes_package():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["kubernetes"] = None  # any import of it now fails
        from dkd_core.launch import ClusterSpec, StepJob, render_pytorchjob, render_trainjob
        job = StepJob(name="dkd-a", config_uri="c.yaml", step=0)
        spec = ClusterSpec(namespace="ns", image="img", s3_secret="s", s3_secret_env={"K": "k"})
        render_pytorchjob(job, spec)
        render_trainjob(job, spec)
        assert not any(m.startswith("kubernetes") for m in sys.modules if sys.modules[m])
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# -- the wait loop ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def elapsed(self) -> float:
        return self.now - 1000.0


def cond(ctype: str, status: str = "True", message: str = "") -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": f"Job{ctype}", "message": message}


class FakeApi:
    """CustomObjectsApi stand-in: replays scripted statuses (or raises scripted errors)."""

    def __init__(
        self, script: list, create_errors: list | None = None, delete_error=None, labels=None
    ):
        self.script = script
        self.create_errors = list(create_errors or [])
        self.delete_error = delete_error
        # Labels of the job the API returns (that of an earlier attempt, after a 409).
        self.labels = make_spec().all_labels() if labels is None else labels
        self.created: list[tuple] = []
        self.deleted: list[tuple] = []
        self.gets = 0
        # Kueue Workloads the API lists (the last one repeats), or an error to raise.
        self.workloads: list = [[]]
        self.listed: list[tuple] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        if self.create_errors:
            raise self.create_errors.pop(0)
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        item = self.script[min(self.gets, len(self.script) - 1)]
        self.gets += 1
        if isinstance(item, BaseException):
            raise item
        meta = {"name": name, "labels": self.labels, "uid": "uid-1"}
        if isinstance(item, dict):  # a whole object: {"spec": ..., "status": ...}
            return {"metadata": meta, **item}
        return {"metadata": meta, "status": {"conditions": item}}

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kw):
        self.listed.append((group, version, plural, kw))
        item = self.workloads[min(len(self.listed) - 1, len(self.workloads) - 1)]
        if isinstance(item, BaseException):
            raise item
        return {"items": item}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.deleted.append((group, version, namespace, plural, name))
        self.delete_kw = kw
        if self.delete_error is not None:
            raise self.delete_error


def fake_pod(
    name: str,
    phase: str = "Running",
    exit_code: int | None = None,
    last_exit: int | None = None,
    container: str = "pytorch",
    waiting: tuple[str, str] | None = None,
    unschedulable: str | None = None,
) -> SimpleNamespace:
    """A V1Pod look-alike: the attributes the launcher reads."""
    term = SimpleNamespace(exit_code=exit_code) if exit_code is not None else None
    last = SimpleNamespace(exit_code=last_exit) if last_exit is not None else None
    wait = SimpleNamespace(reason=waiting[0], message=waiting[1]) if waiting else None
    cs = SimpleNamespace(
        name=container,
        state=SimpleNamespace(terminated=term, waiting=wait),
        last_state=SimpleNamespace(terminated=last),
    )
    conditions = []
    if unschedulable is not None:
        conditions.append(
            SimpleNamespace(
                type="PodScheduled", status="False", reason="Unschedulable", message=unschedulable
            )
        )
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, deletion_timestamp=None),
        status=SimpleNamespace(
            phase=phase, container_statuses=[cs], init_container_statuses=[], conditions=conditions
        ),
    )


class FakePods:
    """PodsAPI stand-in: replays scripted pod lists (the last one repeats), serves one log."""

    def __init__(self, script: list | None = None, text: str | None = None):
        self.script = script or [[fake_pod("p-0")]]
        self.text = text or "epoch 3 loss 0.52\nRuntimeError: CUDA out of memory"
        self.lists: list[tuple[str, str]] = []
        self.reads: list[tuple] = []

    def list_pods(self, namespace: str, selector: str):
        item = self.script[min(len(self.lists), len(self.script) - 1)]
        self.lists.append((namespace, selector))
        if isinstance(item, BaseException):
            raise item
        return item

    def read_log(self, namespace, pod, container, tail_lines, previous):
        self.reads.append((namespace, pod, container, tail_lines, previous))
        return self.text


KINDS = [
    pytest.param(PyTorchJobLauncher, "Succeeded", id="pytorchjob"),
    pytest.param(TrainJobLauncher, "Complete", id="trainjob"),
]


def run_launch(
    launcher_cls, script, *, timeout=3600.0, keep=False, pods=None, spec=None, queue=None,
    workloads=None, **api_kw,
):  # fmt: skip
    api, pods, clock, lines = FakeApi(script, **api_kw), pods or FakePods(), FakeClock(), []
    if workloads is not None:
        api.workloads = workloads
    launcher = launcher_cls(api, pods, clock=clock, sleep=clock.sleep)
    error = None
    try:
        launcher.launch(
            make_job(), spec or make_spec(), timeout, poll_seconds=10, keep=keep,
            log=lines.append, queue_timeout_seconds=queue,
        )  # fmt: skip
    except DKDError as e:
        error = e
    return SimpleNamespace(api=api, pods=pods, clock=clock, lines=lines, error=error)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_created_running_done_returns_and_deletes(launcher_cls, done):
    r = run_launch(
        launcher_cls,
        [
            [],
            [cond("Created")],
            [cond("Created"), cond("Running")],
            [cond("Created"), cond("Running", "False"), cond(done)],
        ],
    )
    assert r.error is None
    kind = launcher_cls.kind
    [(group, version, ns, plural, body)] = r.api.created
    assert (group, version, ns, plural) == (kind.group, kind.version, "dkd", kind.plural)
    assert body["kind"] == kind.kind and body["metadata"]["name"] == "dkd-voc-15-1-step-3"
    assert r.api.gets == 4 and r.clock.elapsed == 30
    assert r.api.deleted == [(kind.group, kind.version, "dkd", kind.plural, "dkd-voc-15-1-step-3")]
    assert any("Running=True" in line for line in r.lines)
    assert r.pods.reads == []


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_restarting_then_running_then_done_returns(launcher_cls, done):
    r = run_launch(
        launcher_cls,
        [
            [cond("Created"), cond("Running")],
            [cond("Created"), cond("Running", "False"), cond("Restarting", message="pod killed")],
            [cond("Created"), cond("Restarting", "False"), cond("Running")],
            [cond("Created"), cond("Running", "False"), cond(done)],
        ],
    )
    assert r.error is None and r.api.gets == 4 and len(r.api.deleted) == 1
    assert any("Restarting" in line and "pod killed" in line for line in r.lines)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_failed_raises_with_message_and_pod_log_and_deletes(launcher_cls, done):
    r = run_launch(
        launcher_cls,
        [
            [cond("Created"), cond("Running")],
            [cond("Created"), cond("Running", "False"), cond("Failed", message="Master exited 1")],
        ],
    )
    assert isinstance(r.error, DKDError)
    text = str(r.error)
    assert "failed" in text and "Master exited 1" in text
    assert "epoch 3 loss 0.52" in text and "CUDA out of memory" in text
    kind = launcher_cls.kind
    assert r.pods.lists[-1] == ("dkd", f"{kind.pod_label}=dkd-voc-15-1-step-3")
    assert r.pods.reads == [("dkd", "p-0", kind.container, 500, False)]
    assert len(r.api.deleted) == 1


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_other_kinds_success_condition_is_not_success(launcher_cls, done):
    # PyTorchJob's "Succeeded" is not a TrainJob's "Complete", and vice versa; a
    # condition with status "False" is no outcome at all.
    other = "Complete" if done == "Succeeded" else "Succeeded"
    r = run_launch(
        launcher_cls,
        [[cond(other)], [cond("Failed", "False"), cond(done, "False")], [cond(done)]],
    )
    assert r.error is None and r.api.gets == 3


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_never_finishing_times_out_after_the_configured_timeout(launcher_cls, done):
    r = run_launch(launcher_cls, [[cond("Created"), cond("Running")]], timeout=125.0)
    assert isinstance(r.error, DKDError)
    text = str(r.error)
    assert "did not finish within the timeout of 125 s" in text
    assert "Running=True" in text and "deleted" in text
    assert r.clock.elapsed == 125.0  # not 600 s, not 24 h: the timeout asked for
    assert max(r.clock.sleeps) == 10 and r.api.gets == 14
    assert len(r.api.deleted) == 1


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_long_timeouts_are_honoured(launcher_cls, done):
    """Finishing after an hour is fine with a day's timeout (no hidden 10-minute cap)."""
    script = [[cond("Running")]] * 360 + [[cond(done)]]
    r = run_launch(launcher_cls, script, timeout=24 * 3600.0)
    assert r.error is None and r.clock.elapsed == 3600


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_transient_api_errors_while_polling_are_retried(launcher_cls, done):
    r = run_launch(
        launcher_cls,
        [
            [cond("Running")],
            ApiException(status=503, reason="Service Unavailable"),
            ApiException(status=429, reason="Too Many Requests"),
            ProtocolError("Connection aborted."),
            [cond(done)],
        ],
    )
    assert r.error is None and r.api.gets == 5
    assert sum("retrying" in line for line in r.lines) == 3


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_permanent_api_errors_while_polling_are_fatal(launcher_cls, done):
    r = run_launch(launcher_cls, [ApiException(status=403, reason="Forbidden")])
    assert isinstance(r.error, DKDError) and "403" in str(r.error)
    assert len(r.api.deleted) == 1
    r = run_launch(launcher_cls, [[cond("Running")], ApiException(status=404, reason="Not Found")])
    assert isinstance(r.error, DKDError) and "disappeared" in str(r.error)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_keep_does_not_delete(launcher_cls, done):
    r = run_launch(launcher_cls, [[cond(done)]], keep=True)
    assert r.error is None and r.api.deleted == []
    r = run_launch(launcher_cls, [[cond("Failed", message="boom")]], keep=True)
    assert isinstance(r.error, DKDError) and r.api.deleted == []
    r = run_launch(launcher_cls, [[cond("Running")]], keep=True, timeout=30)
    assert "kept" in str(r.error) and r.api.deleted == []


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_deleting_a_job_that_is_already_gone_is_fine(launcher_cls, done):
    r = run_launch(launcher_cls, [[cond(done)]], delete_error=ApiException(status=404))
    assert r.error is None
    r = run_launch(launcher_cls, [[cond(done)]], delete_error=ApiException(status=500))
    assert r.error is None and len(r.api.deleted) == 3  # retried, then a warning
    assert any("could not delete" in line for line in r.lines)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_creation_errors(launcher_cls, done):
    r = run_launch(launcher_cls, [[cond(done)]], create_errors=[ApiException(status=404)])
    assert "CRD installed" in str(r.error)
    r = run_launch(launcher_cls, [[cond(done)]], create_errors=[ApiException(status=503)] * 2)
    assert r.error is None and len(r.api.created) == 1 and len(r.api.deleted) == 1
    forbidden = ApiException(status=422, reason="Unprocessable Entity")
    forbidden.body = json.dumps({"message": "spec.foo: Invalid value"})
    r = run_launch(launcher_cls, [[cond(done)]], create_errors=[forbidden])
    assert "spec.foo: Invalid value" in str(r.error) and r.api.gets == 0


def test_launch_rejects_nonsense_timeouts():
    with pytest.raises(DKDError, match="timeout_seconds"):
        PyTorchJobLauncher(FakeApi([])).launch(make_job(), make_spec(), 0)


def test_pick_failing_pod_prefers_the_failed_container():
    def pod(name, phase="Running", exit_code=None, last_exit=None, container="pytorch"):
        term = SimpleNamespace(exit_code=exit_code) if exit_code is not None else None
        last = SimpleNamespace(exit_code=last_exit) if last_exit is not None else None
        cs = SimpleNamespace(
            name=container,
            state=SimpleNamespace(terminated=term),
            last_state=SimpleNamespace(terminated=last),
        )
        return SimpleNamespace(
            metadata=SimpleNamespace(name=name),
            status=SimpleNamespace(phase=phase, container_statuses=[cs]),
        )

    assert pick_failing_pod([], "pytorch") is None
    assert pick_failing_pod([pod("m"), pod("w", last_exit=137)], "pytorch") == ("w", True)
    assert pick_failing_pod([pod("m"), pod("w", exit_code=1)], "pytorch") == ("w", False)
    assert pick_failing_pod([pod("m", last_exit=1), pod("w", "Failed")], "pytorch") == ("w", False)
    assert pick_failing_pod([pod("m"), pod("w")], "pytorch") == ("m", False)


def test_kube_pods_reads_the_failing_pods_log():
    class Core:
        def __init__(self):
            self.read = None

        def list_namespaced_pod(self, namespace, label_selector, **kw):
            assert label_selector == "training.kubeflow.org/job-name=j"
            term = SimpleNamespace(terminated=SimpleNamespace(exit_code=1))
            cs = SimpleNamespace(name="pytorch", state=term, last_state=None)
            failed = SimpleNamespace(
                metadata=SimpleNamespace(name="j-worker-0"),
                status=SimpleNamespace(phase="Running", container_statuses=[cs]),
            )
            return SimpleNamespace(items=[failed])

        def read_namespaced_pod_log(self, name, namespace, **kw):
            self.read = (name, namespace, kw["container"], kw["tail_lines"], kw["previous"])
            return "Traceback ...\nValueError: bad\n"

    core = Core()
    selector = "training.kubeflow.org/job-name=j"
    text = failing_pod_log(KubePods(core), "ns", selector, "pytorch", tail_lines=500)
    assert "ValueError: bad" in text and "j-worker-0" in text and "last 500 lines" in text
    assert core.read == ("j-worker-0", "ns", "pytorch", 500, False)


# -- launch_step ----------------------------------------------------------------------------


def test_launch_step_dispatches_and_rejects_unknown_backends():
    assert set(LAUNCHERS) == {"local", "pytorchjob", "trainjob"}
    with pytest.raises(DKDError, match="local, pytorchjob, trainjob"):
        launch_step("slurm", make_job())
    with pytest.raises(DKDError, match="ClusterSpec"):
        launch_step("pytorchjob", make_job())
    api = FakeApi([[cond("Succeeded")]])
    launch_step("pytorchjob", make_job(), make_spec(), api=api, timeout_seconds=60, log=print)
    assert api.created[0][4]["kind"] == "PyTorchJob" and len(api.deleted) == 1
    api = FakeApi([[cond("Complete")]])
    launch_step("trainjob", make_job(), make_spec(), api=api, runtime="rt", log=print)
    assert api.created[0][4]["spec"]["runtimeRef"]["name"] == "rt"
    lines: list[str] = []
    launch_step("local", make_job(), argv=[sys.executable, "-c", "print('ok')"], log=lines.append)
    assert lines == ["ok"]


# -- local runs -------------------------------------------------------------------------------


def test_local_command_uses_this_interpreter():
    cmd = local_command(make_job(nproc=2))
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:] == make_job(nproc=2).command()[1:]
    with pytest.raises(DKDError, match="one node"):
        local_command(make_job(nodes=2))


def test_run_local_streams_output_and_passes_env(tmp_path):
    lines: list[str] = []
    code = "import os, sys; print('hi'); print('env', os.environ['DKD_T'], file=sys.stderr)"
    run_local(make_job(), env={"DKD_T": "42"}, log=lines.append, argv=[sys.executable, "-c", code])
    assert lines == ["hi", "env 42"]


def test_run_local_streams_lines_as_they_come(tmp_path):
    """The child waits for a file the log callback writes on its first line: only
    streaming (not reading the output at the end) lets it finish in time."""
    flag = tmp_path / "seen"
    code = textwrap.dedent(
        f"""
        import pathlib, sys, time
        print("first")
        deadline = time.monotonic() + 5
        while not pathlib.Path({str(flag)!r}).exists():
            if time.monotonic() > deadline:
                sys.exit("first line was not streamed")
            time.sleep(0.01)
        print("second")
        """
    )
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        flag.touch()

    run_local(make_job(), log=log, argv=[sys.executable, "-c", code], cwd=tmp_path)
    assert lines == ["first", "second"]


def test_run_local_failure_reports_exit_code_and_last_lines():
    code = "import sys\nfor i in range(80): print(f'line {i}')\nsys.exit(3)"
    lines: list[str] = []
    with pytest.raises(DKDError) as info:
        run_local(make_job(), log=lines.append, argv=[sys.executable, "-c", code])
    text = str(info.value)
    assert "exit code 3" in text and "dkd-voc-15-1-step-3" in text
    assert "line 79" in text and "line 30" in text and "line 29\n" not in text
    assert len(lines) == 80
    with pytest.raises(DKDError, match="cannot start"):
        run_local(make_job(), argv=["/nonexistent/binary"])


@pytest.mark.parametrize(
    ("file", "source"),
    [
        ("pytorchjob-v1.schema.json", "kubeflow/trainer v1.9.4 "),
        ("trainjob-v1alpha1.schema.json", "kubeflow/trainer v2.3.0 "),
        ("clustertrainingruntime-v1alpha1.schema.json", "kubeflow/trainer v2.3.0 "),
        ("podmonitor-v1.schema.json", "prometheus-operator/prometheus-operator v0.91.0 "),
    ],
)
def test_schema_files_name_their_source_and_stay_small(file, source):
    path = SCHEMAS / file
    assert path.stat().st_size < 1_500_000
    comment = json.loads(path.read_text())["$comment"]
    assert source in comment and "Apache-2.0" in comment and ".yaml" in comment
    # Every schema there is a real CRD's (no hand-written subsets).
    assert {p.name for p in SCHEMAS.glob("*.json")} == {
        "pytorchjob-v1.schema.json",
        "trainjob-v1alpha1.schema.json",
        "clustertrainingruntime-v1alpha1.schema.json",
        "podmonitor-v1.schema.json",
    }


def test_step_job_passes_pipeline_locations_to_train():
    job = StepJob(
        name="dkd-toy-step-1", config_uri="s3://runs/r/config.yaml", step=1,
        teacher="minio://mlpipeline/a/model", checkpoint_out="minio://mlpipeline/b/model",
        manifest="minio://mlpipeline/c/manifest", overrides=("optim.epochs=2",),
    )  # fmt: skip
    args = job.train_args()
    assert args[:5] == ["train", "--config", "s3://runs/r/config.yaml", "--step", "1"]
    for flag, value in (
        ("--teacher", "minio://mlpipeline/a/model"),
        ("--checkpoint-out", "minio://mlpipeline/b/model"),
        ("--manifest", "minio://mlpipeline/c/manifest"),
    ):
        assert args[args.index(flag) + 1] == value
    assert args[-1] == "optim.epochs=2"
    with pytest.raises(DKDError, match="checkpoint_out"):
        StepJob(name="dkd-x", config_uri="c.yaml", step=0, checkpoint_out=" ")


def test_pytorchjob_exposes_the_metrics_port_for_the_podmonitor():
    m = render_pytorchjob(
        StepJob(name="dkd-a", config_uri="c.yaml", step=0),
        ClusterSpec(namespace="default", image="dkd:dev"),
    )
    [c] = m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert_valid(PYTORCHJOB_SCHEMA, m)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_sigterm_while_waiting_deletes_the_job(launcher_cls, done):
    """A cancelled pipeline run stops the component pod with SIGTERM: the job must go too."""
    import os
    import signal

    class CancelledClock(FakeClock):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    api, clock = FakeApi([[cond("Running")]]), CancelledClock()
    launcher = launcher_cls(api, FakePods(), clock=clock, sleep=clock.sleep)
    with pytest.raises(DKDError, match=r"cancelled \(SIGTERM\)"):
        launcher.launch(make_job(), make_spec(), 3600.0, poll_seconds=10, log=lambda line: None)
    assert len(api.deleted) == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_run_local_terminates_a_step_past_its_timeout():
    job = StepJob(name="dkd-slow", config_uri="c.yaml", step=0)
    slow = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(DKDError, match=r"still running after 1 s; terminated") as info:
        run_local(job, log=lines.append, argv=slow, timeout_seconds=1)
    assert time.monotonic() - started < 30
    assert lines == ["started"] and "started" in str(info.value)


def test_rendering_jobs_does_not_import_torch():
    """Component pods that only create jobs stay light: no torch at import."""
    code = (
        "import sys, dkd_core.launch as l; "
        "l.render_pytorchjob(l.StepJob(name='dkd-a', config_uri='c.yaml', step=0), "
        "l.ClusterSpec(namespace='ns', image='img')); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# -- retries: a job of the same name exists (create answers 409) --------------------------


def conflict() -> ApiException:
    return ApiException(status=409, reason="Conflict")


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_a_retry_adopts_the_running_job_of_an_earlier_attempt(launcher_cls, done):
    r = run_launch(
        launcher_cls,
        [[cond("Running")], [cond("Running")], [cond(done)]],
        create_errors=[conflict()],
    )
    assert r.error is None
    assert r.api.created == []  # nothing new: the earlier attempt's job is waited on
    assert r.api.gets == 3  # one to check it is ours, then the wait loop
    assert any("exists from an earlier attempt: adopted" in line for line in r.lines)
    assert len(r.api.deleted) == 1  # ours now: deleted once done


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_a_job_of_another_run_or_owner_is_not_adopted_nor_deleted(launcher_cls, done):
    spec = make_spec(kfp_run_id="run-b")
    r = run_launch(
        launcher_cls,
        [[cond("Running")]],
        create_errors=[conflict()],
        labels={**make_spec().all_labels(), "dkd-k8s.github.io/kfp-run-id": "run-a"},
        spec=spec,
    )
    assert "belongs to another pipeline run" in str(r.error) and "run-a" in str(r.error)
    assert r.api.deleted == []
    r = run_launch(launcher_cls, [[cond("Running")]], create_errors=[conflict()], labels={})
    assert "not created by dkd_core.launch" in str(r.error) and r.api.deleted == []
    assert "kubectl delete" in str(r.error)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_a_retry_replaces_a_failed_job_of_an_earlier_attempt(launcher_cls, done):
    r = run_launch(
        launcher_cls,
        [
            [cond("Failed", message="OOMKilled")],  # the earlier attempt's job
            [cond("Failed", message="OOMKilled")],  # still there while its pods go
            ApiException(status=404, reason="Not Found"),  # gone
            [cond("Running")],  # the new job
            [cond(done)],
        ],
        create_errors=[conflict()],
    )
    assert r.error is None
    assert len(r.api.created) == 1 and len(r.api.deleted) == 2
    assert any("failed (JobFailed: OOMKilled); deleting it" in line for line in r.lines)


def test_create_that_reached_the_server_is_adopted_after_a_transient_error():
    r = run_launch(
        PyTorchJobLauncher,
        [[cond("Succeeded")]],
        create_errors=[ApiException(status=503), conflict()],
    )
    assert r.error is None and r.api.created == [] and len(r.api.deleted) == 1


def test_create_asks_the_server_to_refuse_unknown_fields():
    class Recording(FakeApi):
        def create_namespaced_custom_object(self, *args, **kw):
            self.create_kw = kw
            return super().create_namespaced_custom_object(*args, **kw)

    api = Recording([[cond("Succeeded")]])
    PyTorchJobLauncher(api, FakePods()).launch(make_job(), make_spec(), 60, log=lambda _: None)
    assert api.create_kw["field_validation"] == "Strict"


# -- stuck pods fail fast -------------------------------------------------------------------


STUCK = [
    pytest.param(
        fake_pod("p-0", "Pending", waiting=("ImagePullBackOff", 'Back-off pulling image "x"')),
        "ImagePullBackOff",
        'Back-off pulling image "x"',
        id="ImagePullBackOff",
    ),
    pytest.param(
        fake_pod("p-0", "Pending", waiting=("ErrImagePull", "manifest unknown")),
        "ErrImagePull",
        "manifest unknown",
        id="ErrImagePull",
    ),
    pytest.param(
        fake_pod(
            "p-0",
            "Pending",
            waiting=("CreateContainerConfigError", 'secret "dkd-s3" not found'),
        ),
        "CreateContainerConfigError",
        'secret "dkd-s3" not found',
        id="CreateContainerConfigError",
    ),
]


@pytest.mark.parametrize(("pod", "reason", "message"), STUCK)
@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_a_stuck_pod_fails_the_step_after_the_grace_period(
    launcher_cls, done, pod, reason, message
):
    r = run_launch(
        launcher_cls,
        [[cond("Created")]],
        pods=FakePods([[pod]]),
        spec=make_spec(stuck_pod_grace_seconds=120),
        timeout=48 * 3600.0,
    )
    text = str(r.error)
    assert f"pod p-0 is stuck in {reason} for 120 s" in text and message in text
    assert "stuck_pod_grace_seconds=120" in text
    assert r.clock.elapsed == 120  # minutes, not the 48 h timeout
    assert len(r.api.deleted) == 1  # and its GPUs are released
    assert stuck_reason(pod) == (reason, f"container pytorch: {message}")


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_a_pod_that_recovers_within_the_grace_period_is_waited_for(launcher_cls, done):
    pulling = fake_pod("p-0", "Pending", waiting=("ErrImagePull", "timeout"))
    r = run_launch(
        launcher_cls,
        [[cond("Created")]] * 20 + [[cond(done)]],
        pods=FakePods([[pulling]] * 5 + [[fake_pod("p-0")]] * 3 + [[pulling]] * 5 + [[]]),
        spec=make_spec(stuck_pod_grace_seconds=60),
    )
    assert r.error is None  # stuck 40 s, recovered, stuck 40 s again: never 60 s in a row
    assert not any("ContainerCreating" in line for line in r.lines)
    assert sum("pod p-0 is ErrImagePull" in line for line in r.lines) == 2


def test_pods_that_are_only_waiting_are_not_stuck():
    assert stuck_reason(fake_pod("p", "Pending", waiting=("ContainerCreating", ""))) is None
    assert stuck_reason(fake_pod("p")) is None
    gone = fake_pod("p", waiting=("ImagePullBackOff", "x"))
    gone.metadata.deletion_timestamp = "2026-01-01T00:00:00Z"
    assert stuck_reason(gone) is None


def test_listing_pods_may_fail_without_failing_the_step():
    r = run_launch(
        PyTorchJobLauncher,
        [[cond("Running")], [cond("Succeeded")]],
        pods=FakePods([ApiException(status=403, reason="Forbidden")]),
    )
    assert r.error is None and any("cannot list its pods" in line for line in r.lines)


# -- delete_after_done, log tail ------------------------------------------------------------


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_delete_after_done_false_keeps_finished_and_failed_jobs(launcher_cls, done):
    spec = make_spec(delete_after_done=False)
    r = run_launch(launcher_cls, [[cond(done)]], spec=spec)
    assert r.error is None and r.api.deleted == []
    assert any("kept for inspection; remove it with kubectl delete" in line for line in r.lines)
    r = run_launch(launcher_cls, [[cond("Failed", message="boom")]], spec=spec)
    assert "boom" in str(r.error) and r.api.deleted == []


def test_a_failure_reports_the_configured_number_of_log_lines():
    pods = FakePods(text="\n".join(f"line {i}" for i in range(700)))
    r = run_launch(
        PyTorchJobLauncher,
        [[cond("Failed", message="exit 1")]],
        pods=pods,
        spec=make_spec(log_tail_lines=650),
    )
    assert pods.reads[0][3] == 650 and "last 650 lines" in str(r.error)
    assert ClusterSpec(namespace="a", image="b").log_tail_lines == 500


# -- labels of the pipeline run ---------------------------------------------------------------


def test_jobs_and_pods_carry_the_pipeline_run_and_pod():
    pod_name = "voc-15-1-pipeline-abcde-system-container-impl-" + "9" * 30
    spec = make_spec(kfp_run_id="6f1d4c2e-7a4b-4e0f-9c7b-1d2e3f4a5b6c", kfp_pod_name=pod_name)
    for m in (render_pytorchjob(make_job(nodes=2), spec), render_trainjob(make_job(), spec)):
        labels = m["metadata"]["labels"]
        assert labels["dkd-k8s.github.io/kfp-run-id"] == "6f1d4c2e-7a4b-4e0f-9c7b-1d2e3f4a5b6c"
        assert len(labels["dkd-k8s.github.io/kfp-pod-name"]) == 63
        assert labels["dkd-k8s.github.io/kfp-pod-name"].startswith("voc-15-1-pipeline-")
        if m["kind"] == "PyTorchJob":
            pods = [r["template"] for r in m["spec"]["pytorchReplicaSpecs"].values()]
        else:
            [patch] = m["spec"]["runtimePatches"]
            [rjob] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
            pods = [rjob["template"]["spec"]["template"]]
        for pod in pods:  # the job's labels, and the pod's own opt-out of Istio's sidecar
            assert pod["metadata"]["labels"] == {**labels, "sidecar.istio.io/inject": "false"}
    assert label_value("a/b:c d") == "a-b-c-d"
    assert label_value("x" * 80) != label_value("x" * 81)


# -- ClusterSpec.from_params and render_job ---------------------------------------------------


def test_from_params_takes_plain_json_values():
    spec = ClusterSpec.from_params(
        {
            "namespace": "team-a",
            "image": "registry.example/dkd:1",
            "gpus_per_pod": "4",
            "cpu_limit": "",
            "memory_limit": "64Gi",
            "node_selector": '{"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}',
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "labels": {"team": "seg"},
            "env": [["NCCL_DEBUG", "INFO"]],
            "s3_secret": "kfp-s3",
            "s3_secret_env": {"AWS_ACCESS_KEY_ID": "accesskey"},
            "delete_after_done": "false",
            "stuck_pod_grace_seconds": 600,
            "kfp_run_id": "run-1",
        }
    )
    assert spec.gpus_per_pod == 4 and spec.cpu_limit is None and spec.delete_after_done is False
    assert spec.node_selector == (("cloud.google.com/gke-accelerator", "nvidia-h100-80gb"),)
    assert spec.tolerations == ({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},)
    assert spec.env == (("NCCL_DEBUG", "INFO"),) and spec.labels == (("team", "seg"),)
    assert spec.stuck_pod_grace_seconds == 600
    assert ClusterSpec.from_params({"namespace": "a", "image": "b"}) == ClusterSpec("a", "b")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"gpus_per_pod": "four"}, "cluster spec parameter gpus_per_pod: expected an integer"),
        ({"delete_after_done": "maybe"}, "delete_after_done: expected true or false"),
        ({"node_selector": "{nope"}, "node_selector: not valid JSON"),
        ({"node_selector": ["a"]}, "node_selector: expected an object"),
        ({"tolerations": {"key": "x"}}, "tolerations: expected a list of toleration objects"),
        ({"env": {"A": {"b": 1}}}, "env: 'A'"),
        ({"gpu_per_pod": 4}, "unknown 'gpu_per_pod'"),
        ({"memory_limit": "32 GB"}, "memory_limit '32 GB' is not a Kubernetes quantity"),
        ({"log_tail_lines": 0}, "log_tail_lines must be an integer >= 1"),
        ({"trainjob_runtime": "Torch_Runtime"}, "trainjob_runtime 'Torch_Runtime'"),
    ],
)
def test_from_params_errors_are_one_line_naming_the_field(params, message):
    with pytest.raises(DKDError) as info:
        ClusterSpec.from_params({"namespace": "a", "image": "b", **params})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_render_job_returns_what_the_launchers_create():
    job, spec = make_job(nodes=2, nproc=4), make_spec(gpus=4)
    for kind, launcher_cls, done in (
        ("pytorchjob", PyTorchJobLauncher, "Succeeded"),
        ("trainjob", TrainJobLauncher, "Complete"),
    ):
        api = FakeApi([[cond(done)]])
        launcher_cls(api, FakePods()).launch(job, spec, 60, log=lambda _: None)
        assert api.created[0][4] == render_job(job, spec, kind)
    with pytest.raises(DKDError, match="unknown job kind 'slurm'"):
        render_job(job, spec, "slurm")
    assert (
        render_job(job, replace(spec, trainjob_runtime="rt"), "trainjob")["spec"]["runtimeRef"][
            "name"
        ]
        == "rt"
    )


# -- queues: Kueue, Unschedulable pods ---------------------------------------------------------

NO_GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def suspended(kind_done: str, flag: bool = True) -> dict:
    """A job as Kueue leaves it until admitted: its suspend flag set (and, once the operator
    saw it, the Suspended condition)."""
    spec = {"runPolicy": {"suspend": flag}} if kind_done == "Succeeded" else {"suspend": flag}
    return {"spec": spec, "status": {"conditions": [cond("Suspended")] if flag else []}}


def workload(ctype: str, status: str, message: str) -> list:
    return [{"metadata": {"name": "pytorchjob-x-1a2b3"}, "status": {"conditions": [
        {"type": ctype, "status": status, "reason": "Pending", "message": message}]}}]  # fmt: skip


def test_the_queue_label_is_on_the_job_only():
    spec = make_spec(kueue_queue="team-gpu")
    for m in (render_pytorchjob(make_job(nodes=2), spec), render_trainjob(make_job(), spec)):
        assert m["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpu"
        assert "kueue.x-k8s.io/queue-name" not in json.dumps(m["spec"])
    m = render_pytorchjob(make_job(), make_spec())
    assert "kueue.x-k8s.io/queue-name" not in m["metadata"]["labels"]
    with pytest.raises(DKDError, match="kueue_queue 'Team GPU' is not a valid object name"):
        make_spec(kueue_queue="Team GPU")


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_a_suspended_job_waits_in_the_queue_until_admitted(launcher_cls, done):
    quota = "couldn't assign flavors to pod set master: insufficient quota for nvidia.com/gpu"
    r = run_launch(
        launcher_cls,
        # 2 h queued (720 polls of 10 s), then 50 min running: the 1 h timeout counts from
        # admission, the queue's 3 h bound the wait
        [suspended(done)] * 720 + [[cond("Running")]] * 300 + [[cond(done)]],
        spec=make_spec(kueue_queue="team-gpu"),
        timeout=3600.0,
        queue=3 * 3600.0,
        workloads=[workload("QuotaReserved", "False", quota)] * 400
        + [workload("QuotaReserved", "True", "Quota reserved in ClusterQueue gpu")],
    )
    assert r.error is None
    assert r.clock.elapsed == 7200 + 3000
    text = "\n".join(r.lines)
    assert "(Kueue queue team-gpu)" in r.lines[0]
    assert "suspended, queued for admission" in text
    assert f"queued: Workload pytorchjob-x-1a2b3: QuotaReserved=False (Pending): {quota}" in text
    assert "queued: Workload pytorchjob-x-1a2b3: QuotaReserved=True" in text
    assert sum("queued: " in line for line in r.lines) == 2  # logged when it changes
    assert "admitted after 7200 s in the queue" in text
    # the Workload is found by the job's uid, with the API version Kueue v0.19 serves
    group, version, plural, kw = r.api.listed[0]
    assert (group, version, plural) == ("kueue.x-k8s.io", "v1beta2", "workloads")
    assert kw["label_selector"] == "kueue.x-k8s.io/job-uid=uid-1"
    assert len(r.pods.lists) == 300  # no pods to watch while suspended


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_a_job_never_admitted_fails_after_the_queue_timeout(launcher_cls, done):
    r = run_launch(
        launcher_cls,
        [suspended(done)],
        timeout=48 * 3600.0,
        queue=1800.0,
        workloads=[workload("QuotaReserved", "False", "insufficient quota")],
    )
    text = str(r.error)
    assert r.clock.elapsed == 1800
    assert "queued (suspended) for 1800 s without being admitted" in text
    assert "insufficient quota" in text and "queue_timeout_seconds=1800" in text
    assert len(r.api.deleted) == 1  # it leaves the queue


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_the_queue_timeout_defaults_to_the_steps_timeout(launcher_cls, done):
    r = run_launch(launcher_cls, [suspended(done)], timeout=600.0)
    assert r.clock.elapsed == 600 and "queue_timeout_seconds=600" in str(r.error)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_the_suspend_flag_alone_means_queued(launcher_cls, done):
    """Kueue's webhook sets the flag at creation, before the operator adds the condition."""
    flag_only = {**suspended(done), "status": {}}
    r = run_launch(
        launcher_cls,
        [flag_only] * 3 + [suspended(done, flag=False), [cond(done)]],
        timeout=20.0,
        queue=60.0,
    )
    assert r.error is None and r.clock.elapsed == 40  # 30 s queued did not count
    assert "admitted after 30 s in the queue" in "\n".join(r.lines)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_unreadable_workloads_are_logged_not_fatal(launcher_cls, done):
    r = run_launch(
        launcher_cls,
        [suspended(done)] * 2 + [[cond(done)]],
        workloads=[ApiException(status=403, reason="Forbidden")],
    )
    assert r.error is None
    assert any("cannot read its Kueue Workload (HTTP 403 Forbidden" in line for line in r.lines)
    r = run_launch(launcher_cls, [suspended(done)] * 2 + [[cond(done)]])
    assert any("no Kueue Workload for it (yet)" in line for line in r.lines)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_unschedulable_pods_wait_within_the_queue_timeout(launcher_cls, done):
    waiting = fake_pod("p-0", "Pending", unschedulable=NO_GPU)
    r = run_launch(
        launcher_cls,
        [[cond("Created")]] * 360 + [[cond("Running")], [cond(done)]],
        pods=FakePods([[waiting]] * 360 + [[fake_pod("p-0")]]),
        spec=make_spec(stuck_pod_grace_seconds=300),  # 1 h Unschedulable: far past 300 s
        timeout=48 * 3600.0,
        queue=2 * 3600.0,
    )
    assert r.error is None
    assert sum(f"pod p-0 is Unschedulable: {NO_GPU}" in line for line in r.lines) == 1


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_unschedulable_pods_fail_the_step_past_the_queue_timeout(launcher_cls, done):
    r = run_launch(
        launcher_cls,
        [[cond("Created")]],
        pods=FakePods([[fake_pod("p-0", "Pending", unschedulable=NO_GPU)]]),
        spec=make_spec(stuck_pod_grace_seconds=300),
        timeout=48 * 3600.0,
        queue=2 * 3600.0,
    )
    text = str(r.error)
    assert r.clock.elapsed == 7200
    assert f"pod p-0 is stuck in Unschedulable for 7200 s ({NO_GPU})" in text
    assert "queue_timeout_seconds=7200" in text
    assert len(r.api.deleted) == 1
    assert stuck_reason(fake_pod("p-0", unschedulable=NO_GPU)) == ("Unschedulable", NO_GPU)


@pytest.mark.parametrize(("launcher_cls", "done"), KINDS)
def test_image_pull_errors_still_fail_fast_with_a_long_queue_timeout(launcher_cls, done):
    pulling = fake_pod("p-0", "Pending", waiting=("ImagePullBackOff", "Back-off pulling image"))
    r = run_launch(
        launcher_cls,
        [[cond("Created")]],
        pods=FakePods([[pulling]]),
        spec=make_spec(stuck_pod_grace_seconds=300, kueue_queue="team-gpu"),
        timeout=48 * 3600.0,
        queue=48 * 3600.0,
    )
    assert r.clock.elapsed == 300
    assert "stuck in ImagePullBackOff for 300 s" in str(r.error)
    assert "stuck_pod_grace_seconds=300" in str(r.error)
