"""Packers of pre-quantized checkpoints, written from each format's published packing code,
not from llmrun's decoders: AutoGPTQ's `QuantLinear.pack` (qlinear_cuda_old), AutoAWQ's
`WQLinear_GEMM.from_linear`, older compressed-tensors' `pack_to_int32`, and the FP8 block
quantization of DeepSeek-V3's and transformers' fine-grained FP8.

Each packer quantizes a float weight (out x in) with plain min-max rounding, packs it,
and returns the tensors a checkpoint stores for it together with the values they stand
for, computed in float32 from the stored scales: what an exact dequantization must give.
`quantized_checkpoint` applies one to every linear weight of a checkpoint, and writes
beside it the same checkpoint holding those values as plain floats.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The linear layers that quantizers pack (lm_head and embeddings stay as they are).
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Packed:
    tensors: dict[str, Any]  # suffix ("qweight", "scales"...) -> torch tensor
    values: np.ndarray  # float32 (out x in): what the packed tensors stand for


# ---------------------------------------------------------------- rounding


def minmax(
    w: np.ndarray,
    bits: int,
    g_idx: np.ndarray,
    n_groups: int,
    sym: bool,
    scale_dtype: Any,
    zero_floor: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unsigned codes q (out x in), scales and zero points (out x groups): w ~ s * (q - z).

    Scales are rounded to `scale_dtype` (a torch dtype) first, as stored; `zero_floor`
    keeps zero points at or above it (AutoGPTQ stores each minus one).
    """
    import torch

    maxq = (1 << bits) - 1
    n_out = w.shape[0]
    scales = np.zeros((n_out, n_groups), np.float32)
    zeros = np.zeros((n_out, n_groups), np.int64)
    q = np.zeros(w.shape, np.int64)
    for g in range(n_groups):
        cols = np.flatnonzero(g_idx == g)
        part = w[:, cols]
        lo, hi = np.minimum(part.min(1), 0), np.maximum(part.max(1), 0)
        if sym:
            amax = np.maximum(-lo, hi)
            s = 2 * amax / maxq
            z = np.full(n_out, (maxq + 1) // 2)
        else:
            s = (hi - lo) / maxq
        s = torch.tensor(np.maximum(s, 1e-6)).to(scale_dtype).float().numpy()
        if not sym:
            z = np.clip(np.round(-lo / s), zero_floor, maxq).astype(np.int64)
        scales[:, g], zeros[:, g] = s, z
        q[:, cols] = np.clip(np.round(part / s[:, None]) + z[:, None], 0, maxq)
    return q, scales, zeros


def dequantized(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, g_idx: np.ndarray):
    """s * (q - z), per element's group, in float32."""
    s, z = scales[:, g_idx], zeros[:, g_idx]
    return (s * (q - z).astype(np.float32)).astype(np.float32)


# ---------------------------------------------------------------- GPTQ (AutoGPTQ)


def gptq_pack_rows(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's QuantLinear.pack, qweight part: values (in x out) packed down the rows."""
    intweight = intweight.astype(np.uint32)
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = 0
    row = 0
    while row < qweight.shape[0]:
        if bits in [2, 4, 8]:
            for j in range(i, i + (32 // bits)):
                qweight[row] |= intweight[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        elif bits == 3:
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << 30
            row += 1
            qweight[row] |= (intweight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << 31
            row += 1
            qweight[row] |= (intweight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight


def pack_gptq(
    w: np.ndarray, bits: int, group: int, *, act_order: bool, fmt: str, sym: bool, seed: int = 0
) -> Packed:
    """`fmt` "gptq": zero points stored minus one (AutoGPTQ); "gptq_v2": as they are."""
    import torch

    n_in = w.shape[1]
    order = np.random.default_rng(seed).permutation(n_in) if act_order else np.arange(n_in)
    g_idx = np.empty(n_in, np.int64)
    g_idx[order] = np.arange(n_in) // group  # rows quantized in `order`, group by group
    n_groups = -(-n_in // group)
    floor = 1 if fmt == "gptq" else 0
    q, scales, zeros = minmax(w, bits, g_idx, n_groups, sym, torch.float16, floor)
    stored_zeros = zeros - (1 if fmt == "gptq" else 0)
    tensors = {
        "qweight": gptq_pack_rows(q.T, bits).view(np.int32),
        # AutoGPTQ runs the same loop along qzeros' columns (groups x out): the transpose
        "qzeros": gptq_pack_rows(stored_zeros, bits).T.copy().view(np.int32),
        "scales": scales.T.astype(np.float16),
        "g_idx": g_idx.astype(np.int32),
    }
    return Packed(_torch(tensors), dequantized(q, scales, zeros, g_idx))


# ---------------------------------------------------------------- AWQ (AutoAWQ GEMM)

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_pack(intweight: np.ndarray) -> np.ndarray:
    """AutoAWQ's WQLinear_GEMM.from_linear packing: values (rows x out), 4-bit, along rows."""
    intweight = intweight.astype(np.uint32)
    pack_num = 32 // 4
    qweight = np.zeros((intweight.shape[0], intweight.shape[1] // 32 * 4), dtype=np.uint32)
    for col in range(intweight.shape[1] // pack_num):
        for i in range(pack_num):
            qweight_col = intweight[:, col * pack_num + AWQ_ORDER[i]]
            qweight[:, col] |= qweight_col << (i * 4)
    return qweight


def pack_awq(w: np.ndarray, group: int) -> Packed:
    import torch

    n_in = w.shape[1]
    g_idx = np.arange(n_in) // group
    q, scales, zeros = minmax(w, 4, g_idx, -(-n_in // group), False, torch.float16)
    tensors = {
        "qweight": awq_pack(q.T).view(np.int32),
        "qzeros": awq_pack(zeros.T).view(np.int32),
        "scales": scales.T.astype(np.float16),
    }
    return Packed(_torch(tensors), dequantized(q, scales, zeros, g_idx))


# ---------------------------------------------------------------- compressed-tensors


def pack_to_int32(value: np.ndarray, num_bits: int, packed_dim: int = 1) -> np.ndarray:
    """compressed-tensors' pack_to_int32 as its releases before 0.20 wrote it (numpy):
    signed values, offset to unsigned, 32 // num_bits a word along `packed_dim`, the last
    word padded. (0.20 packs a stream of bits instead; its own compressor is tested too.)"""
    if packed_dim == 0:
        value = value.T
    offset = pow(2, num_bits) // 2
    value = (value + offset).astype(np.uint32)
    pack_factor = 32 // num_bits
    packed_size = -(-value.shape[1] // pack_factor)
    padding = packed_size * pack_factor - value.shape[1]
    value = np.pad(value, pad_width=[(0, 0), (0, padding)], constant_values=0)
    packed = np.zeros((value.shape[0], packed_size), dtype=np.uint32)
    for i in range(pack_factor):
        packed |= value[:, i::pack_factor] << num_bits * i
    packed = packed.view(np.int32)
    return packed.T.copy() if packed_dim == 0 else packed


def pack_compressed(
    w: np.ndarray, bits: int, strategy: str, group: int = 0, *, sym: bool, act_order: bool = False
) -> Packed:
    """pack-quantized: int values in bits, scales in bfloat16 by group or row (channel)."""
    import torch

    n_in = w.shape[1]
    group = group if strategy == "group" else n_in
    order = np.random.default_rng(1).permutation(n_in) if act_order else np.arange(n_in)
    g_idx = np.empty(n_in, np.int64)
    g_idx[order] = np.arange(n_in) // group
    q, scales, zeros = minmax(w, bits, g_idx, -(-n_in // group), sym, torch.bfloat16)
    offset = 1 << (bits - 1)
    tensors: dict[str, Any] = {
        "weight_packed": pack_to_int32(q - offset, bits),
        "weight_shape": np.array(w.shape, np.int64),
        "weight_scale": torch.tensor(scales).to(torch.bfloat16),
    }
    if not sym:
        tensors["weight_zero_point"] = pack_to_int32(zeros - offset, bits, packed_dim=0)
    if act_order:
        tensors["weight_g_idx"] = g_idx.astype(np.int32)
    return Packed(_torch(tensors), dequantized(q, scales, zeros, g_idx))


def pack_int8(w: np.ndarray, *, sym: bool) -> Packed:
    """int-quantized: int8 values as they are, a float32 scale per row (channel)."""
    import torch

    g_idx = np.zeros(w.shape[1], np.int64)
    q, scales, zeros = minmax(w, 8, g_idx, 1, sym, torch.float32)
    tensors: dict[str, Any] = {"weight": (q - 128).astype(np.int8), "weight_scale": scales}
    if not sym:
        tensors["weight_zero_point"] = (zeros - 128).astype(np.int8)
    return Packed(_torch(tensors), dequantized(q, scales, zeros, g_idx))


# ---------------------------------------------------------------- FP8


def pack_fp8(w: np.ndarray, block: tuple[int, int] | None, scale_name: str) -> Packed:
    """float8_e4m3fn values (torch's rounding) and float32 scales: one per block (as
    DeepSeek-V3's weight_scale_inv), or one per row without a block (compressed-tensors)."""
    import torch

    rows, cols = block or (1, w.shape[1])
    grid = (-(-w.shape[0] // rows), -(-w.shape[1] // cols))
    scale = np.zeros(grid, np.float32)
    for i in range(grid[0]):
        for j in range(grid[1]):
            part = w[i * rows : (i + 1) * rows, j * cols : (j + 1) * cols]
            scale[i, j] = max(float(np.abs(part).max()), 1e-6) / 448.0
    full = np.repeat(np.repeat(scale, rows, 0), cols, 1)[: w.shape[0], : w.shape[1]]
    fp8 = torch.tensor(w / full).to(torch.float8_e4m3fn)
    values = (fp8.float().numpy() * full).astype(np.float32)
    return Packed({"weight": fp8, scale_name: torch.tensor(scale)}, values)


# ---------------------------------------------------------------- checkpoints


def _torch(tensors: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {
        k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in tensors.items()
    }


def float_twin(ckpt: Path) -> Path:
    """Where `quantized_checkpoint` puts the float checkpoint: a folder of the same name (so
    that a conversion of each, named after its folder, is the same file, byte for byte)."""
    return ckpt / "float" / ckpt.name


def quantized_checkpoint(
    src: Path,
    out: Path,
    pack: Callable[[np.ndarray], Packed],
    qconfig: dict[str, Any],
) -> Path:
    """`src` with every linear weight packed by `pack`, as `out`; and `float_twin(out)`,
    the same checkpoint with the packed values as float32 weights. Returns `out`."""
    import torch
    from safetensors.torch import load_file, save_file

    plain = float_twin(out)
    plain.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != ".done":
            shutil.copy(f, out / f.name)
            shutil.copy(f, plain / f.name)
    tensors = load_file(src / "model.safetensors")
    packed_tensors, float_tensors = {}, {}
    for name, t in tensors.items():
        layer = name.removesuffix(".weight")
        if name.endswith(".weight") and layer.rsplit(".", 1)[-1] in LINEAR:
            p = pack(t.float().numpy())
            for suffix, part in p.tensors.items():
                packed_tensors[f"{layer}.{suffix}"] = part.contiguous()
            float_tensors[name] = torch.from_numpy(p.values)
        else:
            packed_tensors[name] = float_tensors[name] = t
    save_file(packed_tensors, out / "model.safetensors", metadata={"format": "pt"})
    save_file(float_tensors, plain / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "quantization_config": qconfig}))
    return out
