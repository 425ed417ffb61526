"""Pre-quantized checkpoints (GPTQ, AWQ, compressed-tensors, FP8), packed here by the
packers of tests/quant_packers.py, written from each format's published packing code.

- Every scheme and bit width: the weights llmrun reads back are exactly the values the
  packed tensors stand for (quantized, then dequantized in float32 from the stored scales).
- compressed-tensors' own compressor packs too (0.20's packing, across words).
- On the tiny Llama checkpoint, each scheme: the F32 conversion is, byte for byte, the
  conversion of the same checkpoint holding those values as floats; its logits are
  transformers' (on the packed checkpoint itself where transformers loads it on CPU:
  compressed-tensors and FP8; else on the float one); and where llama.cpp's converter
  reads the scheme (GPTQ, compressed-tensors, FP8) its output is the same file.
"""

from __future__ import annotations

import filecmp
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmrun.quantize import quantize
from llmrun.quantize.checkpoint import open_checkpoint
from llmrun.quantize.imports.base import E4M3FN
from tests.quant_packers import (
    Packed,
    float_twin,
    pack_awq,
    pack_compressed,
    pack_fp8,
    pack_gptq,
    pack_int8,
    quantized_checkpoint,
)
from tests.quantize_checks import (
    PROVENANCE,
    gguf_differences,
    llama_cpp_conversion,
    llama_logits,
    relative_error,
)
from tests.quantize_fixtures import reference, tiny_checkpoint

LAYER = "model.layers.0.mlp.up_proj"


def gptq_config(bits: int, group: int, act_order: bool, fmt: str, sym: bool) -> dict[str, Any]:
    return {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group,
        "desc_act": act_order,
        "sym": sym,
        "checkpoint_format": fmt,
    }


def awq_config(group: int) -> dict[str, Any]:
    return {
        "quant_method": "awq",
        "bits": 4,
        "group_size": group,
        "zero_point": True,
        "version": "gemm",
    }


def compressed_config(fmt: str, weights: dict[str, Any]) -> dict[str, Any]:
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None}
        },
        "ignore": ["lm_head"],
    }


def int_weights(bits: int, strategy: str, group: int | None, sym: bool, actorder: bool = False):
    return {
        "num_bits": bits,
        "type": "int",
        "symmetric": sym,
        "strategy": strategy,
        "group_size": group,
        "actorder": "group" if actorder else None,
    }


FP8_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
FP8_CHANNEL = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"}


def _one_scale(packed: Packed) -> Packed:
    packed.tensors["weight_scale"] = packed.tensors["weight_scale"].reshape(1)
    return packed


# name -> (packer of one weight, quantization_config, weight shape out x in)
CASES: dict[str, tuple[Callable[[np.ndarray], Packed], dict[str, Any], tuple[int, int]]] = {
    **{
        f"gptq-{bits}bit-{fmt}{'-actorder' if act else ''}": (
            lambda w, b=bits, f=fmt, a=act: pack_gptq(w, b, 32, act_order=a, fmt=f, sym=False),
            gptq_config(bits, 32, act, fmt, False),
            (64, 256),
        )
        for bits in (2, 3, 4, 8)
        for fmt in ("gptq", "gptq_v2")
        for act in (False, True)
    },
    "gptq-4bit-sym-per-row": (
        lambda w: pack_gptq(w, 4, 256, act_order=False, fmt="gptq", sym=True),
        gptq_config(4, -1, False, "gptq", True),
        (64, 256),
    ),
    "awq-4bit": (lambda w: pack_awq(w, 32), awq_config(32), (64, 256)),
    **{
        f"compressed-{bits}bit-{strategy}-{'sym' if sym else 'asym'}": (
            lambda w, b=bits, s=strategy, y=sym: pack_compressed(w, b, s, 64, sym=y),
            compressed_config("pack-quantized", int_weights(bits, strategy, 64, sym)),
            (48, 250),  # rows of 250: the last word of each is padded, the last group short
        )
        for bits in (2, 3, 4, 8)
        for strategy in ("group", "channel")
        for sym in (True, False)
    },
    "compressed-4bit-actorder": (
        lambda w: pack_compressed(w, 4, "group", 64, sym=False, act_order=True),
        compressed_config("pack-quantized", int_weights(4, "group", 64, False, True)),
        (48, 256),
    ),
    **{
        f"compressed-int8-{'sym' if sym else 'asym'}": (
            lambda w, y=sym: pack_int8(w, sym=y),
            compressed_config("int-quantized", int_weights(8, "channel", None, sym)),
            (48, 250),
        )
        for sym in (True, False)
    },
    "compressed-fp8-channel": (
        lambda w: pack_fp8(w, None, "weight_scale"),
        compressed_config("float-quantized", FP8_CHANNEL),
        (48, 250),
    ),
    "compressed-fp8-tensor": (  # one scale, of shape [1], as LLM Compressor writes it
        lambda w: _one_scale(pack_fp8(w, w.shape, "weight_scale")),
        compressed_config("float-quantized", {**FP8_CHANNEL, "strategy": "tensor"}),
        (48, 250),
    ),
    "fp8-blocks": (  # blocks cut short at the bottom and the right
        lambda w: pack_fp8(w, (128, 128), "weight_scale_inv"),
        {**FP8_CONFIG, "weight_block_size": [128, 128]},
        (300, 200),
    ),
}


def _single_weight(folder: Path, packed: Packed, qconfig: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    tensors = {f"{LAYER}.{k}": v.contiguous() for k, v in packed.tensors.items()}
    save_file(tensors, folder / "model.safetensors")
    config = {"architectures": ["LlamaForCausalLM"], "quantization_config": qconfig}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_dequantized_weights_are_the_packed_values(case: str, tmp_path: Path) -> None:
    pack, qconfig, shape = CASES[case]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    w[0, :8] = 0.0  # a row part of zeros, and one large value: the scales' extremes
    w[1, 3] = 0.9
    packed = pack(w)
    ckpt = open_checkpoint(_single_weight(tmp_path / case, packed, qconfig))
    assert list(ckpt.tensors) == [f"{LAYER}.weight"]  # scales, zeros, g_idx all consumed
    got = ckpt.tensors[f"{LAYER}.weight"].array()
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, packed.values)
    assert ckpt.imported


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize(("strategy", "sym"), [("group", False), ("channel", True)])
def test_compressed_tensors_own_packing(bits: int, strategy: str, sym: bool, tmp_path: Path):
    """compressed-tensors' own compressor (0.20: one stream of bits a row) packs; llmrun
    reads back (q - zero) * scale, q and zero as the library itself unpacks them."""
    import torch
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    # the library takes whole groups only; rows of 250 by channel end in a part word
    shape = (48, 256) if strategy == "group" else (48, 250)
    group = 64 if strategy == "group" else shape[1]
    args = QuantizationArgs(
        num_bits=bits,
        type="int",
        symmetric=sym,
        strategy=strategy,
        group_size=group if strategy == "group" else None,
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.05
    n_groups = -(-shape[1] // group)
    scale = torch.full((shape[0], n_groups), 0.1 / (1 << bits)).to(torch.bfloat16)
    state = {"weight": w, "weight_scale": scale}
    if not sym:
        zero = torch.randint(-(1 << bits - 1), 1 << bits - 1, scale.shape, dtype=torch.int8)
        state["weight_zero_point"] = zero
    packed = PackedQuantizationCompressor.compress(state, scheme)
    q = unpack_from_int32(packed["weight_packed"], bits, torch.Size(shape)).int()
    if sym:
        assert "weight_zero_point" not in packed
        zero_full = torch.zeros_like(q)
    else:
        zeros = unpack_from_int32(packed["weight_zero_point"], bits, scale.shape, packed_dim=0)
        assert torch.equal(zeros, zero)
        zero_full = zeros.int().repeat_interleave(group, 1)[:, : shape[1]]
    scale_full = scale.float().repeat_interleave(group, 1)[:, : shape[1]]
    values = ((q - zero_full).float() * scale_full).numpy()
    tensors = {k: v for k, v in packed.items() if k != "weight"}
    qconfig = compressed_config("pack-quantized", args.model_dump(mode="json"))
    folder = _single_weight(tmp_path / "ct", Packed(tensors, values), qconfig)
    got = open_checkpoint(folder).tensors[f"{LAYER}.weight"].array()
    np.testing.assert_array_equal(got, values)


def test_e4m3fn_table_is_torchs() -> None:
    import torch

    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    want = bits.view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(E4M3FN, want)


# ---------------------------------------------------------------- whole checkpoints


@dataclass(frozen=True)
class Case:
    pack: Callable[[np.ndarray], Packed]
    qconfig: dict[str, Any]
    # the type llama.cpp's converter is compared at, where it reads the scheme: one
    # comparison a scheme and zero-point convention (a minute each)
    llama_cpp: str | None = None
    # transformers loads the packed checkpoint itself on CPU (compressed-tensors decompresses,
    # FP8 is dequantized without a GPU), so it is the reference; else its float twin is
    transformers_reads: bool = False


CHECKPOINTS: dict[str, Case] = {
    **{
        f"gptq-{bits}bit-{fmt}-actorder": Case(
            lambda w, b=bits, f=fmt: pack_gptq(w, b, 64, act_order=True, fmt=f, sym=False),
            gptq_config(bits, 64, True, fmt, False),
            outtype,  # llama.cpp's converter: "3-bit gptq dequantization is not yet implemented"
        )
        for bits, fmt, outtype in ((2, "gptq_v2", "f32"), (3, "gptq", None), (4, "gptq", "f16"))
    },
    "awq-4bit": Case(lambda w: pack_awq(w, 64), awq_config(64)),  # llama.cpp: not AWQ
    # transformers re-initializes packed zero points (a size mismatch): llama.cpp checks them
    "compressed-4bit-group-asym": Case(
        lambda w: pack_compressed(w, 4, "group", 64, sym=False),
        compressed_config("pack-quantized", int_weights(4, "group", 64, False)),
        "f32",
    ),
    "compressed-8bit-channel-sym": Case(
        lambda w: pack_compressed(w, 8, "channel", sym=True),
        compressed_config("pack-quantized", int_weights(8, "channel", None, True)),
        transformers_reads=True,
    ),
    "fp8-blocks": Case(  # (llama.cpp's converter gives the same file too: a minute more)
        lambda w: pack_fp8(w, (128, 128), "weight_scale_inv"),
        {**FP8_CONFIG, "weight_block_size": [128, 128]},
        transformers_reads=True,
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    src = tiny_checkpoint("llama")
    root = tmp_path_factory.mktemp("imports")
    # One folder name for all: llama.cpp's converter reads a basename, version and size
    # label out of names such as "gptq-4bit-v2", which are no part of the comparison.
    return {
        name: quantized_checkpoint(src, root / name / "ckpt", case.pack, case.qconfig)
        for name, case in CHECKPOINTS.items()
    }


def _transformers_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_conversion_is_the_dequantized_checkpoints(
    name: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = checkpoints[name]
    twin = float_twin(ckpt)
    # (no self-checks: the files are compared, and the logits checked, here)
    ours = quantize(str(ckpt), type="F32", output=tmp_path / "imported.gguf", check=False).path
    plain = quantize(str(twin), type="F32", output=tmp_path / "float.gguf", check=False).path
    assert filecmp.cmp(ours, plain, shallow=False), "not the float checkpoint's file"
    ref = ckpt if CHECKPOINTS[name].transformers_reads else twin
    ids = reference(tiny_checkpoint("llama"))[0][0]
    err = relative_error(llama_logits(ours, ids), _transformers_logits(ref, ids))
    assert err < 1e-3, f"{name}: logits differ from transformers' by {err:.2e} (relative)"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, case in CHECKPOINTS.items() if case.llama_cpp])
def test_same_file_as_llama_cpps_converter(
    name: str, checkpoints: dict[str, Path], tmp_path: Path, llama_cpp_src: Path
) -> None:
    ckpt, outtype = checkpoints[name], CHECKPOINTS[name].llama_cpp
    assert outtype is not None
    ours = tmp_path / "ours.gguf"
    quantize(str(ckpt), type=outtype.upper(), output=ours, check=False)
    theirs = llama_cpp_conversion(llama_cpp_src, ckpt, outtype)
    assert gguf_differences(ours, theirs, PROVENANCE) == []


@pytest.mark.slow
def test_quantize_says_the_weights_are_requantized(
    checkpoints: dict[str, Path], llmrun_inprocess, tmp_path: Path
) -> None:
    out = tmp_path / "awq-Q4_K_M.gguf"
    r = llmrun_inprocess(
        "quantize", str(checkpoints["awq-4bit"]), "--type", "Q4_K_M", "-o", str(out)
    )
    assert r.code == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "requantized" in line]
    assert len(lines) == 1 and "AWQ 4-bit" in lines[0], r.stderr
    assert "dequantized weights" in lines[0]
    assert out.is_file() and r.stdout.strip()


# ---------------------------------------------------------------- refused schemes


@pytest.mark.parametrize(
    ("qconfig", "named"),
    [
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes'"),
        ({"quant_method": "hqq", "nbits": 4}, "'hqq'"),
        ({"quant_method": "exl2", "bits": 4.0}, "'exl2'"),
        ({**awq_config(128), "version": "gemv"}, "AWQ's GEMV packing"),
        ({**awq_config(128), "version": "marlin"}, "AWQ's MARLIN packing"),
        ({**gptq_config(4, 128, False, "marlin", True)}, "GPTQ's 'marlin' packing"),
        (gptq_config(5, 128, False, "gptq", True), "GPTQ with 5 bits"),
        (compressed_config("nvfp4-pack-quantized", int_weights(4, "group", 16, True)), "nvfp4"),
    ],
)
def test_an_unsupported_scheme_is_one_error_naming_it(
    qconfig: dict[str, Any], named: str, tmp_path: Path, llmrun_inprocess
) -> None:
    folder = _single_weight(
        tmp_path / "ckpt", pack_awq(np.ones((64, 128), np.float32), 128), qconfig
    )
    r = llmrun_inprocess("quantize", str(folder), "-o", str(tmp_path / "out.gguf"))
    assert r.code == 2
    assert named in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize(
    ("dropped", "says"),
    [("qzeros", "but not model.layers.0.mlp.up_proj.qzeros beside it"), ("scales", "scales")],
)
def test_a_packed_weight_missing_a_part_is_one_error(
    dropped: str, says: str, tmp_path: Path, llmrun_inprocess
) -> None:
    packed = pack_gptq(np.ones((64, 128), np.float32), 4, 64, act_order=False, fmt="gptq", sym=True)
    del packed.tensors[dropped]
    folder = _single_weight(tmp_path / "ckpt", packed, gptq_config(4, 64, False, "gptq", True))
    r = llmrun_inprocess("quantize", str(folder), "-o", str(tmp_path / "out.gguf"))
    assert r.code == 2
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
