"""The continuous-batching engine, on the real SmolLM2 GGUF."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from llmrun.engine import load_model
from llmrun.engine.batch import BatchEngine
from llmrun.errors import ContextOverflow
from llmrun.options import Load, Sampling
from llmrun.templates.render import ChatTemplate

GREEDY = Sampling(temp=0.0, max_tokens=24)
SYSTEM = "You are a terse assistant who answers in one sentence. " * 4


def chat_tokens(model, prompts: list[str], system: str | None = None) -> list[list[int]]:
    template = ChatTemplate(model)
    head = [{"role": "system", "content": system}] if system else []
    return [
        model.tokenize(template.render([*head, {"role": "user", "content": p}]), parse_special=True)
        for p in prompts
    ]


@pytest.fixture(scope="module")
def alone(smollm2: Path) -> dict[str, str]:
    """Greedy answers to each prompt, one at a time, from a single-sequence model."""
    prompts = [f"Write one sentence about the number {i}." for i in range(8)]
    with load_model(smollm2, Load(ctx_size=2048)) as model:
        answers = {}
        for prompt, tokens in zip(prompts, chat_tokens(model, prompts), strict=True):
            model.reset()
            answers[prompt] = "".join(model.generate(tokens, GREEDY))
    return answers


def test_concurrent_greedy_answers_equal_answers_run_alone(
    smollm2: Path, alone: dict[str, str]
) -> None:
    engine = BatchEngine(smollm2, Load(ctx_size=4096), parallel=8).start()
    try:
        prompts = list(alone)
        handles = [engine.submit(t, GREEDY) for t in chat_tokens(engine.model, prompts)]
        answers = [h.text() for h in handles]
        assert answers == [alone[p] for p in prompts]
        assert all(h.finish_reason in ("eos", "length") for h in handles)
        # All eight were decoded together: far fewer steps than tokens.
        assert engine.steps < sum(h.completion_tokens for h in handles) / 4
    finally:
        engine.stop()


def test_more_requests_than_sequences_wait_and_join(smollm2: Path, alone: dict[str, str]) -> None:
    engine = BatchEngine(smollm2, Load(ctx_size=2048), parallel=2, prefix_cache=False).start()
    try:
        prompts = list(alone)[:5]
        results: dict[int, str] = {}

        def ask(i: int, tokens: list[int]) -> None:
            results[i] = engine.submit(tokens, GREEDY).text()

        threads = [
            threading.Thread(target=ask, args=(i, t))
            for i, t in enumerate(chat_tokens(engine.model, prompts))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [results[i] for i in range(5)] == [alone[p] for p in prompts]
        assert engine.stats()["active"] == 0
    finally:
        engine.stop()


def test_shared_system_prompt_is_reused_not_recomputed(smollm2: Path) -> None:
    engine = BatchEngine(smollm2, Load(ctx_size=2048), parallel=2).start()
    try:
        first, second = chat_tokens(engine.model, ["Hi.", "Hello there."], system=SYSTEM)
        a = engine.submit(first, GREEDY)
        a.text()
        b = engine.submit(second, GREEDY)
        assert b.text()
        shared = next(i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y)
        assert a.reused_tokens == 0
        assert b.reused_tokens == shared > 40
    finally:
        engine.stop()


def test_cancel_frees_the_sequence_at_once(smollm2: Path) -> None:
    engine = BatchEngine(smollm2, Load(ctx_size=2048), parallel=2).start()
    try:
        (tokens,) = chat_tokens(engine.model, ["Write a very long story about a dragon."])
        handle = engine.submit(tokens, Sampling(temp=0.0, max_tokens=400))
        pieces = iter(handle)
        next(pieces)
        handle.cancel()
        list(pieces)  # the iterator ends instead of running to 400 tokens
        assert handle.finish_reason == "cancelled"
        # Short of the 400 asked for; how far short is the engine thread's head start, which
        # depends on the machine, so no tighter bound.
        assert handle.completion_tokens < 400
        assert engine.stats()["active"] == 0
    finally:
        engine.stop()


def test_stop_strings_and_limits_per_request(smollm2: Path) -> None:
    engine = BatchEngine(smollm2, Load(ctx_size=2048), parallel=2).start()
    try:
        (tokens,) = chat_tokens(engine.model, ["Count from 1 to 20, separated by commas."])
        limited = engine.submit(tokens, Sampling(temp=0.0, max_tokens=3))
        stopped = engine.submit(tokens, Sampling(temp=0.0, max_tokens=100, stop=("5",)))
        assert limited.text() and limited.completion_tokens == 3
        assert limited.finish_reason == "length"
        text = stopped.text()
        assert "5" not in text and "4" in text
        assert stopped.finish_reason == "stop"
    finally:
        engine.stop()


def test_prompt_over_a_sequence_share_of_the_context(smollm2: Path) -> None:
    engine = BatchEngine(smollm2, Load(ctx_size=1024), parallel=4).start()
    try:
        with pytest.raises(ContextOverflow) as e:
            engine.submit(engine.model.tokenize("word " * 400), GREEDY)
        assert "256" in str(e.value)
    finally:
        engine.stop()
