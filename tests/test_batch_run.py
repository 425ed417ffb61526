"""`llmrun run MODEL --batch FILE`: JSONL in, JSONL out in input order, bad lines skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrun.batch_run import parse_line
from llmrun.errors import BadInput
from llmrun.options import Sampling


@pytest.fixture
def llmrun(llmrun_inprocess):
    """In-process: these tests check output and exit codes only, not signals or terminals."""
    return llmrun_inprocess


def counting(start: int) -> str:
    """A prompt with one obvious greedy continuation."""
    return ", ".join(str(n) for n in range(start, start + 5)) + ","


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_batch_with_a_bad_line_in_the_middle(smollm2: Path, tmp_path: Path, llmrun):
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        [
            json.dumps({"prompt": counting(1), "raw": True, "max_tokens": 6, "id": "a"}),
            '{"prompt": "unterminated',
            json.dumps({"prompt": "Hello", "colour": "red"}),
            "",
            json.dumps({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5}),
            json.dumps(counting(20)),
            json.dumps({"prompt": counting(50), "raw": True, "stop": [", 58"], "max_tokens": 20}),
        ],
    )
    result = llmrun("run", str(smollm2), "--batch", str(prompts), "--temp", "0", "-n", "12")
    assert result.code == 2
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 5, 6, 7]
    first, chat, plain, stopped = out
    assert first["id"] == "a" and first["text"] == " 6, 7,"  # digits are tokens of their own
    assert first["finish_reason"] == "length" and first["usage"]["completion_tokens"] == 6
    assert chat["usage"]["completion_tokens"] <= 5 and chat["text"]
    assert plain["usage"]["completion_tokens"] <= 12
    assert stopped["text"] == " 55, 56, 57" and stopped["finish_reason"] == "stop"
    for o in out:
        u = o["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    err = result.stderr
    assert "line 2: not valid JSON" in err and "line 3: unknown key 'colour'" in err
    assert "2 line(s) skipped (2, 3); 4 answered" in err


def test_batch_from_stdin_to_a_file(smollm2: Path, tmp_path: Path, llmrun):
    out_file = tmp_path / "out.jsonl"
    out_file.write_text("old contents\n")
    lines = [json.dumps({"prompt": counting(k), "raw": True}) for k in (1, 30, 300)]
    args = ["run", str(smollm2), "--batch", "-", "-o", str(out_file), "--temp", "0", "-n", "8"]
    result = llmrun(*args, input="\n".join(lines) + "\n")
    assert result.code == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    out = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3]
    for o, start in zip(out, (" 6, 7, 8", " 35, 36", " 305, 30"), strict=True):
        assert o["text"].startswith(start) and o["usage"]["completion_tokens"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary left


def test_batch_takes_no_prompt_words(smollm2: Path, tmp_path: Path, llmrun):
    prompts = write_lines(tmp_path / "p.jsonl", ['"hi"'])
    result = llmrun("run", str(smollm2), "extra words", "--batch", str(prompts))
    assert result.code == 2
    assert "--batch takes its prompts from the file" in result.stderr


def test_missing_batch_file_is_bad_input(llmrun, tmp_path: Path):
    result = llmrun("run", "--batch", str(tmp_path / "nope.jsonl"))
    assert result.code == 2 and "cannot read --batch file" in result.stderr


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("[1, 2]", "must be a JSON string or an object"),
        ('{"prompt": "a", "messages": []}', "exactly one of prompt or messages"),
        ("{}", "exactly one of prompt or messages"),
        ('{"prompt": 5}', "prompt must be a string"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "each message needs a role"),
        ('{"prompt": "a", "max_tokens": 0}', "max_tokens"),
        ('{"prompt": "a", "temperature": "warm"}', "temperature must be float"),
        ('{"prompt": "a", "raw": "yes"}', "raw must be true or false"),
    ],
)
def test_bad_lines_say_why(line: str, says: str):
    with pytest.raises(BadInput, match=says):
        parse_line(line, 1, Sampling(), None, False)


def test_line_options_override_the_flags():
    job = parse_line(
        '{"prompt": "a", "temperature": 0.5, "stop": ".", "seed": 7, "system": "Be brief."}',
        4,
        Sampling(temp=0.0, max_tokens=9),
        "flag system",
        False,
    )
    assert job.line == 4 and job.system == "Be brief."
    assert job.sampling == Sampling(temp=0.5, max_tokens=9, stop=(".",), seed=7)


def test_batch_options_need_batch(llmrun, tmp_path: Path):
    result = llmrun("run", "Hello", "-o", str(tmp_path / "out.jsonl"))
    assert result.code == 2 and "go with --batch" in result.stderr
