"""A lease on a step: one training run at a time per step folder (local or S3).

Two runs started on the same `run.output` would otherwise both train the step
and interleave its train log and checkpoints. The run that trains a step
writes `<step folder>/lease.json` (who holds it, and a heartbeat renewed every
`HEARTBEAT_SECONDS` by a background thread) and deletes it when it ends. A
second run that finds a live lease refuses with the holder's identity. A lease
is stale, and is taken over with a warning, when its heartbeat is older than
`STALE_SECONDS` (a killed pod, a lost node) or when its holder ran on this
host and its process is gone, or is this very process (a killed local run, a
restarted container: no waiting).

Creation is atomic for local files (O_EXCL). S3 has no portable
create-if-absent, so after writing its lease a run reads it back and yields
if another run wrote in between (the later writer wins).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from dkd_core.errors import DKDError
from dkd_core.storage import ObjectNotFoundError, is_remote, join, local_path, open_store

log = logging.getLogger("dkd_core.lease")

LEASE_FILE = "lease.json"
HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 120.0  # six missed heartbeats

# Indirection so that tests can replace the clock.
_now = time.time


class LeaseHeldError(DKDError):
    """Another live run holds the step's lease."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    token: str  # unique per run: tells our lease from another's

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _this_holder() -> Holder:
    return Holder(socket.gethostname(), os.getpid(), uuid.uuid4().hex)


def _record(holder: Holder, started: float) -> dict[str, Any]:
    return {
        "host": holder.host,
        "pid": holder.pid,
        "token": holder.token,
        "started": started,
        "heartbeat": _now(),
    }


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StepLease:
    """The lease on one step folder; use as a context manager around the training."""

    def __init__(self, step_folder: str, what: str):
        self.uri = join(step_folder, LEASE_FILE)
        self.what = what  # e.g. "step 1 of results/toy", for messages
        self.holder = _this_holder()
        self.started = _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquiring ---------------------------------------------------------------------

    def _read(self) -> dict[str, Any] | None:
        store = open_store(self.uri)
        try:
            record = json.loads(store.read_bytes(self.uri))
        except ObjectNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return {}  # unreadable (a half-written local file cannot happen): stale
        return record if isinstance(record, dict) else {}

    def _stale_reason(self, record: dict[str, Any]) -> str | None:
        """Why `record` no longer holds the step, or None when its holder is alive."""
        heartbeat = record.get("heartbeat")
        if not isinstance(heartbeat, int | float):
            return "it is unreadable"
        age = _now() - heartbeat
        if age > STALE_SECONDS:
            return f"its last heartbeat was {age:.0f} s ago"
        pid = record.get("pid")
        same_host = record.get("host") == self.holder.host and isinstance(pid, int)
        if same_host and pid == self.holder.pid and record.get("token") != self.holder.token:
            # A restarted container reuses its pod's name and often its pid: that is us.
            return f"it was written by an earlier run of this process ({pid} on this host)"
        if same_host and not _process_alive(pid):
            return f"its process {pid} on this host is gone"
        return None

    def _refusal(self, record: dict[str, Any]) -> LeaseHeldError:
        age = _now() - float(record["heartbeat"])
        return LeaseHeldError(
            f"{self.what} is being trained by pid {record.get('pid')} on {record.get('host')} "
            f"({self.uri}, heartbeat {age:.0f} s ago); wait for it to finish, or stop it. "
            f"A lease without a heartbeat for {STALE_SECONDS:.0f} s is taken over"
        )

    def acquire(self) -> None:
        record = self._read()
        if record is not None:
            reason = self._stale_reason(record)
            if reason is None:
                raise self._refusal(record)
            log.warning(
                "taking over the lease %s of pid %s on %s: %s",
                self.uri, record.get("pid"), record.get("host"), reason,
            )  # fmt: skip
        self._write(exclusive=record is None)
        mine = self._read()
        if mine is None or mine.get("token") != self.holder.token:
            if mine and self._stale_reason(mine) is None:
                raise self._refusal(mine)
            raise LeaseHeldError(f"{self.what}: another run took the lease {self.uri} just now")
        self._thread = threading.Thread(target=self._beat, name="dkd-lease", daemon=True)
        self._thread.start()

    def _write(self, exclusive: bool = False) -> None:
        data = (json.dumps(_record(self.holder, self.started), sort_keys=True) + "\n").encode()
        if is_remote(self.uri) or not exclusive:
            open_store(self.uri).write_bytes(self.uri, data)
            return
        path = local_path(self.uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return  # another run was faster: the read-back tells
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                record = self._read()
                if record is not None and record.get("token") != self.holder.token:
                    log.warning("lease %s was taken over by another run", self.uri)
                    return
                self._write()
            except Exception as e:  # a missed heartbeat is retried at the next one
                log.warning("cannot renew the lease %s: %s", self.uri, e)

    # -- releasing ---------------------------------------------------------------------

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            record = self._read()
            if record is not None and record.get("token") == self.holder.token:
                open_store(self.uri).delete(self.uri)
        except Exception as e:  # the lease goes stale on its own
            log.warning("cannot release the lease %s: %s", self.uri, e)

    def __enter__(self) -> StepLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
