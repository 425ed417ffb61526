"""One `llmrun serve` for every model, driven by the real `ollama` and `openai` clients.

The module's server holds no MODEL: its store has the two real demo GGUFs (SmolLM2 135M,
llama with a BPE vocabulary; Gemma 3 270M, SentencePiece), each loaded when a request
names it. Other servers here have a budget of one model, of too little memory, or a
local Hub to pull from. Greedy decoding and short answers keep it quick.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import add_stored, rewrite_gguf, wait_for
from tests.hubserver import HubServer
from tests.test_serve import KEY, Server, start_server, stop_server

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

SMOL = "smollm2:Q4_1"
GEMMA = "gemma3:Q4_K_M"
FIM = "smolfim:Q4_1"  # SmolLM2 whose GGUF names three of its tokens as fill-in-the-middle's
FIM_IDS = (3, 4, 5)
GREEDY = {"temperature": 0, "num_predict": 8}
COUNT = "1, 2, 3, 4, 5,"


def with_fim_tokens(src: Path, out: Path) -> Path:
    """A copy of a GGUF whose metadata names fill-in-the-middle tokens."""
    keys = [f"tokenizer.ggml.fim_{key}_token_id" for key in ("pre", "suf", "mid")]
    rewrite_gguf(src, out, dict(zip(keys, FIM_IDS, strict=True)))
    return out


def stored_home(home: Path, smollm2: Path, gemma3: Path, fim: Path | None = None) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMRUN_HOME", str(home))
        add_stored(smollm2, "smollm2", "Q4_1")
        add_stored(gemma3, "gemma3", "Q4_K_M")
        if fim is not None:
            add_stored(fim, "smolfim", "Q4_1")
    return home


@pytest.fixture(scope="module")
def server(
    smollm2: Path, gemma3: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    fim = with_fim_tokens(smollm2, tmp_path_factory.mktemp("fim") / "smolfim.gguf")
    home = stored_home(tmp_path_factory.mktemp("serve-ollama"), smollm2, gemma3, fim)
    srv = start_server(None, home, "--parallel", "2", "-c", "2048", key=None)
    yield srv
    assert stop_server(srv) == 0, srv.stderr.read_text()


@pytest.fixture(scope="module")
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def raw(server: Server, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    data = None if body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def loaded(client: ollama.Client) -> set[str]:
    return {m.model for m in client.ps().models}


# ---------------------------------------------------------------- the model routes


def test_root_version_and_tags_in_the_shapes_clients_read(server: Server, client) -> None:
    status, body = raw(server, "GET", "/")
    assert (status, body) == (200, b"Ollama is running")
    status, body = raw(server, "GET", "/api/version")
    assert status == 200 and json.loads(body)["version"].count(".") == 2
    status, body = raw(server, "GET", "/api/tags")
    models = {m["name"]: m for m in json.loads(body)["models"]}
    assert {SMOL, GEMMA} <= set(models)
    for m in models.values():  # what Zed's and Open WebUI's model pickers need, as strings
        assert isinstance(m["modified_at"], str) and isinstance(m["digest"], str)
        assert isinstance(m["size"], int) and m["size"] > 0
        for key in ("format", "family", "parameter_size", "quantization_level"):
            assert isinstance(m["details"][key], str) and m["details"][key]
    assert models[SMOL]["details"]["family"] == "llama"
    assert models[GEMMA]["details"]["family"] == "gemma3"
    assert models[GEMMA]["details"]["quantization_level"] == "Q4_K_M"
    assert {m.model for m in client.list().models} >= {SMOL, GEMMA}


def test_show_takes_model_or_the_older_name(server: Server, client) -> None:
    status, body = raw(server, "POST", "/api/show", {"name": SMOL})  # as Continue asks
    assert status == 200, body
    shown = json.loads(body)
    assert shown["model_info"]["llama.context_length"] == 8192
    assert shown["model_info"]["general.architecture"] == "llama"
    assert "<|im_start|>" in shown["template"]
    assert shown["details"]["quantization_level"] == "Q4_1"
    assert shown["capabilities"] == ["completion"]
    assert "insert" in client.show(FIM).capabilities
    gemma = client.show(GEMMA)
    assert "completion" in gemma.capabilities and "insert" not in gemma.capabilities
    assert gemma.modelinfo["gemma3.context_length"] > 0
    status, body = raw(server, "POST", "/api/show", {"model": "no-such-model"})
    assert status == 404 and "no-such-model" in json.loads(body)["error"]


# ---------------------------------------------------------------- generation


def test_chat_answers_with_ollama_fields_and_nanosecond_timings(client) -> None:
    reply = client.chat(
        model=SMOL, messages=[{"role": "user", "content": "Say hello."}], options=GREEDY
    )
    assert reply.message.role == "assistant" and reply.message.content.strip()
    assert reply.done and reply.done_reason == "length"
    assert reply.eval_count == 8 and reply.prompt_eval_count > 10
    assert reply.total_duration >= reply.eval_duration > 0 and reply.prompt_eval_duration > 0
    latest = client.generate(model="smollm2:latest", prompt=COUNT, raw=True, options=GREEDY)
    assert latest.model == "smollm2:latest" and latest.response  # Ollama's default tag


def test_streamed_generate_equals_the_whole_answer(client) -> None:
    whole = client.generate(model=SMOL, prompt=COUNT, raw=True, options=GREEDY)
    assert whole.response.startswith(" 6, 7")
    parts = list(client.generate(model=SMOL, prompt=COUNT, raw=True, options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].eval_count == 8 and parts[-1].done_reason == "length"
    # The context carries the conversation on: prompt, answer, then the next prompt.
    more = client.generate(
        model=SMOL, prompt=" 9,", raw=True, context=whole.context, options=GREEDY
    )
    assert more.response.strip().startswith("10")


def test_stop_seed_and_format_json(client) -> None:
    stopped = client.generate(
        model=SMOL, prompt=COUNT, raw=True, options={**GREEDY, "stop": [" 8"]}
    )
    assert stopped.response == " 6, 7," and stopped.done_reason == "stop"
    answer = client.chat(
        model=SMOL,
        messages=[{"role": "user", "content": "Give a JSON object with a name."}],
        format={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        options={"temperature": 0, "num_predict": 40},
    )
    assert isinstance(json.loads(answer.message.content)["name"], str)


def test_fill_in_the_middle_with_suffix(client, smollm2: Path) -> None:
    from llmrun.engine.model import Model
    from llmrun.options import Load

    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    ask = {"model": FIM, "prompt": prefix, "suffix": suffix, "options": GREEDY}
    reply = client.generate(**ask)
    assert reply.response and client.generate(**ask).response == reply.response
    with Model(smollm2, Load(ctx_size=256)) as model:  # prefix token, prefix, suffix, middle
        n = sum(len(model.tokenize(t, add_special=False)) for t in (prefix, suffix))
        n += 3 + model.add_bos
    assert reply.prompt_eval_count == n
    plain = client.generate(model=FIM, prompt=prefix, raw=True, options=GREEDY)
    assert plain.response != reply.response  # the suffix was seen
    for model in (SMOL, GEMMA):
        with pytest.raises(ollama.ResponseError) as e:
            client.generate(model=model, prompt="x = ", suffix="\n", options=GREEDY)
        assert e.value.status_code == 400 and "insert" in e.value.error


def test_embed_and_the_older_embeddings(client) -> None:
    out = client.embed(model=SMOL, input=["a cat sat", "a dog ran"])
    vectors = np.array(out.embeddings)
    assert vectors.shape == (2, 576)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert out.prompt_eval_count > 4
    one = client.embeddings(model=SMOL, prompt="a cat sat")
    assert np.allclose(one.embedding, vectors[0], atol=1e-5)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def asked_for_weather(city: str) -> list[dict]:
    """Two earlier turns where the assistant called the tool (arguments as an object, as
    Ollama's clients send them) and got results back; the tiny model follows the pattern."""
    turns: list[dict] = []
    for before, result in (("Rome", "sunny"), ("Oslo", "cold")):
        turns += [
            {"role": "user", "content": f"Weather in {before}?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": before}}}
                ],
            },
            {"role": "tool", "content": result, "tool_name": "get_weather"},
            {"role": "assistant", "content": result.capitalize() + "."},
        ]
    return [*turns, {"role": "user", "content": f"Weather in {city}?"}]


def test_tool_calls_come_with_their_arguments_as_an_object(client) -> None:
    ask = {"model": SMOL, "messages": asked_for_weather("Paris"), "tools": [WEATHER]}
    reply = client.chat(**ask, options={"temperature": 0, "num_predict": 60})
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Paris"}
    assert reply.done_reason == "stop"
    parts = list(client.chat(**ask, options={"temperature": 0, "num_predict": 60}, stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.arguments for c in calls] == [{"city": "Paris"}]
    assert "tool_call" not in "".join(p.message.content for p in parts)


def test_two_models_answer_at_once_and_the_openai_api_names_them_too(
    server: Server, client
) -> None:
    def ask(model: str):
        return client.generate(model=model, prompt=COUNT, raw=True, options=GREEDY)

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, [SMOL, GEMMA, SMOL, GEMMA]))
    answers = [r.response for r in replies]
    assert answers[0] == answers[2] and answers[1] == answers[3]
    # Two models answered: their vocabularies cut the prompt differently.
    assert replies[0].prompt_eval_count != replies[1].prompt_eval_count
    assert loaded(client) >= {SMOL, GEMMA}
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    for model, expected in ((SMOL, answers[0]), (GEMMA, answers[1])):
        reply = oai.completions.create(model=model, prompt=COUNT, max_tokens=8, temperature=0)
        assert reply.model == model and reply.choices[0].text == expected
    assert {m.id for m in oai.models.list().data} >= {SMOL, GEMMA}


def test_keep_alive_zero_unloads_and_an_empty_prompt_loads(client) -> None:
    client.generate(model=GEMMA, prompt="", keep_alive="10m")  # loads, answers nothing
    assert GEMMA in loaded(client)
    expires = next(m.expires_at for m in client.ps().models if m.model == GEMMA)
    assert expires is not None
    client.generate(model=GEMMA, prompt=COUNT, raw=True, options=GREEDY, keep_alive=0)
    assert GEMMA not in loaded(client)
    done = client.generate(model=GEMMA, prompt="")
    assert done.done_reason == "load" and GEMMA in loaded(client)
    done = client.generate(model=GEMMA, prompt="", keep_alive=0)
    assert done.done_reason == "unload" and GEMMA not in loaded(client)


def test_errors_are_ollama_shaped_and_the_server_goes_on(server: Server, client) -> None:
    status, body = raw(server, "POST", "/api/chat", {"model": "nope", "messages": []})
    assert status == 404 and "nope" in json.loads(body)["error"]
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    for body in (b"{not json", b"[1, 2]"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/api/generate", body=body)
        resp = conn.getresponse()
        assert resp.status == 400 and set(json.loads(resp.read())) == {"error"}
    status, body = raw(
        server, "POST", "/api/generate", {"model": SMOL, "prompt": "x", "options": {"mirostat": 2}}
    )
    assert status == 400 and "mirostat" in json.loads(body)["error"]
    status, body = raw(server, "POST", "/api/generate", {"model": SMOL, "keep_alive": "soon"})
    assert status == 400 and "keep_alive" in json.loads(body)["error"]
    status, body = raw(server, "GET", "/api/nothing")
    assert status == 404 and "error" in json.loads(body)
    assert client.generate(model=SMOL, prompt=COUNT, raw=True, options=GREEDY).response


def test_ps_and_stop_from_the_command_line(server: Server, client) -> None:
    client.generate(model=SMOL, prompt="")
    env = {**os.environ, "LLMRUN_HOST": f"127.0.0.1:{server.port}", "NO_COLOR": "1"}

    def llmrun(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "llmrun", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    shown = llmrun("ps", "--json")
    assert shown.returncode == 0, shown.stderr
    assert SMOL in {m["name"] for m in json.loads(shown.stdout)}
    table = llmrun("ps")
    assert SMOL in table.stdout and "CPU" in table.stdout
    stopped = llmrun("stop", SMOL)
    assert stopped.returncode == 0, stopped.stderr
    assert SMOL not in loaded(client)
    again = llmrun("stop", SMOL)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    env["LLMRUN_HOST"] = "127.0.0.1:9"  # nothing listens there
    nobody = llmrun("ps")
    assert nobody.returncode == 1 and "llmrun serve" in nobody.stderr


# ---------------------------------------------------------------- room for models


def test_max_models_one_evicts_the_idle_model_never_a_busy_one(
    smollm2: Path, gemma3: Path, tmp_path: Path
) -> None:
    home = stored_home(tmp_path / "home", smollm2, gemma3)
    srv = start_server(None, home, "--max-models", "1", "--parallel", "2", key=None)
    try:
        client = ollama.Client(host=srv.url, timeout=120)
        long = {"temperature": 0, "num_predict": 120}
        stream = client.generate(model=SMOL, prompt=COUNT, raw=True, options=long, stream=True)
        first = next(stream)  # SMOL is generating now
        assert not first.done
        other: dict = {}

        def ask_gemma() -> None:
            other["reply"] = client.generate(model=GEMMA, prompt=COUNT, raw=True, options=GREEDY)

        waiter = threading.Thread(target=ask_gemma)
        waiter.start()
        parts = [first, *stream]  # GEMMA waits for SMOL's answer: it is never cut
        waiter.join(timeout=120)
        assert parts[-1].done_reason == "length" and parts[-1].eval_count == 120
        assert other["reply"].response
        assert loaded(client) == {GEMMA}  # SMOL went, once idle, to make room
    finally:
        assert stop_server(srv) == 0, srv.stderr.read_text()


def test_a_model_that_can_never_fit_is_refused_saying_how_much(
    smollm2: Path, gemma3: Path, tmp_path: Path
) -> None:
    home = stored_home(tmp_path / "home", smollm2, gemma3)
    srv = start_server(None, home, "--max-memory", "64M", key=None)
    try:
        client = ollama.Client(host=srv.url, timeout=60)
        with pytest.raises(ollama.ResponseError) as e:
            client.generate(model=SMOL, prompt="hi")
        assert e.value.status_code == 400
        assert "needs" in e.value.error and "64 MiB" in e.value.error
        oai = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as bad:
            oai.completions.create(model=SMOL, prompt="hi", max_tokens=2)
        assert bad.value.body["code"] == "model_too_large"
        assert srv.health()["status"] == "ok"
    finally:
        assert stop_server(srv) == 0, srv.stderr.read_text()


# ---------------------------------------------------------------- pull, copy, delete


GGUF_REPO = "hubtest/SmolLM2-135M-Instruct-GGUF"


@pytest.fixture(scope="module")
def hub_server(smollm2: Path) -> Iterator[HubServer]:
    """The local Hub stand-in, with one GGUF repo."""
    server = HubServer()
    server.add_repo(GGUF_REPO, {"SmolLM2-135M-Instruct-Q8_0.gguf": smollm2})
    server.start()
    yield server
    server.stop()


def test_pull_copy_delete_through_the_ollama_client(
    hub_server: HubServer, smollm2: Path, gemma3: Path, tmp_path: Path
) -> None:
    home = stored_home(tmp_path / "home", smollm2, gemma3)
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub_server.url}
    srv = start_server(None, home, "--keep-alive", "1s", key=None, env=env)
    try:
        client = ollama.Client(host=srv.url, timeout=120)
        events = list(client.pull(f"{GGUF_REPO}:Q8_0", stream=True))
        statuses = [e.status for e in events]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        progress = [e for e in events if e.digest]
        assert progress and progress[-1].completed == progress[-1].total == smollm2.stat().st_size
        pulled = "smollm2-135m-instruct:Q8_0"
        assert pulled in {m.model for m in client.list().models}
        assert client.generate(model=pulled, prompt=COUNT, raw=True, options=GREEDY).response

        client.copy(pulled, "mine")
        names = {m.model for m in client.list().models}
        assert {"mine:Q8_0", pulled} <= names
        assert client.show("mine:Q8_0").details.family == "llama"
        client.delete("mine:Q8_0")
        assert "mine:Q8_0" not in {m.model for m in client.list().models}
        client.delete(pulled)  # loaded a moment ago: unloaded, then deleted
        assert pulled not in {m.model for m in client.list().models} | loaded(client)
        with pytest.raises(ollama.ResponseError) as e:
            client.delete(pulled)
        assert e.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as e:
            client.pull("hubtest/No-Such-Repo-GGUF")
        assert e.value.status_code == 404
        status, body = raw(srv, "POST", "/api/pull", {"model": "hubtest/No-Such-Repo-GGUF"})
        lines = [json.loads(x) for x in body.splitlines()]  # streamed: the error is a line
        assert status == 200 and "error" in lines[-1]

        # --keep-alive 1s: an idle model goes by itself.
        client.generate(model=SMOL, prompt="")
        wait_for(lambda: not loaded(client), 30, lambda: f"still loaded: {loaded(client)}")
    finally:
        assert stop_server(srv) == 0, srv.stderr.read_text()


def test_think_splits_the_thinking_off_and_false_asks_for_none(
    smollm2: Path, llama_templates: Path, tmp_path: Path
) -> None:
    # QwQ's template (ChatML, as SmolLM2 speaks) opens <think> itself when asked to think.
    template = llama_templates / "Qwen-QwQ-32B.jinja"
    srv = start_server(smollm2, tmp_path / "home", "--chat-template", str(template), "--only")
    try:
        status, body = raw(srv, "GET", "/api/tags")  # the key holds for Ollama's routes too
        assert status == 401 and set(json.loads(body)) == {"error"}
        headers = {"Authorization": f"Bearer {KEY}"}
        client = ollama.Client(host=srv.url, timeout=120, headers=headers)
        assert [m.model for m in client.list().models] == [smollm2.stem]  # --only: MODEL
        ask = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "options": {"temperature": 0, "num_predict": 24},
        }
        thought = client.chat(**ask, think=True).message
        assert thought.thinking and "<think>" not in thought.thinking + thought.content
        parts = list(client.chat(**ask, think=True, stream=True))
        assert "".join(p.message.thinking or "" for p in parts) == thought.thinking
        plain = client.chat(**ask, think=False).message
        assert not plain.thinking and plain.content
        made = client.generate(model="smollm2", prompt="Hi", think=True, options=ask["options"])
        assert made.thinking == thought.thinking
        (held,) = client.ps().models  # MODEL: requests without keep_alive leave it for good
        assert held.expires_at.year == 9999
    finally:
        assert stop_server(srv) == 0, srv.stderr.read_text()
