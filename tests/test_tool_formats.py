"""Tool-call formats of helper A's families (hermes, llama3, mistral, phi4, granite, generic):
detection on llama.cpp's real templates, rendering a tool conversation with them, parsing
answers whole and streamed (every prefix, checked against the whole answer), and grammars
llama.cpp accepts and the real demo model obeys.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmrun.engine import load_model
from llmrun.engine.sampling import build_sampler
from llmrun.options import Load, Sampling
from llmrun.templates.calls import Parsed, ToolGrammar, by_name, detect
from llmrun.templates.formats import generic
from llmrun.templates.render import Template

# ---------------------------------------------------------------- detection

DETECTED = [
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", "hermes"),
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "hermes"),
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes"),
    ("Qwen-Qwen3-0.6B.jinja", "hermes"),
    ("Qwen-QwQ-32B.jinja", "hermes"),
    ("MiMo-VL.jinja", "hermes"),
    ("Bielik-11B-v3.0-Instruct.jinja", "hermes"),
    ("Reka-Edge.jinja", "hermes"),
    ("ibm-granite-granite-4.0.jinja", "hermes"),
    ("ibm-granite-granite-4.1.jinja", "hermes"),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3"),
    ("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3"),
    ("meta-llama-Llama-3.3-70B-Instruct.jinja", "llama3"),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral"),
    ("Mistral-Small-3.2-24B-Instruct-2506.jinja", "mistral"),
    ("unsloth-mistral-Devstral-Small-2507.jinja", "mistral"),
    ("mistralai-Ministral-3-14B-Reasoning-2512.jinja", "mistral"),
    ("ibm-granite-granite-3.3-2B-Instruct.jinja", "granite"),
    # no tool syntax of their own
    ("google-gemma-2-2b-it.jinja", "generic"),
    ("microsoft-Phi-3.5-mini-instruct.jinja", "generic"),
    ("HuggingFaceTB-SmolLM3-3B.jinja", "generic"),  # this vendored copy renders no tools
    ("llama-cpp-rwkv-world.jinja", "generic"),
]

# Phi-4-mini's template is not vendored: a short one of our own with its markers.
PHI4_TEMPLATE = """\
{%- if tools -%}
<|system|>{{ messages[0].content if messages[0].role == 'system' else '' }}\
<|tool|>{{ tools | tojson }}<|/tool|><|end|>
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' and tools -%}
{%- elif message.tool_calls -%}
<|assistant|><|tool_call|>{{ message.tool_calls | map(attribute='function') | list | tojson }}\
<|/tool_call|><|end|>
{%- else -%}
<|{{ message.role }}|>{{ message.content }}<|end|>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}
"""


@pytest.mark.parametrize(("file", "name"), DETECTED)
def test_detects_real_templates(llama_templates: Path, file: str, name: str) -> None:
    assert detect((llama_templates / file).read_text()).name == name


def test_detects_phi4_markers() -> None:
    assert detect(PHI4_TEMPLATE).name == "phi4"


# ---------------------------------------------------------------- render

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "hours24": {"type": "boolean"}},
            "required": ["city", "hours24"],
        },
    },
}
CONVERSATION = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "abc123def",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "abc123def", "name": "get_weather", "content": "sunny"},
]

# (template file, or None for our Phi-4 one; what the prompt must show of the call)
RENDERED = [
    (
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    ),
    (
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    ),
    (
        "ibm-granite-granite-4.0.jinja",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    ),
    (
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    ),
    (
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123def"}]',
    ),
    (
        "Mistral-Small-3.2-24B-Instruct-2506.jinja",
        '[TOOL_CALLS]get_weather[CALL_ID]abc123def[ARGS]{"city": "Paris"}',
    ),
    (
        "unsloth-mistral-Devstral-Small-2507.jinja",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
    ),
    # Granite 3.3's template shows the tools and the result, but not the call itself.
    ("ibm-granite-granite-3.3-2B-Instruct.jinja", "<|start_of_role|>tool<|end_of_role|>sunny"),
    (None, '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'),
]


@pytest.mark.parametrize(("file", "shown"), RENDERED)
def test_renders_tool_conversation(llama_templates: Path, file: str | None, shown: str) -> None:
    source = (llama_templates / file).read_text() if file else PHI4_TEMPLATE
    prompt = Template(source, file or "phi4", bos_token="<s>", eos_token="</s>").render(
        CONVERSATION, tools=[WEATHER]
    )
    assert '"name": "get_weather"' in prompt  # the tool definitions
    assert "The current weather of a city" in prompt
    assert shown in prompt
    assert "sunny" in prompt


def test_generic_system_prompt_renders(llama_templates: Path) -> None:
    """A template with no tool syntax gets the tools from generic.system_prompt."""
    source = (llama_templates / "microsoft-Phi-3.5-mini-instruct.jinja").read_text()
    system = generic.system_prompt([WEATHER, TIME], parallel=True)
    messages = [{"role": "system", "content": system}, CONVERSATION[0]]
    prompt = Template(source, "phi3.5").render(messages, tools=[WEATHER, TIME])
    assert '"name": "get_weather"' in prompt and '"name": "get_time"' in prompt
    assert '{"tool_calls": [{"name": "<tool name>"' in prompt
    assert '{"response": "<your reply>"}' in prompt


# ---------------------------------------------------------------- parse

CALL = ("special_function", '{"arg1": 1}', "")
OBJ = '{"name": "special_function", "arguments": {"arg1": 1}}'
OBJ2 = '{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}}'
BAD = None  # a malformed call: the answer stays content, as written
CALL2 = ("special_function_with_opt", '{"arg1": 1, "arg2": 2}', "")

# (format, answer, content, calls as (name, arguments, id)); shapes from llama.cpp's test-chat.cpp
PARSED = [
    # hermes
    (
        "hermes",
        f"<tool_call>\n{OBJ}</tool_call>",
        "",
        [CALL],
    ),
    (
        "hermes",
        f"Hello, world!\nWhat's up?<tool_call>\n{OBJ}</tool_call>",
        "Hello, world!\nWhat's up?",
        [CALL],
    ),
    (
        "hermes",
        '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}}\n'
        "</tool_call>",
        "",
        [CALL, CALL2],
    ),
    ("hermes", "Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
    (
        "hermes",
        '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}\n</tool_call>',
        BAD,
        [],
    ),
    # llama3
    ("llama3", '{"name": "special_function", "parameters": {"arg1": 1}}', "", [CALL]),
    (
        "llama3",
        'Hello, world!\n{"type": "function", "name": "special_function", '
        '"parameters": {"arg1": 1}}',
        "Hello, world!",
        [CALL],
    ),
    ("llama3", '<|python_tag|>{"name": "special_function", "arguments": {"arg1": 1}}', "", [CALL]),
    ("llama3", 'Use {"a": 1} as input.', 'Use {"a": 1} as input.', []),
    ("llama3", '{"name": "Bob", "age": 3}', '{"name": "Bob", "age": 3}', []),
    (
        "llama3",
        '{"name": "special_function", "parameters": {"arg1": 1}',
        BAD,
        [],
    ),
    # mistral
    (
        "mistral",
        '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]',
        "",
        [("special_function", '{"arg1": 1}', "123456789")],
    ),
    (
        "mistral",
        "Hello, world!\nWhat's up?"
        '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}, '
        '{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}, '
        '"id": "987654321"}]',
        "Hello, world!\nWhat's up?",
        [("special_function", '{"arg1": 1}', "123456789"), (*CALL2[:2], "987654321")],
    ),
    ("mistral", '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}', "", [CALL]),
    (
        "mistral",
        'Hello, world!\nWhat\'s up?[TOOL_CALLS]special_function[ARGS]{"arg1": 1}',
        "Hello, world!\nWhat's up?",
        [CALL],
    ),
    (
        "mistral",
        '[TOOL_CALLS]special_function[CALL_ID]000000001[ARGS]{"arg1": 1}'
        '[TOOL_CALLS]special_function_with_opt[CALL_ID]000000002[ARGS]{"arg1": 1, "arg2": 2}',
        "",
        [(*CALL[:2], "000000001"), (*CALL2[:2], "000000002")],
    ),
    ("mistral", "Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
    (
        "mistral",
        '[TOOL_CALLS]special_function[ARGS]{"arg1": 1',
        BAD,
        [],
    ),
    # phi4
    (
        "phi4",
        '<|tool_call|>[{"name": "special_function", "arguments": {"arg1": 1}}]<|/tool_call|>',
        "",
        [CALL],
    ),
    (
        "phi4",
        'Let me look.\n<|tool_call|>[{"name": "special_function", "arguments": {"arg1": 1}}, '
        '{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}}]<|/tool_call|>',
        "Let me look.",
        [CALL, CALL2],
    ),
    ("phi4", "Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
    (
        "phi4",
        '<|tool_call|>[{"name": "special_function", "arguments": {arg1: 1}}]<|/tool_call|>',
        BAD,
        [],
    ),
    # granite
    (
        "granite",
        f"<|tool_call|>[{OBJ}]",
        "",
        [CALL],
    ),
    (
        "granite",
        'Sure.<|tool_call|>[{"name": "special_function", "arguments": {"arg1": 1}}, '
        '{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}}]',
        "Sure.",
        [CALL, CALL2],
    ),
    ("granite", "Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
    (
        "granite",
        '<|tool_call|>[{"name": "special_function", "arguments": {"arg1": 1}]',
        BAD,
        [],
    ),
    # generic
    (
        "generic",
        f'{{"tool_call": {OBJ}}}',
        "",
        [CALL],
    ),
    (
        "generic",
        '{"tool_calls": [{"name": "special_function", "arguments": {"arg1": 1}}, '
        '{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}}]}',
        "",
        [CALL, CALL2],
    ),
    (
        "generic",
        '{"response": "Hello, world!\\nWhat\'s up? \\u00e9"}',
        "Hello, world!\nWhat's up? é",
        [],
    ),
    ("generic", "Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
    (
        "generic",
        '{"tool_call": {"name": "special_function", "arguments": {"arg1": 1}}',
        BAD,
        [],
    ),
]

# Read only once whole (the contract allows it): arguments written as a JSON string are
# decoded in the end, and a built-in tool's name.call(...) is whole only at the end.
AT_END = [
    (
        "hermes",
        '<tool_call>\n{"name": "special_function", "arguments": "{\\"arg1\\": 1}"}\n</tool_call>',
        "",
        [CALL],
    ),
    (
        "llama3",
        "<|python_tag|>python.call(code=\"print('hey')\")",
        "",
        [("python", '{"code": "print(\'hey\')"}', "")],
    ),
]


def calls_of(parsed: Parsed) -> list[tuple[str, str, str]]:
    return [(c.name, c.arguments, c.id) for c in parsed.calls]


def assert_consistent(part: Parsed, whole: Parsed) -> None:
    """A partial parse is a prefix of the whole answer's parse."""
    assert whole.content.startswith(part.content), (part, whole)
    assert len(part.calls) <= len(whole.calls), (part, whole)
    for i, call in enumerate(part.calls):
        final = whole.calls[i]
        assert call.name == final.name
        if i < len(part.calls) - 1:
            assert call == final
        else:
            assert final.arguments.startswith(call.arguments), (call, final)


def token_splits(text: str) -> list[int]:
    """Cut points a tokenizer could give: after each run of word characters or symbols."""
    cuts, prev = [], None
    for i, c in enumerate(text):
        kind = c.isalnum()
        if prev is not None and kind != prev:
            cuts.append(i)
        prev = kind
    return [*cuts, len(text)]


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), PARSED + AT_END)
def test_parses_whole_answer(fmt: str, text: str, content: str | None, calls: list) -> None:
    parsed = by_name(fmt).parse(text, False)
    assert parsed.content == (text if content is BAD else content)
    assert calls_of(parsed) == calls


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), PARSED)
def test_parses_streamed_answer(fmt: str, text: str, content: str | None, calls: list) -> None:
    """Every prefix, char by char and token-ish, parses to a prefix of the whole answer's parse."""
    parse = by_name(fmt).parse
    whole = parse(text, False)
    well_formed = content is not BAD  # a malformed call is content only once it is whole
    for cuts in (range(len(text) + 1), token_splits(text)):
        for n in cuts:
            part = parse(text[:n], True)
            if well_formed:
                assert_consistent(part, whole)
    last = parse(text, True)
    if calls:
        assert [c.name for c in last.calls] == [c[0] for c in calls]
        assert_consistent(last, whole)
    if well_formed:
        assert whole.content.startswith(last.content)


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), AT_END)
def test_streams_calls_read_at_end(fmt: str, text: str, content: str, calls: list) -> None:
    """While streaming, such a call may lag, but nothing is content that will not be."""
    parse = by_name(fmt).parse
    whole = parse(text, False)
    for n in range(len(text) + 1):
        part = parse(text[:n], True)
        assert whole.content.startswith(part.content)
        assert [c.name for c in part.calls] == [c.name for c in whole.calls][: len(part.calls)]


def test_partial_holds_marker_starts() -> None:
    """Text that may still open a call is not content yet."""
    assert by_name("hermes").parse("Hello <tool_", True).content == "Hello"
    assert by_name("mistral").parse("Hi [TOOL_CA", True).content == "Hi"
    assert by_name("phi4").parse("Hi\n<|tool", True).content == "Hi"
    assert by_name("llama3").parse('{"na', True) == Parsed()
    assert by_name("generic").parse('{"response": "Hi \\u00', True).content == "Hi"


def test_partial_lists_call_once_named() -> None:
    hermes = by_name("hermes").parse
    assert hermes('<tool_call>\n{"name": "special_fun', True).calls == []
    (call,) = hermes('<tool_call>\n{"name": "special_function", "arguments": {"ar', True).calls
    assert (call.name, call.arguments) == ("special_function", '{"ar')
    assert by_name("mistral").parse("[TOOL_CALLS]special_function[AR", True).calls == []


# ---------------------------------------------------------------- grammar


def test_format_flags() -> None:
    """Only Mistral needs its own ids; only generic is a whole-answer grammar, with no trigger."""
    for name in ("hermes", "llama3", "mistral", "phi4", "granite"):
        fmt = by_name(name)
        assert fmt.triggers and not fmt.whole and not fmt.reasoning
        assert all(re.compile(t) for t in fmt.triggers)
    assert by_name("mistral").make_id().isalnum() and len(by_name("mistral").make_id()) == 9
    assert by_name("generic").whole and not by_name("generic").triggers


FORMATS = ["hermes", "llama3", "mistral", "phi4", "granite", "generic"]
ASK = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
]


@pytest.fixture(scope="module")
def model(smollm2: Path):
    m = load_model(smollm2, Load(ctx_size=1024))
    yield m
    m.close()


@pytest.fixture(scope="module")
def prompt(llama_templates: Path, model) -> list[int]:
    """SmolLM2 speaks ChatML; Qwen 2.5's template is ChatML with the tools shown."""
    source = (llama_templates / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    text = Template(source, "qwen2.5").render(ASK, tools=[WEATHER, TIME])
    return model.tokenize(text, add_special=True, parse_special=True)


def grammars(fmt: str, tools: ToolGrammar) -> list[str]:
    made = [by_name(fmt).grammar(tools, parallel) for parallel in (False, True)]
    return made + (
        [generic.auto_grammar(tools, p) for p in (False, True)] if fmt == "generic" else []
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_grammar_accepted_by_llama_cpp(model, fmt: str) -> None:
    for tools in ([WEATHER], [WEATHER, TIME]):
        for text in grammars(fmt, ToolGrammar(tools)):
            sampler = build_sampler(model, Sampling(temp=0), text)  # raises if llama.cpp refuses
            sampler.free()


@pytest.mark.parametrize("fmt", FORMATS)
def test_model_obeys_grammar(model, prompt: list[int], fmt: str) -> None:
    """tool_choice required: the grammar whole; what the model writes parses as a call."""
    grammar = by_name(fmt).grammar(ToolGrammar([WEATHER, TIME]), False)
    text = "".join(model.generate(prompt, Sampling(temp=0, max_tokens=120), grammar=grammar))
    fmt_ = by_name(fmt)
    assert fmt_.whole or any(re.match(t, text) for t in fmt_.triggers), text  # starts at a trigger
    parsed = fmt_.parse(text, False)
    assert len(parsed.calls) == 1, text
    for n in range(len(text) + 1):  # and it streams
        assert_consistent(fmt_.parse(text[:n], True), parsed)
    (call,) = parsed.calls
    assert call.name in ("get_weather", "get_time")
    args = json.loads(call.arguments)
    required = {"get_weather": {"city"}, "get_time": {"city", "hours24"}}[call.name]
    assert required <= set(args), text


def test_model_obeys_named_tool_parallel_grammar(model, prompt: list[int]) -> None:
    """A named function (tools holds only it), parallel allowed: every call is that one."""
    grammar = by_name("hermes").grammar(ToolGrammar([TIME]), True)
    text = "".join(model.generate(prompt, Sampling(temp=0, max_tokens=120), grammar=grammar))
    calls = by_name("hermes").parse(text, False).calls
    assert calls and all(c.name == "get_time" for c in calls), text
    assert {"city", "hours24"} <= set(json.loads(calls[0].arguments))


def test_model_obeys_generic_auto_grammar(model, prompt: list[int]) -> None:
    """tool_choice auto for generic: a call or a reply, either parses."""
    grammar = generic.auto_grammar(ToolGrammar([WEATHER]), False)
    text = "".join(model.generate(prompt, Sampling(temp=0, max_tokens=120), grammar=grammar))
    parsed = generic.FORMAT.parse(text, False)
    assert parsed.calls or (parsed.content and parsed.content != text), text
