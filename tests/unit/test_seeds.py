"""Seeds in the pipelines: the `seeds` parameter, its checks on every command, the train
step's seed, the report over the seeds' chains and the local run's table."""

import json
import logging
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import components
from dkd_core.errors import DKDError
from dkd_core.report import aggregate
from dkd_core.report.runs import RunInput
from pipelines import compile_pipeline, jobspec
from pipelines.__main__ import main
from pipelines.local import LocalRun, TaskClock, _task_seed, format_run, task_seed
from pipelines.params import seed_list

IMAGE = "registry.example.org/ml/dkd:0.1.0"


@pytest.mark.parametrize(
    ("value", "seeds"),
    [
        ("1,2,3", [1, 2, 3]),
        ("[4, 5]", [4, 5]),
        (" 7 ", [7]),
        ([2, 1], [2, 1]),
        (["3", "0"], [3, 0]),
        ([1.0, 2.0], [1, 2]),  # a KFP list parameter at run time
    ],
)
def test_seed_lists(value, seeds):
    assert seed_list(value) == seeds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,1", "--seeds 1,1: seed 1 is given twice"),
        ("1,x", "--seeds 1,x: 'x' is not an integer >= 0"),
        ("1.5", "--seeds 1.5: '1.5' is not an integer >= 0"),
        ("-2", "--seeds -2: -2 is not an integer >= 0"),
        ("", "--seeds '': expected a list of integers"),
        ([True], "--seeds True: True is not an integer >= 0"),
    ],
)
def test_bad_seed_lists_are_one_line(value, message):
    with pytest.raises(DKDError, match="^" + re.escape(message)) as e:
        seed_list(value)
    assert "\n" not in str(e.value) and "--seeds 1,2,3" in str(e.value)


def parameters(path: Path) -> dict:
    spec = next(yaml.safe_load_all(path.read_text()))
    return spec["root"]["inputDefinitions"]["parameters"]


def test_compile_seeds_set_the_parameters_default(tmp_path, capsys):
    out = tmp_path / "toy.yaml"
    assert main(["compile", "toy", "--image", IMAGE, "--seeds", "3,4", "--output", str(out)]) == 0
    assert parameters(out)["seeds"]["defaultValue"] == [3, 4]
    other = compile_pipeline("toy", tmp_path / "default.yaml", image=IMAGE)
    assert parameters(other)["seeds"]["defaultValue"] == [1]  # toy.yaml's train.seed


def test_parallel_seeds_limit_the_chains_at_once(tmp_path, capsys):
    def loop_policy(path: Path) -> dict | None:
        spec = next(yaml.safe_load_all(path.read_text()))
        return spec["root"]["dag"]["tasks"]["for-loop-1"].get("iteratorPolicy")

    out = tmp_path / "toy.yaml"
    argv = ["compile", "toy", "--image", IMAGE, "--output", str(out)]
    assert main([*argv, "--parallel-seeds", "2"]) == 0
    assert loop_policy(out) == {"parallelismLimit": 2}
    assert main(argv) == 0
    assert loop_policy(out) is None  # every seed at once
    assert main([*argv, "--parallel-seeds", "-1"]) == 2
    assert "--parallel-seeds -1: expected an integer >= 0" in capsys.readouterr().err


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_seeds_fail_every_command_in_one_line(tmp_path, capsys):
    out = tmp_path / "toy.yaml"
    assert main(["compile", "toy", "--image", IMAGE, "--seeds", "1,1", "--output", str(out)]) == 2
    assert one_error_line(capsys).startswith("error: --seeds 1,1: seed 1 is given twice")
    assert not out.exists()
    submit = ["submit", "toy", "--image", IMAGE, "--data", "s3://datasets/toy",
              "--host", "http://127.0.0.1:9"]  # fmt: skip
    assert main([*submit, "--seeds", "1,x"]) == 2  # refused before the host is asked
    assert one_error_line(capsys).startswith("error: --seeds 1,x: 'x' is not an integer")
    assert main([*submit, "--param", "seeds=2,2"]) == 2
    assert one_error_line(capsys).startswith("error: --param seeds=2,2: seed 2 is given twice")
    assert main([*submit, "--seeds", "1,2", "--param", "seeds=1,3"]) == 2
    assert "name different seeds" in one_error_line(capsys)
    data = tmp_path / "data"
    data.mkdir()
    run = ["run", "toy", "--data", str(data), "--output", str(tmp_path / "run")]
    assert main([*run, "--seeds", "5,5"]) == 2
    assert one_error_line(capsys).startswith("error: --seeds 5,5: seed 5 is given twice")
    assert main([*run, "--override", "train.seed=3"]) == 2
    assert one_error_line(capsys) == (
        "error: overrides 'train.seed=3': train.seed is set per chain by the seeds parameter; "
        "pass seeds=[3] (--seeds, make ... SEEDS=) instead"
    )
    assert not (tmp_path / "run").exists()
    toy = tmp_path / "toy"
    assert main(["demo", "--data", str(toy), "--seeds", "a"]) == 2
    assert one_error_line(capsys).startswith("error: --seeds a: 'a' is not an integer")
    assert not toy.exists()  # before the toy dataset is generated


def test_the_train_steps_seed_is_its_last_override():
    settings = jobspec.step_settings("s3://d", 3, ["optim.lr=0.1"], 7)
    assert settings == ["data.root=s3://d", "optim.epochs=3", "optim.lr=0.1", "train.seed=7"]
    with pytest.raises(DKDError, match=r"train\.seed is set per chain by the seeds parameter"):
        jobspec.step_settings("s3://d", 3, [" train.seed =2"], 7)
    with pytest.raises(DKDError, match=r"seed 1\.5: expected an integer"):
        jobspec.step_settings("s3://d", 3, [], 1.5)


def rendered_command(capsys, *args: str) -> list[str]:
    argv = ["render-job", "voc_15-1", "--step", "1", "--launcher", "pytorchjob",
            "--image", IMAGE, *args]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    (job,) = yaml.safe_load_all(capsys.readouterr().out)
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"
    ]


def test_render_job_trains_with_the_chains_seed(capsys):
    assert rendered_command(capsys)[-1] == "train.seed=1"  # the default seeds: [train.seed]
    assert rendered_command(capsys, "--param", "seeds=[4, 5]")[-1] == "train.seed=4"
    assert rendered_command(capsys, "--seed", "9")[-1] == "train.seed=9"
    assert main(["render-job", "voc_15-1", "--step", "0", "--launcher", "pytorchjob",
                 "--image", IMAGE, "--seed", "-1"]) == 2  # fmt: skip
    assert one_error_line(capsys).startswith("error: --seed -1: -1 is not an integer >= 0")


# -- the report over the chains -------------------------------------------------------


def step_metrics(step: int, seed: int, old: float, root: Path = Path("/nonexistent")) -> dict:
    """A history entry; its checkpoint folder does not exist (the report notes what it lacks)."""
    names = ["background", "a", "b"]
    return {
        "step": step, "seed": seed, "checkpoint": str(root / f"seed{seed}/train-step/{step}/model"),
        "miou_old": old, "miou_new": None if step == 0 else old / 2, "miou_all": old - 1,
        "hiou": None if step == 0 else old / 3, "iou": [90.0, old, old / 2],
        "channel_names": names, "new_channels": [] if step == 0 else [2],
    }  # fmt: skip


def history_artifact(tmp_path: Path, seed: int, olds: list[float]) -> SimpleNamespace:
    path = tmp_path / f"history-{seed}"
    path.write_text(json.dumps([step_metrics(t, seed, o, tmp_path) for t, o in enumerate(olds)]))
    return SimpleNamespace(path=str(path), uri=str(path), metadata={})


def run_report(tmp_path: Path, histories: list, seeds: list) -> dict[str, Path]:
    out = {name: tmp_path / name for name in ("markdown", "html", "plots", "history")}
    components.report.python_func(
        histories=histories, seeds=seeds, title="DKD toy 4-1", s3_endpoint="",
        **{k: SimpleNamespace(path=str(p), uri=str(p), metadata={}) for k, p in out.items()},
    )  # fmt: skip
    return out


def test_the_report_pairs_each_history_with_its_seed(tmp_path):
    histories = [history_artifact(tmp_path, 2, [40.0, 30.0]),
                 history_artifact(tmp_path, 1, [60.0, 50.0])]  # fmt: skip
    out = run_report(tmp_path, histories, [1.0, 2.0])  # a list parameter's numbers may be floats
    summary = json.loads((out["plots"] / "summary.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [1, 2]  # the order of the seeds parameter
    assert [r["old"] for r in summary["steps"]] == [50.0, 40.0]  # the mean over the seeds
    first = summary["aggregate"][0]["old"]
    assert first["values"] == [60.0, 40.0] and first["n"] == 2
    assert first["std"] == pytest.approx(14.142135, abs=1e-5)  # sample std (n - 1)
    history = json.loads(out["history"].read_text())
    assert list(history) == ["1", "2"] and history["2"][1]["miou_old"] == 30.0
    assert "±" in out["markdown"].read_text()
    # The plots artifact holds every figure the page embeds, not only the first two.
    pngs = sorted(p.name for p in out["plots"].glob("*.png"))
    assert len(pngs) == out["html"].read_text().count("data:image/png;base64,") > 2, pngs


def test_the_report_refuses_histories_that_do_not_match_the_seeds(tmp_path):
    one = history_artifact(tmp_path, 1, [60.0])
    with pytest.raises(DKDError, match=r"histories of seeds \[1\], expected the seeds \[1, 2\]"):
        run_report(tmp_path, [one], [1, 2])
    with pytest.raises(DKDError, match="two histories for seed 1"):
        run_report(tmp_path, [one, one], [1])
    with pytest.raises(DKDError, match=r"seeds=1\.5: 1\.5 is not an integer >= 0"):
        run_report(tmp_path, [one], [1.5])


def test_the_split_refuses_bad_seeds_before_any_chain_trains(tmp_path):
    """Seeds typed in the KFP UI skip the command line's checks: the first task checks them."""
    manifest = SimpleNamespace(path=str(tmp_path / "manifest.json"), uri="", metadata={})
    with pytest.raises(DKDError, match=r"^pipeline parameter seeds=1.0,1.0: seed 1 is given twice"):
        components.split_data.python_func(
            config_yaml="{}", dataset_uri=str(tmp_path / "none"), overrides=[],
            s3_endpoint="", manifest=manifest, seeds=[1.0, 1.0],
        )  # fmt: skip
    assert not (tmp_path / "manifest.json").exists()


# -- the local run --------------------------------------------------------------------


def test_format_run_shows_mean_std_and_every_seed(tmp_path):
    runs = [RunInput([step_metrics(0, s, o), step_metrics(1, s, o - 10)], seed=s)
            for s, o in ((1, 60.0), (2, 40.0))]  # fmt: skip
    rows = aggregate(runs)
    run = LocalRun([], tmp_path, {}, 12.0, {"train-step (seed 1)": 3.0}, rows, [1, 2])
    lines = format_run(run).splitlines()
    assert lines[:8] == [
        "mean ± sample std over 2 seeds (1, 2)",
        "step  seed             old            new            all           hIoU",
        "   0  mean   50.00 ± 14.14              -  49.00 ± 14.14              -",
        "         1           60.00              -          59.00              -",
        "         2           40.00              -          39.00              -",
        "   1  mean   40.00 ± 14.14  20.00 ±  7.07  39.00 ± 14.14  13.33 ±  4.71",
        "         1           50.00          25.00          49.00          16.67",
        "         2           30.00          15.00          29.00          10.00",
    ]
    assert "  train-step (seed 1)     3.0 s" in lines


def test_task_clock_names_each_chains_task_by_its_seed():
    """The loop's iterations run same-named tasks at once, one thread each."""
    clock = TaskClock()

    def log(message: str, created: float) -> None:
        r = logging.LogRecord("root", logging.INFO, __file__, 0, message, None, None)
        r.created = created
        clock.filter(r)

    def chain(seed: int, start: float) -> None:
        log("Executing task \x1b[96m'train-step'\x1b[0m", start)
        _task_seed.value = seed  # what the task's subprocess wrapper notes
        log("Task \x1b[96m'train-step'\x1b[0m finished with status SUCCESS", start + seed)

    threads = [threading.Thread(target=chain, args=(s, 10.0 * s)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log("Executing task 'report'", 50.0)
    log("Task 'report' finished with status SUCCESS", 50.5)
    assert clock.seconds == {"train-step (seed 1)": 1.0, "train-step (seed 2)": 2.0, "report": 0.5}


def test_a_tasks_seed_is_read_from_its_executor_input():
    executor_input = {"inputs": {"parameterValues": {"seed": 3, "step": 0}}}
    command = ["python", "-m", "kfp.dsl.executor_main", "--executor_input",
               json.dumps(executor_input), "--function_to_execute", "train_step"]  # fmt: skip
    assert task_seed(command) == 3
    assert task_seed(["python", "--executor_input", '{"inputs": {}}']) is None
    assert task_seed(["python", "--executor_input", "not json"]) is None
