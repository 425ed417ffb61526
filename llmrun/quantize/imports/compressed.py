"""compressed-tensors checkpoints (quant_method "compressed-tensors", as LLM Compressor
writes them: W4A16, W8A16, W8A8, FP8...), by format:

- pack-quantized: `weight_packed`, int32, the values of each row lowest bits first, each
  stored plus 2**(num_bits - 1): as one stream of bits (compressed-tensors 0.20, values
  straddling words at 3, 5, 6 or 7 bits) or 32 // num_bits a word, spare top bits unused
  (older releases), told apart by the row's length in words, the same at 2, 4 and 8 bits;
  `weight_shape`, the weight's shape (the last word of a row may be padding);
  `weight_scale`; for asymmetric schemes `weight_zero_point`, packed the same way down
  the columns (int8 as it is, in older files); with act-order, `weight_g_idx`.
- int-quantized and naive-quantized: `weight` as int8 values, scales as above.
- float-quantized: `weight` as float8 (FP8 per tensor, per row or per block).

Scales by strategy: one per tensor, per row (channel), per group of group_size columns,
or per block of block_structure. W = (q - zero) * scale, in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np

from llmrun.errors import BadInput
from llmrun.quantize.checkpoint import SourceTensor
from llmrun.quantize.imports.base import (
    FLOAT8,
    Arrays,
    Packing,
    Scheme,
    check_blocks,
    check_dtype,
    check_shape,
    expand,
    scalar_ints,
    unpack,
)

# strategy -> the block of the weight that one scale covers (an axis of 1 in the scale: all)
STRATEGIES: dict[str, Callable[[dict[str, Any]], tuple[int, ...]]] = {
    "tensor": lambda w: (1, 1),
    "channel": lambda w: (1, 1),
    "group": lambda w: (1, int(w["group_size"])),
    "block": lambda w: tuple(int(n) for n in w["block_structure"]),
}


def scheme(qconfig: dict[str, Any]) -> Scheme:
    sparsity = qconfig.get("sparsity_config") or {}
    if sparsity.get("format") not in (None, "dense"):
        raise BadInput(f"sparse compressed-tensors ({sparsity['format']}) are not supported")
    groups = [g for g in (qconfig.get("config_groups") or {}).values() if isinstance(g, dict)]
    weights, fmt = _weights(groups), _format(qconfig, groups)
    if fmt not in FORMATS:
        raise BadInput(
            f"compressed-tensors' {fmt!r} format is not supported ({', '.join(FORMATS)} are)",
            "convert the model's unquantized (BF16/F16) release instead",
        )
    strategy = str(weights.get("strategy") or "tensor")
    if strategy not in STRATEGIES:
        raise BadInput(f"compressed-tensors' {strategy!r} strategy is not supported")
    block = STRATEGIES[strategy](weights)
    bits = int(weights.get("num_bits") or 8)
    what = f"{bits}-bit {weights.get('type') or 'int'}, per {strategy}"
    if strategy == "group":
        what += f" of {block[1]}"
    return Scheme(f"compressed-tensors {fmt} ({what})", (FORMATS[fmt](bits, block),))


def _weights(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The weights' settings: one set, however many config groups share it."""
    found = [g["weights"] for g in groups if isinstance(g.get("weights"), dict)]
    if not found:
        raise BadInput("config.json: compressed-tensors' config_groups quantize no weights")
    if any(w != found[0] for w in found):
        raise BadInput("compressed-tensors with weights quantized two ways are not supported")
    return found[0]


def _format(qconfig: dict[str, Any], groups: list[dict[str, Any]]) -> str:
    """The format of every weight: the checkpoint's, or its groups' one when "mixed"."""
    fmt = qconfig.get("format")
    if fmt not in (None, "mixed-precision"):
        return str(fmt)
    formats = {g.get("format") for g in groups} - {None}
    if len(formats) != 1:
        raise BadInput("compressed-tensors in several formats are not supported")
    return str(formats.pop())


# ---------------------------------------------------------------- pack-quantized


def packed(bits: int, block: tuple[int, ...]) -> Packing:
    return Packing(
        key=".weight_packed",
        parts={"packed": ".weight_packed", "scale": ".weight_scale", "shape": ".weight_shape"},
        optional={"zero_point": ".weight_zero_point", "g_idx": ".weight_g_idx"},
        output=".weight",
        shape=partial(_packed_shape, bits, block),
        decode=partial(_packed_decode, bits, block),
    )


def _packed_shape(
    bits: int, block: tuple[int, ...], parts: Mapping[str, SourceTensor]
) -> tuple[int, ...]:
    w = parts["packed"]
    check_dtype(w, ("I32",), "pack-quantized")
    shape = scalar_ints(parts["shape"])
    stream = _stream(w.shape[-1], shape[-1], bits) if len(shape) >= 2 else None
    if stream is None or w.shape[:-1] != shape[:-1]:
        raise BadInput(f"tensor {w.name} is {w.shape}: not a {shape} weight of {bits}-bit values")
    zero = parts.get("zero_point")
    if zero is not None and zero.dtype == "I32":  # packed down the columns, as the weight
        want = (_words(shape[-2], bits, stream), parts["scale"].shape[-1])
        check_shape(zero, (*shape[:-2], *want), f"{bits}-bit zero points of {shape[-2]} rows")
    _check_scales(parts, shape, block)
    return shape


def _words(n: int, bits: int, stream: bool) -> int:
    """How many words hold n values: as one stream, or 32 // bits a word."""
    return -(-n * bits // 32) if stream else -(-n // (32 // bits))


def _stream(words: int, n: int, bits: int) -> bool | None:
    """Whether `words` words hold n values as one stream (compressed-tensors 0.20) or
    32 // bits a word (older releases); None: neither. The same at 2, 4 and 8 bits."""
    for stream in (True, False):
        if words == _words(n, bits, stream):
            return stream
    return None


def _packed_decode(bits: int, block: tuple[int, ...], a: Arrays) -> np.ndarray:
    offset = 1 << (bits - 1)
    shape = tuple(int(n) for n in a["shape"].reshape(-1))
    words = a["packed"]
    stream = bool(_stream(words.shape[-1], shape[-1], bits))
    q = unpack(words, bits, axis=-1, stream=stream)[..., : shape[-1]].astype(np.int16) - offset
    zero = a.get("zero_point")
    if zero is not None and zero.dtype == np.int32:  # packed down the columns, as the weight
        zero = unpack(zero, bits, axis=-2, stream=stream)[..., : shape[-2], :]
        zero = zero.astype(np.int16) - offset
    return _scaled(q, zero, a, block)


# ---------------------------------------------------------------- int8 and float8 values


def stored(bits: int, block: tuple[int, ...]) -> Packing:
    return Packing(
        key=".weight_scale",
        parts={"weight": ".weight", "scale": ".weight_scale"},
        optional={"zero_point": ".weight_zero_point", "g_idx": ".weight_g_idx"},
        output=".weight",
        shape=partial(_stored_shape, block),
        decode=partial(_stored_decode, block),
    )


def _stored_shape(block: tuple[int, ...], parts: Mapping[str, SourceTensor]) -> tuple[int, ...]:
    w = parts["weight"]
    check_dtype(w, ("I8", *FLOAT8), "compressed-tensors")
    _check_scales(parts, w.shape, block)
    return w.shape


def _stored_decode(block: tuple[int, ...], a: Arrays) -> np.ndarray:
    return _scaled(a["weight"], a.get("zero_point"), a, block)


# ---------------------------------------------------------------- both


def _check_scales(
    parts: Mapping[str, SourceTensor], shape: tuple[int, ...], block: tuple[int, ...]
) -> None:
    if "g_idx" in parts:  # one scale per row and group, the groups named column by column
        check_shape(parts["g_idx"], (shape[1],), "a group for each column")
        return
    check_blocks(parts["scale"], shape, block)


def _scaled(
    q: np.ndarray, zero: np.ndarray | None, a: Arrays, block: tuple[int, ...]
) -> np.ndarray:
    """(q - zero) * scale, in float32, each scale and zero point spread over its block."""
    shape = q.shape
    g_idx = a.get("g_idx")
    if q.dtype.kind in "iu":  # int8 values less int8 zero points could overflow
        q = q.astype(np.int16)

    def spread(x: np.ndarray) -> np.ndarray:
        return x[:, np.asarray(g_idx, np.int64)] if g_idx is not None else expand(x, shape, block)

    if zero is not None:
        q = q - spread(zero).astype(q.dtype)
    values = q.astype(np.float32)
    return values * spread(a["scale"])


# format -> how it stores a weight
FORMATS: dict[str, Callable[[int, tuple[int, ...]], Packing]] = {
    "pack-quantized": packed,
    "int-quantized": stored,
    "naive-quantized": stored,
    "float-quantized": stored,
}
