"""Every supported architecture, on a random two-layer checkpoint made by transformers:
F32 logits equal transformers' (1e-3 relative), F16 close, Q8_0 and Q4_K_M load and generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrun.ggufinfo import read_info
from llmrun.quantize import quantize
from tests.quantize_checks import (
    GgufFile,
    llama_logits,
    quantized_types_load_and_generate,
    relative_error,
)
from tests.quantize_fixtures import ARCHS, reference, tiny_checkpoint

pytestmark = pytest.mark.slow

# Largest relative logit error allowed, by output type. F32 computes like transformers;
# F16 rounds weights (and llama.cpp rounds activations to F16 for F16 matmuls).
BOUNDS = {"F32": 1e-3, "F16": 1e-2}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_match_transformers(arch: str, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(arch)
    for qtype, bound in BOUNDS.items():
        path = tmp_path / f"{arch}-{qtype}.gguf"  # loaded here: no self-check child needed
        out = quantize(str(ckpt), type=qtype, output=path, check=False).path
        for ids, want in reference(ckpt):
            err = relative_error(llama_logits(out, ids), want)
            assert err < bound, f"{arch} {qtype}: logits differ by {err:.2e} (relative)"


def test_bf16_output(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint("qwen2")
    out = quantize(str(ckpt), type="BF16", output=tmp_path / "bf16.gguf").path
    assert read_info(out).quant == "BF16"
    for ids, want in reference(ckpt):
        assert relative_error(llama_logits(out, ids), want) < 3e-2


@pytest.mark.parametrize("arch", list(ARCHS))
def test_quantized_types_load_and_generate(arch: str, tmp_path: Path) -> None:
    quantized_types_load_and_generate(tiny_checkpoint(arch), tmp_path)


def test_direct_q8_0_is_llama_cpps_q8_0(tmp_path: Path) -> None:
    """Our Q8_0 blocks are bit for bit those llama.cpp makes from the same F32 weights."""
    from llmrun.quantize.llama_quant import llama_quantize
    from llmrun.quantize.progress import QuantizeProgress
    from llmrun.quantize.types import TYPES

    ckpt = tiny_checkpoint("qwen2")
    f32 = quantize(str(ckpt), type="F32", output=tmp_path / "f32.gguf", check=False).path
    ours = quantize(str(ckpt), type="Q8_0", output=tmp_path / "ours.gguf").path
    theirs = tmp_path / "theirs.gguf"
    llama_quantize(f32, theirs, TYPES["Q8_0"], QuantizeProgress())
    a, b = GgufFile(ours).tensors, GgufFile(theirs).tensors
    assert a.keys() == b.keys()
    for name, t in a.items():
        assert t.type == b[name].type, name
        assert t.data == b[name].data, name
