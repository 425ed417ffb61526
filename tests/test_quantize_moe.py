"""Mixture-of-experts families, on random two-layer checkpoints made by transformers
(4 experts, 2 used): F32 logits equal transformers', Q8_0 and Q4_K_M load and generate, and the
F32 file is llama.cpp's reference converter's, tensor for tensor and key for key."""

from __future__ import annotations

import json
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from llmrun.errors import BadInput
from llmrun.ggufinfo import read_info
from llmrun.quantize import quantize
from llmrun.quantize.archs import converter_for
from llmrun.quantize.checkpoint import SourceTensor, open_checkpoint
from tests.quantize_checks import (
    PROVENANCE,
    GgufFile,
    generate,
    gguf_differences,
    llama_cpp_conversion,
    llama_logits,
    quantized_types_load_and_generate,
    relative_error,
)
from tests.quantize_fixtures import MOE_ARCHS, mxfp4_gptoss, reference, tiny_checkpoint

QT = gguf.GGMLQuantizationType

# Differences from llama.cpp's converter that are not the experts', by fixture, and why.
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
    # llmrun's SentencePiece export: -1000 scores on <unk>, <s> and </s> (llama.cpp's: 0),
    # <unk> typed CONTROL (llama.cpp's: UNKNOWN), add_bos_token false from tokenizer_config
    # (llama.cpp's converter leaves it out: true). The dense Mistral fixture has the same.
    "mixtral": dict.fromkeys(
        ("tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.add_bos_token"),
        "llmrun's SentencePiece vocabulary export, not the experts",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(MOE_ARCHS))
def test_logits_match_transformers(arch: str, tiny_f32: Callable[[str], Path]) -> None:
    out = tiny_f32(arch)
    for ids, want in reference(tiny_checkpoint(arch)):
        err = relative_error(llama_logits(out, ids), want)
        assert err < 1e-3, f"{arch} F32: logits differ by {err:.2e} (relative)"


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(MOE_ARCHS))
def test_quantized_types_load_and_generate(arch: str, tmp_path: Path) -> None:
    """Q8_0 is written here (3-D expert tensors too), Q4_K_M by llama.cpp from F16."""
    quantized_types_load_and_generate(tiny_checkpoint(arch), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(MOE_ARCHS))
def test_same_file_as_llama_cpps_converter(
    arch: str, tiny_f32: Callable[[str], Path], llama_cpp_src: Path
) -> None:
    ours = tiny_f32(arch)
    theirs = llama_cpp_conversion(llama_cpp_src, tiny_checkpoint(arch))
    ignore = {**PROVENANCE, **KNOWN_DIFFERENCES.get(arch, {})}
    assert gguf_differences(ours, theirs, ignore) == []


@pytest.mark.slow
def test_experts_are_stacked_lazily() -> None:
    """One plan per projection and layer, of the experts' tensors in order, none read yet."""
    ckpt = open_checkpoint(tiny_checkpoint("qwen2moe"))
    plans = {p.name: p for p in converter_for(ckpt).plans()}
    gate = plans["blk.1.ffn_gate_exps.weight"]
    assert gate.shape == (4, 512, 256) and gate.source is None and gate.data is None
    assert [p.name for p in gate.parts] == [
        f"model.layers.1.mlp.experts.{i}.gate_proj.weight" for i in range(4)
    ]
    assert plans["blk.1.ffn_down_exps.weight"].shape == (4, 256, 512)
    assert plans["blk.1.ffn_gate_inp_shexp.weight"].shape == (1, 256)
    assert not any("experts." in name for name in plans)


@pytest.mark.slow
def test_writer_maps_one_expert_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Experts are read one after the other: when one is mapped, no other is still alive."""
    arrays: list[weakref.ref[np.ndarray]] = []
    most = 0
    real = SourceTensor.array

    def array(self: SourceTensor) -> np.ndarray:
        nonlocal most
        a = real(self)
        if ".experts." in self.name:
            # The writer's loop variable still holds the previous one until it is rebound.
            most = max(most, sum(r() is not None for r in arrays))
            arrays.append(weakref.ref(a))
        return a

    monkeypatch.setattr(SourceTensor, "array", array)
    quantize(str(tiny_checkpoint("qwen3moe")), type="F16", output=tmp_path / "f16.gguf")
    assert len(arrays) == 2 * 3 * 4  # layers x projections x experts
    assert most <= 1


def _fused(arch: str, out: Path) -> Path:
    """A copy of the tiny checkpoint in transformers 5's own layout: each layer's experts
    stacked, gate and up in one tensor (transformers reads it to the same logits)."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(tiny_checkpoint(arch), out)
    tensors = load_file(out / "model.safetensors")
    fused = {k: v for k, v in tensors.items() if ".experts." not in k}
    for layer in range(2):
        stem = f"model.layers.{layer}.mlp.experts"

        def stack(proj: str, stem: str = stem) -> np.ndarray:
            return np.stack([tensors[f"{stem}.{e}.{proj}.weight"] for e in range(4)])

        fused[f"{stem}.gate_up_proj"] = np.concatenate([stack("gate_proj"), stack("up_proj")], 1)
        fused[f"{stem}.down_proj"] = stack("down_proj")
    save_file(fused, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen3moe", "qwen2moe"])
def test_transformers_5_layout_converts_the_same(arch: str, tmp_path: Path) -> None:
    ckpt = str(tiny_checkpoint(arch))
    ours = quantize(ckpt, type="F32", output=tmp_path / "a.gguf", check=False).path
    fused = _fused(arch, tmp_path / arch)
    again = quantize(str(fused), type="F32", output=tmp_path / "b.gguf", check=False).path
    assert gguf_differences(again, ours) == []


@pytest.mark.slow
def test_a_fused_layout_other_than_transformers_is_refused(tmp_path: Path) -> None:
    """GPT-OSS's transposed experts under a Qwen architecture would split wrongly, silently."""
    from safetensors.numpy import load_file, save_file

    folder = _fused("qwen3moe", tmp_path / "qwen3moe")
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.0.mlp.experts.gate_up_proj"
    tensors[name] = np.ascontiguousarray(tensors[name].swapaxes(-1, -2))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BadInput, match="not 4 experts' matrices in transformers' layout"):
        converter_for(open_checkpoint(folder)).plans()


@pytest.mark.slow
def test_mxfp4_gpt_oss_is_llama_cpps_file_with_transformers_logits(
    tmp_path: Path, llama_cpp_src: Path
) -> None:
    """OpenAI's layout: experts kept MXFP4, repacked as llama.cpp's converter does; the
    logits are transformers' with the experts at their MXFP4 values."""
    ckpt = mxfp4_gptoss()
    ours = quantize(str(ckpt), type="F32", output=tmp_path / "ours.gguf", check=False).path
    theirs = llama_cpp_conversion(llama_cpp_src, ckpt)
    assert gguf_differences(ours, theirs, PROVENANCE) == []
    reader = gguf.GGUFReader(ours)
    exps = {t.name: t for t in reader.tensors if "_exps.weight" in t.name}
    assert len(exps) == 6 and {t.tensor_type for t in exps.values()} == {QT.MXFP4}
    # ggml's MXFP4 decoder (gguf-py's) reads back the fixture's values, gate rows first
    want = np.load(ckpt / "experts.npz")["model.layers.1.mlp.experts.gate_up_proj"]
    got = dequantize(exps["blk.1.ffn_gate_exps.weight"].data, QT.MXFP4)
    np.testing.assert_array_equal(got, want.swapaxes(-1, -2)[:, 0::2, :])
    # llama.cpp multiplies MXFP4 weights by activations rounded to 8 bits (Q8_0, its
    # vec_dot_type for MXFP4): 1.6e-2 measured here. The file's values are exact (above),
    # and decoded to F32 they give transformers' logits within 1e-3 (the next test).
    for ids, logits in reference(ckpt):
        err = relative_error(llama_logits(ours, ids), logits)
        assert err < 3e-2, f"MXFP4 gpt-oss F32: logits differ by {err:.2e} (relative)"


@pytest.mark.slow
def test_mxfp4_dequantized_when_asked_and_refused_beyond_q8_0(tmp_path: Path) -> None:
    ckpt = str(mxfp4_gptoss())
    with pytest.raises(BadInput, match="MXFP4") as e:
        quantize(ckpt, type="Q4_K_M", output=tmp_path / "q4.gguf")
    assert "--dequantize-mxfp4" in (e.value.remedy or "")
    assert not (tmp_path / "q4.gguf").exists()
    out = quantize(ckpt, type="F32", output=tmp_path / "f32.gguf", dequantize_mxfp4=True).path
    types = {t.type for name, t in GgufFile(out).tensors.items() if "_exps" in name}
    assert types == {QT.F32}
    for ids, logits in reference(mxfp4_gptoss()):
        assert relative_error(llama_logits(out, ids), logits) < 1e-3
    q4 = quantize(ckpt, type="Q4_K_M", output=tmp_path / "q4.gguf", dequantize_mxfp4=True).path
    assert read_info(q4).quant == "Q4_K_M"
    assert generate(q4, "The quick brown fox", n=8)


def _edited(arch: str, tmp_path: Path, **config: object) -> Path:
    """A copy of the tiny checkpoint with some config.json fields changed."""
    folder = tmp_path / arch
    shutil.copytree(tiny_checkpoint(arch), folder)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, **config}))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "config", "message"),
    [
        ("qwen3moe", {"norm_topk_prob": False}, "always renormalizes"),
        ("qwen2moe", {"norm_topk_prob": True}, "never renormalizes"),
        ("qwen3moe", {"mlp_only_layers": [1]}, "some layers have no experts"),
        ("olmoe", {"clip_qkv": 8.0}, "clip_qkv"),
        ("mixtral", {"num_local_experts": 8}, "config.json says 8"),
    ],
    ids=["qwen3-unnormalized", "qwen2-normalized", "dense-layer", "clip-qkv", "missing-experts"],
)
def test_what_llama_cpp_cannot_run_is_refused(
    arch: str, config: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(BadInput, match=message):
        converter_for(open_checkpoint(_edited(arch, tmp_path, **config))).plans()


def test_list_archs_prints_one_architecture_a_line(llmrun_inprocess) -> None:
    result = llmrun_inprocess("quantize", "--list-archs")
    assert result.code == 0, result.stderr
    names = result.stdout.splitlines()
    assert names == sorted(set(names), key=names.index)  # no duplicates, nothing else
    assert {"LlamaForCausalLM", "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM"} <= set(names)
    assert {"MixtralForCausalLM", "OlmoeForCausalLM"} <= set(names)
