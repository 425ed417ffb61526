"""Tools, reasoning, logprobs and n through `llmrun serve`, driven by real clients.

The demo SmolLM2 speaks ChatML, as Qwen 2.5 does, so it is served with Qwen 2.5's real
template (llama.cpp's copy, fetched at test time) given by --chat-template: the template
then offers the tools in Hermes's <tool_call> syntax, and the grammar makes the tiny model
write calls that parse. Reasoning is checked with Qwen 3's template and a grammar that
makes the model write a <think> block.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tests.test_serve import KEY, Server, start_server, stop_server

openai = pytest.importorskip("openai")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]
PARALLEL = 4


@pytest.fixture(scope="module")
def server(
    smollm2: Path, llama_templates: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    template = llama_templates / "Qwen-Qwen2.5-7B-Instruct.jinja"
    home = tmp_path_factory.mktemp("serve-tools")
    srv = start_server(
        smollm2, home, "--parallel", str(PARALLEL), "-c", "4096", "--chat-template", str(template)
    )
    yield srv
    assert stop_server(srv) == 0, srv.stderr.read_text()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return server.client()


def check_call(call, tool: dict) -> dict:
    """A tool call in OpenAI's shape whose arguments fit the tool's schema."""
    assert call.type == "function"
    assert call.id
    assert call.function.name == tool["function"]["name"]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


def test_named_tool_choice_forces_that_call(client) -> None:
    r = client.chat.completions.create(
        model="x",
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None  # no markup leaks into the text
    assert len(choice.message.tool_calls) == 1
    check_call(choice.message.tool_calls[0], WEATHER)


def test_required_streams_id_and_name_first_then_the_arguments(client) -> None:
    stream = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=[TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        stream=True,
    )
    calls: list[dict] = []
    finish = None
    content = ""
    for chunk in stream:
        choice = chunk.choices[0]
        delta = choice.delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            if tc.id:  # a call's first delta: id, type and name, no arguments yet
                assert tc.function.name == "get_time" and tc.type == "function"
                calls.append({"id": tc.id, "name": tc.function.name, "arguments": ""})
            else:
                assert tc.function.name is None
                calls[tc.index]["arguments"] += tc.function.arguments
        finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert content == ""
    assert len(calls) == 1
    assert calls[0]["arguments"].count("") > 1  # came in several pieces
    jsonschema.validate(json.loads(calls[0]["arguments"]), TIME["function"]["parameters"])


def test_streamed_and_whole_calls_agree(client) -> None:
    asked = {
        "model": "x",
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 80,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**asked).choices[0].message.tool_calls[0]
    args = ""
    for chunk in client.chat.completions.create(**asked, stream=True):
        for tc in chunk.choices[0].delta.tool_calls or []:
            args += tc.function.arguments or ""
    assert args == whole.function.arguments


def test_a_tool_result_round_trip(client) -> None:
    first = client.chat.completions.create(
        model="x",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
    )
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),  # sent back as the client got it
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees."},
    ]
    second = client.chat.completions.create(
        model="x", messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=30
    )
    choice = second.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.tool_calls is None
    assert choice.message.content and "<tool_call>" not in choice.message.content


def test_tool_choice_none_answers_in_text(client) -> None:
    r = client.chat.completions.create(
        model="x", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=20
    )
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content


def test_parallel_calls_come_as_several(server: Server) -> None:
    status, body = server.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(
            {
                "messages": [{"role": "user", "content": "Weather in Paris and in Rome?"}],
                "tools": [WEATHER],
                "tool_choice": "required",
                "parallel_tool_calls": True,
                "max_tokens": 150,
                # A grammar of its own would fight the tools'; the tools' wins.
            }
        ).encode(),
    )
    assert status == 200, body
    calls = body["choices"][0]["message"]["tool_calls"]
    # The tiny model keeps calling until max_tokens: complete calls are kept, each with its id.
    assert len(calls) >= 2
    assert len({c["id"] for c in calls}) == len(calls)
    for c in calls:
        jsonschema.validate(
            json.loads(c["function"]["arguments"]), WEATHER["function"]["parameters"]
        )


def test_bad_tools_are_400_naming_the_field(server: Server) -> None:
    for bad, param in [
        ({"tools": [{"type": "function", "function": {}}]}, "tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
    ]:
        body = json.dumps({"messages": ASK, **bad}).encode()
        status, out = server.request("POST", "/v1/chat/completions", body)
        assert status == 400 and out["error"]["param"] == param, out


# ---------------------------------------------------------------- logprobs and n


def test_chat_logprobs_in_openai_shape(client) -> None:
    r = client.chat.completions.create(
        model="x", messages=ASK, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens == 6
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    for e in entries:
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert e.logprob == pytest.approx(tops[0])  # greedy: the most likely token
        assert e.logprob <= 0


def test_streamed_logprobs_come_with_their_text(client) -> None:
    got = []
    text = ""
    for chunk in client.chat.completions.create(
        model="x", messages=ASK, max_tokens=6, temperature=0, logprobs=True, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs:
            got += chunk.choices[0].logprobs.content
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert len(got) == 6
    assert "".join(e.token for e in got) == text


def test_echo_logprobs_equal_evals_per_token_nll(client, smollm2: Path) -> None:
    from llmrun.engine import load_model
    from llmrun.evaluate import log_softmax
    from llmrun.options import Load

    text = "Alice was beginning to get very tired of sitting by her sister on the bank."
    r = client.completions.create(model="x", prompt=text, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert "".join(lp.tokens) == text
    assert lp.text_offset[0] == 0 and lp.text_offset[-1] == len(text) - len(lp.tokens[-1])
    with load_model(smollm2, Load(ctx_size=512)) as model:
        tokens = model.tokenize(text)
        nll = -log_softmax(model.logits(tokens))[np.arange(len(tokens) - 1), tokens[1:]]
    np.testing.assert_allclose(-np.array(lp.token_logprobs[1:]), nll, atol=1e-4)


def test_completion_logprobs_legacy_shape(client) -> None:
    prompt = "The capital of France is"
    r = client.completions.create(model="x", prompt=prompt, max_tokens=4, logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == len(prompt)
    assert all(len(t) <= 2 for t in lp.top_logprobs)


def test_n_gives_n_choices_greedy_ones_identical(client) -> None:
    r = client.chat.completions.create(model="x", messages=ASK, max_tokens=12, temperature=0, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 1
    assert r.usage.completion_tokens == 3 * 12
    alone = client.chat.completions.create(model="x", messages=ASK, max_tokens=12, temperature=0)
    assert r.usage.prompt_tokens == alone.usage.prompt_tokens  # the prompt counts once
    assert r.choices[0].message.content == alone.choices[0].message.content


def test_n_beyond_parallel_is_400(server: Server) -> None:
    body = json.dumps({"messages": ASK, "n": PARALLEL + 1}).encode()
    status, out = server.request("POST", "/v1/chat/completions", body)
    assert status == 400 and out["error"]["param"] == "n", out


# ---------------------------------------------------------------- reasoning

# Makes the tiny model think, then answer (llama-server's raw `grammar` field).
THINK_THEN_ANSWER = 'root ::= "<think>" [a-z ]{5,40} "</think>" [A-Za-z ]{3,30}'


def test_thinking_is_split_off_whole_and_streamed(client) -> None:
    asked = {
        "model": "x",
        "messages": ASK,
        "max_tokens": 60,
        "temperature": 0,
        "extra_body": {"grammar": THINK_THEN_ANSWER, "reasoning_format": "deepseek"},
    }
    whole = client.chat.completions.create(**asked).choices[0].message
    reasoning = whole.model_extra["reasoning_content"]
    assert reasoning and "<think>" not in reasoning and "</think>" not in reasoning
    assert whole.content and "<think>" not in whole.content and "</think>" not in whole.content
    streamed = {"reasoning_content": "", "content": ""}
    for chunk in client.chat.completions.create(**asked, stream=True):
        if chunk.choices:
            delta = chunk.choices[0].delta
            streamed["content"] += delta.content or ""
            streamed["reasoning_content"] += (delta.model_extra or {}).get(
                "reasoning_content"
            ) or ""
    assert streamed == {"reasoning_content": reasoning, "content": whole.content}


def test_reasoning_format_none_leaves_the_thinking_in_the_content(client) -> None:
    r = client.chat.completions.create(
        model="x",
        messages=ASK,
        max_tokens=60,
        temperature=0,
        extra_body={"grammar": THINK_THEN_ANSWER, "reasoning_format": "none"},
    )
    message = r.choices[0].message
    assert message.content.startswith("<think>")
    assert not (message.model_extra or {}).get("reasoning_content")


# ---------------------------------------------------------------- langchain


def test_langchain_bind_tools_and_structured_output(server: Server) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from pydantic import BaseModel, Field

    llm = langchain_openai.ChatOpenAI(
        base_url=server.url + "/v1", api_key=KEY, model="smollm2", temperature=0, max_tokens=80
    )
    forced = llm.bind_tools([WEATHER], tool_choice="get_weather", parallel_tool_calls=False)
    msg = forced.invoke("What is the weather like in Paris?")
    assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
    jsonschema.validate(msg.tool_calls[0]["args"], WEATHER["function"]["parameters"])
    assert msg.tool_calls[0]["id"]

    class City(BaseModel):
        """A city and its country."""

        name: str = Field(description="the city")
        country: str = Field(description="its country")

    for method in ("function_calling", "json_schema"):
        city = llm.with_structured_output(City, method=method).invoke("Name a city in France.")
        assert isinstance(city, City) and city.name and city.country, method


def test_parameters_with_refs_as_pydantic_writes_them(client) -> None:
    from typing import Literal

    from pydantic import BaseModel, Field

    # Closed choices keep the tiny model from rambling inside a string until max_tokens.
    class Place(BaseModel):
        city: Literal["Paris", "Rome", "Milan"]
        country: Literal["France", "Italy"]

    class Trip(BaseModel):
        start: Place
        stops: list[Place] = Field(max_length=2)

    schema = Trip.model_json_schema()
    assert "$defs" in schema
    tool = {"type": "function", "function": {"name": "plan_trip", "parameters": schema}}
    r = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Plan a trip from Paris to Rome."}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "plan_trip"}},
        max_tokens=150,
    )
    call = r.choices[0].message.tool_calls[0]
    Trip.model_validate_json(call.function.arguments)


def test_a_tool_without_parameters_takes_none(client) -> None:
    ping = {"type": "function", "function": {"name": "ping", "description": "Are you there?"}}
    r = client.chat.completions.create(
        model="x", messages=ASK, tools=[ping], tool_choice="required",
        parallel_tool_calls=False, max_tokens=40,
    )  # fmt: skip
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "ping" and json.loads(call.function.arguments) == {}


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_cut_by_max_tokens_is_a_call_not_markup(client, stream: bool) -> None:
    asked = {
        "model": "x", "messages": ASK, "tools": [WEATHER], "tool_choice": "required",
        "parallel_tool_calls": False, "max_tokens": 22,  # past the name, inside the arguments
    }  # fmt: skip
    if stream:
        content, names, finish = "", [], None
        for chunk in client.chat.completions.create(**asked, stream=True):
            delta = chunk.choices[0].delta
            content += delta.content or ""
            names += [tc.function.name for tc in delta.tool_calls or [] if tc.id]
            finish = chunk.choices[0].finish_reason or finish
    else:
        choice = client.chat.completions.create(**asked).choices[0]
        content, finish = choice.message.content or "", choice.finish_reason
        names = [tc.function.name for tc in choice.message.tool_calls or []]
    assert finish == "length"
    assert names == ["get_weather"]
    assert "<tool_call>" not in content
