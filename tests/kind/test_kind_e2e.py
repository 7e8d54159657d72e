"""End to end on a local kind cluster: the toy pipeline through the real KFP API server.

Marked `kind` (the default `make test` runs `-m "not kind"`); `make kind-test` runs it. It
skips, with the reason, when Docker (with a running engine), kind, kubectl or git is missing.

1. Build the CPU image (docker/Dockerfile.cpu), unless DKD_KIND_IMAGE names one that exists.
2. k8s/kind/install.sh: create the kind cluster, load the image, install Kubeflow Pipelines,
   the training operator, the prometheus-operator CRDs and k8s/overlays/kind; wait for them.
3. Generate the toy dataset and upload it to MinIO (s3://dkd-datasets/<run>/toy).
4. `python -m pipelines submit toy --host <KFP API> --param ...` with the `pytorchjob`
   launcher on 2 pods (CPU: gloo), outputs under s3://dkd-runs/<run>.
5. Wait for the run to succeed (kfp.Client), check the PyTorchJobs ran on 2 pods and
   succeeded, and that the evaluation metrics JSON is in MinIO.

Environment: DKD_KIND_CLUSTER (default dkd-e2e), DKD_KIND_IMAGE (default: built here),
DKD_KIND_KEEP=1 keeps a cluster this test created, DKD_KIND_TIMEOUT (seconds, default 2400)
for the run, DKD_KIND_SUBMIT_PARAMS (extra `k=v` params, space-separated).
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
    env = {**os.environ, "KIND_CLUSTER": CLUSTER, "DKD_IMAGE": image}
    try:
        run(["bash", "k8s/kind/install.sh"], timeout=3600, env=env)
        yield image
    finally:
        if not existed and os.environ.get("DKD_KIND_KEEP") != "1":
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], check=False)


# A pipeline's checkpoints are its Model artifacts, in the object store Kubeflow
# Pipelines runs (minio-service in kubeflow, Secret mlpipeline-minio-artifact with the
# keys accesskey/secretkey); the dataset goes there too, so one endpoint serves all.
KFP_STORE_SERVICE, KFP_STORE_SECRET, KFP_BUCKET = (
    "minio-service",
    "mlpipeline-minio-artifact",
    "mlpipeline",
)
KFP_STORE_ENDPOINT = f"http://{KFP_STORE_SERVICE}.{NAMESPACE}:9000"


@pytest.fixture(scope="module")
def s3(cluster: str) -> Iterator[Any]:
    """A minio client for KFP's object store, through a port-forward."""
    from minio import Minio

    secret = json.loads(kubectl("-n", NAMESPACE, "get", "secret", KFP_STORE_SECRET, "-o", "json"))
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    with port_forward(KFP_STORE_SERVICE, 9000) as url:
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
    prefix = f"dkd-datasets/{run_prefix}/toy"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.fput_object(KFP_BUCKET, f"{prefix}/{path.relative_to(root).as_posix()}", str(path))
    return f"s3://{KFP_BUCKET}/{prefix}"


def submit_args(image: str, data_uri: str) -> list[str]:
    """Compile options and pipeline parameters of the run (python -m pipelines submit toy ...)."""
    args = [
        "--launcher", "pytorchjob", "--image", image, "--gpus-per-pod", "0",
        "--s3-secret", KFP_STORE_SECRET, "--s3-endpoint", KFP_STORE_ENDPOINT,
        "--param", f"dataset_uri={data_uri}",
        "--param", "pods_per_step=2",  # Master and one Worker, gloo over the pod network
        "--param", "gpus_per_pod=0",
        "--param", f"namespace={NAMESPACE}",
        "--param", "epochs=2",
    ]  # fmt: skip
    for extra in os.environ.get("DKD_KIND_SUBMIT_PARAMS", "").split():
        args += ["--param", extra]
    return args


@pytest.fixture(scope="module")
def finished_run(cluster: str, toy_data: str, run_prefix: str) -> dict[str, Any]:
    """Submit the toy pipeline through the KFP API server and wait for it to end."""
    import kfp

    with port_forward("ml-pipeline", 8888) as host:
        cmd = [sys.executable, "-m", "pipelines", "submit", "toy", "--host", host]
        out = run(cmd + submit_args(cluster, toy_data), capture_output=True)
        print(out.stdout, out.stderr)
        ids = UUID_RE.findall(out.stdout)  # the run's URL ends with its id
        assert ids, f"no run id in the output of {' '.join(cmd)}:\n{out.stdout}"
        run_id = ids[-1]
        client = kfp.Client(host=host)
        detail = client.wait_for_run_completion(run_id, timeout=RUN_TIMEOUT, sleep_duration=10)
    state = str(getattr(detail, "state", "")).upper()
    return {"run_id": run_id, "state": state, "prefix": run_prefix}


def test_toy_pipeline_run_succeeds(finished_run: dict[str, Any]) -> None:
    assert finished_run["state"].endswith("SUCCEEDED"), finished_run


def test_training_steps_ran_as_two_pod_pytorchjobs(finished_run: dict[str, Any]) -> None:
    jobs = json.loads(
        kubectl("-n", NAMESPACE, "get", "pytorchjobs", "-l", "app.kubernetes.io/part-of=dkd",
                "-o", "json")
    )["items"]  # fmt: skip
    assert jobs, "no PyTorchJob was created: did the pipeline use the pytorchjob launcher?"
    for job in jobs:
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert replicas["Master"]["replicas"] == 1
        assert replicas["Worker"]["replicas"] == 1  # 2 pods in all
        conditions = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions", [])}
        assert conditions.get("Succeeded") == "True", (job["metadata"]["name"], conditions)


def test_evaluation_metrics_json_is_in_minio(finished_run: dict[str, Any], s3: Any) -> None:
    keys = [o.object_name for o in s3.list_objects(KFP_BUCKET, recursive=True)]
    metrics = [k for k in keys if finished_run["run_id"] in k and k.endswith("eval/metrics.json")]
    assert len(metrics) >= 3, f"expected eval/metrics.json of the 3 toy steps: {metrics}"
    for key in metrics:
        response = s3.get_object(KFP_BUCKET, key)
        try:
            data = json.loads(response.read())
        finally:
            response.close()
            response.release_conn()
        assert isinstance(data, dict) and data, key
