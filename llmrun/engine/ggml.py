"""ggml's graph nodes as llama.cpp hands them to an eval callback: read through ctypes.

`struct ggml_tensor` (ggml.h) is laid out below field for field; llama-cpp-python binds
the callback type but not the struct. An eval callback (`Model(..., eval_callback=)`) gets
each node's address; a node's data may live on a GPU: `values` copies it with
ggml_backend_tensor_get when its buffer is not in host memory.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import numpy as np

from llmrun.engine import system

MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_SRC = 10  # GGML_MAX_SRC
MAX_OP_PARAMS = 64  # GGML_MAX_OP_PARAMS, in bytes
MAX_NAME = 64  # GGML_MAX_NAME

# enum ggml_type values of the node types we read (stable since ggml's first GGUF release).
TYPE_F32 = 0
TYPE_I32 = 26
DTYPES = {TYPE_F32: np.float32, TYPE_I32: np.int32}


class Tensor(ctypes.Structure):
    """struct ggml_tensor (ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * MAX_DIMS),  # elements per dimension, innermost first
        ("nb", ctypes.c_size_t * MAX_DIMS),  # strides in bytes
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def tensor_at(address: int) -> Tensor:
    """The struct at `address` (no copy: valid only during the callback)."""
    return Tensor.from_address(address)


def source(t: Tensor, i: int) -> Tensor | None:
    address = t.src[i]
    return Tensor.from_address(address) if address else None


def name(t: Tensor) -> str:
    return t.name.decode("utf-8", errors="replace")


@cache
def op_id(op_name: str) -> int:
    """The enum ggml_op value of an op ("MUL_MAT"), asked of this ggml build by name."""
    for i in range(1, 256):  # the matrix products come early in the enum: no overrun
        if _fn("ggml_op_name")(i) == op_name.encode():
            return i
    raise RuntimeError(f"this ggml build has no op {op_name}")


def values(t: Tensor) -> np.ndarray:
    """A copy of the node's data as an array of shape (ne[3], ne[2], ne[1], ne[0])."""
    dtype = DTYPES[t.type]
    itemsize = np.dtype(dtype).itemsize
    if t.nb[0] != itemsize:
        raise ValueError(f"{name(t)}: elements are not contiguous (nb[0] = {t.nb[0]})")
    shape = tuple(t.ne[i] for i in reversed(range(MAX_DIMS)))
    strides = tuple(t.nb[i] for i in reversed(range(MAX_DIMS)))
    nbytes = itemsize + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if _in_host_memory(t):
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(t.data))
    else:  # on a device: one copy to the host first
        raw = np.empty(nbytes, dtype=np.uint8)
        _fn("ggml_backend_tensor_get")(ctypes.addressof(t), raw.ctypes.data, 0, nbytes)
    view = np.lib.stride_tricks.as_strided(raw.view(dtype), shape=shape, strides=strides)
    return np.array(view)  # a copy: the node's memory is reused once the callback returns


def _in_host_memory(t: Tensor) -> bool:
    return not t.buffer or bool(_fn("ggml_backend_buffer_is_host")(t.buffer))


@cache
def _fn(symbol: str) -> Any:
    fn = system.bind(symbol)
    if fn is None:
        raise RuntimeError(f"this llama.cpp build does not export {symbol}")
    return fn
