"""The Kubeflow pipelines: compiled IR per benchmark (golden files), DAG shape, CLI errors.

Golden files live in tests/golden/pipelines/<name>.yaml; after an intended
change to the components, the builder or a config, rewrite them with

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_pipelines.py
"""

import http.server
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import components
from dkd_core.config import load_config
from dkd_core.errors import DKDError
from dkd_core.step_data import task_of
from pipelines import available_configs, build_pipeline, builder, compile_pipeline, config_path
from pipelines.__main__ import main
from pipelines.local import TaskClock
from pipelines.params import parse_params
from pipelines.submit import check_host, resolve_host, submit
from tests.kfp_api import fake_kfp as kfp_api_server

REPO = Path(__file__).parents[2]
GOLDEN = REPO / "tests" / "golden" / "pipelines"
BENCHMARKS = [
    "voc_19-1", "voc_15-5", "voc_15-1", "voc_10-1", "voc_5-3",
    "ade_100-50", "ade_100-10", "ade_50-50", "toy",
]  # fmt: skip
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
#: The image the golden pipelines are compiled for (a cluster build must name one).
IMAGE = "registry.example.org/ml/dkd:0.1.0"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args], cwd=REPO, capture_output=True, text=True,
        timeout=120, env=env if env is not None else os.environ.copy(),
    )  # fmt: skip


def load_ir(path: Path) -> dict:
    """The pipeline spec, with the platform spec (2nd YAML document, if any) as "platforms"."""
    spec, *platform = yaml.safe_load_all(path.read_text())
    for doc in platform:
        spec.setdefault("platforms", {}).update(doc["platforms"])
    return spec


def root_tasks(ir: dict) -> dict[str, dict]:
    return ir["root"]["dag"]["tasks"]


def loop_component(ir: dict) -> dict:
    """The component of the seeds' loop: the ParallelFor body, one chain of steps."""
    (loop,) = [t for t in root_tasks(ir).values() if "parameterIterator" in t]
    return ir["components"][loop["componentRef"]["name"]]


def tasks_of(ir: dict) -> dict[str, dict]:
    """Every task, the root DAG's and the seeds' loop's (their names do not overlap)."""
    tasks = dict(root_tasks(ir))
    for name, component in ir["components"].items():
        if name.startswith("comp-for-loop-"):
            assert not set(tasks) & set(component["dag"]["tasks"])
            tasks.update(component["dag"]["tasks"])
    return tasks


def by_component(ir: dict, prefix: str) -> list[str]:
    """Task names whose component is `prefix` (comp-train-step, comp-train-step-2, ...)."""
    return sorted(
        (n for n, t in tasks_of(ir).items() if t["componentRef"]["name"].startswith(prefix)),
        key=lambda n: int(m.group(1)) if (m := re.search(r"-(\d+)$", n)) else 1,
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    """Every benchmark compiled once with the defaults (PyTorchJob launcher, cluster settings)."""
    out = tmp_path_factory.mktemp("ir")
    return {name: compile_pipeline(name, out / f"{name}.yaml", image=IMAGE) for name in BENCHMARKS}


def test_every_config_is_covered():
    assert sorted(BENCHMARKS) == available_configs()


@pytest.mark.parametrize("name", BENCHMARKS)
def test_compiled_pipeline_matches_golden(compiled, name):
    text = compiled[name].read_text()
    golden = GOLDEN / f"{name}.yaml"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"{golden} is missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), (
        f"{name}: compiled pipeline differs from {golden}; if intended, "
        "rewrite the golden files with UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize("name", BENCHMARKS)
def test_one_train_and_one_evaluate_task_per_step(compiled, name):
    ir = load_ir(compiled[name])
    steps = task_of(load_config(config_path(name))).num_steps
    trains, evals = by_component(ir, "comp-train-step"), by_component(ir, "comp-evaluate")
    assert len(trains) == len(evals) == steps
    assert len(by_component(ir, "comp-split-data")) == len(by_component(ir, "comp-report")) == 1
    tasks = tasks_of(ir)
    for t, (train, evaluation) in enumerate(zip(trains, evals, strict=True)):
        args = tasks[train]["inputs"]
        assert args["parameters"]["step"]["runtimeValue"]["constant"] == t
        loop_item = {"componentInputParameter": "pipelinechannel--seeds-loop-item"}
        assert args["parameters"]["seed"] == loop_item  # each chain trains with its seed
        assert tasks[evaluation]["inputs"]["parameters"]["seed"] == loop_item
        assert args["artifacts"]["manifest"] == {
            "componentInputArtifact": "pipelinechannel--split-data-manifest"
        }  # fmt: skip
        teacher = args["parameters"].get("teacher_uri")
        assert "teacher" not in args["artifacts"]  # an input artifact would be downloaded
        history = tasks[evaluation]["inputs"]["artifacts"].get("history_in")
        model = tasks[evaluation]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
        assert model["producerTask"] == train
        if t == 0:
            assert teacher is None and history is None
        else:
            assert teacher["taskOutputParameter"] == {
                "outputParameterKey": "model_uri",
                "producerTask": trains[t - 1],
            }
            assert history["taskOutputArtifact"]["producerTask"] == evals[t - 1]
    # The report collects the last evaluate's history of every chain (dsl.Collected).
    report = tasks[by_component(ir, "comp-report")[0]]["inputs"]
    (loop_name,) = [n for n, t in root_tasks(ir).items() if "parameterIterator" in t]
    assert report["artifacts"]["histories"]["taskOutputArtifact"] == {
        "outputArtifactKey": f"pipelinechannel--{evals[-1]}-history_out",
        "producerTask": loop_name,
    }  # fmt: skip
    assert report["parameters"]["seeds"] == {"componentInputParameter": "seeds"}
    selector = loop_component(ir)["dag"]["outputs"]["artifacts"]
    assert selector[f"pipelinechannel--{evals[-1]}-history_out"]["artifactSelectors"] == [
        {"outputArtifactKey": "history_out", "producerSubtask": evals[-1]}
    ]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_one_split_then_a_parallel_for_over_the_seeds_then_the_report(compiled, name):
    ir = load_ir(compiled[name])
    root = root_tasks(ir)
    assert sorted(t["componentRef"]["name"] for t in root.values()) == [
        "comp-for-loop-1", "comp-report", "comp-split-data"
    ]  # fmt: skip
    loop = root["for-loop-1"]
    # A run-time iterator over the `seeds` parameter (not a loop unrolled when compiling).
    assert loop["parameterIterator"] == {
        "itemInput": "pipelinechannel--seeds-loop-item",
        "items": {"inputParameter": "pipelinechannel--seeds"},
    }
    assert loop["inputs"]["parameters"]["pipelinechannel--seeds"] == {
        "componentInputParameter": "seeds"
    }  # fmt: skip
    assert loop["dependentTasks"] == ["split-data"]  # the chains share the one split
    assert root["report"]["dependentTasks"] == ["for-loop-1"]
    body = loop_component(ir)["dag"]["tasks"]
    # The loop holds the chain, train and evaluate per step, and nothing else.
    kinds = {re.sub(r"-\d+$", "", t["componentRef"]["name"]) for t in body.values()}
    assert kinds == {"comp-train-step", "comp-evaluate"}
    assert len(body) == 2 * task_of(load_config(config_path(name))).num_steps
    report = ir["components"]["comp-report"]["inputDefinitions"]
    assert report["artifacts"]["histories"]["isArtifactList"] is True
    assert report["parameters"]["seeds"]["parameterType"] == "LIST"


def test_voc_15_1_has_six_steps(compiled):
    ir = load_ir(compiled["voc_15-1"])
    assert len(by_component(ir, "comp-train-step")) == 6
    assert len(by_component(ir, "comp-evaluate")) == 6


def test_compiling_twice_gives_identical_files(tmp_path):
    """Byte-identical IR from separate processes (kfp's header comment prints dict defaults
    in an order that changes from process to process; the builder sorts them)."""
    code = (
        "import sys; from pipelines import compile_pipeline; "
        "compile_pipeline('voc_15-1', sys.argv[1], launcher='trainjob', image=sys.argv[2])"
    )
    files = [tmp_path / f"{i}.yaml" for i in range(3)]
    for path in files:
        subprocess.run([sys.executable, "-c", code, str(path), IMAGE], cwd=REPO, check=True,
                       timeout=120)  # fmt: skip
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()
    assert "'effect': 'NoSchedule', 'key': 'nvidia.com/gpu'" in files[0].read_text()


#: The compiled pipeline's parameters: (type, default); None = required.
PARAMETERS = {
    "dataset_uri": ("STRING", None),
    "s3_endpoint": ("STRING", "http://seaweedfs.kubeflow:9000"),
    "image": ("STRING", IMAGE),
    "namespace": ("STRING", ""),
    "gpus_per_pod": ("NUMBER_INTEGER", 1),
    "pods_per_step": ("NUMBER_INTEGER", 1),
    "epochs": ("NUMBER_INTEGER", 30),
    "seeds": ("LIST", [1]),  # the config's train.seed
    "overrides": ("LIST", []),
    "timeout_hours": ("NUMBER_DOUBLE", 48.0),
    "delete_after_done": ("BOOLEAN", True),
    "image_pull_policy": ("STRING", "IfNotPresent"),
    "cpu_request": ("STRING", "4"),
    "cpu_limit": ("STRING", ""),
    "memory_request": ("STRING", "16Gi"),
    "memory_limit": ("STRING", "32Gi"),
    "shm_size": ("STRING", "8Gi"),
    "tmp_size": ("STRING", "100Gi"),
    "service_account": ("STRING", ""),
    "node_selector": ("STRUCT", {}),
    "tolerations": (
        "LIST",
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    ),
    "trainjob_runtime": ("STRING", "dkd-torch-distributed"),
    "run_as_user": ("NUMBER_INTEGER", 1000),
    "kueue_queue": ("STRING", ""),
    "queue_timeout_hours": ("NUMBER_DOUBLE", 0.0),  # 0: timeout_hours
    "pretrained": ("STRING", ""),  # the toy config's model.pretrained: none
}


def parameters_of(ir: dict) -> dict[str, tuple]:
    params = ir["root"]["inputDefinitions"]["parameters"]
    return {k: (v["parameterType"], v.get("defaultValue")) for k, v in params.items()}


def test_pipeline_parameters_and_embedded_config(compiled):
    ir = load_ir(compiled["toy"])
    assert parameters_of(ir) == PARAMETERS
    params = ir["root"]["inputDefinitions"]["parameters"]
    # Required in the UI: a compiled pipeline has no local path to fall back on.
    assert not params["dataset_uri"].get("isOptional")
    assert ir["pipelineInfo"]["name"] == "dkd-toy"
    train = tasks_of(ir)["train-step"]["inputs"]["parameters"]
    embedded = yaml.safe_load(train["config_yaml"]["runtimeValue"]["constant"])
    assert embedded["task"] == {"dataset": "toy", "name": "4-1", "setting": "overlap",
                                "num_classes": 6}  # fmt: skip
    assert embedded["optim"]["momentum"] == 0.9  # resolved: defaults included
    assert train["launcher"]["runtimeValue"]["constant"] == "pytorchjob"
    # the optional inputs of step 0 are declared optional
    comp = ir["components"]["comp-train-step"]["inputDefinitions"]["parameters"]
    assert comp["teacher_uri"]["isOptional"] is True
    assert set(ir["root"]["outputDefinitions"]["artifacts"]) == {
        "report", "markdown", "plots", "history"
    }  # fmt: skip


def test_pod_defaults_are_the_cluster_specs():
    """One source of truth: the pipeline's pod parameters default to ClusterSpec's defaults."""
    import dataclasses

    from dkd_core.launch import ClusterSpec
    from pipelines.jobspec import POD_DEFAULTS

    spec = {f.name: f.default for f in dataclasses.fields(ClusterSpec)}
    for name, default in POD_DEFAULTS.items():
        if name in spec:
            expected = type(default)(spec[name]) if isinstance(default, dict | list) else spec[name]
            assert default == (expected if expected is not None else ""), name
        assert PARAMETERS[name][1] == default, name


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_task_that_reads_the_store_gets_the_endpoint_parameter(compiled, name):
    """The S3 endpoint is the `s3_endpoint` run parameter, not a constant in the pods' env."""
    ir = load_ir(compiled[name])
    assert "minio-service" not in compiled[name].read_text()
    for task, body in tasks_of(ir).items():
        params = body["inputs"]["parameters"]
        if "parameterIterator" in body:  # the loop itself, checked below
            continue
        if task in root_tasks(ir):
            assert params["s3_endpoint"] == {"componentInputParameter": "s3_endpoint"}, task
        else:  # inside the seeds' loop: the loop's copy of the parameter
            assert params["s3_endpoint"] == {
                "componentInputParameter": "pipelinechannel--s3_endpoint"
            }, task  # fmt: skip
    loop = root_tasks(ir)["for-loop-1"]["inputs"]["parameters"]
    assert loop["pipelinechannel--s3_endpoint"] == {"componentInputParameter": "s3_endpoint"}
    for executor in ir["deploymentSpec"]["executors"].values():
        env = executor["container"].get("env", [])
        assert not [e for e in env if e["name"] == "S3_ENDPOINT"]


def test_the_image_is_the_components_and_the_jobs(tmp_path):
    path = compile_pipeline("toy", tmp_path / "p.yaml", image="reg.example/dkd:7")
    ir = load_ir(path)
    images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert images == {"reg.example/dkd:7"}
    assert parameters_of(ir)["image"] == ("STRING", "reg.example/dkd:7")
    train = tasks_of(ir)["train-step"]["inputs"]["parameters"]
    assert train["image"] == {"componentInputParameter": "pipelinechannel--image"}
    loop = root_tasks(ir)["for-loop-1"]["inputs"]["parameters"]
    assert loop["pipelinechannel--image"] == {"componentInputParameter": "image"}


def test_compiling_for_a_cluster_without_an_image_is_refused(tmp_path, capsys):
    with pytest.raises(DKDError, match="no image for the cluster"):
        build_pipeline(config_path("toy"))
    out = tmp_path / "toy.yaml"
    assert main(["compile", "toy", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {builder.NO_IMAGE}"]
    assert "--image" in err[0] and "make images push IMAGE=" in err[0]
    assert not out.exists()
    build_pipeline(config_path("toy"), launcher="local", cluster=False)  # kfp.local: no image


def test_cluster_settings_of_the_tasks(compiled):
    ir = load_ir(compiled["toy"])
    tasks = tasks_of(ir)
    for name in by_component(ir, "comp-train-step"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2
        assert tasks[name]["retryPolicy"]["backoffDuration"] == "60s"
        # Cached: a resubmitted run reuses the steps that succeeded (KFP caches only those).
        assert tasks[name]["cachingOptions"]["enableCache"] is True
    assert tasks["evaluate"]["cachingOptions"]["enableCache"] is True
    executors = ir["deploymentSpec"]["executors"]
    # PyTorchJob: the training (and its evaluation) runs in the job's pods; the evaluate
    # component shows the job's metrics, so neither component pod asks for a GPU.
    assert "resources" not in executors["exec-train-step"]["container"]
    assert "resources" not in executors["exec-evaluate"]["container"]
    platform = ir["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secret = platform["exec-train-step"]["secretAsEnv"][0]
    assert secret["secretName"] == "mlpipeline-minio-artifact"
    assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == {
        ("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY")
    }  # fmt: skip
    # The run id (for the jobs' labels) comes from the pod's label, outside the cache key.
    assert platform["exec-train-step"]["fieldPathAsEnv"] == [
        {"name": "KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"}
    ]
    assert "run_id" not in tasks["train-step"]["inputs"]["parameters"]
    assert "emptyDirMounts" not in platform["exec-evaluate"]
    assert platform["exec-evaluate"]["secretAsEnv"][0]["secretName"] == "mlpipeline-minio-artifact"
    # The report may read files beside each step's checkpoint: the evaluate's S3 access.
    assert platform["exec-report"]["secretAsEnv"] == platform["exec-evaluate"]["secretAsEnv"]


def test_local_launcher_takes_its_gpus_from_the_parameter(tmp_path):
    path = compile_pipeline(
        "toy", tmp_path / "p.yaml", launcher="local", gpus_per_pod=4, image="reg/dkd:dev",
        s3_secret="dkd-s3", s3_secret_keys={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID"},
    )  # fmt: skip
    ir = load_ir(path)
    container = ir["deploymentSpec"]["executors"]["exec-train-step"]["container"]
    # The run's gpus_per_pod, resolved when the task starts, not the compile-time 4.
    accelerator = container["resources"]["accelerator"]
    assert (
        accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus_per_pod']}}"
    )
    assert accelerator["resourceType"] == "nvidia.com/gpu"
    train = tasks_of(ir)["train-step"]["inputs"]["parameters"]
    assert train["pipelinechannel--gpus_per_pod"] == {
        "componentInputParameter": "pipelinechannel--gpus_per_pod"
    }  # fmt: skip
    assert train["gpus_per_pod"] == {"componentInputParameter": "pipelinechannel--gpus_per_pod"}
    assert parameters_of(ir)["gpus_per_pod"] == ("NUMBER_INTEGER", 4)
    assert container["image"] == "reg/dkd:dev"
    platform = ir["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-train-step"]["secretAsEnv"][0]["secretName"] == "dkd-s3"
    assert platform["exec-train-step"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"


def test_job_s3_secret_has_its_own_key_mapping(tmp_path):
    def job_access(**options) -> tuple:
        ir = load_ir(compile_pipeline("toy", tmp_path / "p.yaml", image=IMAGE, **options))
        train = tasks_of(ir)["train-step"]["inputs"]["parameters"]
        component = ir["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        keys = component["exec-train-step"]["secretAsEnv"][0]["keyToEnv"]
        return (
            train["s3_secret"]["runtimeValue"]["constant"],
            train["s3_secret_keys"]["runtimeValue"]["constant"],
            {k["secretKey"]: k["envVar"] for k in keys},
        )

    kfp_keys = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
    # The same Secret serves both: the same mapping.
    assert job_access() == ("mlpipeline-minio-artifact", kfp_keys, kfp_keys)
    # Another Secret for the jobs: its keys under their own names, not KFP's mapping.
    own = {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    }
    assert job_access(job_s3_secret="minio-credentials") == ("minio-credentials", own, kfp_keys)
    given = {"id": "AWS_ACCESS_KEY_ID", "key": "AWS_SECRET_ACCESS_KEY"}
    assert job_access(job_s3_secret="team-s3", job_s3_secret_keys=given) == (
        "team-s3", given, kfp_keys,
    )  # fmt: skip


def test_job_s3_secret_keys_on_the_command_line(tmp_path):
    out = tmp_path / "toy.yaml"
    argv = ["compile", "toy", "--image", IMAGE, "--output", str(out), "--job-s3-secret", "s",
            "--job-s3-secret-keys", "id=AWS_ACCESS_KEY_ID,key=AWS_SECRET_ACCESS_KEY"]  # fmt: skip
    assert main(argv) == 0
    train = tasks_of(load_ir(out))["train-step"]["inputs"]["parameters"]
    assert train["s3_secret_keys"]["runtimeValue"]["constant"] == {
        "id": "AWS_ACCESS_KEY_ID", "key": "AWS_SECRET_ACCESS_KEY"
    }  # fmt: skip
    assert main([*argv[:-1], "id"]) == 2


def test_local_build_has_no_kubernetes_settings(tmp_path):
    from kfp import compiler

    pipeline = build_pipeline(config_path("toy"), launcher="local", gpus_per_pod=0, cluster=False)
    compiler.Compiler().compile(pipeline, str(tmp_path / "p.yaml"))
    ir = load_ir(tmp_path / "p.yaml")
    assert "platforms" not in ir
    for executor in ir["deploymentSpec"]["executors"].values():
        assert "resources" not in executor["container"] and "env" not in executor["container"]
    assert all("retryPolicy" not in t for t in tasks_of(ir).values())


def test_components_on_another_image():
    other = components.with_image("registry.example/dkd:dev")
    for name in ("split_data", "train_step", "evaluate", "report"):
        spec = getattr(other, name).component_spec
        assert spec.implementation.container.image == "registry.example/dkd:dev"
        default = getattr(components, name).component_spec
        assert default.implementation.container.image == components.LOCAL_IMAGE
        assert spec.inputs == default.inputs and spec.outputs == default.outputs


# -- errors a user meets ------------------------------------------------------------


def test_unknown_pipeline_lists_the_configs(tmp_path, capsys):
    assert (
        main(["compile", "voc_15-2", "--image", IMAGE, "--output", str(tmp_path / "x.yaml")]) == 2
    )
    err = capsys.readouterr().err
    assert "unknown pipeline 'voc_15-2'" in err and "voc_15-1" in err and "toy" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("task:\n  dataset: voc\n  nmae: 15-1\n", "unknown key 'task.nmae'"),
        ("task:\n  dataset: voc\n  name: 15-7\n", "15-7"),
        ("optim:\n  epochs: many\n", "'optim.epochs': expected int"),
        ("run: [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_config_fails_before_compiling(tmp_path, capsys, text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(DKDError, match=re.escape(expected)):
        build_pipeline(bad, image=IMAGE)
    assert (
        main(["compile", str(bad), "--image", IMAGE, "--output", str(tmp_path / "out.yaml")]) == 2
    )
    err = capsys.readouterr().err
    assert expected in err
    assert not list(tmp_path.glob("*out*"))


def test_bad_builder_options():
    with pytest.raises(DKDError, match="launcher 'slurm'"):
        build_pipeline(config_path("toy"), launcher="slurm", image=IMAGE)
    with pytest.raises(DKDError, match="gpus_per_pod"):
        build_pipeline(config_path("toy"), gpus_per_pod=-1, image=IMAGE)
    with pytest.raises(DKDError, match="not an image reference"):
        build_pipeline(config_path("toy"), image="reg/dkd: 1")
    with pytest.raises(DKDError, match=r"\.yaml"):
        compile_pipeline("toy", "pipeline.json", image=IMAGE)


def test_submit_to_an_unreachable_host_is_one_line():
    started = time.monotonic()
    dataset = ["--image", IMAGE, "--data", "s3://datasets/toy"]
    result = cli("submit", "toy", "--host", "http://127.0.0.1:9", *dataset)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach Kubeflow Pipelines at http://127.0.0.1:9" in lines[0]
    assert "KFP_HOST" in lines[0]
    assert time.monotonic() - started < 60


def test_submit_without_host_says_to_set_kfp_host():
    env = {k: v for k, v in os.environ.items() if k != "KFP_HOST"}
    result = cli("submit", "toy", "--image", IMAGE, "--data", "s3://datasets/toy", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "set KFP_HOST" in result.stderr


class _Handler(http.server.BaseHTTPRequestHandler):
    status, body, content_type = 200, b"{}", "application/json"

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_kfp():
    """An HTTP server whose healthz answer the test sets."""
    handler = type("Handler", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}", handler=handler)
    server.shutdown()
    server.server_close()


def test_unauthorised_host_says_to_set_a_token(fake_kfp):
    fake_kfp.handler.status = 401
    with pytest.raises(DKDError, match=r"HTTP 401.*set KFP_TOKEN"):
        check_host(fake_kfp.url)
    fake_kfp.handler.status, fake_kfp.handler.body = 200, b"<html>login</html>"
    fake_kfp.handler.content_type = "text/html"
    with pytest.raises(DKDError, match="login page"):
        check_host(fake_kfp.url)
    fake_kfp.handler.body = b'{"commit_sha": "x", "multi_user": false}'
    check_host(fake_kfp.url)


def test_resolve_host(monkeypatch):
    monkeypatch.setenv("KFP_HOST", "localhost:8080/")
    assert resolve_host(None) == "http://localhost:8080"
    assert resolve_host("https://kfp.example") == "https://kfp.example"
    monkeypatch.delenv("KFP_HOST")
    with pytest.raises(DKDError, match="set KFP_HOST"):
        resolve_host(None)


class FakeClient:
    """The part of kfp.Client that `submit` uses."""

    def __init__(self, existing: str | None = None):
        self.existing = existing
        self.calls: list[tuple] = []

    def list_pipelines(self, filter=None, namespace=None, page_size=10):
        self.calls.append(("list_pipelines", json.loads(filter), namespace))
        found = [SimpleNamespace(pipeline_id=self.existing)] if self.existing else None
        return SimpleNamespace(pipelines=found)

    def upload_pipeline(self, path, pipeline_name=None, description=None, namespace=None):
        self.calls.append(("upload_pipeline", pipeline_name, namespace))
        return SimpleNamespace(pipeline_id="p-new")

    def list_pipeline_versions(self, pipeline_id, sort_by=""):
        version = SimpleNamespace(pipeline_version_id="v-first")
        return SimpleNamespace(pipeline_versions=[version])

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id, description):
        self.calls.append(("upload_pipeline_version", pipeline_id, pipeline_version_name))
        return SimpleNamespace(pipeline_version_id="v-next")

    def create_experiment(self, name, namespace=None):
        self.calls.append(("create_experiment", name, namespace))
        return SimpleNamespace(experiment_id="e-1")

    def run_pipeline(self, experiment_id, job_name, params, pipeline_id, version_id):
        self.calls.append(("run_pipeline", experiment_id, pipeline_id, version_id, params))
        return SimpleNamespace(run_id="r-1")


def test_submit_uploads_a_new_pipeline_or_a_new_version(tmp_path):
    package = compile_pipeline("toy", tmp_path / "toy.yaml", image=IMAGE)
    client = FakeClient()
    result = submit(package, "dkd-toy", "d", {"epochs": 3}, host="http://kfp:8080", client=client)
    assert result.url == "http://kfp:8080/#/runs/details/r-1"
    assert client.calls[1] == ("upload_pipeline", "dkd-toy", None)
    assert client.calls[-1] == ("run_pipeline", "e-1", "p-new", "v-first", {"epochs": 3})

    client = FakeClient(existing="p-old")
    result = submit(
        package, "dkd-toy", "d", {}, host="http://kfp:8080", experiment="exp", namespace="team",
        client=client,
    )  # fmt: skip
    # The pipeline is looked up in the namespace it was uploaded to.
    listed = client.calls[0]
    assert listed[0] == "list_pipelines" and listed[2] == "team"
    assert listed[1]["predicates"][0] == {
        "operation": "EQUALS", "key": "display_name", "stringValue": "dkd-toy"
    }  # fmt: skip
    assert client.calls[1][:2] == ("upload_pipeline_version", "p-old")
    assert client.calls[1][2].startswith("dkd-toy-")
    assert ("create_experiment", "exp", "team") in client.calls
    assert client.calls[-1][2:4] == ("p-old", "v-next")


def test_submit_turns_server_errors_into_one_line(tmp_path):
    import kfp_server_api

    class Refusing(FakeClient):
        def list_pipelines(self, **kw):
            raise kfp_server_api.ApiException(status=403, reason="Forbidden")

    with pytest.raises(DKDError, match=r"HTTP 403 Forbidden.*KFP_TOKEN"):
        submit(tmp_path / "p.yaml", "dkd-toy", "", {}, host="http://kfp", client=Refusing())


def make_command(target: str, *variables: str) -> list[str]:
    """The `python -m pipelines ...` arguments `make -n TARGET VAR=...` would run."""
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGE", "DATA", "PARAMS")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", target, *variables], cwd=REPO,
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    lines = out.replace("\\\n", " ").splitlines()
    command = shlex.split(next(line for line in lines if "-m pipelines" in line))
    return command[command.index("pipelines") + 1 :]


def test_make_submit_builds_the_request(tmp_path, monkeypatch, capsys):
    """make submit -> python -m pipelines submit -> the requests kfp.Client sends to KFP."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of this machine
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    with kfp_api_server() as api:
        argv = make_command(
            "submit", "PIPELINE=voc_15-1", "IMAGE=registry.example.org/ml/dkd:0.1.0",
            "DATA=s3://mlpipeline/shared/VOC2012", f"KFP_HOST={api.url}", "SEEDS=1,2,3",
            'PARAMS=pods_per_step=2 gpus_per_pod=4 delete_after_done=false '
            'tolerations=[{"key":"nvidia.com/gpu","operator":"Exists"}]',
        )  # fmt: skip
        assert argv[:4] == ["submit", "voc_15-1", "--image", "registry.example.org/ml/dkd:0.1.0"]
        assert main(argv) == 0
        assert main(argv) == 0  # the second submit adds a version to the same pipeline
    (upload,) = api.calls("POST", ".*/pipelines/upload")
    assert upload.query["name"] == "dkd-voc-15-1"
    ir = load_ir_text(upload.body)
    images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.org/ml/dkd:0.1.0"}
    assert len(api.calls("POST", ".*/pipelines/upload_version")) == 1
    first_run = api.calls("POST", ".*/runs")[0].body
    assert first_run["runtime_config"]["parameters"] == {
        "dataset_uri": "s3://mlpipeline/shared/VOC2012", "pods_per_step": 2, "gpus_per_pod": 4,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "delete_after_done": False, "seeds": [1, 2, 3],
    }  # fmt: skip
    assert first_run["pipeline_version_reference"] == {
        "pipeline_id": "p-1", "pipeline_version_id": "v-of-p-1"
    }  # fmt: skip


def test_make_passes_seeds_to_every_run_command():
    assert make_command("demo", "SEEDS=1,2")[-2:] == ["--seeds", "1,2"]
    assert "--seeds" not in make_command("demo")
    run = make_command("run", "PIPELINE=voc_15-1", "DATA=/data/VOC2012", "SEEDS=1,2,3")
    assert run[run.index("--seeds") + 1] == "1,2,3"
    compiled = make_command("compile", "IMAGE=reg/dkd:1", "SEEDS=4,5", "PARALLEL_SEEDS=1")
    assert compiled[compiled.index("--seeds") + 1] == "4,5"
    assert compiled[compiled.index("--parallel-seeds") + 1] == "1"
    submit = make_command("submit", "IMAGE=reg/dkd:1", "PARALLEL_SEEDS=2")
    assert submit[submit.index("--parallel-seeds") + 1] == "2"


def load_ir_text(body: bytes) -> dict:
    """The pipeline spec in a multipart upload's body."""
    text = body.decode()
    start = text.index("# PIPELINE DEFINITION")
    end = text.rindex("\r\n--")
    spec, *platform = yaml.safe_load_all(text[start:end])
    for doc in platform:
        spec.setdefault("platforms", {}).update(doc["platforms"])
    return spec


def test_submit_in_a_namespace_finds_the_pipeline_there(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    argv = ["submit", "toy", "--image", IMAGE, "--namespace", "team-a",
            "--data", "s3://mlpipeline/private/team-a/toy"]  # fmt: skip
    with kfp_api_server() as api:
        assert main([*argv, "--host", api.url]) == 0
        assert main([*argv, "--host", api.url]) == 0
    lists = api.calls("GET", ".*/pipelines")
    assert [r.query.get("namespace") for r in lists] == ["team-a", "team-a"]
    assert [r.query["namespace"] for r in api.calls("POST", ".*/pipelines/upload")] == ["team-a"]
    assert len(api.calls("POST", ".*/pipelines/upload_version")) == 1
    assert {r.body["namespace"] for r in api.calls("POST", ".*/experiments")} == {"team-a"}
    # The jobs' namespace is left to the run: the component pod's own (team-a).
    for run in api.calls("POST", ".*/runs"):
        assert "namespace" not in run.body["runtime_config"]["parameters"]


def test_make_compile_and_submit_without_an_image_are_refused():
    assert "--image" not in make_command("compile", "PIPELINE=toy")
    assert make_command("compile", "PIPELINE=toy", "IMAGE=r/dkd:1")[2:4] == ["--image", "r/dkd:1"]
    argv = make_command("submit", "PIPELINE=toy", "DATA=s3://mlpipeline/shared/toy")
    assert "--image" not in argv and argv[2:4] == ["--data", "s3://mlpipeline/shared/toy"]
    result = cli(*argv, "--host", "http://127.0.0.1:9")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {builder.NO_IMAGE}"]
    # make run (kfp.local) takes no image; without DATA= the config's data.root
    assert make_command("run", "PIPELINE=toy") == ["run", "toy"]


def test_params_are_typed_by_the_pipeline():
    pipeline = build_pipeline(config_path("toy"), cluster=False)
    args = parse_params(
        pipeline,
        ["epochs=3", "timeout_hours=1.5", "overrides=[optim.lr=0.1, data.num_workers=0]",
         "dataset_uri=s3://data/toy"],
    )  # fmt: skip
    assert args == {
        "epochs": 3, "timeout_hours": 1.5, "overrides": ["optim.lr=0.1", "data.num_workers=0"],
        "dataset_uri": "s3://data/toy",
    }  # fmt: skip
    assert parse_params(pipeline, ["overrides=a=1,b=2"]) == {"overrides": ["a=1", "b=2"]}
    with pytest.raises(DKDError, match="no such parameter; parameters: dataset_uri"):
        parse_params(pipeline, ["epoch=3"])
    with pytest.raises(DKDError, match="expected integer"):
        parse_params(pipeline, ["epochs=three"])
    with pytest.raises(DKDError, match="key=value"):
        parse_params(pipeline, ["epochs"])
    pool = {"nvidia.com/gpu.product": "H100", "pool": "a"}
    assert parse_params(pipeline, ["node_selector=nvidia.com/gpu.product=H100,pool=a"]) == {
        "node_selector": pool
    }
    assert parse_params(pipeline, ['node_selector={"nvidia.com/gpu.product": H100, pool: a}']) == {
        "node_selector": pool
    }
    with pytest.raises(DKDError, match=r"node_selector=.*expected a mapping"):
        parse_params(pipeline, ["node_selector=[a]"])
    tolerations = '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]'
    assert parse_params(pipeline, [f"tolerations={tolerations}"])["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert parse_params(pipeline, ["delete_after_done=false"]) == {"delete_after_done": False}


def test_task_clock_times_tasks_from_kfp_local_records():
    clock = TaskClock()

    def record(message: str, created: float) -> logging.LogRecord:
        r = logging.LogRecord("root", logging.INFO, __file__, 0, message, None, None)
        r.created = created
        return r

    assert clock.filter(record("Executing task \x1b[96m'train-step'\x1b[0m", 10.0))
    assert clock.filter(record("Streamed logs:\n", 10.5))
    assert clock.filter(
        record("Task \x1b[96m'train-step'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m", 12.5)
    )
    assert clock.seconds == {"train-step": 2.5}


def test_compile_command_writes_the_file(tmp_path, capsys):
    out = tmp_path / "sub" / "toy.yaml"
    assert (
        main(["compile", "toy", "--launcher", "trainjob", "--image", IMAGE, "--output", str(out)])
        == 0
    )
    assert f"-> {out}" in capsys.readouterr().out
    ir = load_ir(out)
    constant = tasks_of(ir)["train-step"]["inputs"]["parameters"]["launcher"]["runtimeValue"]
    assert constant["constant"] == "trainjob"
    assert json.dumps(ir)  # plain data


def test_submit_refuses_a_dataset_the_cluster_cannot_read(tmp_path, monkeypatch):
    from pipelines.submit import check_dataset_uri

    with pytest.raises(DKDError, match="not an s3:// URI"):
        check_dataset_uri("data/VOC2012", env={})
    check_dataset_uri("s3://datasets/VOC2012", env={})  # store unreachable from here: no check
    env = {k: v for k, v in os.environ.items() if k not in ("S3_ENDPOINT", "MINIO_ENDPOINT")}
    result = cli("submit", "toy", "--image", IMAGE, "--host", "http://127.0.0.1:9",
                 "--data", "data/toy", env=env)  # fmt: skip
    assert result.returncode == 2
    assert "not an s3:// URI" in result.stderr and "Traceback" not in result.stderr
    result = cli("submit", "toy", "--image", IMAGE, "--host", "http://127.0.0.1:9", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: no dataset: pass DATA=s3://bucket/prefix (make submit) or --data s3://bucket/prefix"
    ]


def test_a_profile_may_read_only_its_own_and_the_shared_prefix():
    from pipelines.submit import check_dataset_uri

    secrets = ("mlpipeline-minio-artifact",)
    for ok in ("s3://mlpipeline/private/team-a/VOC2012", "minio://mlpipeline/shared/VOC2012/",
               "s3://mlpipeline/shared/x"):  # fmt: skip
        check_dataset_uri(ok, env={}, namespace="team-a", profile_secrets=secrets)
    for bad in ("s3://dkd-datasets/VOC2012", "s3://mlpipeline/private/team-b/VOC2012",
                "s3://mlpipeline/VOC2012", "s3://mlpipeline/private/team-ab/x"):  # fmt: skip
        with pytest.raises(DKDError) as e:
            check_dataset_uri(bad, env={}, namespace="team-a", profile_secrets=secrets)
        assert str(e.value) == (
            f"dataset_uri {bad}: the keys of profile team-a (Secret mlpipeline-minio-artifact) "
            "may read only s3://mlpipeline/private/team-a/... or s3://mlpipeline/shared/...; "
            "upload the dataset there, or give the pods keys that can read it (--s3-secret, "
            "--job-s3-secret)"
        )
    # Other keys, or no profile: no rule about where the dataset lies.
    check_dataset_uri("s3://dkd-datasets/VOC2012", env={}, namespace="team-a")
    check_dataset_uri("s3://dkd-datasets/VOC2012", env={}, profile_secrets=secrets)


def test_submit_checks_the_dataset_against_the_profile(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    argv = ["submit", "toy", "--image", IMAGE, "--host", "http://127.0.0.1:9",
            "--namespace", "team-a", "--data", "s3://dkd-datasets/toy"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "may read only s3://mlpipeline/private/team-a/" in err[0]
    # With keys of its own for both the components and the jobs, the profile's rule is moot;
    # what fails next is the unreachable host.
    own = ["--s3-secret", "team-s3", "--s3-secret-keys", "a=AWS_ACCESS_KEY_ID"]
    assert main([*argv, *own]) == 2
    assert "cannot reach Kubeflow Pipelines" in capsys.readouterr().err


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_the_kind_tests_submit_arguments_are_valid(launcher, monkeypatch):
    """The kind test cannot run here; what it submits is checked against the pipeline."""
    from pipelines.__main__ import build_parser, submit_request
    from tests.kind.test_kind_e2e import submit_args

    monkeypatch.delenv("DKD_KIND_SUBMIT_PARAMS", raising=False)
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    argv = [
        "submit",
        "toy",
        *submit_args("dkd:kind-e2e-cpu", "s3://mlpipeline/shared/e2e", launcher),
    ]
    args = build_parser().parse_args(argv)
    assert args.launcher == launcher
    _, params = submit_request(args)
    assert params["pods_per_step"] == 2 and params["delete_after_done"] is False
    assert "namespace" not in params  # the component pods' own


#: `--param name=...`, `PARAMS="name=... name=..."` and `parameter `name`` in the docs.
_DOC_PARAMS = re.compile(r"--param[ =]([a-z_]+)=|PARAMS=\"([^\"]*)\"")


@pytest.mark.parametrize(
    "doc",
    ["README.md", "pipelines/README.md", *sorted(f"docs/{p.name}" for p in REPO.glob("docs/*.md"))],
)
def test_the_docs_name_only_parameters_that_exist(doc):
    pipeline = build_pipeline(config_path("toy"), image=IMAGE)
    known = set(pipeline.component_spec.inputs)
    named = set()
    for single, many in _DOC_PARAMS.findall((REPO / doc).read_text()):
        items = [single + "="] if single else many.split()
        named |= {m.group(1) for item in items if (m := re.match(r"([a-z_]+)=", item))}
    assert named <= known, f"{doc} names parameters the pipeline lacks: {sorted(named - known)}"


def test_the_kfp_object_store_overlay_uses_the_pipelines_endpoint():
    """k8s/overlays/kfp-object-store points the training pods at the store the pipelines
    default to (KFP 2.17's Service seaweedfs), not a Service that no longer exists."""
    from pipelines.jobspec import DEFAULT_S3_ENDPOINT

    overlay = yaml.safe_load(
        (REPO / "k8s/overlays/kfp-object-store/kustomization.yaml").read_text()
    )
    values = [
        op["value"]["value"]
        for patch in overlay["patches"]
        for op in yaml.safe_load(patch.get("patch", "[]")) or []
        if isinstance(op.get("value"), dict) and op["value"].get("name") == "S3_ENDPOINT"
    ]
    assert values == [DEFAULT_S3_ENDPOINT] == ["http://seaweedfs.kubeflow:9000"]
    install = (REPO / "k8s/kind/install.sh").read_text()
    assert "port-forward svc/seaweedfs 9000:9000" in install


# -- ImageNet weights: the `pretrained` parameter ------------------------------------------


@pytest.mark.parametrize("name", [n for n in BENCHMARKS if n != "toy"])
def test_paper_pipelines_take_their_weights_by_uri(compiled, name):
    text = compiled[name].read_text()
    ir = load_ir(compiled[name])
    assert parameters_of(ir)["pretrained"] == ("STRING", "torchvision:resnet101")
    assert "weights/" not in text  # no local weights path compiled in
    for task in by_component(ir, "comp-train-step"):
        assert tasks_of(ir)[task]["inputs"]["parameters"]["pretrained"] == {
            "componentInputParameter": "pipelinechannel--pretrained"
        }


def test_the_pretrained_parameter_is_what_the_steps_read():
    from pipelines import jobspec

    assert jobspec.step_settings("s3://d", 0, ["optim.lr=0.1"], 3, " s3://w/r-1.pth ") == [
        "data.root=s3://d", "model.pretrained=s3://w/r-1.pth", "optim.lr=0.1", "train.seed=3",
    ]  # fmt: skip
    assert "model.pretrained" not in " ".join(jobspec.step_settings("s3://d", 0, [], 3, ""))


def local_weights_config(tmp_path: Path) -> Path:
    config = tmp_path / "mine.yaml"
    text = config_path("toy").read_text().replace("pretrained: null", "pretrained: w/r-1.pth")
    config.write_text(text)
    return config


def test_a_local_weights_path_is_never_compiled_for_a_cluster(tmp_path, capsys):
    config = local_weights_config(tmp_path)
    out = tmp_path / "p.yaml"
    assert main(["compile", str(config), "--image", IMAGE, "--output", str(out)]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith(f"error: {config}: model.pretrained=w/r-1.pth: a file on this machine")
    assert (
        "use torchvision:resnet101" in err
        and "--param pretrained=" in err
        and "fetch weights" in err
    )
    assert not out.exists()
    build_pipeline(config, launcher="local", cluster=False)  # local runs read local files


def test_submit_and_render_job_refuse_a_local_pretrained_parameter(capsys):
    for argv in (
        ["render-job", "voc_15-1", "--step", "0", "--image", IMAGE],
        ["submit", "voc_15-1", "--image", IMAGE, "--host", "http://127.0.0.1:9",
         "--data", "s3://datasets/VOC2012"],
    ):  # fmt: skip
        assert main([*argv, "--param", "pretrained=/data/resnet101-63fe2227.pth"]) == 2
        (err,) = capsys.readouterr().err.strip().splitlines()
        assert err.startswith("error: pretrained=/data/resnet101-63fe2227.pth: a file on this")
    assert builder.run_seeds(config_path("voc_15-1"), {"pretrained": "s3://w/r.pth"}, True) == [1]
    assert builder.run_seeds(config_path("voc_15-1"), {"pretrained": "w/r.pth"}) == [1]  # local
