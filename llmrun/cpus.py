"""How many CPU threads to give llama.cpp: the cores this process may use that nothing else uses.

llama.cpp's workers meet at a barrier after every operation, so one worker sharing its core
with another process makes all of them wait: with one core of two busy, `-t 2` generates at
less than half the speed of `-t 1` (benchmarks/bench_threads.py). The default therefore
counts the cores this process may run on (affinity mask, cgroup quota) and takes away those
that other processes keep busy right now. An explicit `-t` is always obeyed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

MAX_THREADS = 8  # past this, generation is memory-bound on the machines people use
PROC_STAT = Path("/proc/stat")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")

# procs_running is an instant: a process that only flickers (the shell starting the next
# command of a pipeline) must not cost a whole run a thread, so the least of a few readings
# spread over a few milliseconds is taken.
SAMPLES = 5
SAMPLE_GAP_S = 0.001


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, int(quota + 0.5)))
    return max(1, cores)


def cgroup_quota(path: Path = CGROUP_CPU_MAX) -> float | None:
    """cgroup v2's `cpu.max` ("200000 100000": two cores' worth), or None when unlimited."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def busy_elsewhere(samples: int = SAMPLES, gap_s: float = SAMPLE_GAP_S) -> int:
    """Other processes' threads running or ready to run now (0 where /proc is absent).

    Niced ones count too: a `nice -n 19` job gets little CPU time, but each time it does,
    one of our workers waits and the others wait at the barrier (measured: -t 2 beside a
    niced busy loop generates at half the speed of -t 1).
    """
    least: int | None = None
    for i in range(samples):
        if i:
            time.sleep(gap_s)
        running = _procs_running()
        if running is None:
            return 0
        others = running - _own_running()
        least = others if least is None else min(least, others)
    return max(0, least or 0)


def default_threads() -> int:
    """Usable cores not busy with other work, at least 1, at most MAX_THREADS."""
    cores = min(usable_cores(), MAX_THREADS)
    return max(1, cores - busy_elsewhere())


def _procs_running() -> int | None:
    try:
        with PROC_STAT.open("rb") as f:
            for line in f:
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _task_fields(path: str) -> list[bytes] | None:
    """A /proc stat file's fields after "pid (comm)": state first, nice at index 16."""
    try:
        stat = Path(path).read_bytes()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()  # comm may hold spaces or parentheses


def _own_running() -> int:
    """This process's threads in state R (this one, reading, at least)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    states = (_task_fields(f"/proc/self/task/{t}/stat") for t in tasks)
    return max(1, sum(1 for f in states if f and f[0] == b"R"))
