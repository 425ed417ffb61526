"""RPC workers: `llmrun worker` and `--rpc`, with real worker processes.

The loopback tests run everywhere. The network-namespace tests put the worker
and the client in two namespaces joined by a veth pair, as two machines would
be; they need root (CAP_NET_ADMIN) and skip, saying why, without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmrun.engine import rpc
from llmrun.errors import BadOption
from llmrun.options import parse_rpc
from tests.conftest import wait_for
from tests.rpcworkers import (
    Netns,
    Worker,
    answers,
    free_port,
    llmrun_cmd,
    netns_unavailable,
    start_worker,
)

GREEDY = ("--temp", "0")
PROMPT = "Name three colors and say why the sky is blue."
LONG = ("Write a very long story about a dragon who learns to bake bread.", "-n", "4000")


def test_this_build_has_rpc() -> None:
    # The README's install builds llama-cpp-python with -DGGML_RPC=on; everything below needs it.
    assert rpc.available(), f"llama-cpp-python was built without RPC: {rpc.INSTALL_HINT}"


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    w = start_worker(tmp_path / "worker.log")
    yield w
    w.stop()


@pytest.fixture(scope="module")
def local_answer(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = subprocess.run(
        llmrun_cmd("run", str(smollm2), PROMPT, "-n", "40", *GREEDY),
        capture_output=True,
        text=True,
        env={**os.environ, "LLMRUN_HOME": str(tmp_path_factory.mktemp("home"))},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def lose_mid_run(
    proc: subprocess.Popen, endpoint: str, lose: Callable[[], None], within: float
) -> None:
    """Once `llmrun run` streams, lose its worker; it must end with the one clear line."""
    assert proc.stdout is not None
    proc.stdout.read(20)  # it is generating, on the worker
    lose()
    lost = time.monotonic()
    _, err = proc.communicate(timeout=within + 30)
    took = time.monotonic() - lost
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert stderr.startswith(f"error: lost RPC worker {endpoint}: "), stderr
    assert "llmrun worker" in stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert took < within, f"noticed after {took:.1f} s"


# ---------------------------------------------------------------- parsing


def test_rpc_endpoints_are_parsed_and_checked() -> None:
    assert parse_rpc("10.0.0.2:50052, box:6000,10.0.0.2:50052") == ("10.0.0.2:50052", "box:6000")
    assert parse_rpc("gpu-box") == ("gpu-box:50052",)
    assert parse_rpc(None) == ()
    for bad in ("host:0", "host:99999", "host:port", ":50052", "a/b:1"):
        with pytest.raises(BadOption):
            parse_rpc(bad)


def test_bad_rpc_flag_is_one_line_exit_2(llmrun, smollm2: Path) -> None:
    r = llmrun("run", str(smollm2), "Hi", "--rpc", "box:notaport")
    assert r.code == 2
    assert r.stderr.startswith("error: --rpc: bad port in 'box:notaport'")
    assert len(r.stderr.strip().splitlines()) == 1
    # Text like ":b:" stays as typed (rich would make it an emoji).
    r = llmrun("run", str(smollm2), "Hi", "--rpc", "a:b:c")
    assert r.code == 2
    assert r.stderr.startswith("error: --rpc: 'a:b:c' is not host:port")


# ---------------------------------------------------------------- loopback


def test_run_on_a_worker_equals_a_local_run(
    llmrun, smollm2: Path, worker: Worker, local_answer: str
) -> None:
    r = llmrun("run", str(smollm2), PROMPT, "-n", "40", *GREEDY, "--rpc", worker.endpoint, "-v")
    assert r.code == 0, r.stderr
    assert r.stdout == local_answer
    # -ngl auto planned every layer onto the worker's device, and llama.cpp put them there.
    assert "RPC0: 31 layers" in r.stderr
    assert "assigned to device RPC0" in r.stderr
    assert "Accepted client connection" in worker.log.read_text()


def test_layers_split_between_worker_and_here(
    llmrun, smollm2: Path, worker: Worker, local_answer: str
) -> None:
    r = llmrun("run", str(smollm2), PROMPT, "-n", "40", *GREEDY, "--rpc", worker.endpoint,
               "-ngl", "12", "-v")  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.stdout == local_answer
    assert "RPC0: 12 layers" in r.stderr


def test_worker_cache_dir_keeps_the_big_tensors(
    llmrun, smollm2: Path, tmp_path: Path, local_answer: str
) -> None:
    # llama.cpp sends tensors over 10 MiB by hash first; a worker with a cache keeps them.
    cache = tmp_path / "rpc-cache"
    w = start_worker(tmp_path / "worker.log", extra=("--cache-dir", str(cache)))
    try:
        for _ in range(2):  # the second load finds the tensors in the cache
            r = llmrun("run", str(smollm2), PROMPT, "-n", "40", *GREEDY, "--rpc", w.endpoint)
            assert r.code == 0, r.stderr
            assert r.stdout == local_answer
        kept = [p for p in cache.rglob("*") if p.is_file()]
        assert kept and all(p.stat().st_size > 10 * 2**20 for p in kept)
    finally:
        w.stop()


def test_info_lists_the_workers_devices(llmrun, worker: Worker) -> None:
    r = llmrun("info", "--json", "--rpc", worker.endpoint)
    assert r.code == 0, r.stderr
    info = json.loads(r.stdout)
    remote = [d for d in info["devices"] if d.get("backend") == "RPC"]
    assert len(remote) == 1
    assert remote[0]["description"] == worker.endpoint
    assert remote[0]["memory_total"] > 0
    assert info["rpc_workers"] == [{"endpoint": worker.endpoint, "version": "7.0.0", "devices": 1}]
    table = llmrun("info", "--rpc", worker.endpoint)
    assert worker.endpoint in table.stdout and "RPC0" in table.stdout


def test_a_worker_that_is_down_is_one_clear_error(llmrun, smollm2: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    r = llmrun("run", str(smollm2), "Hi", "--rpc", endpoint)
    assert r.code == 1
    assert r.stderr.startswith(f"error: RPC worker {endpoint} refused the connection; start")
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""
    assert time.monotonic() - started < 30


@contextlib.contextmanager
def answering(reply: bytes) -> Iterator[str]:
    """An endpoint on 127.0.0.1 that reads a hello and sends `reply`, once."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1 + 8 + rpc.CONN_CAPS_SIZE)
                conn.sendall(reply)

        threading.Thread(target=answer, daemon=True).start()
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_port_that_is_not_a_worker_is_named(llmrun, smollm2: Path) -> None:
    with answering(b"HTTP/1.1 400 Bad Request\r\n\r\n") as endpoint:
        r = llmrun("run", str(smollm2), "Hi", "--rpc", endpoint)
    assert r.code == 1
    assert f"{endpoint} does not speak this llama.cpp's RPC protocol" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_worker_of_a_newer_protocol_is_named(llmrun, smollm2: Path) -> None:
    # llama.cpp would abort on a newer minor version; llmrun's hello says so first.
    hello_7_1 = (28).to_bytes(8, "little") + bytes([7, 1, 0, 0]) + bytes(rpc.CONN_CAPS_SIZE)
    with answering(hello_7_1) as endpoint:
        r = llmrun("run", str(smollm2), "Hi", "--rpc", endpoint)
    assert r.code == 1
    assert "speaks RPC protocol 7.1.0, this llmrun's llama.cpp speaks 7.0" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_bad_rpc_timeout_is_refused_before_loading(llmrun, smollm2: Path, worker: Worker) -> None:
    for bad in ("inf", "nan", "0", "soon"):
        r = llmrun("run", str(smollm2), "Hi", "--rpc", worker.endpoint,
                   env={"LLMRUN_RPC_TIMEOUT": bad})  # fmt: skip
        assert r.code == 2, r.stderr
        assert r.stderr.startswith("error: LLMRUN_RPC_TIMEOUT must be")


def test_run_batch_ends_with_one_line_when_the_worker_is_lost(
    tmp_path: Path, smollm2: Path, worker: Worker
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    # The first answer is one token long: once it is out, the model is loaded on the worker and
    # the other five are decoding there.
    first = json.dumps({"prompt": "Story number 0: a dragon", "max_tokens": 1}) + "\n"
    rest = "".join(json.dumps(f"Story number {i}: a dragon") + "\n" for i in range(1, 6))
    prompts.write_text(first + rest)
    cmd = llmrun_cmd("run", str(smollm2), "--batch", str(prompts), "-n", "4000", *GREEDY)
    proc = subprocess.Popen(
        [*cmd, "--rpc", worker.endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LLMRUN_HOME": str(tmp_path / "home")},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"{"), proc.communicate()[1].decode()
    worker.proc.kill()
    _, err = proc.communicate(timeout=rpc.DEFAULT_TIMEOUT + 30)
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert stderr.startswith(f"error: lost RPC worker {worker.endpoint}: "), stderr
    assert len(stderr.strip().splitlines()) == 1


def test_a_busy_worker_is_named_not_waited_on(llmrun, smollm2: Path, worker: Worker) -> None:
    # A worker serves one client at a time; hold it with a client of our own.
    host, port = worker.endpoint.split(":")
    with socket.create_connection((host, int(port))) as busy:
        busy.sendall(bytes([rpc.CMD_HELLO]) + (24).to_bytes(8, "little") + bytes(24))
        busy.recv(8)
        started = time.monotonic()
        r = llmrun("run", str(smollm2), "Hi", "--rpc", worker.endpoint)
    assert r.code == 1
    assert "accepted the connection but did not answer" in r.stderr
    assert "one client at a time" in r.stderr
    assert time.monotonic() - started < rpc.PROBE_TIMEOUT + 20


def test_a_worker_killed_mid_run_ends_it_with_a_clear_error(
    tmp_path: Path, smollm2: Path, worker: Worker
) -> None:
    proc = subprocess.Popen(
        llmrun_cmd("run", str(smollm2), *LONG, *GREEDY, "--rpc", worker.endpoint),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LLMRUN_HOME": str(tmp_path / "home")},
    )
    lose_mid_run(proc, worker.endpoint, worker.proc.kill, within=rpc.DEFAULT_TIMEOUT)


def test_serve_survives_a_lost_worker(tmp_path: Path, smollm2: Path, worker: Worker) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = llmrun_cmd("serve", str(smollm2), "--port", str(port), "--parallel", "2")
    cmd.append("--embeddings")
    with log.open("w") as err:
        server = subprocess.Popen(
            [*cmd, "--rpc", worker.endpoint],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "LLMRUN_HOME": str(tmp_path / "home"), "NO_COLOR": "1"},
        )
    url = f"http://127.0.0.1:{port}"

    def get(path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body else None
        req = urllib.request.Request(
            url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def healthy() -> bool:
        try:
            return get("/health")[0] == 200
        except OSError:  # not listening yet
            return False

    try:
        wait_for(healthy, 60, log.read_text)
        body = {"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "stream": True}
        req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as stream:
            first = stream.readline()
            assert first.startswith(b"data: {")
            worker.proc.kill()
            rest = stream.read().decode()
        events = [line[6:] for line in rest.splitlines() if line.startswith("data: {")]
        error = json.loads(events[-1])["error"]
        assert error["code"] == "engine_error"
        assert f"lost RPC worker {worker.endpoint}" in error["message"]
        # Still serving: it says what is wrong, to a health check and to a new request.
        status, health = get("/health")
        assert status == 503 and f"lost RPC worker {worker.endpoint}" in health["error"]
        status, answer = get("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert status == 503
        assert "restart llmrun serve" in answer["error"]["message"]
        status, answer = get("/v1/embeddings", {"input": "Hi"})
        assert status == 503 and answer["error"]["code"] == "unavailable"
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    stderr = log.read_text()
    assert code == 0, stderr
    assert "requests now get 503" in stderr
    assert "Traceback" not in stderr


# ---------------------------------------------------------------- the worker command


def test_worker_says_the_protocol_is_unauthenticated(worker: Worker) -> None:
    log = worker.log.read_text()
    assert "no authentication" in log and "trusted network" in log
    assert "serving 1 device(s) on " + worker.endpoint in log


def test_worker_keeps_stdout_clean(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        llmrun_cmd("worker", "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: proc.poll() is None and answers(f"127.0.0.1:{port}"), 60)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == b""
    assert b"Starting RPC server" in err  # llama.cpp's own banner, moved to stderr


def test_worker_on_a_taken_port_is_one_clear_error(llmrun, worker: Worker) -> None:
    port = worker.endpoint.split(":")[1]
    r = llmrun("worker", "--port", port)
    assert r.code == 2
    assert r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert len(r.stderr.strip().splitlines()) == 1


def test_worker_on_an_address_not_here_is_one_clear_error(llmrun) -> None:
    r = llmrun("worker", "--host", "not-a-host.invalid")
    assert r.code == 2
    assert "is not an IPv4 address of this machine" in r.stderr


def test_a_build_without_rpc_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "_registry", lambda: None)
    with pytest.raises(BadOption) as e:
        rpc.require()
    assert "no RPC backend" in str(e.value)
    assert 'CMAKE_ARGS="-DGGML_RPC=on"' in str(e.value)


# ---------------------------------------------------------------- two namespaces

NETNS_SKIP = netns_unavailable()
netns = pytest.mark.skipif(NETNS_SKIP is not None, reason=f"needs network namespaces: {NETNS_SKIP}")


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[Netns]:
    net = Netns.create(abs(hash(request.node.name)) % 200 + 1)
    yield net
    net.delete()


def _client(net: Netns, tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*net.exec(net.client), *llmrun_cmd(*args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LLMRUN_HOME": str(tmp_path / "home"), **env},
    )


@netns
def test_netns_run_on_a_worker_over_veth(
    tmp_path: Path, smollm2: Path, pair: Netns, local_answer: str
) -> None:
    worker = start_worker(
        tmp_path / "worker.log", host=pair.worker_ip, prefix=pair.exec(pair.worker)
    )
    try:
        endpoint = f"{pair.worker_ip}:{worker.endpoint.split(':')[1]}"
        proc = _client(pair, tmp_path, "run", str(smollm2), PROMPT, "-n", "40", *GREEDY,
                       "--rpc", endpoint, "-v")  # fmt: skip
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert out.decode() == local_answer
        assert "RPC0: 31 layers" in err.decode()
        # And the worker really is out of reach from here, the root namespace.
        with pytest.raises(OSError):
            socket.create_connection((pair.worker_ip, int(endpoint.split(":")[1])), timeout=1)
    finally:
        worker.stop()


@netns
def test_netns_worker_killed_mid_run(tmp_path: Path, smollm2: Path, pair: Netns) -> None:
    worker = start_worker(
        tmp_path / "worker.log", host=pair.worker_ip, prefix=pair.exec(pair.worker)
    )
    proc = _client(pair, tmp_path, "run", str(smollm2), *LONG, *GREEDY, "--rpc", worker.endpoint)
    lose_mid_run(proc, worker.endpoint, worker.proc.kill, within=rpc.DEFAULT_TIMEOUT)
    worker.stop()


@netns
def test_netns_network_cut_mid_run_times_out(tmp_path: Path, smollm2: Path, pair: Netns) -> None:
    # The worker's link goes down: no reset, no goodbye. The timeout must end the run.
    timeout = 4
    worker = start_worker(
        tmp_path / "worker.log", host=pair.worker_ip, prefix=pair.exec(pair.worker)
    )
    proc = _client(pair, tmp_path, "run", str(smollm2), *LONG, *GREEDY, "--rpc", worker.endpoint,
                   LLMRUN_RPC_TIMEOUT=str(timeout))  # fmt: skip
    lose_mid_run(proc, worker.endpoint, pair.cut, within=3 * timeout)
    worker.stop()


def test_worker_with_no_threads_is_bad_usage(llmrun) -> None:
    r = llmrun("worker", "-t", "0")
    assert r.code == 2
    assert r.stderr.strip() == "error: -t/--threads must be > 0, got 0"
