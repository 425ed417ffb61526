"""`llmrun embed`: texts as arguments or stdin lines, one JSON vector a line in order,
unit length unless --no-normalize, one clear line for what cannot be embedded.

On a real BERT file (the tiny bge-tokenizer encoder of embed_fixtures, converted by
llmrun) and on the demo SmolLM2, a causal LM: like Ollama (and llama-server with
`--pooling mean`), llmrun embeds with any model, mean-pooling one that names no pooling.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmrun.quantize import quantize
from tests.embed_fixtures import embed_checkpoint, reference

pytestmark = pytest.mark.slow

TEXTS = ("a cat sat on the mat", "Ångström's 12345 日本語", "the quick brown fox")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory, llama_cpp_src: Path) -> Path:
    out = tmp_path_factory.mktemp("embed-cli") / "bert-F32.gguf"
    return quantize(str(embed_checkpoint("bert", llama_cpp_src)), type="F32", output=out).path


def vectors(stdout: str) -> list[np.ndarray]:
    lines = stdout.splitlines()
    assert all(line.startswith("[") and line.endswith("]") for line in lines), stdout[:200]
    return [np.asarray(json.loads(line), dtype=np.float64) for line in lines]


def test_texts_as_arguments_give_one_unit_vector_each_in_order(llmrun_inprocess, bert) -> None:
    r = llmrun_inprocess("embed", str(bert), *TEXTS, "-t", "1")
    assert r.code == 0, r.stderr
    got = vectors(r.stdout)
    assert len(got) == len(TEXTS)
    assert all(v.shape == (64,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5) for v in got)
    for text, v in zip(TEXTS, got, strict=True):  # each alone gives the same vector
        alone = vectors(llmrun_inprocess("embed", str(bert), text, "-t", "1").stdout)
        assert alone == [pytest.approx(v, abs=1e-6)]


def test_stdin_lines_are_the_texts_when_none_is_given(llmrun_inprocess, bert) -> None:
    by_args = vectors(llmrun_inprocess("embed", str(bert), *TEXTS, "-t", "1").stdout)
    r = llmrun_inprocess("embed", str(bert), "-t", "1", "-q", input="\n".join(TEXTS) + "\n")
    assert r.code == 0, r.stderr
    assert r.stderr == ""
    got = vectors(r.stdout)
    assert len(got) == len(TEXTS)
    for a, b in zip(got, by_args, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    dash = llmrun_inprocess("embed", str(bert), "-", "-t", "1", input="\n".join(TEXTS))
    assert dash.code == 0 and vectors(dash.stdout) == [pytest.approx(v, abs=1e-6) for v in got]


def test_no_normalize_gives_the_pooled_vector(llmrun_inprocess, bert, llama_cpp_src) -> None:
    ref = reference(embed_checkpoint("bert", llama_cpp_src))[0]
    r = llmrun_inprocess("embed", str(bert), ref["text"], "--no-normalize", "-t", "1")
    assert r.code == 0, r.stderr
    [got] = vectors(r.stdout)
    want = np.asarray(ref["vector"])
    assert np.linalg.norm(got) == pytest.approx(np.linalg.norm(want), rel=1e-3)
    assert float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))) > 0.999


def test_a_text_longer_than_the_context_is_refused_or_truncated(llmrun_inprocess, bert) -> None:
    long = "the quick brown fox " * 10
    r = llmrun_inprocess("embed", str(bert), "short", long, "-c", "16", "-t", "1")
    assert r.code == 2
    assert r.stderr.count("\n") == 1 and "input 2:" in r.stderr and "--truncate" in r.stderr
    assert "Traceback" not in r.stderr
    r = llmrun_inprocess("embed", str(bert), "short", long, "-c", "16", "--truncate", "-t", "1")
    assert r.code == 0, r.stderr
    assert len(vectors(r.stdout)) == 2


def test_a_generative_model_is_mean_pooled_as_ollama_does(llmrun_inprocess, smollm2) -> None:
    r = llmrun_inprocess("embed", str(smollm2), "Hello world", "The capital of France", "-t", "1")
    assert r.code == 0, r.stderr
    got = vectors(r.stdout)
    assert [v.shape for v in got] == [(576,), (576,)]  # SmolLM2-135M's hidden size
    assert all(np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5) for v in got)


def test_what_cannot_be_embedded_is_one_line(llmrun_inprocess, smollm2, tmp_path) -> None:
    # SmolLM2 adds no BOS: an empty line is no tokens at all
    r = llmrun_inprocess("embed", str(smollm2), "-t", "1", input="fine\n\nfine\n")
    assert r.code == 2
    assert r.stderr.count("\n") == 1 and "input 2: an input is empty" in r.stderr
    assert len(vectors(r.stdout)) == 1  # what came before the bad input was written
    r = llmrun_inprocess("embed", str(tmp_path / "missing.gguf"), "text")
    assert r.code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = llmrun_inprocess("embed")
    assert r.code == 2 and "no model given" in r.stderr


def test_serve_embeddings_answers_with_an_encoder(llmrun_inprocess, bert, tmp_path) -> None:
    """`serve --embeddings` on the BERT file, through the real OpenAI client: the vectors
    `llmrun embed` prints."""
    from tests.test_serve import start_server, stop_server

    want = vectors(llmrun_inprocess("embed", str(bert), *TEXTS, "-t", "1").stdout)
    srv = start_server(bert, tmp_path / "home", "--embeddings")
    try:
        answer = srv.client().embeddings.create(model="bert", input=list(TEXTS))
    finally:
        assert stop_server(srv) == 0, srv.stderr.read_text()
    got = [np.asarray(d.embedding) for d in answer.data]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
