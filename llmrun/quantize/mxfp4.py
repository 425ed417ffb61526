"""MXFP4 (OCP Microscaling, 4-bit E2M1 values with an E8M0 scale per 32) as OpenAI's
gpt-oss checkpoints store it, and as ggml stores it.

A checkpoint's `*_blocks` are rows x n_blocks x 16 bytes, two values a byte (the
earlier in the low nibble), and `*_scales` rows x n_blocks exponents (2^(e-127)).
ggml's block is the exponent byte, then 16 bytes holding value j in the low nibble
of byte j and value j+16 in its high nibble: the same numbers, repacked.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
# E2M1 code -> value
E2M1 = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)


def codes(blocks: np.ndarray) -> np.ndarray:
    """(..., 16) bytes -> (..., 32) 4-bit codes, in value order."""
    return np.stack((blocks & 0x0F, blocks >> 4), axis=-1).reshape(*blocks.shape[:-1], BLOCK)


def to_ggml(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """A checkpoint's blocks and scales as ggml MXFP4 rows: (rows, n_blocks * 17) bytes."""
    c = codes(blocks)
    packed = (c[..., :16] | (c[..., 16:] << 4)).astype(np.uint8)
    out = np.concatenate((scales[..., None].astype(np.uint8), packed), axis=-1)
    return out.reshape(*out.shape[:-2], -1)


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """A checkpoint's blocks and scales as float32 rows: (rows, n_blocks * 32)."""
    exponent = scales.astype(np.int32)[..., None] - 127
    values = np.ldexp(E2M1[codes(blocks)], exponent)
    return values.reshape(*values.shape[:-2], -1)
