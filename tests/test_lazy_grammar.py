"""tool_choice auto: text is free until the model opens a call, then the call must be well formed.

llama.cpp's lazy grammar, on the real SmolLM2: a few-shot raw prompt makes the model write
`<tool_call>` by itself, after which the grammar takes over from the trigger on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from llmrun.engine import load_model
from llmrun.engine.sampling import Grammar
from llmrun.options import Load, Sampling
from llmrun.templates.calls import ToolGrammar, by_name

# Enums keep the tiny model's arguments short (left free, it repeats itself in a string).
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Rome"]}},
            "required": ["city"],
        },
    },
}

FEW_SHOT = "Line: ok <tool_call> hi\nLine: ok <tool_call> hi\nLine: ok <tool_call> hi\nLine: ok"
PLAIN = "The capital of France is"
GREEDY = Sampling(temp=0.0, max_tokens=60)


@pytest.fixture(scope="module")
def model(smollm2: Path) -> Iterator:
    with load_model(smollm2, Load(ctx_size=1024)) as m:
        yield m


@pytest.fixture(scope="module")
def lazy() -> Grammar:
    hermes = by_name("hermes")
    return Grammar(hermes.grammar(ToolGrammar([WEATHER]), False), hermes.triggers)


def generate(model, prompt: str, grammar: Grammar | None) -> str:
    model.reset()
    tokens = model.tokenize(prompt, add_special=True, parse_special=False)
    return "".join(model.generate(tokens, GREEDY, grammar=grammar))


def test_once_the_model_opens_a_call_the_grammar_makes_it_whole(model, lazy) -> None:
    free = generate(model, FEW_SHOT, None)
    assert free.startswith(" <tool_call> hi")  # left alone, no call: the pattern goes on
    text = generate(model, FEW_SHOT, lazy)
    parsed = by_name("hermes").parse(text, False)
    assert [c.name for c in parsed.calls] == ["get_weather"], text
    jsonschema.validate(json.loads(parsed.calls[0].arguments), WEATHER["function"]["parameters"])
    assert parsed.content.strip() == ""


def test_without_a_call_the_lazy_grammar_changes_nothing(model, lazy) -> None:
    assert generate(model, PLAIN, lazy) == generate(model, PLAIN, None)
