"""The DeepSeek, gpt-oss, Command R7B and Functionary tool-call formats, on llama.cpp's real
templates: detection, rendering a tool conversation, parsing answers whole and streamed, and
grammars the real demo model obeys."""

# ruff: noqa: RUF001 (DeepSeek's markers are full-width bars)

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_cpp.llama_grammar import LlamaGrammar

from llmrun.templates.calls import Parsed, ToolCall, ToolGrammar, by_name, detect
from llmrun.templates.formats import deepseek
from llmrun.templates.render import Template
from tests.test_tool_formats import WEATHER

# Every real template of each family: detected as it, and no other template is.
FAMILIES = {
    "deepseek": [
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        "deepseek-ai-DeepSeek-V3.1.jinja",
        "deepseek-ai-DeepSeek-V3.2.jinja",
        "deepseek-ai-DeepSeek-V4.jinja",
        "deepseek-ai-DeepSeek-V4-Flash-0731.jinja",
        "llama-cpp-deepseek-r1.jinja",
    ],
    "gptoss": ["openai-gpt-oss-120b.jinja"],
    "command_r": ["CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja"],
    "functionary": [
        "meetkai-functionary-medium-v3.1.jinja",
        "meetkai-functionary-medium-v3.2.jinja",
    ],
}

TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOLS = [WEATHER, TIME]


def _names() -> Iterator[tuple[str, str]]:
    for fmt, files in FAMILIES.items():
        for f in files:
            yield fmt, f


@pytest.mark.parametrize(("fmt", "filename"), list(_names()))
def test_real_templates_are_detected(llama_templates: Path, fmt: str, filename: str) -> None:
    assert detect((llama_templates / filename).read_text()).name == fmt


@pytest.mark.parametrize("fmt", list(FAMILIES))
def test_no_other_template_is_taken(llama_templates: Path, fmt: str) -> None:
    """These formats come first in the detection order: a false match would steal a template."""
    taken = {p.name for p in llama_templates.glob("*.jinja") if by_name(fmt).detect(p.read_text())}
    assert taken == set(FAMILIES[fmt])


# --------------------------------------------------------------------------- rendering

CONVERSATION = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "0", "name": "get_weather", "content": '{"temp": 21}'},
]

DSML_PARIS = (
    '<｜DSML｜invoke name="get_weather">\n'
    '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n</｜DSML｜invoke>'
)

# The call as each template writes it back into the prompt, in its family's syntax.
RENDERED_CALL = {
    "deepseek-ai-DeepSeek-V3.1.jinja": "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather"
    '<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    "llama-cpp-deepseek-r1.jinja": "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"
    '<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>',
    "deepseek-ai-DeepSeek-V3.2.jinja": "<｜DSML｜function_calls>\n"
    f"{DSML_PARIS}\n</｜DSML｜function_calls>",
    "deepseek-ai-DeepSeek-V4.jinja": f"<｜DSML｜tool_calls>\n{DSML_PARIS}\n</｜DSML｜tool_calls>",
    "openai-gpt-oss-120b.jinja": "<|start|>assistant to=functions.get_weather<|channel|>"
    'commentary json<|message|>{"city": "Paris"}<|call|>',
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja": '<|START_ACTION|>[\n    {"tool_call_id":'
    ' "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}\n]<|END_ACTION|>',
    "meetkai-functionary-medium-v3.1.jinja": '<function=get_weather>{"city": "Paris"}</function>',
    "meetkai-functionary-medium-v3.2.jinja": '>>>get_weather\n{"city": "Paris"}',
}


# Templates that never show the tools: DeepSeek's format describes them in a system message.
SILENT = {"deepseek-ai-DeepSeek-V3.1.jinja"}


@pytest.mark.parametrize("filename", list(RENDERED_CALL))
def test_templates_render_tools_and_calls(llama_templates: Path, filename: str) -> None:
    template = Template((llama_templates / filename).read_text(), filename, "<s>", "</s>")
    messages = CONVERSATION
    if filename in SILENT:
        assert "The current weather" not in template.render(messages, tools=[WEATHER])
        messages = [{"role": "system", "content": deepseek.system_prompt([WEATHER])}, *messages]
    prompt = template.render(messages, tools=[WEATHER])
    assert "The current weather of a city" in prompt  # the tool's definition
    assert RENDERED_CALL[filename] in prompt
    assert '{"temp": 21}' in prompt.replace('\\"', '"')  # the result


@pytest.mark.parametrize("filename", list(RENDERED_CALL))
def test_rendered_calls_parse_back(filename: str) -> None:
    """What a template writes as a past call, its format reads as that call."""
    fmt = next(f for f, files in FAMILIES.items() if filename in files)
    text = RENDERED_CALL[filename]
    text = text.removeprefix("<|start|>assistant").removeprefix(">>>")  # the generation prompt's
    parsed = by_name(fmt).parse(text, False)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("get_weather", {"city": "Paris"})
    ]


# --------------------------------------------------------------------------- parsing

ONE = ToolCall("special_function", '{"arg1": 1}')
PARIS = [ToolCall("get_time", '{"city": "Paris"}'), ToolCall("get_weather", '{"city": "Paris"}')]
HELLO = "Hello, world!\nWhat's up?"

# (format, answer, expected): the shapes of llama.cpp's tests/test-chat.cpp.
ANSWERS = [
    # DeepSeek R1 (fenced, with and without the newline before the closing fence)
    (
        "deepseek",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n"
        '```json\n{"arg1": 1}```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        Parsed(calls=[ONE]),
    ),
    (
        "deepseek",
        "I will look.\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
        'special_function\n```json\n{"arg1": 1}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        Parsed(content="I will look.", calls=[ONE]),
    ),
    # DeepSeek V3.1
    (
        "deepseek",
        "CONTENT<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>"
        '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>'
        '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        Parsed(content="CONTENT", calls=PARIS),
    ),
    ("deepseek", HELLO, Parsed(content=HELLO)),
    # DeepSeek V3.2 (DSML; the reasoning before </think> is split off before parsing)
    (
        "deepseek",
        '\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_time">\n'
        '<｜DSML｜parameter name="city" string="true">Tokyo</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜function_calls>",
        Parsed(calls=[ToolCall("get_time", '{"city": "Tokyo"}')]),
    ),
    (
        "deepseek",
        'Calling both\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_time">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        '</｜DSML｜invoke>\n<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜function_calls>",
        Parsed(content="Calling both", calls=PARIS),
    ),
    # DeepSeek V4: the block is tool_calls; JSON values (string="false")
    (
        "deepseek",
        '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="special_function">\n'
        '<｜DSML｜parameter name="arg1" string="false">1</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="say" string="true">a "quoted"\nline</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="list" string="false">[1, {"a": null}]</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
        Parsed(
            calls=[
                ToolCall(
                    "special_function",
                    '{"arg1": 1, "say": "a \\"quoted\\"\\nline", "list": [1, {"a": null}]}',
                )
            ]
        ),
    ),
    # gpt-oss
    ("gptoss", "<|channel|>final<|message|>" + HELLO, Parsed(content=HELLO)),
    (
        "gptoss",
        "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final"
        "<|message|>" + HELLO,
        Parsed(content=HELLO, reasoning="I'm\nthinking"),
    ),
    (
        "gptoss",
        ' to=functions.special_function<|channel|>analysis <|constrain|>json<|message|>{"arg1": 1}',
        Parsed(calls=[ONE]),
    ),
    (
        "gptoss",
        "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>commentary"
        ' to=functions.special_function <|constrain|>json<|message|>{"arg1": 1}<|call|>',
        Parsed(reasoning="I'm\nthinking", calls=[ONE]),
    ),
    (
        "gptoss",
        "<|channel|>commentary<|message|>Let me look.<|end|><|start|>assistant to=functions."
        'special_function<|channel|>commentary json<|message|>{"arg1": 1}',
        Parsed(content="Let me look.", calls=[ONE]),
    ),
    (
        "gptoss",
        "<|channel|>analysis<|message|>I will run python<|end|><|start|>assistant to=container.exec"
        "<|channel|>commentary<|message|>python3 -c 'print(1)'",
        Parsed(reasoning="I will run python"),  # a builtin tool nobody offered: dropped
    ),
    ("gptoss", "to=whom it may concern", Parsed(content="to=whom it may concern")),
    # Command R7B
    ("command_r", "<|START_RESPONSE|>" + HELLO + "<|END_RESPONSE|>", Parsed(content=HELLO)),
    (
        "command_r",
        "<|START_THINKING|>I'm\nthinking<|END_THINKING|><|START_ACTION|>[\n"
        '    {"tool_call_id": "0", "tool_name": "special_function", "parameters": {"arg1": 1}}\n'
        "]<|END_ACTION|>",
        Parsed(reasoning="I'm\nthinking", calls=[ToolCall("special_function", '{"arg1": 1}', "0")]),
    ),
    (
        "command_r",
        "<|START_RESPONSE|>Let me look.<|END_RESPONSE|><|START_ACTION|>[\n"
        '    {"tool_call_id": "0", "tool_name": "get_time", "parameters": {"city": "Paris"}},\n'
        '    {"tool_call_id": "1", "tool_name": "get_weather", "parameters": {"city": "Paris"}}\n'
        "]<|END_ACTION|>",
        Parsed(
            content="Let me look.",
            calls=[
                ToolCall("get_time", '{"city": "Paris"}', "0"),
                ToolCall("get_weather", '{"city": "Paris"}', "1"),
            ],
        ),
    ),
    # Functionary v3.2 (after the prompt's >>>) and v3.1
    ("functionary", "all\n" + HELLO, Parsed(content=HELLO)),
    ("functionary", 'special_function\n{"arg1": 1}', Parsed(calls=[ONE])),
    (
        "functionary",
        'all\nLet me look.\n>>>get_time\n{"city": "Paris"}>>>get_weather\n{"city": "Paris"}',
        Parsed(content="Let me look.", calls=PARIS),
    ),
    ("functionary", HELLO, Parsed(content=HELLO)),
    ("functionary", '<function=special_function>{"arg1": 1}</function>', Parsed(calls=[ONE])),
    (
        "functionary",
        'I will look.<function=get_time>{"city": "Paris"}</function>\n'
        '<function=get_weather>{"city": "Paris"}</function>',
        Parsed(content="I will look.", calls=PARIS),
    ),
]

# Malformed JSON inside the markers: content, as written (the rest of the answer stays).
MALFORMED = [
    (
        "deepseek",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>"
        '{"city": Paris}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        None,  # malformed: all content
    ),
    (
        "gptoss",
        '<|channel|>commentary to=functions.special_function<|message|>{"arg1": one}',
        Parsed(content='{"arg1": one}'),  # malformed: the message is text
    ),
    (
        "command_r",
        "<|START_THINKING|>hm<|END_THINKING|><|START_ACTION|>["
        '{"tool_call_id": "0", "tool_name": "special_function", "parameters": {arg1: 1}}'
        "]<|END_ACTION|>",
        Parsed(
            reasoning="hm",
            content='<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "special_function", '
            '"parameters": {arg1: 1}}]<|END_ACTION|>',
        ),
    ),
    (
        "deepseek",
        '<｜DSML｜function_calls>\n<｜DSML｜invoke name="special_function">\n'
        '<｜DSML｜parameter name="arg1" string="false">one</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜function_calls>",
        None,
    ),
    ("functionary", 'special_function\n{"arg1": one}', None),
    ("functionary", '<function=special_function>{"arg1": }</function>', None),
]


def consistent(part: Parsed, whole: Parsed) -> None:
    """`part` (a prefix's partial parse) is a prefix of `whole` (the answer's final parse)."""
    assert whole.content.startswith(part.content), (part, whole)
    assert whole.reasoning.startswith(part.reasoning), (part, whole)
    assert len(part.calls) <= len(whole.calls), (part, whole)
    for i, call in enumerate(part.calls):
        final = whole.calls[i]
        assert call.name == final.name
        assert call.id in ("", final.id)
        if i < len(part.calls) - 1:
            assert call == final
        else:
            assert final.arguments.startswith(call.arguments), (call, final)


def tokenish(text: str) -> list[str]:
    """Prefixes at token-like boundaries: markers, words, spaces, single characters."""
    pieces = re.findall(r"<[｜|][^>]*>|\w+|\s+|.", text)
    return ["".join(pieces[:n]) for n in range(len(pieces) + 1)]


@pytest.mark.parametrize(("fmt", "text", "expected"), ANSWERS)
def test_parse_whole_and_streamed(fmt: str, text: str, expected: Parsed) -> None:
    parse = by_name(fmt).parse
    whole = parse(text, False)
    assert whole == expected
    prefixes = [text[:n] for n in range(len(text) + 1)] + tokenish(text)
    for prefix in prefixes:
        consistent(parse(prefix, True), whole)
    last = parse(text, True)
    consistent(last, whole)
    if expected.calls:
        assert [c.name for c in last.calls] == [c.name for c in whole.calls]


@pytest.mark.parametrize(("fmt", "text", "expected"), MALFORMED)
def test_malformed_calls_are_content(fmt: str, text: str, expected: Parsed | None) -> None:
    """Not a well-formed answer, so no prefix promise; but no prefix breaks the parser, and
    the whole text streamed ends as it parses."""
    parse = by_name(fmt).parse
    whole = parse(text, False)
    assert whole == (expected if expected is not None else Parsed(content=text))
    for n in range(len(text) + 1):
        parse(text[:n], True)
    consistent(parse(text, True), whole)


def test_a_call_is_listed_once_its_name_is_complete() -> None:
    """llama.cpp's partial Command R7B case: the name and id known, no arguments yet."""
    text = (
        "<|START_THINKING|>I'm\nthinking<|END_THINKING|><|START_ACTION|>[\n"
        '    {"tool_call_id": "0", "tool_name": "special_function", '
    )
    parsed = by_name("command_r").parse(text, True)
    assert parsed == Parsed(
        reasoning="I'm\nthinking", calls=[ToolCall("special_function", "", "0")]
    )
    assert (
        by_name("deepseek").parse("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get", True)
        == Parsed()
    )


def test_generation_may_stop_before_closing_markers() -> None:
    """The engine drops end-of-generation tokens (gpt-oss's <|call|>) and may stop early."""
    deepseek = by_name("deepseek").parse(
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "Paris"}',
        False,
    )
    assert deepseek.calls == [PARIS[0]]


# --------------------------------------------------------------------------- grammars


@pytest.mark.parametrize("fmt", list(FAMILIES))
@pytest.mark.parametrize("parallel", [False, True])
def test_llama_cpp_accepts_the_grammar(fmt: str, parallel: bool) -> None:
    text = by_name(fmt).grammar(ToolGrammar(TOOLS), parallel)
    LlamaGrammar.from_string(text, verbose=False)


# Answers where a call follows text: a trigger must find the call (the lazy grammar starts there).
AFTER_TEXT = {
    fmt: next(t for f, t, e in ANSWERS if f == fmt and e.calls and (e.content or e.reasoning))
    for fmt in FAMILIES
}


@pytest.mark.parametrize("fmt", list(FAMILIES))
def test_a_trigger_finds_the_call(fmt: str) -> None:
    text = AFTER_TEXT[fmt]
    first = min(m.start() for t in by_name(fmt).triggers if (m := re.search(t, text)))
    assert by_name(fmt).parse(text[:first], False).calls == []
    assert by_name(fmt).parse(text, False).calls


@pytest.fixture(scope="module")
def model(smollm2: Path) -> Iterator[object]:
    from llmrun.engine import load_model
    from llmrun.options import Load

    m = load_model(smollm2, Load(ctx_size=1024))
    yield m
    m.close()


PROMPT = (
    "<|im_start|>system\nYou call tools.<|im_end|>\n"
    "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.mark.parametrize("fmt", list(FAMILIES))
def test_the_real_model_obeys_the_grammar(model: object, fmt: str) -> None:
    from llmrun.options import Sampling

    grammar = by_name(fmt).grammar(ToolGrammar([WEATHER]), False)
    # a finished grammar lets only end-of-generation through: the limit is for DSML's long markers
    tokens = model.tokenize(PROMPT, add_special=True, parse_special=True)  # type: ignore[attr-defined]
    text = "".join(model.generate(tokens, Sampling(temp=0, max_tokens=400), grammar=grammar))  # type: ignore[attr-defined]
    parsed = by_name(fmt).parse(text, False)
    assert [c.name for c in parsed.calls] == ["get_weather"], text
    args = json.loads(parsed.calls[0].arguments)
    assert isinstance(args, dict) and "city" in args, text
    # what the grammar wrote is what a trigger finds (the lazy grammar starts at a trigger)
    assert any(re.match(t, text) for t in by_name(fmt).triggers), text


PIECES = [
    *("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"),
    *("<｜DSML｜function_calls>", '<｜DSML｜invoke name="', '">', '<｜DSML｜parameter name="'),
    *('" string="', "true", "</｜DSML｜parameter>", "</｜DSML｜invoke>", "<|channel|>", "analysis"),
    *(" to=functions.x", "<|message|>", "<|end|>", "<|start|>assistant", "<|call|>"),
    *("<|START_ACTION|>", "<|END_ACTION|>", "<|START_THINKING|>", "<|START_RESPONSE|>"),
    *("[", "{", "}", "]", ",", ":", '"tool_name"', '"parameters"', '"a"', "1", "\n", " ", '"'),
    *(">>>", "all", "get\n", "<function=", "</function>", "```json", "```", "function", "x"),
]


@pytest.mark.parametrize("fmt", list(FAMILIES))
def test_no_text_makes_a_parser_raise(fmt: str) -> None:
    """Answers spliced with stray markers, and marker soup: parsed, never an exception."""
    rng = random.Random(7)
    texts = [t for _, t, _ in ANSWERS + MALFORMED]
    parse = by_name(fmt).parse
    for _ in range(1500):
        text = rng.choice(texts)
        at = rng.randrange(len(text) + 1)
        spliced = text[:at] + rng.choice(PIECES) + text[at:]
        soup = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
        for t in (spliced, soup):
            parse(t, True)
            parse(t, False)
