"""How local processes share the machine: threads fixed per process, chains limited, GPUs split."""

from __future__ import annotations

import sys
import threading
import time

import pytest

import dkd_core.sharing as sharing
from dkd_core.errors import DKDError
from dkd_core.launch.job import StepJob
from dkd_core.launch.local import run_local
from dkd_core.sharing import THREADS_ENV, Slots, allot, threads_per_process, visible_gpus


def test_one_chain_uses_the_whole_machine_and_more_chains_wait() -> None:
    share = allot(chains=3, cores=2)
    assert (share.threads, share.concurrent, share.workers, share.gpus) == (2, 1, 2, ())
    assert share.env(0) == {THREADS_ENV: "2", "OMP_NUM_THREADS": "2"}


@pytest.mark.parametrize("cores", [1, 2, 3, 8, 16, 64])
def test_threads_do_not_depend_on_how_many_chains_run(cores: int) -> None:
    # The weights' bytes depend on the thread count: a seed must train with the same
    # count alone as beside other seeds.
    assert {allot(chains, cores).threads for chains in range(1, 9)} == {cores}
    assert {allot(chains, cores, threads=1).threads for chains in range(1, 9)} == {1}


@pytest.mark.parametrize(
    ("chains", "cores", "processes", "threads", "expected"),
    [
        (3, 2, 1, 1, (1, 2, 1)),  # cores / concurrent processes each
        (3, 16, 1, 4, (4, 3, 5)),  # fewer chains than places: workers get the rest
        (2, 8, 2, None, (4, 1, 4)),  # two processes per step share the cores
        (4, 8, 2, 2, (2, 2, 2)),
        (5, 3, 1, 4, (4, 1, 3)),  # more threads than cores: still one chain
    ],
)
def test_allotment(chains, cores, processes, threads, expected) -> None:
    share = allot(chains, cores, processes, threads)
    assert (share.threads, share.concurrent, share.workers) == expected
    # Never more threads running at once than the cores, unless one process asks for more.
    assert share.concurrent * processes * share.threads <= max(cores, processes * share.threads)


def test_concurrent_chains_get_disjoint_gpus() -> None:
    share = allot(3, 64, 1, threads=8, gpus=["0", "1", "2", "3", "4"], gpus_per_chain=2)
    assert share.concurrent == 2  # five GPUs hold two chains of two
    assert share.gpus == (("0", "1"), ("2", "3"))
    assert share.env(1)["CUDA_VISIBLE_DEVICES"] == "2,3"
    one_each = allot(3, 64, 1, threads=1, gpus=["3", "7"], gpus_per_chain=1)
    assert [one_each.env(i)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["3", "7"]
    assert "CUDA_VISIBLE_DEVICES" not in allot(3, 64, 1, threads=1).env(0)


def test_threads_per_process_from_the_environment() -> None:
    assert threads_per_process({}, cores=8) == 8
    assert threads_per_process({}, cores=8, processes=3) == 2
    assert threads_per_process({}, cores=2, processes=4) == 1
    assert threads_per_process({"OMP_NUM_THREADS": "3"}, cores=8) == 3
    assert threads_per_process({THREADS_ENV: "5", "OMP_NUM_THREADS": "3"}, cores=8) == 5
    for bad in ("0", "x", "-2"):
        with pytest.raises(DKDError, match=f"{THREADS_ENV}='{bad}': expected an integer >= 1"):
            threads_per_process({THREADS_ENV: bad})


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0, 2"}) == ["0", "2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_slots_hand_each_running_task_its_own_place() -> None:
    slots = Slots(2)
    held: list[int] = []
    lock = threading.Lock()
    overlaps: list[list[int]] = []

    def task() -> None:
        with slots.take() as slot:
            with lock:
                held.append(slot)
                overlaps.append(sorted(held))
            time.sleep(0.05)
            with lock:
                held.remove(slot)

    workers = [threading.Thread(target=task) for _ in range(5)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(len(o) == len(set(o)) and len(o) <= 2 and set(o) <= {0, 1} for o in overlaps)
    assert max(len(o) for o in overlaps) == 2


def test_local_launcher_gives_each_process_its_share(monkeypatch) -> None:
    monkeypatch.setattr(sharing, "usable_cores", lambda: 8)
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    job = StepJob(name="dkd-toy-step-0", config_uri="c.yaml", step=0, nproc_per_node=2)
    code = f"import os; print(os.environ['{THREADS_ENV}'], os.environ['OMP_NUM_THREADS'])"
    lines: list[str] = []
    run_local(job, log=lines.append, argv=[sys.executable, "-c", code])
    assert lines == ["4 4"]  # torchrun would give each of two processes 1 thread
    lines.clear()
    run_local(job, env={THREADS_ENV: "3"}, log=lines.append, argv=[sys.executable, "-c", code])
    assert lines == ["3 3"]


def test_a_local_runs_tasks_get_their_chains_share(monkeypatch) -> None:
    from kfp.local import subprocess_task_handler

    from pipelines.local import machine_share, shared_machine

    monkeypatch.setattr("pipelines.local.usable_cores", lambda: 32)
    monkeypatch.setattr("pipelines.local.visible_gpus", lambda: ["0", "1", "2", "3"])
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    config = "pipelines/configs/toy.yaml"
    # Whole-machine threads by default: one chain at a time, whatever the seeds.
    assert machine_share(config, {"gpus_per_pod": 2}, chains=3).concurrent == 1
    monkeypatch.setenv(THREADS_ENV, "8")
    share = machine_share(config, {"gpus_per_pod": 2}, chains=3)
    assert (share.threads, share.concurrent, share.gpus) == (8, 2, (("0", "1"), ("2", "3")))

    seen: list[dict] = []
    running = threading.Barrier(2)

    def task(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        running.wait(timeout=5)  # two tasks hold their places at once
        seen.append(dict(env_vars or {}))
        return 0

    monkeypatch.setattr(subprocess_task_handler, "run_local_subprocess", task)
    with shared_machine(share):
        runner = subprocess_task_handler.run_local_subprocess
        chains = [threading.Thread(target=runner, args=(["x"], {"K": "v"})) for _ in range(2)]
        for c in chains:
            c.start()
        for c in chains:
            c.join()
    assert subprocess_task_handler.run_local_subprocess is task  # put back
    assert sorted(e["CUDA_VISIBLE_DEVICES"] for e in seen) == ["0,1", "2,3"]
    assert all(e["K"] == "v" and e[THREADS_ENV] == e["OMP_NUM_THREADS"] == "8" for e in seen)
