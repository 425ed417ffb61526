"""`llmrun serve` under load and faults: metrics, deadlines, a bounded queue, stalled readers,
full sequences, health without the key, the access log. Real servers, real clients.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.test_serve import KEY, Server, counting, start_server, stop_server, wait_idle

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")


@pytest.fixture(scope="module")
def server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("serve-load")
    srv = start_server(
        smollm2, home, "--parallel", "2", "-c", "1024", "--metrics", "--log-format", "json"
    )
    yield srv
    assert stop_server(srv) == 0, srv.stderr.read_text()


def scrape(server: Server) -> dict[str, float]:
    """/metrics as {'name{labels}': value}."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200
    text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_count_exactly_the_tokens_a_request_used(server: Server) -> None:
    name = Path(server.health()["model"]).name
    label = f'{{model="{name}"}}'
    before = scrape(server)
    reply = server.client().completions.create(
        model="x", prompt=counting(1), max_tokens=7, temperature=0
    )
    after = scrape(server)
    used = reply.usage
    assert (
        after[f"llamacpp:prompt_tokens_total{label}"]
        - before.get(f"llamacpp:prompt_tokens_total{label}", 0)
        == used.prompt_tokens
    )
    assert (
        after[f"llamacpp:tokens_predicted_total{label}"]
        - before.get(f"llamacpp:tokens_predicted_total{label}", 0)
        == used.completion_tokens
        == 7
    )
    ttft = f"llmrun_time_to_first_token_seconds_count{label}"
    assert after[ttft] - before.get(ttft, 0) == 1
    ok = f'llmrun_requests_total{{model="{name}",route="/v1/completions",status="200"}}'
    assert after[ok] - before.get(ok, 0) == 1
    assert after[f"llmrun_model_loads_total{label}"] == 1
    assert after["process_resident_memory_bytes"] > 50e6
    assert f"llamacpp:kv_cache_tokens{label}" in after
    assert after[f"llmrun_kv_cache_cells{label}"] == 1024
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/metrics")
    assert conn.getresponse().status == 401  # the API key applies


def test_health_answers_without_the_key_with_the_status_only(server: Server) -> None:
    status, body = server.request("GET", "/health", key=None)
    assert (status, body) == (200, {"status": "ok"})
    assert "active" in server.health()
    status, _ = server.request("GET", "/v1/models", key=None)
    assert status == 401


def test_a_deadline_ends_a_long_answer_and_frees_its_sequence(server: Server) -> None:
    started = time.monotonic()
    status, body = server.request(
        "POST",
        "/v1/completions",
        json.dumps({"prompt": counting(1), "max_tokens": 400, "timeout": 1}).encode(),
    )
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["timed_out"] is True
    assert 0 < body["usage"]["completion_tokens"] < 400
    assert time.monotonic() - started < 30
    wait_idle(server, 5)  # the sequence is free at once
    fine = server.client().completions.create(model="x", prompt=counting(1), max_tokens=4)
    assert (
        fine.choices[0].finish_reason == "length" and "timed_out" not in fine.choices[0].model_extra
    )


def test_a_full_sequence_ends_cleanly_with_prefix_sharing(server: Server) -> None:
    prefix = counting(1) * 30  # about 420 of a sequence's 512 tokens, shared by both
    client = server.client()
    replies = [
        client.completions.create(model="x", prompt=prefix + tail, max_tokens=500, temperature=0)
        for tail in (" 6,", " 7,")
    ]
    for reply in replies:
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.prompt_tokens + reply.usage.completion_tokens <= 512
    assert server.health()["status"] == "ok"


def test_the_access_log_has_a_line_per_request_and_no_prompt(server: Server) -> None:
    marker = "a unique prompt 4711"
    server.client().completions.create(model="x", prompt=marker, max_tokens=3)

    def mine() -> list[dict]:
        text = server.stderr.read_text()  # whole lines only: the server may be writing one
        lines = [json.loads(x) for x in text.splitlines() if x.startswith("{") and x.endswith("}")]
        return [x for x in lines if x["path"] == "/v1/completions" and x["generated_tokens"] == 3]

    # The line is written once the answer has been sent: the client may read the log first.
    line = wait_for(mine, 30, server.stderr.read_text)[-1]
    assert line["status"] == 200 and line["model"]
    assert line["prompt_tokens"] > 0 and line["ttft"].endswith("s")
    assert marker not in server.stderr.read_text()


# ---------------------------------------------------------------- a server of one sequence


@pytest.fixture(scope="module")
def narrow(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("serve-narrow")
    srv = start_server(smollm2, home, "--parallel", "1", "--max-queue", "1", "--send-timeout", "1")
    yield srv
    assert stop_server(srv) == 0, srv.stderr.read_text()


def open_stream(server: Server, body: dict, rcvbuf: int | None = None) -> socket.socket:
    """A raw streaming request whose answer is not read yet."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", server.port))
    data = json.dumps({**body, "stream": True}).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def test_past_max_queue_a_503_with_retry_after(narrow: Server) -> None:
    long = {"prompt": counting(1), "max_tokens": 300}
    first = open_stream(narrow, long)
    first.recv(1)  # it is being answered: the one sequence is busy
    second = open_stream(narrow, long)
    wait_for(lambda: narrow.health()["waiting"] >= 1, 30)
    try:
        with pytest.raises(openai.APIStatusError) as e:
            narrow.client().completions.create(model="x", prompt="hi", max_tokens=2)
        assert e.value.status_code == 503
        assert e.value.response.headers["retry-after"]
        assert e.value.body["code"] == "overloaded"
        status, body = narrow.request(
            "POST", "/api/generate", json.dumps({"prompt": "hi", "stream": False}).encode()
        )
        assert status == 503 and set(body) == {"error"}
    finally:
        first.close()
        second.close()
    wait_idle(narrow, 60)


def test_a_stalled_reader_is_cancelled_and_its_sequence_freed(narrow: Server) -> None:
    # Twenty alternatives per token make each event large: the buffers fill in seconds.
    body = {"prompt": counting(1), "max_tokens": 900, "logprobs": 20}
    sock = open_stream(narrow, body, rcvbuf=2048)
    try:
        wait_for(lambda: narrow.health()["active"], 60)
        wait_idle(narrow, 240)  # cancelled once a send waited past --send-timeout
    finally:
        sock.close()
    served = wait_for(  # logged once the answer has ended, which may be after the sequence is freed
        lambda: re.findall(r"generated_tokens=(\d+)", narrow.stderr.read_text()),
        30,
        narrow.stderr.read_text,
    )
    assert int(served[-1]) < 900
    assert narrow.client().completions.create(model="x", prompt="hi", max_tokens=2).choices
