"""End to end on a local kind cluster: the toy pipeline through the real KFP API server.

Marked `kind` (the default `make test` runs `-m "not kind"`); `make kind-test` runs it. It
skips, with the reason, when Docker (with a running engine), kind, kubectl or git is missing.

1. Build the CPU image (docker/Dockerfile.cpu), unless DKD_KIND_IMAGE names one that exists.
2. k8s/kind/install.sh with INSTALL_TRAINER_V2=1: create the kind cluster, load the image,
   install Kubeflow Pipelines 2.17 (object store: Service seaweedfs in kubeflow), the training
   operator (PyTorchJob), Trainer v2 with its runtimes (TrainJob), the prometheus-operator
   CRDs and k8s/overlays/kind; wait for them.
3. Through a port-forward to svc/seaweedfs (port 9000, keys of the Secret
   mlpipeline-minio-artifact), upload the toy dataset to s3://mlpipeline/shared/<run>/toy.
4. Twice, once per launcher (pytorchjob, trainjob): `python -m pipelines submit toy --host
   <KFP API> --image <image> --launcher L --data s3://... --param ...` on 2 pods per step
   (CPU: gloo), with delete_after_done=false so the jobs stay for inspection. The jobs'
   namespace is left empty: the component pods' own (kubeflow).
5. Wait for each run to succeed (kfp.Client); check that the KFP run's train tasks
   succeeded, that each created one job per step (found by the KFP run id label the
   launcher puts on it, and carrying the pod name of one of the run's train tasks) on 2
   pods that completed, and that every step's eval/metrics.json is in the store.

Environment: DKD_KIND_CLUSTER (default dkd-e2e), DKD_KIND_IMAGE (default: built here),
DKD_KIND_KEEP=1 keeps a cluster this test created, DKD_KIND_TIMEOUT (seconds, default 2400)
per run, DKD_KIND_SUBMIT_PARAMS (extra `k=v` params, space-separated).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dkd_core.launch import KFP_POD_NAME_LABEL, KFP_RUN_ID_LABEL, label_value

pytestmark = pytest.mark.kind

REPO = Path(__file__).parents[2]
NAMESPACE = "kubeflow"  # k8s/overlays/kind
CLUSTER = os.environ.get("DKD_KIND_CLUSTER", "dkd-e2e")
CONTEXT = f"kind-{CLUSTER}"
RUN_TIMEOUT = int(os.environ.get("DKD_KIND_TIMEOUT", "2400"))
UUID_RE = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def missing_tools() -> str | None:
    """Why this machine cannot run the test, or None."""
    for tool, why in (
        ("docker", "Docker is not installed"),
        ("kind", "kind is not installed (https://kind.sigs.k8s.io)"),
        ("kubectl", "kubectl is not installed"),
        ("git", "git is not installed (kubectl fetches the Kubeflow manifests with it)"),
    ):
        if shutil.which(tool) is None:
            return why
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the Docker engine does not answer ({e})"
    if info.returncode != 0:
        return "the Docker engine is not running ('docker info' failed)"
    return None


@pytest.fixture(scope="module", autouse=True)
def tools_present() -> None:
    """Skip the whole module, saying why, on a machine without Docker, kind, kubectl or git.

    A fixture rather than an import-time check: `pytest -m "not kind"` deselects these tests
    without running `docker info`.
    """
    reason = missing_tools()
    if reason:
        pytest.skip(f"kind end-to-end test skipped: {reason}")


def run(cmd: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, timeout=timeout, cwd=REPO, **kw)


def kubectl(*args: str, timeout: float = 120) -> str:
    out = run(["kubectl", "--context", CONTEXT, *args], timeout=timeout, capture_output=True)
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def port_forward(service: str, port: int) -> Iterator[str]:
    """`kubectl port-forward svc/<service>` on a free local port; yields http://127.0.0.1:N."""
    local = free_port()
    proc = subprocess.Popen(
        ["kubectl", "--context", CONTEXT, "-n", NAMESPACE, "port-forward",
         f"svc/{service}", f"{local}:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", local)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"port-forward to {service} ended: {proc.stdout.read()}")
            time.sleep(0.5)
        else:
            raise RuntimeError(f"port-forward to {service} did not open in 60 s")
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def image_exists(image: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A provisioned kind cluster with the CPU image loaded; yields the image name."""
    image = os.environ.get("DKD_KIND_IMAGE", "")
    if not image or not image_exists(image):
        image = image or "dkd:kind-e2e-cpu"
        run(["docker", "build", "-f", "docker/Dockerfile.cpu", "-t", image, "."], timeout=3600)
    existed = CLUSTER in run(["kind", "get", "clusters"], capture_output=True).stdout.split()
    env = {**os.environ, "KIND_CLUSTER": CLUSTER, "DKD_IMAGE": image, "INSTALL_TRAINER_V2": "1"}
    try:
        run(["bash", "k8s/kind/install.sh"], timeout=3600, env=env)
        yield image
    finally:
        if not existed and os.environ.get("DKD_KIND_KEEP") != "1":
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], check=False)


# A pipeline's checkpoints are its Model artifacts, in the object store Kubeflow Pipelines
# 2.17 runs: the Service seaweedfs in kubeflow (port 9000 -> SeaweedFS's S3 port 8333), with
# KFP's Secret mlpipeline-minio-artifact (keys accesskey/secretkey). The dataset goes there
# too, under shared/ (where a profile's keys may also read), so one endpoint serves all;
# the pipeline's s3_endpoint parameter keeps its default, that Service.
KFP_STORE_SERVICE, KFP_STORE_PORT = "seaweedfs", 9000
KFP_STORE_SECRET, KFP_BUCKET = "mlpipeline-minio-artifact", "mlpipeline"
LAUNCHERS = ("pytorchjob", "trainjob")
TOY_STEPS = 3


@pytest.fixture(scope="module")
def s3(cluster: str) -> Iterator[Any]:
    """A minio client for KFP's object store, through a port-forward."""
    from minio import Minio

    secret = json.loads(kubectl("-n", NAMESPACE, "get", "secret", KFP_STORE_SECRET, "-o", "json"))
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    with port_forward(KFP_STORE_SERVICE, KFP_STORE_PORT) as url:
        yield Minio(
            url.removeprefix("http://"),
            access_key=keys["accesskey"],
            secret_key=keys["secretkey"],
            secure=False,
        )


@pytest.fixture(scope="module")
def run_prefix() -> str:
    return f"kind-e2e-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def toy_data(s3: Any, run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The toy dataset, generated here and uploaded to KFP's object store; its s3:// URI."""
    root = tmp_path_factory.mktemp("toy")
    run([sys.executable, "-m", "dkd_core", "toy-data", str(root)], timeout=600)
    prefix = f"shared/{run_prefix}/toy"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.fput_object(KFP_BUCKET, f"{prefix}/{path.relative_to(root).as_posix()}", str(path))
    return f"s3://{KFP_BUCKET}/{prefix}"


def submit_args(image: str, data_uri: str, launcher: str) -> list[str]:
    """Options and pipeline parameters of a run (python -m pipelines submit toy ...).

    tests/unit/test_pipelines.py checks these against the pipeline's parameters.
    """
    args = [
        "--launcher", launcher, "--image", image, "--gpus-per-pod", "0", "--data", data_uri,
        "--param", "pods_per_step=2",  # 2 pods per step, gloo over the pod network
        "--param", "epochs=2",
        "--param", "delete_after_done=false",  # keep the jobs: this test reads them
        "--param", "cpu_request=250m",  # small pods for a laptop
        "--param", "memory_request=1Gi",
        "--param", "memory_limit=3Gi",
        "--param", "shm_size=512Mi",
        "--param", "tmp_size=2Gi",
    ]  # fmt: skip
    for extra in os.environ.get("DKD_KIND_SUBMIT_PARAMS", "").split():
        args += ["--param", extra]
    return args


@pytest.fixture(scope="module")
def kfp_host(cluster: str) -> Iterator[str]:
    with port_forward("ml-pipeline", 8888) as host:
        yield host


@pytest.fixture(scope="module", params=LAUNCHERS)
def finished_run(request: pytest.FixtureRequest, cluster: str, toy_data: str,
                 kfp_host: str) -> dict[str, Any]:  # fmt: skip
    """Submit the toy pipeline with one launcher through the KFP API server; wait for its end."""
    import kfp

    launcher = request.param
    cmd = [sys.executable, "-m", "pipelines", "submit", "toy", "--host", kfp_host]
    out = run(cmd + submit_args(cluster, toy_data, launcher), capture_output=True)
    print(out.stdout, out.stderr)
    ids = UUID_RE.findall(out.stdout)  # the run's URL ends with its id
    assert ids, f"no run id in the output of {' '.join(cmd)}:\n{out.stdout}"
    run_id = ids[-1]
    client = kfp.Client(host=kfp_host)
    detail = client.wait_for_run_completion(run_id, timeout=RUN_TIMEOUT, sleep_duration=10)
    tasks = (getattr(detail, "run_details", None) and detail.run_details.task_details) or []
    return {
        "launcher": launcher,
        "run_id": run_id,
        "state": str(getattr(detail, "state", "")).upper(),
        "tasks": [
            (t.display_name or "", str(t.state or "").upper(), t.pod_name or "") for t in tasks
        ],
    }


def train_tasks(finished_run: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [t for t in finished_run["tasks"] if re.match(r"train[ -]step", t[0])]


def test_toy_pipeline_run_succeeds(finished_run: dict[str, Any]) -> None:
    assert finished_run["state"].endswith("SUCCEEDED"), finished_run
    trains = train_tasks(finished_run)
    assert trains, f"the run lists no train task: {finished_run['tasks']}"
    assert all(state.endswith("SUCCEEDED") for _, state, _ in trains), trains


def jobs_of(finished_run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's jobs, found by the KFP run id the launcher labels them with."""
    plural = {"pytorchjob": "pytorchjobs", "trainjob": "trainjobs.trainer.kubeflow.org"}
    selector = f"{KFP_RUN_ID_LABEL}={finished_run['run_id']}"
    listed = kubectl("-n", NAMESPACE, "get", plural[finished_run["launcher"]], "-l", selector,
                     "-o", "json")  # fmt: skip
    return json.loads(listed)["items"]


def test_each_step_ran_as_one_two_pod_job(finished_run: dict[str, Any]) -> None:
    jobs = jobs_of(finished_run)
    assert len(jobs) == TOY_STEPS, [j["metadata"]["name"] for j in jobs]
    pods = {label_value(pod) for _, _, pod in train_tasks(finished_run) if pod}
    for job in jobs:
        name = job["metadata"]["name"]
        conditions = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions", [])}
        if finished_run["launcher"] == "pytorchjob":
            replicas = job["spec"]["pytorchReplicaSpecs"]
            assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 1)
            assert conditions.get("Succeeded") == "True", (name, conditions)
        else:
            assert job["spec"]["trainer"]["numNodes"] == 2, name
            assert conditions.get("Complete") == "True", (name, conditions)
        if pods:  # the job names the component pod that created it
            assert job["metadata"]["labels"].get(KFP_POD_NAME_LABEL) in pods, name


def test_evaluation_metrics_json_is_in_the_store(finished_run: dict[str, Any], s3: Any) -> None:
    keys = [o.object_name for o in s3.list_objects(KFP_BUCKET, recursive=True)]
    metrics = [k for k in keys if finished_run["run_id"] in k and k.endswith("eval/metrics.json")]
    assert len(metrics) >= TOY_STEPS, f"expected eval/metrics.json of the 3 toy steps: {metrics}"
    for key in metrics:
        response = s3.get_object(KFP_BUCKET, key)
        try:
            data = json.loads(response.read())
        finally:
            response.close()
            response.release_conn()
        assert isinstance(data, dict) and data, key
