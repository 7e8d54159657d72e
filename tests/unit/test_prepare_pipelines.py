"""Pipelines prepare-voc and prepare-ade: `data fetch` in a pod, straight into the object store.

Golden files: tests/golden/pipelines/prepare-{voc,ade}.yaml (UPDATE_GOLDEN=1 rewrites them).
"""

import pytest

from dkd_core.errors import DKDError
from pipelines.__main__ import main
from pipelines.prepare import CACHE_MOUNT, PREPARE_PIPELINES
from tests.kfp_api import fake_kfp as kfp_api_server
from tests.unit.test_pipelines import GOLDEN, IMAGE, UPDATE, load_ir, load_ir_text, make_command

NAMES = sorted(PREPARE_PIPELINES)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_prepare_pipeline_matches_golden(tmp_path, name, capsys):
    out = tmp_path / f"{name}.yaml"
    assert main(["compile", name, "--image", IMAGE, "--output", str(out)]) == 0
    golden = GOLDEN / f"{name}.yaml"
    if UPDATE:
        golden.write_text(out.read_text())
    assert out.read_text() == golden.read_text(), f"rewrite {golden} with UPDATE_GOLDEN=1"
    ir = load_ir(out)
    (task,) = ir["root"]["dag"]["tasks"].values()
    assert task["cachingOptions"] == {}  # caching off: KFP writes no enableCache
    assert (
        task["inputs"]["parameters"]["dataset"]["runtimeValue"]["constant"]
        == (PREPARE_PIPELINES[name])
    )
    (executor,) = ir["deploymentSpec"]["executors"].values()
    assert {"name": "DKD_CACHE", "value": CACHE_MOUNT} in executor["container"]["env"]
    (config,) = ir["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    assert config["emptyDirMounts"][0]["mountPath"] == CACHE_MOUNT
    assert config["secretAsEnv"][0]["secretName"] == "mlpipeline-minio-artifact"


def test_make_submit_prepare_voc_with_a_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("S3_ENDPOINT", "http://127.0.0.1:9")  # reachable or not: no check of
    # the prefix's objects, which this run is to write
    with kfp_api_server() as api:
        argv = make_command(
            "submit", "PIPELINE=prepare-voc", f"IMAGE={IMAGE}",
            "DATA=s3://mlpipeline/shared/VOC2012", f"KFP_HOST={api.url}",
            "PARAMS=mirror=http://mirror.internal/voc",
        )  # fmt: skip
        assert main(argv) == 0
    (upload,) = api.calls("POST", ".*/pipelines/upload")
    assert upload.query["name"] == "dkd-prepare-voc"
    ir = load_ir_text(upload.body)
    assert {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()} == {IMAGE}
    (run,) = api.calls("POST", ".*/runs")
    assert run.body["runtime_config"]["parameters"] == {
        "dataset_uri": "s3://mlpipeline/shared/VOC2012", "mirror": "http://mirror.internal/voc",
    }  # fmt: skip


def test_prepare_pipelines_refuse_bad_input(capsys, monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    assert main(["compile", "prepare-ade"]) == 2
    assert "no image for the cluster" in capsys.readouterr().err
    host = ["--host", "http://127.0.0.1:9", "--image", IMAGE]
    assert main(["submit", "prepare-ade", *host]) == 2
    assert "where to? pass DATA=s3://" in capsys.readouterr().err
    assert main(["submit", "prepare-ade", *host, "--data", "/data/ADE"]) == 2
    assert "not an s3:// URI" in capsys.readouterr().err
    argv = ["submit", "prepare-ade", *host, "--namespace", "team-a", "--data", "s3://d/ADE"]
    assert main(argv) == 2
    assert "may read only s3://mlpipeline/private/team-a/" in capsys.readouterr().err
    with pytest.raises(DKDError, match="unknown pipeline"):
        from pipelines.prepare import build_prepare_pipeline

        build_prepare_pipeline("prepare-coco", image=IMAGE)


def test_make_run_passes_gpus_and_data_only_when_given():
    argv = make_command("run", "PIPELINE=voc_15-1", "DATA=/data/VOC2012", "GPUS=4")
    assert argv[argv.index("--gpus") + 1] == "4"
    assert argv[argv.index("--data") + 1] == "/data/VOC2012"
    assert "--data" not in make_command("run", "PIPELINE=voc_15-1")  # the config's data.root
    assert "--gpus" not in make_command("run", "PIPELINE=voc_15-1")


def test_local_run_trains_each_step_on_gpus_per_pod_processes(tmp_path, monkeypatch, capsys):
    """`run --gpus 4` is the pipeline's gpus_per_pod default: torchrun --nproc_per_node 4."""
    import pipelines.local as local_module
    from pipelines.jobspec import step_job

    built = {}

    def stop_after_build(config, **options):
        built.update(options)
        raise DKDError("stopped after building the pipeline")

    monkeypatch.setattr(local_module, "build_pipeline", stop_after_build)
    assert main(["run", "toy", "--data", str(tmp_path), "--gpus", "4"]) == 2
    assert built["gpus_per_pod"] == 4 and built["launcher"] == "local"
    job = step_job("toy", 0, "c.yaml", [], "m", "man", None, built["gpus_per_pod"], 1)
    command = job.command()
    assert command[command.index("--nproc_per_node") + 1] == "4"
    # without --data: the config's data.root, named when it is missing
    monkeypatch.chdir(tmp_path)
    assert main(["run", "voc_15-1"]) == 2
    err = capsys.readouterr().err
    assert "dataset folder data/VOC2012 does not exist (data.root of" in err


def test_run_help_no_longer_says_cpu_only(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "(CPU)" not in text and "one per GPU" in text and "data.root" in text
