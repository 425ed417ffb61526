"""`llmrun run` with tools, thinking and a chat template of one's own, on the demo SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.test_serve_tools import TIME, WEATHER

# ChatML, as SmolLM2 speaks it, with the assistant's turn opened inside a think block, as
# DeepSeek-R1's distills do: everything the model writes until </think> is its thinking.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
THINK_THEN_ANSWER = 'root ::= [a-z ]{5,40} "</think>" " Paris is in France."\n'


@pytest.fixture
def llmrun(llmrun_inprocess):
    return llmrun_inprocess


@pytest.fixture
def qwen25(llama_templates: Path) -> Path:
    return llama_templates / "Qwen-Qwen2.5-7B-Instruct.jinja"


@pytest.fixture
def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([WEATHER, TIME]))
    return path


def test_a_forced_call_is_one_json_line_on_stdout(llmrun, smollm2, qwen25, tools_file) -> None:
    r = llmrun(
        "run", str(smollm2), "What is the weather in Paris?", "--chat-template", str(qwen25),
        "--tools", str(tools_file), "--tool-choice", "get_weather", "--temp", "0", "-n", "80",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    call = json.loads(lines[0])
    assert call["name"] == "get_weather"
    jsonschema.validate(call["arguments"], WEATHER["function"]["parameters"])


def test_tool_choice_none_answers_in_text(llmrun, smollm2, qwen25, tools_file) -> None:
    r = llmrun(
        "run", str(smollm2), "Say hello.", "--chat-template", str(qwen25),
        "--tools", str(tools_file), "--tool-choice", "none", "--temp", "0", "-n", "10",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.stdout.strip() and "<tool_call>" not in r.stdout
    assert not r.stdout.lstrip().startswith("{")


def test_thinking_goes_to_stderr_never_to_stdout(llmrun, smollm2, tmp_path: Path) -> None:
    template = tmp_path / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE)
    grammar = tmp_path / "think.gbnf"
    grammar.write_text(THINK_THEN_ANSWER)
    args = ["run", str(smollm2), "Where is Paris?", "--chat-template", str(template)]
    args += ["--grammar-file", str(grammar), "--temp", "0", "-n", "60"]
    r = llmrun(*args)
    assert r.code == 0, r.stderr
    assert r.stdout == "Paris is in France.\n"
    thought = r.stderr.strip()
    assert thought and "</think>" not in thought and "Paris is in France" not in thought
    hidden = llmrun(*args, "--hide-thinking")
    assert hidden.stdout == r.stdout
    assert thought not in hidden.stderr


def test_think_off_renders_the_template_without_thinking(llmrun, smollm2, llama_templates) -> None:
    qwen3 = llama_templates / "Qwen-Qwen3-0.6B.jinja"
    base = ["run", str(smollm2), "Hi", "--chat-template", str(qwen3), "-n", "1", "--verbose-prompt"]
    off = llmrun(*base, "--think", "off")
    auto = llmrun(*base)
    assert off.code == 0 and auto.code == 0, off.stderr + auto.stderr
    assert "<think>\n\n</think>" in off.stderr
    assert "<think>" not in auto.stderr


@pytest.mark.parametrize(
    ("content", "flag", "message"),
    [
        ("not json", "--tools", "is not valid JSON"),
        ('{"type": "function"}', "--tools", "tools must be a list"),
        ('[{"type": "function", "function": {}}]', "--tools", "must be an object with a name"),
        ("{% if %}", "--chat-template", "is not a valid Jinja template"),
    ],
)
def test_bad_files_are_one_line_exit_2(
    llmrun, smollm2, tmp_path: Path, content: str, flag: str, message: str
) -> None:
    path = tmp_path / "file"
    path.write_text(content)
    r = llmrun("run", str(smollm2), "Hi", flag, str(path))
    assert r.code == 2, r.stderr
    assert message in r.stderr and str(path) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_template_that_refuses_names_itself(llmrun, smollm2, tmp_path: Path) -> None:
    path = tmp_path / "strict.jinja"
    path.write_text("{{ raise_exception('only system messages, please') }}")
    r = llmrun("run", str(smollm2), "Hi", "--chat-template", str(path))
    assert r.code == 2
    assert r.stderr.strip().splitlines() == [
        f"error: chat template {path} refused the conversation: only system messages, please"
    ]


def test_tool_choice_needs_tools(llmrun, smollm2) -> None:
    r = llmrun("run", str(smollm2), "Hi", "--tool-choice", "required")
    assert r.code == 2 and "--tool-choice needs --tools FILE" in r.stderr
