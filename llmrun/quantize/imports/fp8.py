"""FP8 checkpoints (quant_method "fp8": DeepSeek-V3's, Qwen3's -FP8, transformers' fine-grained
FP8): each weight float8_e4m3fn, with `weight_scale_inv`, float32 scales one per block of
weight_block_size (128 x 128 as released; the last block of a row or column may be cut
short), or one per tensor without a block size.

W = weight * weight_scale_inv, in float32: despite its name the scale multiplies (it is
the inverse of the one the quantizer divided by), as llama.cpp's converter reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from llmrun.quantize.checkpoint import SourceTensor
from llmrun.quantize.imports.base import (
    FLOAT8,
    Arrays,
    Packing,
    Scheme,
    check_blocks,
    check_dtype,
    expand,
)


def scheme(qconfig: dict[str, Any]) -> Scheme:
    block = tuple(int(n) for n in qconfig.get("weight_block_size") or ())
    packing = Packing(
        key=".weight_scale_inv",
        parts={"weight": ".weight", "scale": ".weight_scale_inv"},
        output=".weight",
        shape=partial(_shape, block),
        decode=partial(_decode, block),
    )
    blocks = f"blocks of {' x '.join(map(str, block))}" if block else "one scale a tensor"
    return Scheme(f"FP8 ({blocks})", (packing,))


def _shape(block: tuple[int, ...], parts: Mapping[str, SourceTensor]) -> tuple[int, ...]:
    weight = parts["weight"]
    check_dtype(weight, tuple(FLOAT8), "FP8")
    check_blocks(parts["scale"], weight.shape, block)
    return weight.shape


def _decode(block: tuple[int, ...], a: Arrays) -> np.ndarray:
    weight = a["weight"]
    return weight * expand(a["scale"], weight.shape, block)
