"""Every container of every job pod starts: the kubelet's non-root rule, over the pods the
operators really create from our manifests, and Istio's injection opt-out.

No cluster runs here, so what the upstream pieces do is written out from their sources, each
beside where it comes from:

- the kubelet (kubernetes/kubernetes, pkg/kubelet/kuberuntime, read at commit
  1f671eec38a8b413ee8e1e3e69a46b0c9689beda; which release tag holds that commit was not
  resolvable here):
  `security_context_others.go` `verifyRunAsNonRoot`, the effective security context of
  `pkg/securitycontext/util.go` `DetermineEffectiveSecurityContext` (a container's field
  overrides the pod's), and `getImageUser` (an image with neither a uid nor a user name
  runs as root). A refused container stays in CreateContainerConfigError.
- training operator v1.9.4 (kubeflow/trainer at tag v1.9.4):
  `pkg/controller.v1/pytorch/initcontainer.go` adds `init-pytorch` to every Worker pod of a
  job with a Master, from the template `initContainerTemplate` (no securityContext) with the
  image `config.PyTorchInitContainerImageDefault` = `alpine:3.10` (`pkg/config/config.go`),
  whose image config sets no user: it runs as root unless the pod says otherwise.
- Trainer v2.3.0 (kubeflow/trainer at tag v2.3.0): of the runtime plugins only `flux`
  (`pkg/runtime/framework/plugins/flux/flux.go`, for `mlPolicy.flux`) adds a container,
  `flux-installer`; the torch plugin of our runtime adds none. The pods are the runtime's
  template with the TrainJob's runtimePatches applied (`plugins/jobset/jobset.go`).
- Istio (istio/istio `pkg/kube/inject/inject.go` `injectRequired`, read at commit
  00af2c5549d5b4b48b3c32fd2d3ceca59ea79f5b): the pod label `sidecar.istio.io/inject`, else
  the annotation, "false" turns injection off even in a namespace labelled
  `istio-injection=enabled` (every Kubeflow profile namespace).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from dkd_core.errors import DKDError
from dkd_core.launch import ClusterSpec, StepJob, job_name, render_job

REPO = Path(__file__).parents[2]
RUNTIME_FILE = REPO / "k8s" / "base" / "trainer-runtime" / "clustertrainingruntime.yaml"
IMAGE = "registry.example/dkd:0.1.0"

# training operator v1.9.4 pkg/controller.v1/pytorch/initcontainer.go initContainerTemplate,
# MasterAddr `<job>-master-0`, MaxTries default 100 (pkg/config/config.go).
INIT_PYTORCH_IMAGE = "alpine:3.10"


def init_pytorch(job: str) -> dict[str, Any]:
    return {
        "name": "init-pytorch",
        "image": INIT_PYTORCH_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "resources": {
            "limits": {"cpu": "100m", "memory": "20Mi"},
            "requests": {"cpu": "50m", "memory": "10Mi"},
        },
        "command": [
            "sh",
            "-c",
            "err=1;for i in $(seq 100); do if nslookup "
            f"{job}-master-0; then err=0 && break; fi;echo waiting for master; sleep 2; "
            "done; exit $err",
        ],
    }


def image_user(image: str) -> tuple[int | None, str]:
    """(uid, user name) of an image's config, as the runtime reports it to the kubelet.

    Our image: docker/Dockerfile's `USER 1000:1000` (checked below). alpine:3.10: no USER,
    which `getImageUser` treats as uid 0.
    """
    if image == IMAGE:
        return 1000, ""
    if image == INIT_PYTORCH_IMAGE:
        return 0, ""
    raise AssertionError(f"no image user known for {image!r}")


def effective_security_context(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """DetermineEffectiveSecurityContext: the pod's runAsUser/runAsGroup/runAsNonRoot, each
    overridden by the container's own when set."""
    out = {}
    pod_sc = pod.get("securityContext") or {}
    for field in ("runAsUser", "runAsGroup", "runAsNonRoot"):
        if field in pod_sc:
            out[field] = pod_sc[field]
    out.update(container.get("securityContext") or {})
    return out


def kubelet_refusal(pod: dict[str, Any], container: dict[str, Any]) -> str | None:
    """verifyRunAsNonRoot: the kubelet's error for `container` of `pod`, None when it starts."""
    sc = effective_security_context(pod, container)
    name = container["name"]
    if not sc.get("runAsNonRoot"):
        return None
    if sc.get("runAsUser") is not None:
        if sc["runAsUser"] == 0:
            return f"container's runAsUser breaks non-root policy (container: {name})"
        return None
    uid, username = image_user(container["image"])
    if uid is None and username:
        return (
            f"container has runAsNonRoot and image has non-numeric user ({username}), "
            f"cannot verify user is non-root (container: {name})"
        )
    if uid == 0:
        return f"container has runAsNonRoot and image will run as root (container: {name})"
    return None


def pod_refusals(pod: dict[str, Any]) -> list[str]:
    return [
        r
        for c in [*pod.get("initContainers", []), *pod["containers"]]
        if (r := kubelet_refusal(pod, c)) is not None
    ]


def istio_injects(metadata: dict[str, Any], namespace_enabled: bool = True) -> bool:
    """injectRequired for a pod in a namespace with injection on (or off)."""
    value = (metadata.get("annotations") or {}).get("sidecar.istio.io/inject", "")
    value = (metadata.get("labels") or {}).get("sidecar.istio.io/inject", value)
    if value.lower() in ("y", "yes", "true", "on"):
        return True
    if value == "":
        return namespace_enabled
    return False


# -- the pods the operators create ---------------------------------------------------------


def pytorchjob_pods(m: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(metadata, spec) of one pod per replica type, with the operator's init container."""
    replicas = m["spec"]["pytorchReplicaSpecs"]
    pods = []
    for rtype, rspec in replicas.items():
        template = copy.deepcopy(rspec["template"])
        if rtype == "Worker" and "Master" in replicas:  # setInitContainer
            spec = template["spec"]
            spec["initContainers"] = [
                *spec.get("initContainers", []),
                init_pytorch(m["metadata"]["name"]),
            ]
        pods.append((template["metadata"], template["spec"]))
    return pods


def _merge_named(base: list[dict], patches: list[dict]) -> list[dict]:
    out = [copy.deepcopy(c) for c in base]
    for patch in patches:
        for c in out:
            if c["name"] == patch["name"]:
                c.update(copy.deepcopy(patch))
    return out


def trainjob_pods(m: dict[str, Any], runtime: dict[str, Any]) -> list[tuple[dict, dict]]:
    """(metadata, spec) of the pods of each replicated job: the runtime's template, the
    trainer's image, then each runtimePatch (pod fields replaced, containers merged by name,
    labels and annotations merged); no container added (torch plugin)."""
    assert set(runtime["spec"]["mlPolicy"]) <= {"numNodes", "torch"}, "a plugin that adds one?"
    pods = []
    for rjob in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        template = copy.deepcopy(rjob["template"]["spec"]["template"])
        meta, spec = template.setdefault("metadata", {}), template["spec"]
        for c in spec["containers"]:
            if c["name"] == "node":
                c["image"] = m["spec"]["trainer"]["image"]
        for patch in m["spec"].get("runtimePatches") or []:
            for rpatch in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
                if rpatch["name"] != rjob["name"]:
                    continue
                pod_patch = rpatch["template"]["spec"]["template"]
                for key in ("labels", "annotations"):
                    meta[key] = {**meta.get(key, {}), **pod_patch["metadata"].get(key, {})}
                for key, value in pod_patch["spec"].items():
                    if key in ("containers", "initContainers"):
                        spec[key] = _merge_named(spec.get(key, []), value)
                    else:
                        spec[key] = copy.deepcopy(value)
        pods.append((meta, spec))
    return pods


def runtime() -> dict[str, Any]:
    return yaml.safe_load(RUNTIME_FILE.read_text())


def step_job(nodes: int) -> StepJob:
    return StepJob(
        name=job_name("voc_15-1", 1), config_uri="s3://r/config.yaml", step=1,
        teacher="s3://r/step_0/checkpoint", nproc_per_node=4, nodes=nodes,
    )  # fmt: skip


def spec(**kw: Any) -> ClusterSpec:
    return ClusterSpec(namespace="kubeflow-user", image=IMAGE, gpus_per_pod=4, **kw)


def all_pods(nodes: int, s: ClusterSpec) -> list[tuple[str, dict, dict]]:
    job = step_job(nodes)
    pods = [("pytorchjob", meta, p) for meta, p in pytorchjob_pods(render_job(job, s))]
    tj = render_job(job, s, "trainjob")
    return pods + [("trainjob", meta, p) for meta, p in trainjob_pods(tj, runtime())]


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2, 3])
@pytest.mark.parametrize("kw", [{}, {"run_as_user": 4242, "run_as_group": 4242}])
def test_the_kubelet_starts_every_container_of_every_job_pod(nodes: int, kw: dict) -> None:
    pods = all_pods(nodes, spec(**kw))
    names = {
        c["name"] for _, _, p in pods for c in [*p.get("initContainers", []), *p["containers"]]
    }
    assert names == ({"pytorch", "node", "init-pytorch"} if nodes > 1 else {"pytorch", "node"})
    for kind, _, pod in pods:
        assert pod_refusals(pod) == [], kind
        sc = pod["securityContext"]
        uid = kw.get("run_as_user", 1000)
        assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (uid, uid, uid)
        assert sc["runAsNonRoot"] is True
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            effective = effective_security_context(pod, c)
            assert effective["runAsUser"] == uid and effective["runAsGroup"] == uid, c["name"]


def test_without_a_numeric_pod_uid_the_operators_init_container_is_refused() -> None:
    """What happened before: runAsNonRoot at pod level without runAsUser."""
    [_, (_, worker)] = pytorchjob_pods(render_job(step_job(2), spec()))
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        del worker["securityContext"][field]
    assert pod_refusals(worker) == [
        "container has runAsNonRoot and image will run as root (container: init-pytorch)"
    ]
    # the training container alone would still start: its own context names the uid, and
    # without it our image's numeric USER 1000 would do
    [pytorch] = worker["containers"]
    del pytorch["securityContext"]["runAsUser"]
    assert kubelet_refusal(worker, pytorch) is None


def test_the_checker_refuses_what_the_kubelet_refuses() -> None:
    pod = {"securityContext": {"runAsNonRoot": True, "runAsUser": 0}}
    c = {"name": "x", "image": IMAGE}
    assert "breaks non-root policy" in (kubelet_refusal(pod, c) or "")
    c = {"name": "x", "image": IMAGE, "securityContext": {"runAsUser": 0}}
    assert kubelet_refusal({"securityContext": {}}, c) is None  # root allowed: no rule
    assert "breaks non-root" in (
        kubelet_refusal({"securityContext": {"runAsNonRoot": True}}, c) or ""
    )
    pod = {"securityContext": {"runAsNonRoot": True}}
    assert "image will run as root" in (kubelet_refusal(pod, init_pytorch("j")) or "")
    assert kubelet_refusal({}, {"name": "x", "image": INIT_PYTORCH_IMAGE}) is None  # no rule


def test_root_cannot_be_asked_for() -> None:
    with pytest.raises(DKDError, match="run_as_user must be an integer >= 1"):
        spec(run_as_user=0)
    with pytest.raises(DKDError, match="run_as_group must be an integer >= 0"):
        spec(run_as_group=-1)


def test_our_image_runs_as_the_default_uid() -> None:
    """The pods' default uid is the one docker/Dockerfile creates and switches to."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users[-1] == f"{spec().run_as_user}:{spec().run_as_group}"
    assert image_user(IMAGE) == (spec().run_as_user, "")


@pytest.mark.parametrize("nodes", [1, 2])
def test_no_istio_sidecar_in_any_job_pod(nodes: int) -> None:
    for kind, meta, _ in all_pods(nodes, spec()):
        assert not istio_injects(meta), kind
        assert meta["annotations"]["sidecar.istio.io/inject"] == "false"
    # the runtime's own template opts out too (a TrainJob of another launcher still gets it)
    [rjob] = runtime()["spec"]["template"]["spec"]["replicatedJobs"]
    assert not istio_injects(rjob["template"]["spec"]["template"]["metadata"])


def test_the_istio_checker_follows_the_injector() -> None:
    assert istio_injects({}) and not istio_injects({}, namespace_enabled=False)
    assert istio_injects({"annotations": {"sidecar.istio.io/inject": "true"}}, False)
    off = {"annotations": {"sidecar.istio.io/inject": "false"}}
    assert not istio_injects(off)
    # the label wins over the annotation
    assert istio_injects({**off, "labels": {"sidecar.istio.io/inject": "true"}})


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_render_job_on_a_shared_cluster_prints_pods_that_all_start(capsys, launcher) -> None:
    """`render-job voc_15-1 --step 1 --pods-per-step 2 --gpus-per-pod 4 --param
    kueue_queue=team-gpu`: queued in team-gpu, no sidecar, every container starts."""
    from pipelines.__main__ import main

    argv = ["render-job", "voc_15-1", "--step", "1", "--pods-per-step", "2", "--gpus-per-pod",
            "4", "--param", "kueue_queue=team-gpu", "--launcher", launcher, "--image", IMAGE]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    (m,) = yaml.safe_load_all(capsys.readouterr().out)
    assert m["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpu"
    pods = pytorchjob_pods(m) if launcher == "pytorchjob" else trainjob_pods(m, runtime())
    containers = []
    for meta, pod in pods:
        assert not istio_injects(meta)
        assert pod_refusals(pod) == []
        containers += [c["name"] for c in [*pod.get("initContainers", []), *pod["containers"]]]
    assert containers == (["pytorch", "init-pytorch", "pytorch"] if launcher == "pytorchjob"
                          else ["node"])  # fmt: skip
