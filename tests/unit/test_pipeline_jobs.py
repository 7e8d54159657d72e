"""A train step's parameters -> its job: `pipelines.jobspec`, the `train_step` component's
use of it, and `python -m pipelines render-job` (which must not import torch)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import components
from dkd_core.errors import DKDError
from dkd_core.launch import KFP_POD_NAME_LABEL, KFP_RUN_ID_LABEL, label_value
from pipelines import jobspec
from pipelines.__main__ import main

REPO = Path(__file__).parents[2]
IMAGE = "registry.example.org/ml/dkd:0.1.0"


# -- jobspec ----------------------------------------------------------------------------


def test_an_empty_namespace_is_the_pods_own(tmp_path):
    own = tmp_path / "namespace"
    own.write_text("team-a\n")
    assert jobspec.resolve_namespace("", own) == "team-a"
    assert jobspec.resolve_namespace("jobs", own) == "jobs"
    with pytest.raises(DKDError) as e:
        jobspec.resolve_namespace("", tmp_path / "missing")
    assert "namespace is empty" in str(e.value) and "\n" not in str(e.value)


def test_pod_parameters_become_the_cluster_spec(tmp_path, monkeypatch):
    own = tmp_path / "namespace"
    own.write_text("team-a")
    monkeypatch.setattr(jobspec, "SERVICE_ACCOUNT_NAMESPACE", own)
    params = {
        "namespace": "", "image": IMAGE, "gpus_per_pod": 4, "cpu_request": "16",
        "cpu_limit": "", "memory_request": "64Gi", "memory_limit": "96Gi", "shm_size": "16Gi",
        "image_pull_policy": "Always", "service_account": "",
        "node_selector": {"nvidia.com/gpu.present": True},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "s3_secret": "mlpipeline-minio-artifact",
        "s3_secret_keys": {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"},
    }  # fmt: skip
    env = {"S3_ENDPOINT": "http://seaweedfs.kubeflow:9000", "HOME": "/root",
           "KFP_RUN_ID": "0b9c2f4e-5d6a-4c1b-9e8f-123456789abc", "KFP_POD_NAME": "p" * 80}  # fmt: skip
    spec = jobspec.cluster_spec(params, env)
    assert spec.namespace == "team-a"
    assert (spec.cpu_request, spec.cpu_limit, spec.memory_request, spec.memory_limit) == (
        "16", None, "64Gi", "96Gi",
    )  # fmt: skip
    assert spec.trainjob_runtime == "dkd-torch-distributed"
    assert spec.shm_size == "16Gi" and spec.image_pull_policy == "Always"
    assert spec.service_account is None
    assert dict(spec.node_selector) == {"nvidia.com/gpu.present": "true"}
    assert spec.tolerations == (params["tolerations"][0],)
    assert dict(spec.s3_secret_env) == {
        "AWS_ACCESS_KEY_ID": "accesskey", "AWS_SECRET_ACCESS_KEY": "secretkey"
    }  # fmt: skip
    # the KFP run id also names the run in every metric series the job exports
    assert dict(spec.env) == {
        "S3_ENDPOINT": "http://seaweedfs.kubeflow:9000", "DKD_RUN_ID": env["KFP_RUN_ID"],
    }  # fmt: skip
    labels = spec.all_labels()
    assert labels[KFP_RUN_ID_LABEL] == env["KFP_RUN_ID"]
    assert labels[KFP_POD_NAME_LABEL] == label_value("p" * 80)  # label values stop at 63
    assert len(labels[KFP_POD_NAME_LABEL]) <= 63
    assert spec.delete_after_done is True and spec.tmp_size == "100Gi"  # the defaults


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tolerations": [{"key": "a", "effect": "NoSchedule", "tolerationSecond": 5}]},
         "pipeline parameter tolerations: unknown field 'tolerationSecond'"),
        ({"tolerations": {"key": "a"}}, "pipeline parameter tolerations: expected a list"),
        ({"node_selector": ["pool=a"]}, "pipeline parameter node_selector: expected a mapping"),
        ({"gpus_per_pod": -1}, "pipeline parameter gpus_per_pod: expected an integer >= 0"),
        ({"image": ""}, "pipeline parameter image is empty"),
        ({"memory_limit": "lots"}, "memory_limit 'lots' is not a Kubernetes quantity"),
    ],
)  # fmt: skip
def test_bad_pod_parameters_are_one_line(params, message):
    base = {"namespace": "team-a", "image": IMAGE, "gpus_per_pod": 1}
    with pytest.raises(DKDError) as e:
        jobspec.cluster_spec({**base, **params}, env={})
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "uri", ["minio://mlpipeline/v2/artifacts/p/r/train-step/u/model", "s3://b/k/model/", "/tmp/a/m"]
)
def test_the_config_lies_beside_the_model(uri):
    from dkd_core.locations import parent
    from dkd_core.storage import join

    assert jobspec.step_config_uri(uri) == join(parent(uri), "config.yaml")


def test_launch_options_and_clean_up():
    assert jobspec.launch_options({"timeout_hours": 2.5}) == {
        "timeout_seconds": 9000.0, "queue_timeout_seconds": 9000.0
    }  # fmt: skip
    options = jobspec.launch_options({"timeout_hours": 2.5, "queue_timeout_hours": 6})
    assert options == {"timeout_seconds": 9000.0, "queue_timeout_seconds": 21600.0}
    with pytest.raises(DKDError, match="queue_timeout_hours: expected hours >= 0"):
        jobspec.launch_options({"timeout_hours": 2.5, "queue_timeout_hours": -1})
    base = {"namespace": "team-a", "image": IMAGE}
    assert jobspec.cluster_spec({**base, "delete_after_done": False}, {}).delete_after_done is False
    with pytest.raises(DKDError, match="delete_after_done: expected true/false"):
        jobspec.cluster_spec({**base, "delete_after_done": "no"}, {})


# -- the train_step component ---------------------------------------------------------


def artifact(path: Path) -> SimpleNamespace:
    return SimpleNamespace(uri=str(path), path=str(path), metadata={})


def test_train_step_maps_its_parameters_through_jobspec(tmp_path, monkeypatch):
    """The component's body, run here with a recording launcher instead of a cluster."""
    import dkd_core.launch

    own = tmp_path / "namespace"
    own.write_text("team-a")
    monkeypatch.setattr(jobspec, "SERVICE_ACCOUNT_NAMESPACE", own)
    monkeypatch.setenv("S3_ENDPOINT", "http://elsewhere:9000")  # restored after the test
    monkeypatch.setenv("KFP_RUN_ID", "run-1234")
    launched = []

    def record(backend, job, spec=None, **kw):
        launched.append((backend, job, spec, kw))
        meta = {"step": job.step, "model": {"classes_per_step": [15, 1]},
                "task": {"dataset": "voc", "name": "15-1"}, "config": {"train": {"seed": 7}}}  # fmt: skip
        Path(job.checkpoint_out, "meta.json").write_text(json.dumps(meta))

    monkeypatch.setattr(dkd_core.launch, "launch_step", record)
    config_yaml = (REPO / "pipelines" / "configs" / "voc_15-1.yaml").read_text()
    model = artifact(tmp_path / "train-step-2" / "model")
    components.train_step.python_func(
        config_yaml=config_yaml, step=1, seed=7, dataset_uri="s3://mlpipeline/shared/VOC2012",
        overrides=["optim.lr=0.001"], epochs=3, launcher="trainjob", image=IMAGE, namespace="",
        gpus_per_pod=4, pods_per_step=2, timeout_hours=2.0,
        s3_endpoint="http://seaweedfs.kubeflow:9000", s3_secret="mlpipeline-minio-artifact",
        s3_secret_keys={"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"},
        image_pull_policy="IfNotPresent", cpu_request="16", cpu_limit="", memory_request="64Gi",
        memory_limit="", shm_size="16Gi", tmp_size="20Gi", service_account="",
        node_selector={"pool": "h100"}, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
        trainjob_runtime="team-runtime", delete_after_done=False, run_as_user=2000,
        kueue_queue="team-gpu", queue_timeout_hours=12.0, manifest=artifact(tmp_path / "split" / "manifest"), model=model,
        model_uri=str(tmp_path / "model_uri"), teacher_uri=str(tmp_path / "train-step" / "model"),
    )  # fmt: skip
    ((backend, job, spec, kw),) = launched
    assert backend == "trainjob"
    assert (job.step, job.nodes, job.nproc_per_node) == (1, 2, 4)
    assert job.teacher == str(tmp_path / "train-step" / "model")
    assert job.overrides == ("data.root=s3://mlpipeline/shared/VOC2012", "optim.epochs=3",
                             "optim.lr=0.001", "train.seed=7")  # fmt: skip
    assert job.command()[-1] == "train.seed=7"  # the chain's seed, last: it wins
    assert spec.namespace == "team-a" and spec.gpus_per_pod == 4 and spec.image == IMAGE
    assert (spec.cpu_request, spec.memory_request, spec.shm_size) == ("16", "64Gi", "16Gi")
    assert dict(spec.node_selector) == {"pool": "h100"}
    assert dict(spec.env)["S3_ENDPOINT"] == "http://seaweedfs.kubeflow:9000"  # the parameter
    assert spec.all_labels()[KFP_RUN_ID_LABEL] == "run-1234"
    assert (spec.tmp_size, spec.trainjob_runtime) == ("20Gi", "team-runtime")
    assert spec.delete_after_done is False
    assert (spec.run_as_user, spec.run_as_group, spec.kueue_queue) == (2000, 2000, "team-gpu")
    assert kw == {"timeout_seconds": 7200.0, "queue_timeout_seconds": 12 * 3600.0}
    assert model.metadata == {
        "step": 1, "seed": 7, "classes_per_step": [15, 1], "task": "voc:15-1"
    }  # fmt: skip
    assert (tmp_path / "train-step-2" / "config.yaml").read_text() == config_yaml
    # the next step's teacher_uri
    assert (tmp_path / "model_uri").read_text() == str(tmp_path / "train-step-2" / "model")


# -- render-job ---------------------------------------------------------------------------


def render(capsys, *args: str) -> dict:
    argv = ["render-job", "voc_15-1", "--step", "1", "--image", IMAGE, "--gpus-per-pod", "4",
            "--pods-per-step", "2", "--data", "s3://mlpipeline/shared/VOC2012", *args]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    (manifest,) = yaml.safe_load_all(capsys.readouterr().out)
    return manifest


def test_render_job_prints_the_pytorchjob_of_a_step(capsys):
    job = render(capsys, "--launcher", "pytorchjob")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["metadata"]["namespace"] == "kubeflow"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {k: v["replicas"] for k, v in replicas.items()} == {"Master": 1, "Worker": 1}
    assert job["spec"]["nprocPerNode"] == "4"
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    command = container["command"]
    assert command[:6] == ["torchrun", "--nnodes", "2", "--nproc_per_node", "4", "-m"]
    assert command[command.index("--teacher") + 1].endswith("/train-step/TASK_ID/model")
    assert command[command.index("--checkpoint-out") + 1].endswith("/train-step-2/TASK_ID/model")
    assert "data.root=s3://mlpipeline/shared/VOC2012" in command
    env = {e["name"]: e for e in container["env"]}
    assert env["S3_ENDPOINT"]["value"] == "http://seaweedfs.kubeflow:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlpipeline-minio-artifact", "key": "accesskey"
    }  # fmt: skip


def test_render_job_adds_override_to_the_overrides_parameter(capsys):
    """`--override` reaches the job's config, after what `--param overrides=` gave."""
    job = render(capsys, "--launcher", "pytorchjob", "--param", "overrides=[optim.lr=0.02]",
                 "--override", "optim.lr=0.5", "--override", "train.log_every=7")  # fmt: skip
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"
    ]
    assert "optim.lr=0.5" in command and "train.log_every=7" in command
    assert command.index("optim.lr=0.5") > command.index("optim.lr=0.02")
    assert main(["render-job", "voc_15-1", "--step", "0", "--launcher", "pytorchjob",
                 "--image", IMAGE, "--override", "optim.no_such_key=1"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_key" in err[0], err


def test_render_job_prints_the_trainjob_with_the_pod_parameters(capsys):
    tolerations = '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]'
    job = render(
        capsys, "--launcher", "trainjob", "--namespace", "team-a", "--param", "cpu_request=16",
        "--param", "memory_limit=96Gi", "--param", "node_selector=pool=h100",
        "--param", f"tolerations={tolerations}", "--param", "s3_endpoint=http://s3.internal:9000",
    )  # fmt: skip
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["metadata"]["namespace"] == "team-a"
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "16", "memory": "16Gi"},  # memory_request: the default
        "limits": {"memory": "96Gi", "nvidia.com/gpu": 4},
    }  # fmt: skip
    env = {e["name"]: e for e in trainer["env"]}
    assert env["S3_ENDPOINT"]["value"] == "http://s3.internal:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretkey"
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "h100"}
    assert pod["tolerations"] == json.loads(tolerations)


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_render_job_takes_the_queue_and_the_uid(capsys, launcher):
    job = render(capsys, "--launcher", launcher, "--param", "kueue_queue=team-gpu",
                 "--param", "run_as_user=2000")  # fmt: skip
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpu"
    if launcher == "pytorchjob":
        pods = [r["template"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    else:
        patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
        pods = [patch["replicatedJobs"][0]["template"]["spec"]["template"]]
    for pod in pods:
        assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        sc = pod["spec"]["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (2000, 2000, 2000)
    assert main(["render-job", "voc_15-1", "--step", "0", "--launcher", launcher, "--image",
                 IMAGE, "--param", "run_as_user=0"]) == 2  # fmt: skip
    assert "run_as_user: expected a uid >= 1 (not root)" in capsys.readouterr().err


def test_render_job_bad_input_is_one_line(capsys):
    base = ["render-job", "voc_15-1", "--launcher", "pytorchjob", "--image", IMAGE]
    assert main([*base, "--step", "6"]) == 2
    assert capsys.readouterr().err.strip() == "error: --step 6: voc_15-1 has steps 0 to 5"
    assert main([*base, "--step", "0", "--param", "tolerations=[{key: a, effect: X, x: 1}]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown field 'x'" in err[0]
    assert main(["render-job", "voc_15-1", "--launcher", "trainjob", "--step", "0"]) == 2
    assert "no image for the cluster" in capsys.readouterr().err


def test_the_cli_imports_no_torch(tmp_path):
    """`--help` and `render-job` run where torch cannot even be imported."""
    poisoned = tmp_path / "torch"
    poisoned.mkdir()
    (poisoned / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    for args in (
        ["--help"],
        ["render-job", "--help"],
        ["render-job", "voc_15-1", "--step", "1", "--launcher", "trainjob", "--image", IMAGE],
        ["render-job", "toy", "--step", "0", "--launcher", "pytorchjob", "--image", IMAGE],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "pipelines", *args], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "torch was imported" not in result.stderr


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_rendered_jobs_pass_the_crd_schemas_and_admission(capsys, launcher):
    """What a train step creates from the pipeline's parameters (pod settings included) is
    what the operators admit: their CRD schemas (unknown fields refused), the PyTorchJob
    webhook's and Trainer's rules."""
    from tests.unit.test_admission import (
        pytorchjob_webhook_errors,
        runtime,
        trainjob_admission_errors,
    )
    from tools.lint_manifests import validate

    job = render(
        capsys, "--launcher", launcher, "--param", "cpu_request=16", "--param",
        "node_selector=pool=h100", "--param", "tolerations=[{key: a, operator: Exists}]",
    )  # fmt: skip
    assert validate([job]) == []
    if launcher == "pytorchjob":
        assert pytorchjob_webhook_errors(job) == []
    else:
        assert trainjob_admission_errors(job, runtime()) == []


def test_job_pods_tell_the_training_its_run_id_and_namespace():
    """The variables the job's env sets are the ones dkd_core.metrics reads: the run id
    labels every series and the namespace keeps two profiles' Pushgateway groups apart."""
    from dkd_core import metrics
    from dkd_core.launch.cluster import POD_NAMESPACE_ENV

    assert jobspec.TRAINING_RUN_ID_ENV == metrics.RUN_ID_ENV
    assert POD_NAMESPACE_ENV == metrics.NAMESPACE_ENV
    spec = jobspec.cluster_spec({"namespace": "team-a", "image": IMAGE}, {"KFP_RUN_ID": "run-1234"})
    env = {e["name"]: e for e in spec.env_list()}
    assert env["DKD_RUN_ID"] == {"name": "DKD_RUN_ID", "value": "run-1234"}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    without = jobspec.cluster_spec({"namespace": "team-a", "image": IMAGE}, {})
    assert "DKD_RUN_ID" not in {e["name"] for e in without.env_list()}
