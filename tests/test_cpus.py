"""The default thread count: the usable cores, less those other processes keep busy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmrun import cpus

BUSY_LOOP = "while True: pass"


@pytest.fixture
def busy_process() -> Iterator[subprocess.Popen[bytes]]:
    """Another process spinning on a core, running for sure before the test reads the load."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 30
        # Running, and past interpreter start-up: it has used CPU time (utime > 0 ticks).
        while time.monotonic() < deadline:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] == "R" and int(fields[11]) > 20:
                break
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def fewer_than_usable(threads: int) -> bool:
    usable = min(cpus.usable_cores(), cpus.MAX_THREADS)
    return threads == 1 if usable == 1 else 1 <= threads < usable


def test_usable_cores_is_within_the_affinity_mask() -> None:
    assert 1 <= cpus.usable_cores() <= len(os.sched_getaffinity(0))


def test_a_busy_process_takes_a_thread_away(busy_process: subprocess.Popen[bytes]) -> None:
    assert cpus.busy_elsewhere() >= 1
    assert fewer_than_usable(cpus.default_threads())


def test_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert cpus.cgroup_quota(cpu_max) is None
    cpu_max.write_text("150000 100000\n")
    assert cpus.cgroup_quota(cpu_max) == 1.5
    assert cpus.cgroup_quota(tmp_path / "absent") is None


def test_run_reports_its_threads_and_obeys_t(
    busy_process: subprocess.Popen[bytes], smollm2: Path, llmrun_inprocess
) -> None:
    """Beside a busy core the default drops a thread; an explicit -t is used as given."""
    run = llmrun_inprocess
    chosen = run("run", str(smollm2), "Hi", "--raw", "-n", "1", "--no-cache", "-v")
    assert chosen.code == 0, chosen.stderr
    found = re.search(r"threads: (\d+) \(the cores free at load\)", chosen.stderr)
    assert found, chosen.stderr
    assert fewer_than_usable(int(found.group(1)))
    asked = run("run", str(smollm2), "Hi", "--raw", "-n", "1", "--no-cache", "-v", "-t", "2")
    assert asked.code == 0, asked.stderr
    assert "threads: 2 (as asked)" in asked.stderr
