"""Log-probabilities and n answers from the batch engine, on the real SmolLM2 GGUF.

The reference is the engine's own logits (Model.logits, what `llmrun eval` scores with),
turned into log-probabilities by eval's log_softmax.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from llmrun.engine import load_model
from llmrun.engine.batch import BatchEngine, Extras
from llmrun.errors import ContextOverflow
from llmrun.evaluate import log_softmax
from llmrun.options import Load, Sampling

LOAD = Load(ctx_size=2048)
PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def engine(smollm2: Path) -> Iterator[BatchEngine]:
    # 1024 tokens a sequence; the prefix cache off keeps runs comparable.
    engine = BatchEngine(smollm2, LOAD, parallel=2, prefix_cache=False).start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def reference(smollm2: Path) -> Iterator:
    with load_model(smollm2, LOAD) as model:
        yield model


def test_generated_logprobs_are_the_log_softmax_of_the_logits(engine, reference) -> None:
    tokens = engine.model.tokenize(PROMPT)
    handle = engine.submit(tokens, Sampling(temp=0.0, max_tokens=6), extras=Extras(logprobs=5))
    handle.text()
    out = [lp.token for lp in handle.logprobs]
    assert len(out) == handle.completion_tokens == 6
    expected = log_softmax(reference.logits(tokens + out))[len(tokens) - 1 :]
    for lp, row in zip(handle.logprobs, expected, strict=False):
        assert lp.logprob == pytest.approx(float(row[lp.token]), abs=1e-4)
        tops = [t for t, _ in lp.top]
        assert tops == list(np.argsort(-row, kind="stable")[:5])
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True)
        assert lp.token == tops[0]  # greedy takes the most likely token


def test_echo_gives_every_prompt_tokens_logprob(engine, reference) -> None:
    tokens = engine.model.tokenize(PROMPT * 6)
    extras = Extras(logprobs=2, echo=True, generate=False)
    handle = engine.submit(tokens, Sampling(temp=0.0), extras=extras)
    assert handle.text() == ""
    assert handle.completion_tokens == 0
    assert handle.prompt_logprobs[0] is None
    assert len(handle.prompt_logprobs) == len(tokens)
    nll = -log_softmax(reference.logits(tokens))[np.arange(len(tokens) - 1), tokens[1:]]
    got = np.array([-lp.logprob for lp in handle.prompt_logprobs[1:]])
    np.testing.assert_allclose(got, nll, atol=1e-4)


def test_echo_over_several_chunks(engine, reference) -> None:
    tokens = engine.model.tokenize("one two three four five six seven " * 80)
    assert len(tokens) > 512
    handle = engine.submit(tokens, Sampling(temp=0.0), extras=Extras(echo=True, generate=False))
    handle.text()
    nll = -log_softmax(reference.logits(tokens))[np.arange(len(tokens) - 1), tokens[1:]]
    got = np.array([-lp.logprob for lp in handle.prompt_logprobs[1:]])
    np.testing.assert_allclose(got, nll, atol=1e-4)


def test_n_greedy_answers_are_identical_and_share_one_prefill(engine) -> None:
    tokens = engine.model.tokenize(PROMPT)
    steps = engine.steps
    leader = engine.submit(tokens, Sampling(temp=0.0, max_tokens=12), n=2)
    handles = [leader, *leader.followers]
    texts = [h.text() for h in handles]
    assert len(set(texts)) == 1 and texts[0]
    assert [h.reused_tokens for h in handles] == [0, len(tokens)]
    # One prefill step plus one step per further token, both decoded together.
    assert engine.steps - steps == 12


def test_n_sampled_answers_differ(engine) -> None:
    tokens = engine.model.tokenize(PROMPT)
    leader = engine.submit(tokens, Sampling(temp=1.5, max_tokens=16, seed=7), n=2)
    texts = {h.text() for h in [leader, *leader.followers]}
    assert len(texts) > 1


def test_n_beyond_parallel_is_refused(engine) -> None:
    with pytest.raises(ContextOverflow, match="n=3"):
        engine.submit(engine.model.tokenize(PROMPT), Sampling(), n=3)
