"""`llmrun serve`: a real server process on 127.0.0.1, driven by the official openai client.

One server (16 sequences, an API key) is shared by the module; the SIGTERM test
starts its own. Greedy decoding and short answers keep it quick.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tests.conftest import wait_for

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

KEY = "test-key-123"
PARALLEL = 16


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0)

    def request(
        self, method: str, path: str, body: bytes | None = None, key: str | None = KEY
    ) -> tuple[int, dict]:
        """A raw request: (status, parsed JSON body)."""
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def health(self) -> dict:
        status, body = self.request("GET", "/health")
        assert status == 200, body
        return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: Path | None,
    home: Path,
    *args: str,
    key: str | None = KEY,
    env: dict[str, str] | None = None,
) -> Server:
    """`llmrun serve [MODEL]` in a process of its own, once it answers /health."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    stderr = home / "serve.stderr"
    env = {
        **os.environ,
        "LLMRUN_HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "llmrun", "serve", *([str(model)] if model else [])]
    cmd += ["--port", str(port)]
    cmd += ["--temp", "0", *args]
    if key:
        cmd += ["--api-key", key]
    with stderr.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    server = Server(proc, port, stderr)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"llmrun serve exited with {proc.returncode}: {stderr.read_text()}")
        try:
            server.health()
            return True
        except (OSError, AssertionError):  # not listening, or not answering 200, yet
            return False

    try:
        wait_for(ready, 120, lambda: f"llmrun serve did not answer /health: {stderr.read_text()}")
    except BaseException:
        proc.kill()
        raise
    return server


def test_quiet_server_says_nothing_but_answers(smollm2: Path, tmp_path: Path) -> None:
    """-q: no "serving ..." line, no access log, no CPU-only note; the answers are the same."""
    srv = start_server(smollm2, tmp_path / "home", "-q", "-ngl", "9")
    try:
        answer = srv.client().chat.completions.create(
            model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert answer.choices[0].message.content
    finally:
        assert stop_server(srv) == 0
    assert srv.stderr.read_text() == ""


def stop_server(server: Server) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("serve")
    srv = start_server(
        smollm2, home, "--parallel", str(PARALLEL), "-c", str(PARALLEL * 512), "--embeddings"
    )
    yield srv
    assert stop_server(srv) == 0, srv.stderr.read_text()


def wait_idle(server: Server, timeout: float = 30) -> dict:
    """/health's stats once no sequence is active or waiting."""

    def idle() -> dict | None:
        stats = server.health()
        return stats if stats["active"] == 0 and stats["waiting"] == 0 else None

    return wait_for(idle, timeout, lambda: f"sequences still busy: {server.health()}")


# Counting has one obvious continuation, so greedy answers do not depend on the
# rounding differences between a batch of one and a batch of sixteen.
def counting(start: int) -> str:
    return ", ".join(str(n) for n in range(start, start + 5)) + ","


def counting_continues(start: int, text: str) -> bool:
    return text.startswith(f" {start + 5}, {start + 6}")


# ---------------------------------------------------------------- the happy paths


def test_models_and_health(server: Server, smollm2: Path):
    name = smollm2.stem  # a model given by path is served under its file name
    models = server.client().models.list()
    assert [m.id for m in models.data] == [name]
    assert server.client().models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("gpt-4")
    health = server.health()
    assert health["status"] == "ok" and health["parallel"] == PARALLEL


def test_chat_streaming_and_not_agree(server: Server):
    client = server.client()
    ask = {
        "model": "any-name",
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**ask)
    answer = whole.choices[0].message.content
    assert answer and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 16 and whole.usage.prompt_tokens > 5
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")

    chunks = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completion_matches_llmrun_run(server: Server, smollm2: Path, llmrun):
    client = server.client()
    prompt = "The capital of France is"
    whole = client.completions.create(model="x", prompt=prompt, max_tokens=8, temperature=0)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="x", prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
    )
    assert whole.object == "text_completion"
    assert whole.choices[0].text == streamed
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 8
    alone = llmrun("run", str(smollm2), prompt, "--raw", "--temp", "0", "-n", "8")
    assert alone.code == 0, alone.stderr
    assert alone.stdout.rstrip("\n") == whole.choices[0].text.rstrip("\n")


def test_stop_strings_and_several_prompts(server: Server):
    out = server.client().completions.create(
        model="x", prompt=[counting(1), counting(40)], max_tokens=12, temperature=0, stop=[", 9"]
    )
    texts = {c.index: c.text for c in out.choices}
    assert texts[0] == " 6, 7, 8" and out.choices[0].finish_reason == "stop"
    assert counting_continues(40, texts[1])


@pytest.mark.slow
def test_json_schema_output_validates(server: Server):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    out = server.client().chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Describe a cat as JSON with name and age."}],
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": schema}},
    )
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)

    out = server.client().chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "A city as JSON."}],
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    text = out.choices[0].message.content
    if out.choices[0].finish_reason == "stop":
        json.loads(text)
    else:  # cut short by max_tokens: still JSON as far as it goes
        assert text.startswith("{"), text


TOPICS = ["cats", "the sea", "bread", "winter", "trains", "music", "maps", "bees"]


@pytest.mark.slow
def test_16_concurrent_streams_equal_their_answers_alone(server: Server):
    """Half chats, half counting completions; each must be what it is when asked alone."""
    client = server.client()
    asks = [("chat", t) for t in TOPICS] + [("count", 10 * k + 3) for k in range(8)]

    def ask(kind: str, what) -> str:
        if kind == "count":
            chunks = client.completions.create(
                model="x", prompt=counting(what), max_tokens=12, temperature=0, stream=True
            )
            return "".join(c.choices[0].text for c in chunks)
        chunks = client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": f"Write one sentence about {what}."}],
            max_tokens=12,
            temperature=0,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    alone = [ask(*a) for a in asks]
    barrier = threading.Barrier(len(asks))

    def together(a: tuple) -> str:
        barrier.wait()
        return ask(*a)

    before = server.health()["steps"]
    with ThreadPoolExecutor(len(asks)) as pool:
        concurrent = list(pool.map(together, asks))
    assert concurrent == alone
    assert len(set(alone[:8])) == 8  # independent: every topic its own answer
    counted = zip(asks[8:], alone[8:], strict=True)
    assert all(counting_continues(n, text) for (_, n), text in counted)
    # Decoded together: far fewer steps than 16 requests one after the other.
    assert server.health()["steps"] - before < 16 * 12 / 2
    wait_idle(server)


def send_request(server: Server, body: dict) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/completions", json.dumps(body), headers)
    return conn


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_its_sequence(server: Server, stream: bool):
    wait_idle(server)
    before = server.health()["generated_tokens"]
    body = {"prompt": counting(1), "max_tokens": 400, "temperature": 0, "stream": stream}
    conn = send_request(server, body)
    if stream:
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")
    else:  # the answer comes whole at the end: leave while it is being generated
        wait_for(lambda: server.health()["active"], 30)
    assert server.health()["active"] == 1
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    stats = wait_idle(server, timeout=10)
    # Cancelled, not finished: short of the 400 tokens it asked for. (How far short depends on
    # the machine's speed; freed at once is wait_idle's short timeout above.)
    assert stats["generated_tokens"] - before < 400


# ---------------------------------------------------------------- refusals


def test_api_key_is_required(server: Server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    for key in (None, "wrong"):
        status, body = server.request("GET", "/v1/models", key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    for path in ("/api/tags", "/api/ps"):  # Ollama's routes need it too
        status, body = server.request("GET", path, key=None)
        assert status == 401 and set(body) == {"error"}
    status, body = server.request("GET", "/health", key=None)  # for load balancers
    assert (status, body) == (200, {"status": "ok"})
    assert server.client().models.list().data


GOOD = {"prompt": "Hello", "max_tokens": 2}
BAD_REQUESTS = [
    # (path, body, status, param or code the error names)
    ("/v1/completions", b"{not json", 400, "invalid_json"),
    ("/v1/completions", b'"just a string"', 400, None),
    ("/v1/completions", {**GOOD, "frobnicate": 1}, 400, "frobnicate"),
    ("/v1/completions", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {**GOOD, "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {**GOOD, "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {**GOOD, "top_p": 2}, 400, "top_p"),
    ("/v1/completions", {**GOOD, "n": 17}, 400, "n"),  # more than --parallel
    ("/v1/completions", {**GOOD, "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"max_tokens": 2}, 400, "prompt"),
    ("/v1/completions", {**GOOD, "prompt": "word " * 600}, 400, "context_length_exceeded"),
    ("/v1/completions", b"x" * (4 << 20) + b"xx", 413, "request_too_large"),
    ("/v1/chat/completions", {"messages": [], "max_tokens": 2}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "prompt": "x"},
        400,
        "prompt",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}},
        },
        400,
        "response_format",
    ),
    ("/v1/embeddings", {"input": "hello", "encoding_format": "hex"}, 400, "encoding_format"),
    ("/v1/embeddings", {"input": []}, 400, "input"),
    ("/v1/embeddings", {"input": [[1, 2, 10**9]]}, 400, "input"),
    ("/v1/embeddings", {"input": "hi " * 3000}, 400, "input"),
    ("/v1/nothing-here", {}, 404, None),
]


@pytest.mark.parametrize(("path", "body", "status", "names"), BAD_REQUESTS)
def test_bad_request_is_refused_and_the_server_goes_on(server: Server, path, body, status, names):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, reply = server.request("POST", path, data)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if names:
        assert names in (error["param"], error["code"]), error
    ok = server.client().completions.create(model="x", prompt="Hello", max_tokens=2)
    assert ok.usage.completion_tokens >= 1


def test_wrong_method_is_405(server: Server):
    status, reply = server.request("GET", "/v1/chat/completions")
    assert status == 405 and reply["error"]["message"]


def test_openai_client_raises_on_bad_request(server: Server):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        server.client().chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=0
        )


# ---------------------------------------------------------------- lifetime


SHUTTING_DOWN = 'data: {"error":{"message":"the server is shutting down"'


@pytest.mark.slow
def test_sigterm_finishes_or_ends_the_answers_in_flight_and_exits_0(smollm2: Path, tmp_path: Path):
    """A short answer finishes; one that would outlast the grace period gets an error event."""
    # A grace period of 1 s (default 10): long enough for 8 tokens, far too short for 5000.
    srv = start_server(
        smollm2, tmp_path / "home", "--parallel", "2", "--shutdown-grace", "1", key=None
    )
    responses = []
    for max_tokens in (8, 5000):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        body = {"prompt": counting(1), "max_tokens": max_tokens, "temperature": 0, "stream": True}
        conn.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        responses.append(conn.getresponse())
        assert responses[-1].readline().startswith(b"data: ")
    srv.proc.send_signal(signal.SIGTERM)
    short, long = (r.read().decode().rstrip() for r in responses)
    # On a loaded machine even the short one may not finish within the grace period.
    assert short.endswith("data: [DONE]") or SHUTTING_DOWN in short.splitlines()[-1]
    assert SHUTTING_DOWN in long.splitlines()[-1]
    assert srv.proc.wait(timeout=60) == 0, srv.stderr.read_text()
    assert "Traceback" not in srv.stderr.read_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2)


def test_busy_port_is_one_line(smollm2: Path, llmrun):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = llmrun("serve", str(smollm2), "--port", str(port))
    assert result.code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--shutdown-grace", "-1"], "--shutdown-grace must be >= 0 seconds, got -1"),
        (["--max-queue", "-1"], "--max-queue must be >= 0, got -1"),
        (["--parallel", "0"], "--parallel must be >= 1, got 0"),
    ],
)
def test_bad_serve_flags_are_one_line(
    flags: list[str], says: str, smollm2: Path, llmrun_inprocess
) -> None:
    result = llmrun_inprocess("serve", str(smollm2), *flags)  # refused before anything loads
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [f"error: {says}"]


def test_serve_without_the_extra_says_how_to_install_it():
    code = "import sys; sys.modules['uvicorn'] = None; from llmrun.cli import main; main(['serve'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        'error: llmrun serve needs the server extra; install it: pip install "llmrun[server]"'
    ]


# ---------------------------------------------------------------- request checking, no server


def test_chat_body_is_read_as_openai_clients_send_it():
    from llmrun.server.schemas import parse_chat

    req = parse_chat(
        {
            "model": "gpt-4o",
            "user": "me",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
                # a reply echoed back from a response: empty tool fields are fine
                {"role": "assistant", "content": "Hello.", "refusal": None, "tool_calls": None},
                {"role": "user", "content": "Again."},
            ],
            "temperature": 0.5,
            "max_completion_tokens": 20,
            "stop": "END",
            "n": 1,
            "presence_penalty": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "response_format": {"type": "json_object"},
        }
    )
    assert [m["role"] for m in req.messages] == ["system", "user", "assistant", "user"]
    assert req.messages[1]["content"] == "Hi there"
    assert req.sampling == {"temp": 0.5, "max_tokens": 20, "stop": ("END",)}
    assert req.stream and req.include_usage and req.grammar


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "tools",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 21}, "top_logprobs"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
            "tool_choice",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "echo": True}, "echo"),
        ({"messages": [{"role": "user", "content": "x"}], "seed": 2**40}, "seed"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [""]}, "stop"),
    ],
)
def test_chat_fields_we_cannot_honour_are_refused(body: dict, param: str):
    from llmrun.server.openai_errors import ApiError
    from llmrun.server.schemas import parse_chat

    with pytest.raises(ApiError) as caught:
        parse_chat(body)
    assert caught.value.status == 400 and caught.value.param == param


def test_completion_prompts_in_every_shape():
    from llmrun.server.schemas import parse_completion

    assert parse_completion({"prompt": "a"}).prompts == ["a"]
    assert parse_completion({"prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert parse_completion({"prompt": [1, 2, 3]}).prompts == [[1, 2, 3]]
    assert parse_completion({"prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]


# ---------------------------------------------------------------- embeddings

TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply on Monday.", "A kitten naps."]


def test_embeddings_are_unit_vectors_in_both_encodings(server: Server):
    import numpy as np

    # The openai client asks for base64 and decodes it; a raw request asks for floats.
    got = server.client().embeddings.create(model="any", input=TEXTS)
    assert [d.index for d in got.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in got.data])
    assert vectors.shape == (3, 576)  # SmolLM2-135M's hidden size
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert got.usage.prompt_tokens == got.usage.total_tokens > 10
    status, raw = server.request(
        "POST", "/v1/embeddings", json.dumps({"input": TEXTS, "encoding_format": "float"}).encode()
    )
    assert status == 200, raw
    floats = np.array([d["embedding"] for d in raw["data"]])
    assert np.array_equal(floats.astype(np.float32), vectors.astype(np.float32))
    # One at a time, or as token ids: the same vectors.
    alone = server.client().embeddings.create(model="any", input=TEXTS[1]).data[0].embedding
    assert np.array_equal(np.array(alone), vectors[1])


def test_embeddings_of_token_ids_equal_those_of_the_text(server: Server, smollm2: Path):
    import numpy as np

    from llmrun.engine.model import Model
    from llmrun.options import Load

    with Model(smollm2, Load(ctx_size=256, threads=1)) as model:
        ids = model.tokenize(TEXTS[0], add_special=True)
    client = server.client()
    by_text = client.embeddings.create(model="any", input=TEXTS[0]).data[0].embedding
    by_ids = client.embeddings.create(model="any", input=[ids]).data[0].embedding
    assert np.array_equal(np.array(by_text), np.array(by_ids))


def test_embeddings_equal_transformers_mean_pooling(server: Server, smollm2: Path):
    # An independent reference: the checkpoint derived from the same GGUF, run by
    # transformers, its final hidden states (after the last norm) averaged over the tokens.
    import numpy as np
    import torch
    from transformers import AutoModel

    from llmrun.engine.model import Model
    from llmrun.options import Load
    from tests.quantize_fixtures import smollm2_checkpoint

    reference = AutoModel.from_pretrained(smollm2_checkpoint(), torch_dtype=torch.float32)
    with Model(smollm2, Load(ctx_size=256, threads=1)) as model:
        token_lists = [model.tokenize(t, add_special=True) for t in TEXTS]
    ours = np.array(
        [d.embedding for d in server.client().embeddings.create(model="any", input=TEXTS).data]
    )
    for tokens, vector in zip(token_lists, ours, strict=True):
        with torch.no_grad():
            hidden = reference(torch.tensor([tokens])).last_hidden_state[0].mean(dim=0).numpy()
        theirs = hidden / np.linalg.norm(hidden)
        assert float(vector @ theirs) > 0.995
    # And they mean something: the two sentences about cats are the closest pair.
    sims = ours @ ours.T
    assert sims[0, 2] > sims[0, 1] and sims[0, 2] > sims[1, 2]


def test_embeddings_without_the_flag_are_made_on_first_use(
    server: Server, smollm2: Path, tmp_path: Path
):
    srv = start_server(smollm2, tmp_path / "home", key=None)
    try:
        status, reply = srv.request("POST", "/v1/embeddings", b'{"input": "hi"}', key=None)
        assert status == 200, reply
        lazy = np.array(reply["data"][0]["embedding"])
        eager = server.client().embeddings.create(model="x", input="hi").data[0].embedding
        assert np.allclose(lazy, eager, atol=1e-5)  # the same as --embeddings makes at load
    finally:
        assert stop_server(srv) == 0
