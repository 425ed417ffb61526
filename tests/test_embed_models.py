"""Embedding models (issue 17): BERT (bge's WordPiece), NomicBERT and XLM-RoBERTa (a
SentencePiece Unigram) on random two-layer checkpoints made by transformers: the F32 file
is llama.cpp's reference converter's, tensor for tensor and key for key; llama.cpp's
tokenizer gives the checkpoint tokenizer's ids; llama.cpp's pooled vectors (through
`llmrun.embedding`) point where transformers' pooled outputs do."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from llmrun.embedding import embed
from llmrun.quantize import quantize
from tests.embed_fixtures import POOLING, embed_checkpoint, reference
from tests.quantize_checks import (
    PROVENANCE,
    GgufFile,
    Vocab,
    gguf_differences,
    llama_cpp_conversion,
)

pytestmark = pytest.mark.slow

ARCHS = tuple(POOLING)
# The fixtures' folders are named embed-<arch>-<digest>, which llama.cpp's converter splits
# into a base name and a "finetune"; llmrun writes the folder name as general.name.
NAMING = dict.fromkeys(
    ("general.basename", "general.finetune"), "llama.cpp's converter parses the folder name"
)
# Differences from llama.cpp's converter, by fixture, and why.
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
    "xlmroberta_json": {
        # From tokenizer.json, llama.cpp's converter takes clean_up_tokenization_spaces (a
        # decoding setting, False here), and its tokenizer then keeps runs of spaces that
        # XLM-R's WhitespaceSplit pre-tokenizer drops: the ids differ (llmrun's self-check
        # refuses that file). llmrun writes what the pre-tokenizer does.
        "tokenizer.ggml.remove_extra_whitespaces": "from the WhitespaceSplit pre-tokenizer",
    },
}
POOLING_TYPES = {"cls": gguf.PoolingType.CLS, "mean": gguf.PoolingType.MEAN}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, llama_cpp_src: Path) -> dict[str, Path]:
    """Each architecture's checkpoint, converted to F32 by llmrun (self-check included)."""
    out = tmp_path_factory.mktemp("embed-models")
    return {
        arch: quantize(
            str(embed_checkpoint(arch, llama_cpp_src)), type="F32", output=out / f"{arch}.gguf"
        ).path
        for arch in ARCHS
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_same_file_as_llama_cpps_converter(
    arch: str, converted: dict[str, Path], llama_cpp_src: Path, tmp_path: Path
) -> None:
    ckpt = embed_checkpoint(arch, llama_cpp_src)
    theirs = llama_cpp_conversion(llama_cpp_src, ckpt)
    ignore = {**PROVENANCE, **NAMING, **KNOWN_DIFFERENCES.get(arch, {})}
    assert gguf_differences(converted[arch], theirs, ignore) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_vocabulary_and_pooling_are_the_encoders(arch: str, converted: dict[str, Path]) -> None:
    file = GgufFile(converted[arch])
    model = "t5" if arch.startswith("xlmroberta") else "bert"
    assert file.value("tokenizer.ggml.model") == model
    arch_name = file.value("general.architecture")
    assert file.value(f"{arch_name}.pooling_type") == POOLING_TYPES[POOLING[arch]]
    assert file.value(f"{arch_name}.attention.causal") is False


@pytest.mark.parametrize("arch", ARCHS)
def test_token_ids_are_the_checkpoint_tokenizers(
    arch: str, converted: dict[str, Path], llama_cpp_src: Path
) -> None:
    vocab = Vocab(converted[arch])
    try:
        for ref in reference(embed_checkpoint(arch, llama_cpp_src)):
            assert vocab.tokenize(ref["text"]) == ref["ids"], ref["text"]
    finally:
        vocab.close()


@pytest.mark.parametrize("arch", ARCHS)
def test_pooled_vectors_match_transformers(
    arch: str, converted: dict[str, Path], llama_cpp_src: Path
) -> None:
    refs = reference(embed_checkpoint(arch, llama_cpp_src))
    got = list(embed(str(converted[arch]), [r["text"] for r in refs], normalize=False, threads=1))
    for ref, vector in zip(refs, got, strict=True):
        a, b = np.asarray(vector), np.asarray(ref["vector"])
        assert a.shape == b.shape
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine > 0.999, f"{arch}: {ref['text']!r} cosine {cosine:.5f}"
        # not normalized: the pooled vector itself, to within float32 rounding
        assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(b), rel=1e-3)


def test_quantized_encoder_still_embeds(llama_cpp_src: Path, tmp_path: Path) -> None:
    ckpt = embed_checkpoint("bert", llama_cpp_src)
    out = quantize(str(ckpt), type="Q8_0", output=tmp_path / "bert-Q8_0.gguf").path
    refs = reference(ckpt)
    got = list(embed(str(out), [r["text"] for r in refs], threads=1))
    for ref, vector in zip(refs, got, strict=True):
        a, b = np.asarray(vector), np.asarray(ref["vector"])
        assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)  # unit length by default
        assert float(a @ b / np.linalg.norm(b)) > 0.99
