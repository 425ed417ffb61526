"""AutoAWQ's GEMM packing (quant_method "awq", version "gemm"): qweight, qzeros, scales.

- `qweight`: int32, in_features rows by out_features / 8 columns, the transpose of the
  weight with eight 4-bit values a word along each row, in AutoAWQ's interleaved order:
  nibble i of a word (lowest first) holds column ORDER[i] of its eight.
- `qzeros`: int32, one row per group of group_size input rows, packed the same way; the
  zero points are stored as they are.
- `scales`: float16, one row per group.

W[o, i] = (q[i, o] - zero[i // group_size, o]) * scales[i // group_size, o], in float32.
AutoAWQ's other packings (GEMV, GEMV-fast, Marlin) are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from llmrun.errors import BadInput
from llmrun.quantize.checkpoint import SourceTensor
from llmrun.quantize.imports.base import (
    Arrays,
    Packing,
    Scheme,
    check_dtype,
    check_shape,
    setting,
    unpack,
)

BITS = 4
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
UNORDER = np.argsort(ORDER)  # column p of eight is nibble UNORDER[p]
VERSIONS = ("gemm",)
ROWS_AT_ONCE = 2048  # input rows decoded at a time


def scheme(qconfig: dict[str, Any]) -> Scheme:
    bits = int(setting(qconfig, "bits", "w_bit"))
    version = str(setting(qconfig, "version", default="gemm")).lower()
    if version not in VERSIONS:
        raise BadInput(
            f"AWQ's {version.upper()} packing is not supported (only GEMM)",
            "convert a GEMM release of the model, or the unquantized one",
        )
    if bits != BITS:
        raise BadInput(f"AWQ with {bits} bits is not supported (only {BITS})")
    group = int(setting(qconfig, "group_size", "q_group_size"))
    packing = Packing(
        key=".qweight",
        parts={"qweight": ".qweight", "qzeros": ".qzeros", "scales": ".scales"},
        output=".weight",
        shape=partial(_shape, group),
        decode=partial(_decode, group),
    )
    return Scheme(f"AWQ {bits}-bit (GEMM, groups of {group})", (packing,))


def _shape(group: int, parts: Mapping[str, SourceTensor]) -> tuple[int, ...]:
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    for t in (qweight, qzeros):
        check_dtype(t, ("I32",), "AWQ")
    if len(qweight.shape) != 2:
        raise BadInput(f"tensor {qweight.name} is {qweight.shape}: not AWQ words")
    n_in, n_out = qweight.shape[0], qweight.shape[1] * 32 // BITS
    n_groups = -(-n_in // group) if group > 0 else 1
    check_shape(scales, (n_groups, n_out), f"{n_in} input rows in groups of {group}")
    check_shape(qzeros, (n_groups, qweight.shape[1]), f"{n_out} zero points a row")
    return (n_out, n_in)


def _columns(words: np.ndarray) -> np.ndarray:
    """Packed rows as their values, columns in order."""
    nibbles = unpack(words, BITS, axis=1, stream=False)
    rows = nibbles.shape[0]
    return nibbles.reshape(rows, -1, len(ORDER))[:, :, UNORDER].reshape(rows, -1)


def _decode(group: int, a: Arrays) -> np.ndarray:
    qweight, scales = a["qweight"], a["scales"]
    n_in, n_out = qweight.shape[0], qweight.shape[1] * 32 // BITS
    zeros = _columns(a["qzeros"]).astype(np.int16)
    out = np.empty((n_out, n_in), np.float32)
    for r0 in range(0, n_in, ROWS_AT_ONCE):
        q = _columns(qweight[r0 : r0 + ROWS_AT_ONCE]).astype(np.int16)
        rows = np.arange(r0, r0 + q.shape[0])
        g = rows // group if group > 0 else np.zeros_like(rows)
        out[:, r0 : r0 + q.shape[0]] = ((q - zeros[g]).astype(np.float32) * scales[g]).T
    return out
