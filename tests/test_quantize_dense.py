"""Dense families added after the first ones (issue 17), on random two-layer checkpoints
made by transformers: F32 logits equal transformers', Q8_0 and Q4_K_M load and generate,
and the F32 file is llama.cpp's reference converter's, tensor for tensor and key for key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.quantize_checks import (
    PROVENANCE,
    gguf_differences,
    llama_cpp_conversion,
    llama_logits,
    quantized_types_load_and_generate,
    relative_error,
)
from tests.quantize_fixtures import DENSE_ARCHS_2, reference, tiny_checkpoint

pytestmark = pytest.mark.slow

# Differences from llama.cpp's converter, by fixture, and why.
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
    # As test_quantize_moe.py's Mixtral: llmrun's SentencePiece export (scores and types of
    # <unk>, <s>, </s>; add_bos_token from tokenizer_config).
    "ernie4_5": {
        **dict.fromkeys(
            ("tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.add_bos_token"),
            "llmrun's SentencePiece vocabulary export, not ERNIE's",
        ),
        # llama.cpp's converter copies tokenizer_config's add_prefix_space, here null (False
        # in its file); llmrun asks the SentencePiece model, which adds the space, as
        # transformers' tokenizer does.
        "tokenizer.ggml.add_space_prefix": "taken from the SentencePiece model, not the config",
    },
    "mistral3": dict.fromkeys(
        ("tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.add_bos_token"),
        "llmrun's SentencePiece vocabulary export, not the text part's tensors",
    ),
    "gemma3mm": {
        # The fixture's Gemma tokenizer: transformers added <bos>, <eos> and <mask> after the
        # SentencePiece pieces, which llmrun exports (as transformers tokenizes) and llama.cpp's
        # converter pads over; add_bos_token from tokenizer_config.
        **dict.fromkeys(
            (
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.add_bos_token",
            ),
            "llmrun's SentencePiece vocabulary export, not the text part's tensors",
        ),
        # llama.cpp's converter leaves Gemma 3's layer pattern to llama.cpp's default (five
        # sliding layers to one global); llmrun writes config.json's layer_types, which the
        # two-layer fixture needs to match transformers.
        "gemma3.attention.sliding_window_pattern": "written from layer_types",
    },
}


@pytest.mark.parametrize("arch", list(DENSE_ARCHS_2))
def test_logits_match_transformers(arch: str, tiny_f32: Callable[[str], Path]) -> None:
    out = tiny_f32(arch)
    for ids, want in reference(tiny_checkpoint(arch)):
        err = relative_error(llama_logits(out, ids), want)
        assert err < 1e-3, f"{arch} F32: logits differ by {err:.2e} (relative)"


@pytest.mark.parametrize("arch", list(DENSE_ARCHS_2))
def test_quantized_types_load_and_generate(arch: str, tmp_path: Path) -> None:
    quantized_types_load_and_generate(tiny_checkpoint(arch), tmp_path)


@pytest.mark.parametrize("arch", list(DENSE_ARCHS_2))
def test_same_file_as_llama_cpps_converter(
    arch: str, tiny_f32: Callable[[str], Path], llama_cpp_src: Path
) -> None:
    ours = tiny_f32(arch)
    theirs = llama_cpp_conversion(llama_cpp_src, tiny_checkpoint(arch))
    ignore = {**PROVENANCE, **KNOWN_DIFFERENCES.get(arch, {})}
    assert gguf_differences(ours, theirs, ignore) == []
