"""The step lease: refused while its holder lives, taken over once it is stale."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from dkd_core import lease as lease_module
from dkd_core.lease import STALE_SECONDS, LeaseHeldError, StepLease


def write_lease(folder, **fields):
    record = {"host": "pod-a", "pid": 12345, "token": "other", "started": time.time(),
              "heartbeat": time.time(), **fields}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lease.json").write_text(json.dumps(record))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lease_is_taken_and_released(tmp_path):
    with StepLease(str(tmp_path / "step_0"), "step 0") as held:
        record = json.loads((tmp_path / "step_0" / "lease.json").read_text())
        assert record["token"] == held.holder.token and record["host"] == socket.gethostname()
        other_process = subprocess.run(
            [sys.executable, "-c", "import sys; from dkd_core.lease import StepLease; "
             "StepLease(sys.argv[1], 'step 0').acquire()", str(tmp_path / "step_0")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert other_process.returncode != 0
        assert f"LeaseHeldError: step 0 is being trained by pid {os.getpid()} on " in (
            other_process.stderr
        )
    assert not (tmp_path / "step_0" / "lease.json").exists()


def test_a_live_lease_of_another_host_is_refused_with_its_holder(tmp_path):
    write_lease(tmp_path)
    with pytest.raises(LeaseHeldError) as error:
        StepLease(str(tmp_path), "step 1").acquire()
    assert "pid 12345 on pod-a" in str(error.value) and "lease.json" in str(error.value)


def test_a_lease_without_heartbeat_is_taken_over_with_a_warning(tmp_path, caplog):
    write_lease(tmp_path, heartbeat=time.time() - STALE_SECONDS - 5)
    with caplog.at_level(logging.WARNING), StepLease(str(tmp_path), "step 1") as held:
        assert json.loads((tmp_path / "lease.json").read_text())["token"] == held.holder.token
    assert "taking over the lease" in caplog.text and "last heartbeat was" in caplog.text


def test_a_lease_of_a_dead_local_process_is_taken_over_at_once(tmp_path, caplog):
    write_lease(tmp_path, host=socket.gethostname(), pid=dead_pid())
    with caplog.at_level(logging.WARNING), StepLease(str(tmp_path), "step 1"):
        pass
    assert "on this host is gone" in caplog.text


def test_the_heartbeat_keeps_the_lease_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "HEARTBEAT_SECONDS", 0.05)
    with StepLease(str(tmp_path), "step 0"):
        first = json.loads((tmp_path / "lease.json").read_text())["heartbeat"]
        deadline = time.time() + 10
        while time.time() < deadline:
            if json.loads((tmp_path / "lease.json").read_text())["heartbeat"] > first:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the heartbeat was not renewed")


def test_a_restarted_container_with_the_same_pid_takes_its_own_lease_over(tmp_path, caplog):
    import os

    write_lease(tmp_path, host=socket.gethostname(), pid=os.getpid(), token="earlier-run")
    with caplog.at_level(logging.WARNING), StepLease(str(tmp_path), "step 0"):
        pass
    assert "earlier run of this process" in caplog.text
