"""<think> splitting: whole answers, answers streamed character by character, and what real
templates do to the prompt (Qwen3 closes an empty block to switch thinking off, DeepSeek-R1's
distills open one for the model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmrun.templates.reasoning import prompt_opens_thinking, split_thinking, template_thinks
from llmrun.templates.render import Template

# (answer, opened: the prompt ended inside <think>, (reasoning, rest))
CASES = [
    ("<think>I'm\nthinking</think>Hello, world!", False, ("I'm\nthinking", "Hello, world!")),
    ("\n<think>\nhm\n</think>\n\nHello", False, ("hm", "Hello")),
    ("<think></think>Hello", False, ("", "Hello")),
    ("I'm\nthinking</think>Hello", True, ("I'm\nthinking", "Hello")),
    ("</think>Hello, world!", True, ("", "Hello, world!")),
    ("Hello, world!", False, ("", "Hello, world!")),
    ("Hello <think>not at the start</think>", False, ("", "Hello <think>not at the start</think>")),
    # never closed: reasoning to the end (cut off by max_tokens while thinking)
    ("<think>still going", False, ("still going", "")),
    ("still going", True, ("still going", "")),
    ("<think>a</think>b</think>c", False, ("a", "b</think>c")),
]


@pytest.mark.parametrize(("text", "opened", "expected"), CASES)
def test_split_whole(text: str, opened: bool, expected: tuple[str, str]) -> None:
    assert split_thinking(text, False, opened=opened) == expected


def _tokenish(text: str) -> list[str]:
    pieces = re.findall(r"</?think>|\w+|\s+|.", text)
    return ["".join(pieces[:n]) for n in range(len(pieces) + 1)]


@pytest.mark.parametrize(("text", "opened", "expected"), CASES)
def test_split_streamed(text: str, opened: bool, expected: tuple[str, str]) -> None:
    """Every prefix's split is a prefix of the whole answer's, on both sides."""
    reasoning, rest = split_thinking(text, False, opened=opened)
    for prefix in [text[:n] for n in range(len(text) + 1)] + _tokenish(text):
        r, c = split_thinking(prefix, True, opened=opened)
        assert reasoning.startswith(r), (prefix, r)
        assert rest.startswith(c), (prefix, c)
    r, c = split_thinking(text, True, opened=opened)
    assert reasoning.startswith(r) and rest.startswith(c)


def test_partial_holds_what_may_be_a_tag() -> None:
    assert split_thinking("<thi", True) == ("", "")
    assert split_thinking("<think>so</th", True) == ("so", "")
    assert split_thinking("<thi", False) == ("", "<thi")


def test_other_tags() -> None:
    text = "<|START_THINKING|>hm<|END_THINKING|>ok"
    split = split_thinking(text, False, start="<|START_THINKING|>", end="<|END_THINKING|>")
    assert split == ("hm", "ok")


def _template(llama_templates: Path, name: str) -> Template:
    return Template((llama_templates / name).read_text(), name, "<s>", "</s>")


HELLO = [{"role": "user", "content": "Hello"}]


def test_qwen3_switches_thinking_off_with_an_empty_block(llama_templates: Path) -> None:
    qwen3 = _template(llama_templates, "Qwen-Qwen3-0.6B.jinja")
    off = qwen3.render(HELLO, enable_thinking=False)
    on = qwen3.render(HELLO, enable_thinking=True)
    assert re.search(r"<think>\s*</think>\s*$", off)  # closed: the model answers at once
    assert "<think>" not in on  # the model opens the block itself
    assert not prompt_opens_thinking(off) and not prompt_opens_thinking(on)
    assert split_thinking("<think>\nhm\n</think>\n\nHi", False) == ("hm", "Hi")


def test_a_distill_told_not_to_think_closes_the_block(llama_templates: Path) -> None:
    name = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"
    assert not prompt_opens_thinking(_template(llama_templates, name).render(HELLO))


@pytest.mark.parametrize(
    "name",
    [
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        "llama-cpp-deepseek-r1.jinja",
    ],
)
def test_deepseek_r1_prompts_open_the_block(llama_templates: Path, name: str) -> None:
    prompt = _template(llama_templates, name).render(HELLO, enable_thinking=True)
    assert prompt_opens_thinking(prompt)
    opened = prompt_opens_thinking(prompt)
    assert split_thinking("I'm\nthinking</think>Hello", False, opened=opened) == (
        "I'm\nthinking",
        "Hello",
    )


@pytest.mark.parametrize(
    ("name", "thinks"),
    [
        ("Qwen-Qwen3-0.6B.jinja", True),
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", True),
        ("meetkai-functionary-medium-v3.2.jinja", False),
        ("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", True),  # enable_thinking
        ("openai-gpt-oss-120b.jinja", False),  # its channels, not <think>
    ],
)
def test_template_thinks(llama_templates: Path, name: str, thinks: bool) -> None:
    assert template_thinks((llama_templates / name).read_text()) is thinks
