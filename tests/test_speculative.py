"""Speculative decoding and KV cache types, through the real command and engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmrun.engine.speculative import NgramDrafter

TEXT = (
    "The city council met on Tuesday to discuss the new park. The park will have a playground, "
    "a pond with ducks, and a long walking trail around the lake. Council member Smith said the "
    "park would open in the spring."
)
PROMPT = f"Repeat the following text exactly:\n\n{TEXT}"
KEPT = re.compile(r"draft (\d+)/(\d+) kept")


@pytest.fixture
def llmrun(llmrun_inprocess):
    """In-process: these tests check output and exit codes only, not signals or terminals."""
    return llmrun_inprocess


def test_ngram_drafter_copies_what_followed_the_last_ngram() -> None:
    drafter = NgramDrafter(max_ngram=3, min_ngram=2)
    history = [1, 2, 3, 4, 5, 9, 9, 2, 3]
    assert drafter.propose(history, 2) == [4, 5]
    assert drafter.propose([1, 2, 3, 4], 3) == []  # nothing repeats
    assert drafter.propose([7, 8, 1, 7, 8], 5) == [1, 7, 8]  # never past the end


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ngram", "draft-model"])
def test_greedy_output_is_identical_token_for_token(llmrun, smollm2: Path, how: str) -> None:
    plain = llmrun("run", str(smollm2), PROMPT, "-n", "60", "--temp", "0", "-v")
    flag = ["--draft", "ngram"] if how == "ngram" else ["--draft-model", str(smollm2)]
    fast = llmrun("run", str(smollm2), PROMPT, "-n", "60", "--temp", "0", "-v", *flag)
    assert plain.code == fast.code == 0, fast.stderr
    assert fast.stdout == plain.stdout
    kept, drafted = map(int, KEPT.search(fast.stderr).groups())
    assert drafted > 0 and kept > 0  # drafting really happened


@pytest.mark.slow
def test_max_tokens_stays_exact_with_drafting(llmrun, smollm2: Path) -> None:
    for n in (1, 7, 23):
        r = llmrun(
            "run", str(smollm2), PROMPT, "-n", str(n), "--temp", "0", "-v", "--draft", "ngram"
        )
        assert r.code == 0, r.stderr
        assert re.search(rf"generation {n} tokens", r.stderr), r.stderr


def test_sampling_with_a_seed_is_reproducible_with_drafting(llmrun, smollm2: Path) -> None:
    args = (
        "run",
        str(smollm2),
        PROMPT,
        "-n",
        "40",
        "--temp",
        "0.7",
        "--seed",
        "3",
        "--draft",
        "ngram",
    )
    assert llmrun(*args).stdout == llmrun(*args).stdout


def test_unknown_draft_kind(llmrun) -> None:
    r = llmrun("run", "hi", "--draft", "magic")
    assert r.code == 2 and "--draft must be one of ngram" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fa", ["auto", "on"])
def test_quantized_kv_cache_with_flash_attention(llmrun, smollm2: Path, fa: str) -> None:
    r = llmrun(
        "run",
        str(smollm2),
        "The capital of France is",
        "--raw",
        "-n",
        "8",
        "--temp",
        "0",
        "-ctk",
        "q8_0",
        "-ctv",
        "q8_0",
        "-fa",
        fa,
    )
    assert r.code == 0, r.stderr
    assert "Paris" in r.stdout


def test_quantized_v_cache_without_flash_attention_is_refused(llmrun, smollm2: Path) -> None:
    r = llmrun("run", str(smollm2), "hi", "-ctv", "q8_0", "-fa", "off")
    assert r.code == 2
    assert "needs flash attention" in r.stderr and "-fa off" in r.stderr


def test_flash_attention_off_and_on_answer_alike(llmrun, smollm2: Path) -> None:
    answers = {
        fa: llmrun(
            "run",
            str(smollm2),
            "The capital of France is",
            "--raw",
            "-n",
            "6",
            "--temp",
            "0",
            "-fa",
            fa,
        )
        for fa in ("on", "off")
    }
    assert all(r.code == 0 for r in answers.values())
    assert all("Paris" in r.stdout for r in answers.values())
