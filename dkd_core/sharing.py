"""How the processes of a local run share this machine: CPU threads, loader workers, GPUs.

A CPU float reduction (a convolution's weight gradient, a BN statistic) adds in
an order that depends on the number of threads, so the weights of one toy step
trained with 1 and with 2 threads differ in their last bits, and training
magnifies that. The thread count of a training process is therefore fixed per
process, never derived from how many chains run beside it:

    threads per process   $DKD_CPU_THREADS, else $OMP_NUM_THREADS, else the cores
                          this process may use divided by the processes of one
                          step (torch's own default on one process)

and a local run of several seeds runs only as many chains at once as the cores
hold (cores // (threads x processes per step), at least one), so the chains never
oversubscribe the CPU and each seed's bytes equal its one-seed run's. Each chain's
loader workers are capped at its share of the cores; with GPUs, chains running at
once get disjoint `CUDA_VISIBLE_DEVICES`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from dkd_core.errors import DKDError

#: The CPU threads of each training process (torch.set_num_threads).
THREADS_ENV = "DKD_CPU_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask; a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _positive(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise DKDError(f"environment variable {name}={value!r}: expected an integer >= 1")
    return number


def threads_per_process(
    env: Mapping[str, str] | None = None, cores: int | None = None, processes: int = 1
) -> int:
    """A training process's CPU threads: `$DKD_CPU_THREADS`, else `$OMP_NUM_THREADS`
    (torchrun sets it to 1 for several processes unless it is set), else
    `cores // processes` (at least 1), `cores` defaulting to `usable_cores()`."""
    env = os.environ if env is None else env
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        if env.get(name, "").strip():
            return _positive(name, env[name].strip())
    return max(1, (usable_cores() if cores is None else cores) // max(1, processes))


def apply_threads() -> int:
    """Set torch's intra-op threads for this training process (`threads_per_process`, with
    torchrun's LOCAL_WORLD_SIZE processes on this machine); returns the count."""
    import torch

    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = threads_per_process(processes=processes)
    torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class Allotment:
    """What each chain of a local run gets."""

    threads: int  # CPU threads of each training process
    concurrent: int  # chains that run at once
    workers: int  # the most loader workers of each process
    gpus: tuple[tuple[str, ...], ...] = ()  # per concurrent chain: its visible devices

    def env(self, slot: int) -> dict[str, str]:
        """The environment of a task of the chain in `slot` (0 <= slot < concurrent)."""
        env = {THREADS_ENV: str(self.threads), "OMP_NUM_THREADS": str(self.threads)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus[slot])
        return env


def allot(
    chains: int,
    cores: int,
    processes_per_chain: int = 1,
    threads: int | None = None,
    gpus: Sequence[str] = (),
    gpus_per_chain: int = 0,
) -> Allotment:
    """Share `cores` (and the devices `gpus`, `gpus_per_chain` to a chain) among `chains`.

    `threads` (per process) defaults to `cores // processes_per_chain`: one chain at a
    time then uses the whole machine, as one seed does. At most
    `cores // (threads x processes_per_chain)` chains run at once (and, with GPUs,
    `len(gpus) // gpus_per_chain`), at least one; each process's loader workers are
    capped at the cores left to it.
    """
    processes = max(1, processes_per_chain)
    threads = max(1, cores // processes) if threads is None else threads
    concurrent = max(1, min(chains, cores // (threads * processes)))
    if gpus and gpus_per_chain > 0:
        concurrent = max(1, min(concurrent, len(gpus) // gpus_per_chain))
        devices = tuple(
            tuple(gpus[i * gpus_per_chain : (i + 1) * gpus_per_chain]) for i in range(concurrent)
        )
    else:
        devices = ()
    workers = max(1, cores // (concurrent * processes))
    return Allotment(threads, concurrent, workers, devices)


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs a local run may hand out: `$CUDA_VISIBLE_DEVICES` when set, else those
    torch sees (none without CUDA)."""
    env = os.environ if env is None else env
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


class Slots:
    """Which of the `count` concurrent places is free: a task takes one while it runs."""

    def __init__(self, count: int) -> None:
        self._free = list(range(count))
        self._ready = threading.Condition()

    @contextlib.contextmanager
    def take(self) -> Iterator[int]:
        with self._ready:
            self._ready.wait_for(lambda: bool(self._free))
            slot = self._free.pop(0)
        try:
            yield slot
        finally:
            with self._ready:
                self._free.append(slot)
                self._free.sort()
                self._ready.notify()
