"""The operators' admission rules, over the manifests dkd_core.launch really renders.

No cluster runs here, so the rules that refused our jobs before are written out from the
upstream sources at the versions we pin, each beside where it comes from:

- training operator v1.9.4 `pkg/webhooks/pytorch/pytorchjob_webhook.go` (validatePyTorchJob)
  and the Service/pod names its controller derives (`pkg/controller.v1/common/util.go`
  GenGeneralName: `<job>-<lowercase replica type>-<index>`);
- Trainer v2.3.0: the TrainJob CRD's CEL rules on metadata.name,
  `pkg/runtime/framework/plugins/jobset/jobset.go` (Validate: runtimePatches[].manager is
  apimachinery's IsDomainPrefixedPath, patches name replicated jobs and containers the
  runtime has, no env for `node`), `pkg/runtime/framework/plugins/torch/torch.go`
  (no torchrun-reserved PET_* variables) and `pkg/webhooks/trainingruntime_webhook.go`
  (validateReplicatedJobs);
- JobSet v0.12.0 `pkg/webhooks/jobset_webhook.go`: the Job names `<jobset>-<rjob>-<i>` and
  pod names `<jobset>-<rjob>-<i>-<j>-<5 random>` must be RFC 1035 labels (<= 63).

Each checker is also shown to refuse the manifests that broke the rule.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dkd_core.errors import DKDError
from dkd_core.launch import ClusterSpec, StepJob, job_name, render_job
from dkd_core.launch.trainjob import PATCH_MANAGER

RUNTIME_FILE = (
    Path(__file__).parents[2] / "k8s" / "base" / "trainer-runtime" / "clustertrainingruntime.yaml"
)

# apimachinery v0.36.2 pkg/util/validation/validation.go
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = re.compile(rf"^{DNS1123_LABEL}(\.{DNS1123_LABEL})*$")
HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")
TORCHRUN_RESERVED = {
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
}  # trainer v2.3.0 pkg/constants/constants.go TorchRunReservedEnvNames


def dns1035_errors(value: str, what: str) -> list[str]:
    """IsDNS1035Label: at most 63 characters, lowercase alphanumerics and '-', a letter first."""
    errors = []
    if len(value) > 63:
        errors.append(f"{what} {value!r}: must be no more than 63 characters")
    if not DNS1035_LABEL.match(value):
        errors.append(f"{what} {value!r}: must be an RFC 1035 label")
    return errors


def domain_prefixed_path_errors(value: str) -> list[str]:
    """IsDomainPrefixedPath: `<RFC 1123 subdomain>/<HTTP path>`, e.g. `acme.io/foo`."""
    if not value:
        return ["manager: Required value"]
    host, sep, path = value.partition("/")
    if not sep or not host or not path:
        return [f'manager {value!r}: must be a domain-prefixed path (such as "acme.io/foo")']
    errors = []
    if len(host) > 253 or not DNS1123_SUBDOMAIN.match(host):
        errors.append(f"manager {value!r}: {host!r} is not an RFC 1123 subdomain")
    if not HTTP_PATH.match(path):
        errors.append(f"manager {value!r}: {path!r} is not a valid HTTP path")
    return errors


def pytorchjob_webhook_errors(m: dict[str, Any]) -> list[str]:
    """validatePyTorchJob (training operator v1.9.4) and the controller's derived names."""
    name = m["metadata"]["name"]
    errors = dns1035_errors(name, "metadata.name")
    spec = m.get("spec") or {}
    managed_by = (spec.get("runPolicy") or {}).get("managedBy")
    if managed_by not in (None, "kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue"):
        errors.append(f"spec.runPolicy.managedBy: {managed_by!r} not supported")
    replicas = spec.get("pytorchReplicaSpecs")
    if spec.get("elasticPolicy") is not None and "Worker" not in (replicas or {}):
        errors.append("spec.pytorchReplicaSpecs[Worker]: must be configured with elasticPolicy")
    if not replicas:
        return [*errors, "spec.pytorchReplicaSpecs: must be required"]
    for rtype, rspec in replicas.items():
        where = f"spec.pytorchReplicaSpecs[{rtype}]"
        if rtype not in ("Master", "Worker"):
            errors.append(f"{where}: replica type not supported (Master, Worker)")
        containers = (((rspec or {}).get("template") or {}).get("spec") or {}).get("containers")
        if not containers:
            errors.append(f"{where}.template.spec.containers: must be specified")
            continue
        for i, c in enumerate(containers):
            if not c.get("image"):
                errors.append(f"{where}.template.spec.containers[{i}].image: must be required")
        if not any(c.get("name") == "pytorch" for c in containers):
            errors.append(f"{where}: must have at least one container with name pytorch")
        count = rspec.get("replicas")
        if rtype == "Master" and count != 1:
            errors.append(f"{where}.replicas: must be 1")
        elif count is not None and count < 1:
            errors.append(f"{where}.replicas: must be at least 1")
        for index in range(count if isinstance(count, int) else 1):
            # One Service and one pod per replica, named `<job>-<type>-<index>`.
            errors += dns1035_errors(f"{name}-{rtype.lower()}-{index}", "service name")
    return errors


def trainjob_admission_errors(m: dict[str, Any], runtime: dict[str, Any]) -> list[str]:
    """TrainJob CRD CEL rules, the JobSet and torch plugins' Validate (Trainer v2.3.0) and
    JobSet v0.12.0's name limits, for a TrainJob that references `runtime`."""
    name = m["metadata"]["name"]
    errors = dns1035_errors(name, "metadata.name")
    spec = m["spec"]
    if spec["runtimeRef"]["name"] != runtime["metadata"]["name"]:
        errors.append(f"spec.runtimeRef: {spec['runtimeRef']['name']!r} is not the runtime")
    rjobs = {
        r["name"]: r for r in runtime["spec"]["template"]["spec"]["replicatedJobs"]
    }  # name -> replicated job of the runtime
    managers = [p.get("manager", "") for p in spec.get("runtimePatches") or []]
    if len(managers) != len(set(managers)):
        errors.append("spec.runtimePatches: managers must be unique (a list map keyed by manager)")
    for patch in spec.get("runtimePatches") or []:
        errors += domain_prefixed_path_errors(patch.get("manager", ""))
        if len(patch.get("manager", "")) > 253:
            errors.append("spec.runtimePatches[].manager: longer than 253")
        template = (patch.get("trainingRuntimeSpec") or {}).get("template") or {}
        for rpatch in (template.get("spec") or {}).get("replicatedJobs") or []:
            rjob = rjobs.get(rpatch["name"])
            if rjob is None:
                errors.append(f"runtimePatches: replicated job {rpatch['name']!r} not in runtime")
                continue
            pod = rjob["template"]["spec"]["template"]["spec"]
            have = {c["name"] for c in [*pod.get("initContainers", []), *pod["containers"]]}
            pod_patch = (
                ((rpatch.get("template") or {}).get("spec") or {}).get("template") or {}
            ).get("spec") or {}
            for c in [*pod_patch.get("initContainers", []), *pod_patch.get("containers", [])]:
                if c["name"] not in have:
                    errors.append(f"runtimePatches: container {c['name']!r} not in the runtime")
                elif c.get("env") and c["name"] in (
                    "node",
                    "dataset-initializer",
                    "model-initializer",
                ):
                    errors.append(f"runtimePatches: must not have envs for {c['name']!r}")
    trainer = spec.get("trainer") or {}
    reserved = sorted({e["name"] for e in trainer.get("env") or []} & TORCHRUN_RESERVED)
    if reserved:
        errors.append(f"spec.trainer.env: must not have reserved envs {reserved}")
    nodes = trainer.get("numNodes", runtime["spec"]["mlPolicy"].get("numNodes", 1))
    for rname, rjob in rjobs.items():
        last_job = rjob.get("replicas", 1) - 1
        errors += dns1035_errors(f"{name}-{rname}-{last_job}", "job name")
        errors += dns1035_errors(f"{name}-{rname}-{last_job}-{nodes - 1}-abcde", "pod name")
    return errors


def runtime() -> dict[str, Any]:
    return yaml.safe_load(RUNTIME_FILE.read_text())


def step_job(name: str, nodes: int, nproc: int = 4) -> StepJob:
    return StepJob(name=name, config_uri="s3://r/config.yaml", step=1, nproc_per_node=nproc,
                   nodes=nodes)  # fmt: skip


SPEC = ClusterSpec(
    namespace="dkd",
    image="registry.example/dkd:1",
    gpus_per_pod=4,
    s3_secret="kfp-s3",
    s3_secret_env={"AWS_ACCESS_KEY_ID": "accesskey", "AWS_SECRET_ACCESS_KEY": "secretkey"},
    kfp_run_id="6f1d4c2e-7a4b-4e0f-9c7b-1d2e3f4a5b6c",
    kfp_pod_name="voc-15-1-pipeline-x7k2p-system-container-impl-1234567890",
)
#: Names as the pipelines build them: short runs, long runs (cut with a hash), a suffix.
NAMES = [
    job_name("voc_15-1", 1),
    job_name("ade_100-10-overlap-with-a-very-long-benchmark-name", 12, suffix="3fa9c1"),
    job_name("x" * 200, 99, suffix="y" * 50),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("nodes", [1, 2, 16])
def test_rendered_pytorchjobs_pass_the_webhook(name: str, nodes: int) -> None:
    assert pytorchjob_webhook_errors(render_job(step_job(name, nodes), SPEC, "pytorchjob")) == []


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("nodes", [1, 2, 16])
def test_rendered_trainjobs_pass_trainers_validation(name: str, nodes: int) -> None:
    manifest = render_job(step_job(name, nodes), SPEC, "trainjob")
    assert trainjob_admission_errors(manifest, runtime()) == []


def test_the_patch_manager_is_a_domain_prefixed_path() -> None:
    assert domain_prefixed_path_errors(PATCH_MANAGER) == []
    [patch] = render_job(step_job("dkd-a", 1), SPEC, "trainjob")["spec"]["runtimePatches"]
    assert patch["manager"] == PATCH_MANAGER
    # The manager we used to send, which Trainer v2.3 refused:
    assert domain_prefixed_path_errors("dkd-core.launch")
    for bad in ("", "kueue.x-k8s.io/", "/manager", "Dkd.IO/launcher", "dkd_core/x", "a.io/b c"):
        assert domain_prefixed_path_errors(bad), bad
    assert domain_prefixed_path_errors("kueue.x-k8s.io/manager") == []


def test_the_pytorchjob_checker_refuses_what_the_webhook_refuses() -> None:
    good = render_job(step_job("dkd-a", 3), SPEC, "pytorchjob")

    def broken(change) -> list[str]:
        m = copy.deepcopy(good)
        change(m)
        return pytorchjob_webhook_errors(m)

    master = ("spec", "pytorchReplicaSpecs", "Master")

    def at(m, path):
        for key in path:
            m = m[key]
        return m

    assert broken(lambda m: at(m, master)["template"]["spec"]["containers"][0].update(name="main"))
    assert broken(lambda m: at(m, master).update(replicas=2))
    assert broken(lambda m: m["spec"]["pytorchReplicaSpecs"].update(Chief=at(m, master)))
    assert broken(lambda m: m["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas=0))
    assert broken(lambda m: at(m, master)["template"]["spec"]["containers"][0].update(image=""))
    assert broken(lambda m: m["metadata"].update(name="Dkd_A"))
    assert broken(lambda m: m["metadata"].update(name="d" * 56))  # d...-worker-1: 65 > 63
    assert broken(lambda m: m["spec"].update(pytorchReplicaSpecs={}))


def test_the_trainjob_checker_refuses_what_trainer_refuses() -> None:
    good = render_job(step_job("dkd-a", 2), SPEC, "trainjob")
    rt = runtime()

    def broken(change) -> list[str]:
        m = copy.deepcopy(good)
        change(m)
        return trainjob_admission_errors(m, rt)

    def pod_patch(m):
        [patch] = m["spec"]["runtimePatches"]
        [rjob] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        return rjob

    assert broken(lambda m: m["spec"]["runtimePatches"][0].update(manager="dkd-core.launch"))
    assert broken(lambda m: pod_patch(m).update(name="trainer"))
    assert broken(
        lambda m: pod_patch(m)["template"]["spec"]["template"]["spec"]["containers"][0].update(
            env=[{"name": "A", "value": "1"}]
        )
    )
    assert broken(
        lambda m: pod_patch(m)["template"]["spec"]["template"]["spec"]["containers"][0].update(
            name="pytorch"
        )
    )
    assert broken(
        lambda m: m["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "2"})
    )
    assert broken(lambda m: m["metadata"].update(name="9dkd"))
    assert broken(lambda m: m["metadata"].update(name="d" * 50))  # d...-node-0-1-abcde > 63
    assert broken(lambda m: m["spec"]["runtimePatches"].append(m["spec"]["runtimePatches"][0]))


def test_the_launcher_refuses_names_and_env_the_operators_would_refuse() -> None:
    with pytest.raises(DKDError, match="too long for a PyTorchJob"):
        render_job(step_job("d" * 56, 3), SPEC, "pytorchjob")
    with pytest.raises(DKDError, match="too long for a TrainJob"):
        render_job(step_job("d" * 50, 2), SPEC, "trainjob")
    with pytest.raises(DKDError, match="PET_MASTER_ADDR are set by the Trainer"):
        render_job(
            step_job("dkd-a", 2),
            ClusterSpec(namespace="dkd", image="i", env={"PET_MASTER_ADDR": "x"}),
            "trainjob",
        )


def test_our_runtime_passes_trainers_runtime_webhook() -> None:
    """validateReplicatedJobs: an ancestor-labelled replicated job has 1 replica and the
    ancestor's container (`node` for the trainer)."""
    for rjob in runtime()["spec"]["template"]["spec"]["replicatedJobs"]:
        ancestor = rjob["template"]["metadata"]["labels"].get(
            "trainer.kubeflow.org/trainjob-ancestor-step"
        )
        assert ancestor == "trainer"
        assert rjob.get("replicas", 1) == 1
        names = [c["name"] for c in rjob["template"]["spec"]["template"]["spec"]["containers"]]
        assert "node" in names
