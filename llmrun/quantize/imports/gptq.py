"""GPTQ (AutoGPTQ, GPTQModel, Optimum; quant_method "gptq"): qweight, qzeros, scales, g_idx.

- `qweight`: int32, in_features * bits / 32 rows by out_features columns, the transpose
  of the weight: each column's values run down its words, lowest bits first; at 3 bits
  a value may straddle two words (32 values in 3 words).
- `qzeros`: int32, one row per group, its zero points packed the same way along the row.
- `scales`: float16, one row per group. `g_idx`: each input row's group. With act-order
  (desc_act) the rows were quantized out of order, so the groups are a permutation;
  without it, row // group_size (g_idx may then be absent).
- AutoGPTQ's format (checkpoint_format "gptq") stores each zero point minus one;
  GPTQModel's "gptq_v2" stores it as it is.

W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o]), in float32 as llama.cpp's
converter computes it.
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
    period,
    setting,
    unpack,
)

BITS = (2, 3, 4, 8)
# checkpoint_format -> what was subtracted from each zero point when it was stored
ZERO_OFFSET = {"gptq": 1, "gptq_v2": 0}
ROWS_AT_ONCE = 2048  # input rows decoded at a time


def scheme(qconfig: dict[str, Any]) -> Scheme:
    bits = int(setting(qconfig, "bits"))
    if bits not in BITS:
        raise BadInput(f"GPTQ with {bits} bits is not supported ({', '.join(map(str, BITS))} are)")
    fmt = str(setting(qconfig, "checkpoint_format", "format", default="gptq")).lower()
    if fmt not in ZERO_OFFSET:
        raise BadInput(
            f"GPTQ's {fmt!r} packing is not supported (only {' and '.join(ZERO_OFFSET)})",
            "convert a release in the gptq format, or the unquantized one",
        )
    group = int(setting(qconfig, "group_size", default=-1))
    packing = Packing(
        key=".qweight",
        parts={"qweight": ".qweight", "qzeros": ".qzeros", "scales": ".scales"},
        optional={"g_idx": ".g_idx"},
        output=".weight",
        shape=partial(_shape, bits, group),
        decode=partial(_decode, bits, group, ZERO_OFFSET[fmt]),
    )
    groups = f"groups of {group}" if group > 0 else "one group a row"
    act_order = ", act-order" if qconfig.get("desc_act") else ""
    return Scheme(f"GPTQ {bits}-bit ({fmt}, {groups}{act_order})", (packing,))


def _shape(bits: int, group: int, parts: Mapping[str, SourceTensor]) -> tuple[int, ...]:
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    for t in (qweight, qzeros):
        check_dtype(t, ("I32",), "GPTQ")
    if len(qweight.shape) != 2 or qweight.shape[0] * 32 % bits:
        raise BadInput(f"tensor {qweight.name} is {qweight.shape}: not {bits}-bit GPTQ words")
    n_in, n_out = qweight.shape[0] * 32 // bits, qweight.shape[1]
    n_groups = -(-n_in // group) if group > 0 else 1
    check_shape(scales, (n_groups, n_out), f"{n_in} input rows in groups of {group}")
    check_shape(qzeros, (n_groups, n_out * bits // 32), f"{n_out} {bits}-bit zero points a row")
    if "g_idx" in parts:
        check_shape(parts["g_idx"], (n_in,), "a group for each input row")
    return (n_out, n_in)


def _decode(bits: int, group: int, offset: int, a: Arrays) -> np.ndarray:
    qweight, scales = a["qweight"], a["scales"]
    n_in, n_out = qweight.shape[0] * 32 // bits, qweight.shape[1]
    zeros = unpack(a["qzeros"], bits, axis=1, stream=True)[:, :n_out].astype(np.int16) + offset
    if "g_idx" in a:
        g_idx = np.asarray(a["g_idx"], np.int64)
    else:
        g_idx = np.arange(n_in) // group if group > 0 else np.zeros(n_in, np.int64)
    if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= scales.shape[0]):
        raise BadInput(f"GPTQ g_idx names a group outside 0..{scales.shape[0] - 1}")
    out = np.empty((n_out, n_in), np.float32)
    words, rows = period(bits, stream=True)
    step = words * max(1, ROWS_AT_ONCE // rows)
    for w0 in range(0, qweight.shape[0], step):
        q = unpack(qweight[w0 : w0 + step], bits, axis=0, stream=True).astype(np.int16)
        r0 = w0 * 32 // bits
        g = g_idx[r0 : r0 + q.shape[0]]
        out[:, r0 : r0 + q.shape[0]] = (scales[g] * (q - zeros[g]).astype(np.float32)).T
    return out
