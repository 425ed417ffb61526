"""Test hosts for RPC: `llmrun worker` processes, on loopback or in a network namespace.

A `Netns` pair is two namespaces joined by a veth pair: the client side
(10.77.N.1) and the worker side (10.77.N.2). Creating them needs root (or
CAP_NET_ADMIN) and iproute2; `netns_unavailable()` says why when they cannot be made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from llmrun.engine.rpc import probe
from llmrun.errors import WorkerError
from tests.conftest import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llmrun_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmrun", *args]


@dataclass
class Worker:
    proc: subprocess.Popen
    endpoint: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def start_worker(
    log: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    prefix: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> Worker:
    """An `llmrun worker` (inside `prefix`, e.g. `ip netns exec NS`), ready for clients."""
    port = port or free_port()
    cmd = [*prefix, *llmrun_cmd("worker", "--host", host, "--port", str(port), *extra)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    worker = Worker(proc, f"{host}:{port}", log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"llmrun worker exited with {proc.returncode}: {log.read_text()}")
        if prefix:  # probing from this namespace cannot reach it: wait for its banner
            return "transport" in log.read_text()
        return answers(worker.endpoint)

    try:
        wait_for(ready, 60, lambda: f"llmrun worker did not start: {log.read_text()}")
    except BaseException:
        worker.stop()
        raise
    return worker


def answers(endpoint: str) -> bool:
    """Whether a worker answers llama.cpp's hello at `endpoint` now."""
    try:
        probe(endpoint, timeout=2)
        return True
    except WorkerError:
        return False


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    name = f"llmrun-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace ({made.stderr.strip() or 'no privilege'})"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Netns:
    """Two namespaces joined by a veth pair."""

    client: str
    worker: str
    client_ip: str
    worker_ip: str
    veth_worker: str = ""
    _names: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, n: int) -> Netns:
        tag = f"{os.getpid() % 10000}-{n}"
        net = cls(f"llmrun-c-{tag}", f"llmrun-w-{tag}", f"10.77.{n}.1", f"10.77.{n}.2")
        try:
            veth_c, veth_w = f"lrc{tag}"[:15], f"lrw{tag}"[:15]
            for ns in (net.client, net.worker):
                _ip("netns", "add", ns)
                net._names.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", veth_c, "netns", net.client, "type", "veth", "peer", "name", veth_w,
                "netns", net.worker)  # fmt: skip
            _ip("-n", net.client, "addr", "add", f"{net.client_ip}/24", "dev", veth_c)
            _ip("-n", net.worker, "addr", "add", f"{net.worker_ip}/24", "dev", veth_w)
            _ip("-n", net.client, "link", "set", veth_c, "up")
            _ip("-n", net.worker, "link", "set", veth_w, "up")
        except BaseException:
            net.delete()
            raise
        net.veth_worker = veth_w
        return net

    def exec(self, ns: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", ns)

    def cut(self) -> None:
        """Take the worker side's link down: packets vanish, nobody says goodbye."""
        _ip("-n", self.worker, "link", "set", self.veth_worker, "down")

    def delete(self) -> None:
        for ns in self._names:
            # Processes still inside keep a namespace alive; kill them first.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
