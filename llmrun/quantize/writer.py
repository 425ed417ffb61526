"""A GGUF file written tensor by tensor, never holding the model in memory.

gguf-py's GGUFWriter keeps every tensor until it writes them all. We use it for
what it is good at (header, metadata, the tensor table, padding), declaring each
tensor up front with `add_tensor_info`, and then stream the data ourselves: each
tensor is memory-mapped from the checkpoint, converted in chunks of rows and
written, so peak memory is about one chunk plus the pages of one tensor.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFValueType, GGUFWriter
from gguf import GGMLQuantizationType as QT

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import TensorPlan
from llmrun.quantize.checkpoint import DTYPES, to_f32
from llmrun.quantize.progress import QuantizeProgress
from llmrun.quantize.types import QuantType

CHUNK_ELEMENTS = 1 << 22  # values converted at a time: 16 MiB as float32

# Small 2-D tensors that llama.cpp's converter and quantizer both keep in F32.
ROUTERS_AND_POSITIONS = (
    gguf.MODEL_TENSOR.FFN_GATE_INP,
    gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP,
    gguf.MODEL_TENSOR.POS_EMBD,
    gguf.MODEL_TENSOR.TOKEN_TYPES,  # BERT's: llama.cpp adds a row of it to F32 activations
    gguf.MODEL_TENSOR.V_ENC_EMBD_POS,  # a vision tower's (projector.py)
    gguf.MODEL_TENSOR.SHORTCONV_CONV,  # LFM2's kernels: llama.cpp's ssm_conv takes F32 only
)
Rule = tuple[str, Callable[[TensorPlan], bool]]
# Tensors that stay F32 whatever type was asked for, and why: llama.cpp's kernels
# for these take F32, and they are a tiny part of the model.
KEEP_F32: tuple[Rule, ...] = (
    ("1-D: norms, biases, rope factors", lambda p: len(p.shape) <= 1),
    ("norm weights", lambda p: p.name.endswith("_norm.weight")),
)
# ... and those that stay F32 unless their family fixes their type (TensorPlan.fixed_type),
# as llama.cpp's converter orders its rules.
DEFAULT_F32: tuple[Rule, ...] = (
    # (a LoRA adapter's halves of a weight, *.lora_a and *.lora_b, are weights too)
    ("anything but a weight", lambda p: not p.name.endswith((".weight", ".lora_a", ".lora_b"))),
    (
        "routers (and the shared expert's gate), position and token-type tables, convolution"
        " kernels",
        lambda p: p.kind in ROUTERS_AND_POSITIONS,
    ),
)
# When rows are not a whole number of blocks of the asked type.
FALLBACK_TYPE = QT.F16
# Checkpoint dtype -> the GGUF type that is the same bytes (copied without conversion).
SAME_BYTES = {"F32": QT.F32, "F16": QT.F16, "BF16": QT.BF16}


class _Writer(GGUFWriter):
    """GGUFWriter that packs long metadata arrays (the vocabulary, merges) in one go.

    The stock writer packs a 50k-token vocabulary item by item with struct: a
    second or more per file. Same bytes; little-endian only, as we write.
    """

    def _pack_val(
        self, val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None
    ) -> bytes:
        if vtype != GGUFValueType.ARRAY or len(val) < 256 or isinstance(val, bytes):
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        first = type(val[0])
        if not all(type(v) is first for v in val):
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        if first is str:
            items = [v.encode("utf-8") for v in val]
            body = b"".join(struct.pack("<Q", len(b)) + b for b in items)
            ltype = GGUFValueType.STRING
        elif first in _NUMPY_ITEMS:
            ltype, dtype = _NUMPY_ITEMS[first]
            body = np.asarray(val, dtype=dtype).tobytes()
        else:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        head = struct.pack("<I", vtype) if add_vtype else b""
        return head + struct.pack("<IQ", ltype, len(val)) + body


# Python item type of a metadata array -> (GGUF type, numpy dtype), as gguf-py chooses.
_NUMPY_ITEMS: dict[type, tuple[GGUFValueType, str]] = {
    int: (GGUFValueType.INT32, "<i4"),
    float: (GGUFValueType.FLOAT32, "<f4"),
}


def tensor_type(plan: TensorPlan, want: QT) -> QT:
    if plan.raw_type is not None:
        return plan.raw_type
    if any(rule(plan) for _, rule in KEEP_F32):
        return QT.F32
    if plan.fixed_type is not None:
        want = plan.fixed_type(want)
    elif any(rule(plan) for _, rule in DEFAULT_F32):
        return QT.F32
    block = GGML_QUANT_SIZES[want][0]
    return want if plan.shape[-1] % block == 0 else FALLBACK_TYPE


def nbytes(shape: tuple[int, ...], qtype: QT) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def write_gguf(
    path: Path,
    arch: str,
    add_metadata: Callable[[GGUFWriter], None],
    plans: list[TensorPlan],
    qtype: QuantType,
    progress: QuantizeProgress,
    adapter: bool = False,
) -> None:
    """Write a complete GGUF file at `path` (the caller makes that atomic).

    `adapter`: a LoRA adapter, written as llama.cpp's convert_lora_to_gguf.py writes one:
    no general.file_type, and a quantization version whatever the type.
    """
    assert qtype.tensor_type is not None, f"{qtype.name} is not written directly"
    w = _Writer(path=None, arch=arch)
    add_metadata(w)
    if not adapter:
        w.add_file_type(int(file_type(plans, qtype)))
    if adapter or qtype.tensor_type not in (QT.F32, QT.F16, QT.BF16):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types = [tensor_type(p, qtype.tensor_type) for p in plans]
    for plan, t in zip(plans, types, strict=True):
        _check_source(plan)
        w.add_tensor_info(plan.name, plan.shape, np.dtype(np.float32), nbytes(plan.shape, t), t)
    progress.start(len(plans), sum(nbytes(p.shape, t) for p, t in zip(plans, types, strict=True)))
    try:
        w.open_output_file(Path(path))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None and len(w.fout) == 1
        out = w.fout[0]
        w.write_padding(out, out.tell())
        for plan, t in zip(plans, types, strict=True):
            written = 0
            for chunk in _chunks(plan, t):
                out.write(memoryview(chunk).cast("B"))  # unlike tofile, keeps the errno
                written += chunk.nbytes
                progress.advance(0, chunk.nbytes)
            assert written == nbytes(plan.shape, t), plan.name
            w.write_padding(out, written)
            progress.advance(1, 0)
        out.flush()
    finally:
        w.close()
        progress.end()


def file_type(plans: list[TensorPlan], qtype: QuantType) -> gguf.LlamaFileType:
    """general.file_type: the asked type's, or MXFP4-MoE when MXFP4 experts are kept in a
    float file, as llama.cpp's converter says."""
    kept = any(p.raw_type == QT.MXFP4 for p in plans)
    if kept and qtype.tensor_type in (QT.F32, QT.F16, QT.BF16):
        return gguf.LlamaFileType.MOSTLY_MXFP4_MOE
    return qtype.ftype


def _check_source(plan: TensorPlan) -> None:
    if plan.read is not None:  # reads its (packed) inputs itself
        return
    for src in plan.inputs:
        if src.dtype not in DTYPES:
            raise BadInput(
                f"tensor {src.name} is {src.dtype}: not a float tensor llmrun can convert",
                "a pre-quantized checkpoint needs config.json's quantization_config "
                "(GPTQ, AWQ, compressed-tensors and FP8 are read); else convert the original",
            )


def _chunks(plan: TensorPlan, qtype: QT) -> Iterator[np.ndarray]:
    """The tensor's bytes in `qtype`, a few rows at a time."""
    row = plan.shape[-1] if plan.shape else 1
    if plan.raw_type is not None:
        assert plan.read is not None and qtype == plan.raw_type, plan.name
        for raw in plan.read():
            yield np.ascontiguousarray(raw, dtype=np.uint8)
        return
    for array, stored in _arrays(plan):
        if plan.layout is not None:
            array = plan.layout(array)
        array = array.reshape(1, -1) if array.ndim <= 1 else array
        step = max(1, CHUNK_ELEMENTS // max(1, int(np.prod(array.shape[1:]))))
        copy = plan.values is None and SAME_BYTES.get(stored) == qtype
        for i in range(0, array.shape[0], step):
            part = array[i : i + step]
            if copy:
                yield np.ascontiguousarray(part)
                continue
            values = to_f32(part, stored)
            if plan.values is not None:
                values = plan.values(values)
            yield gguf.quants.quantize(values.reshape(-1, row), qtype)


def _arrays(plan: TensorPlan) -> Iterator[tuple[np.ndarray, str]]:
    """Arrays whose C orders, one after the other, are the tensor's, each with its dtype.

    Stacked parts are mapped one at a time, so a layer's experts are never all in memory.
    """
    if plan.data is not None:
        yield plan.data, "F32"
        return
    if plan.read is not None:
        for values in plan.read():
            yield values, "F32"
        return
    assert plan.inputs, plan.name
    for src in plan.inputs:
        yield src.array(), src.dtype
