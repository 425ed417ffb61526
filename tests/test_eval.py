"""`llmrun eval`: perplexity and KL divergence with the real engine on the real SmolLM2 GGUF.

There is no F16 SmolLM2 GGUF here, so the reference in the KL tests is a stand-in: the shipped
Q4_1 file requantized by llama.cpp to Q8_0 (nearly lossless from Q4_1, so close to the Q4_1
model), against which a Q4_0 requantization of the same file is compared. Small chunks
(-c 128, 4 chunks) and one thread keep each eval to seconds on a busy 2-core machine.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from llmrun.evaluate import EvalResult, Scores, evaluate, log_softmax

SMALL = ("-c", "128", "--chunks", "4", "-t", "1")
QUANTS = {"Q8_0": 7, "Q4_0": 2}  # llama_ftype values (LLAMA_FTYPE_MOSTLY_*)


@pytest.fixture
def llmrun(llmrun_inprocess):
    """In-process: these tests check output and exit codes only, not signals or terminals."""
    return llmrun_inprocess


@pytest.fixture(scope="session")
def requantized(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Q4_1 SmolLM2 requantized to Q8_0 and Q4_0: a stand-in for an F16 reference."""
    import llama_cpp

    from llmrun.engine import logs

    logs.install(verbose=False)  # llama.cpp logs every tensor; keep the test output clean
    out = tmp_path_factory.mktemp("requantized")
    files = {}
    for quant, ftype in QUANTS.items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = 2
        params.allow_requantize = True
        dest = out / f"SmolLM2-135M-Instruct.{quant}.gguf"
        rc = llama_cpp.llama_model_quantize(str(smollm2).encode(), str(dest).encode(), params)
        assert rc == 0, f"llama_model_quantize to {quant} failed"
        files[quant] = dest
    return files


def test_perplexity_on_the_shipped_text(llmrun, smollm2: Path) -> None:
    r = llmrun("eval", str(smollm2), *SMALL, "--json")
    assert r.code == 0, r.stderr
    assert r.stderr == ""  # no progress bar when stderr is not a terminal
    data = json.loads(r.stdout)
    assert data["text"] == "alice.txt (shipped)" and data["text_tokens"] > 4000
    assert (data["chunks"], data["ctx_size"]) == (4, 128)
    assert data["scored_tokens"] == 4 * 63  # tokens 65..127 of each chunk
    assert math.isfinite(data["perplexity"]) and 3 < data["perplexity"] < 60
    assert 0 < data["perplexity_se"] < data["perplexity"]
    assert data["ref"] is None and data["kl_mean"] is None


@pytest.fixture(scope="module")
def q4_against_q8(requantized: dict[str, Path]) -> EvalResult:
    return evaluate(requantized["Q4_0"], ref=requantized["Q8_0"], ctx_size=128, chunks=4, threads=1)


def test_a_coarser_quant_diverges_from_its_reference(q4_against_q8: EvalResult) -> None:
    r = q4_against_q8
    print(r.summary())  # the numbers, for `pytest -s`
    assert r.kl_mean > 1e-4 and r.kl_max >= r.kl_p99 >= r.kl_median >= 0
    assert 0.5 < r.top1_agreement < 1.0
    assert r.ref_perplexity is not None and math.isfinite(r.ref_perplexity)
    assert r.ppl_ratio == pytest.approx(r.perplexity / r.ref_perplexity)
    # The expectation with a real F16 reference; here 1.21 (KL 0.25, top-1 71%):
    # requantizing Q4_1 to Q4_0 loses much more than to Q8_0 on a 135M model.
    assert r.ppl_ratio > 1.0


def test_human_output_and_progress(llmrun, smollm2: Path, requantized: dict[str, Path]) -> None:
    r = llmrun(
        "eval", str(requantized["Q4_0"]), "--ref", "smollm2-135m", "-c", "64", "--chunks", "2",
        "-t", "1",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    for label in ("perplexity", "ref perplexity", "perplexity ratio", "KL mean", "KL p99"):
        assert re.search(rf"^{label} +[0-9.]+", r.stdout, re.M), (label, r.stdout)
    assert re.search(r"^top-1 agreement +[0-9.]+%$", r.stdout, re.M), r.stdout
    assert re.search(r"^chunks +2 of 64 tokens, 62 tokens scored$", r.stdout, re.M), r.stdout
    # A file is named by its stem; a stored or demo model as name:QUANT.
    assert re.search(r"^model +SmolLM2-135M-Instruct.Q4_0$", r.stdout, re.M), r.stdout
    assert re.search(r"^reference +smollm2-135m:Q4_1$", r.stdout, re.M), r.stdout

    seen: list[tuple[int, int]] = []
    evaluate(smollm2, ctx_size=64, chunks=3, threads=1, progress=lambda *a: seen.append(a))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_several_models_against_one_reference(
    llmrun, requantized: dict[str, Path], q4_against_q8: EvalResult
) -> None:
    """One pass over the reference for both: each is what an eval of it alone gives, and the
    reference's own file, scored against itself, has zero KL."""
    q4, q8 = requantized["Q4_0"], requantized["Q8_0"]
    r = llmrun("eval", str(q4), str(q8), "--ref", str(q8), *SMALL, "--json")
    assert r.code == 0, r.stderr
    both = json.loads(r.stdout)
    assert [d["model"] for d in both] == [q4.stem, q8.stem]
    alone = q4_against_q8.to_dict()
    for key in ("perplexity", "ref_perplexity", "kl_mean", "kl_p99", "top1_agreement", "chunks"):
        assert both[0][key] == alone[key], key
    same = both[1]
    assert abs(same["kl_mean"]) < 1e-6 and abs(same["kl_max"]) < 1e-6
    assert same["top1_agreement"] == 1.0
    assert same["ppl_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert same["ref_perplexity"] == pytest.approx(same["perplexity"])
    assert same["ref_perplexity"] == both[0]["ref_perplexity"]

    r = llmrun("eval", str(q4), str(q8), "--ref", str(q8), "-c", "64", "--chunks", "1", "-t", "1")
    assert r.code == 0, r.stderr
    assert re.search(r"^reference +SmolLM2-135M-Instruct.Q8_0$", r.stdout, re.M), r.stdout
    assert re.search(r"^model +perplexity +ratio +KL mean +KL p99 +top-1$", r.stdout, re.M)
    for stem in (q4.stem, q8.stem):
        assert re.search(rf"^{re.escape(stem)} +[0-9.]+ ± [0-9.]+ +[0-9.]+ ", r.stdout, re.M)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "missing.txt"], "cannot read --text file"),
        (["--text", "{short}"], "shorter than one chunk of 128"),
        (["-c", "4"], "-c/--ctx-size must be >= 16"),
        (["--chunks", "0"], "--chunks must be >= 1"),
        (["--ref", "no-such-model"], "unknown model"),
    ],
    ids=["missing-text", "short-text", "tiny-ctx", "zero-chunks", "unknown-ref"],
)
def test_bad_input_is_one_line_exit_2(
    llmrun, smollm2: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Alice was beginning to get very tired.\n")
    args = [a.replace("{short}", str(short)) for a in args]
    r = llmrun("eval", str(smollm2), "-c", "128", "-t", "1", *args)
    assert r.code == 2, r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------- the arithmetic, no model


def test_scores_match_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    vocab, ctx = 50, 16
    chunk = rng.integers(0, vocab, ctx).tolist()
    logits = rng.normal(0, 3, (ctx, vocab)).astype(np.float32)
    ref_logits = logits + rng.normal(0, 0.5, (ctx, vocab)).astype(np.float32)
    scores = Scores()
    scores.add(chunk, logits, ref_logits)

    def probs(x: np.ndarray) -> np.ndarray:
        e = np.exp(x.astype(np.float64))
        return e / e.sum(axis=1, keepdims=True)

    p, q = probs(ref_logits[8:15]), probs(logits[8:15])  # second half, all but the last
    targets = chunk[9:]
    kl = (p * np.log(p / q)).sum(axis=1)
    stats = scores.kl_stats()
    assert stats["kl_mean"] == pytest.approx(kl.mean(), rel=1e-4)
    assert stats["kl_max"] == pytest.approx(kl.max(), rel=1e-4)
    assert stats["top1_agreement"] == np.mean(p.argmax(1) == q.argmax(1))
    nll = -np.log(q[np.arange(7), targets])
    assert scores.perplexity(scores.nll)[0] == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert np.allclose(np.exp(log_softmax(logits)).sum(axis=1), 1.0, atol=1e-5)

    same = Scores()
    same.add(chunk, logits, logits.copy())
    assert same.kl_stats()["kl_max"] == 0.0 and same.kl_stats()["top1_agreement"] == 1.0


def test_a_reference_with_another_vocabulary_is_refused() -> None:
    from types import SimpleNamespace

    from llmrun.errors import BadInput
    from llmrun.evaluate import _check_same_vocab

    def fake(name: str, n_vocab: int, ids: list[int]) -> SimpleNamespace:
        return SimpleNamespace(path=Path(name), n_vocab=n_vocab, tokenize=lambda *a, **k: ids)

    model = fake("q4.gguf", 100, [1, 2, 3])
    _check_same_vocab(model, fake("f16.gguf", 100, [1, 2, 3]), "text", [1, 2, 3])
    for other in (fake("other.gguf", 200, [1, 2, 3]), fake("other.gguf", 100, [1, 5])):
        with pytest.raises(BadInput, match="do not share a vocabulary"):
            _check_same_vocab(model, other, "text", [1, 2, 3])
