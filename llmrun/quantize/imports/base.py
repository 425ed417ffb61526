"""What every import scheme builds on: packed weights found by name, decoded when read.

A scheme describes how it stores one weight as a `Packing`: the tensor that marks a
packed weight (`.qweight`), the tensors beside it, the float tensor it stands for
(`.weight`), that tensor's shape (from the headers alone) and how to decode the parts.
`dequantized` swaps each group of packed tensors for one `Dequantized` tensor, which
the writer reads like any other: decoded to float32 when written, one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrun.errors import BadInput
from llmrun.quantize.checkpoint import DTYPES, SourceTensor, to_f32

# Tensors of activation and KV-cache quantization: no part of the weights, never written.
ACTIVATION_SUFFIXES = (
    ".input_scale",
    ".input_zero_point",
    ".output_scale",
    ".activation_scale",
    ".k_scale",
    ".v_scale",
)

Arrays = Mapping[str, np.ndarray]  # role -> its values (floats as float32, integers as stored)


@dataclass(frozen=True)
class Packing:
    """How a scheme stores one weight."""

    key: str  # suffix of the tensor that marks a packed weight
    parts: Mapping[str, str]  # role -> suffix of a tensor that must be there
    output: str  # suffix of the float tensor it stands for
    shape: Callable[[Mapping[str, SourceTensor]], tuple[int, ...]]
    decode: Callable[[Arrays], np.ndarray]
    optional: Mapping[str, str] = field(default_factory=dict)  # role -> suffix, when present
    dropped: tuple[str, ...] = ACTIVATION_SUFFIXES  # suffixes of tensors left out


@dataclass(frozen=True)
class Scheme:
    """A checkpoint's quantization, as one scheme module reads its quantization_config."""

    description: str  # for the user: "GPTQ 4-bit (gptq, groups of 128, act-order)"
    packings: tuple[Packing, ...]


@dataclass(frozen=True)
class Dequantized(SourceTensor):
    """A weight stored packed, decoded to float32 when read (like any tensor, when written)."""

    parts: tuple[tuple[str, SourceTensor], ...] = ()
    decode: Callable[[Arrays], np.ndarray] | None = None

    def array(self) -> np.ndarray:
        assert self.decode is not None
        out = self.decode({role: values(t) for role, t in self.parts})
        assert out.shape == self.shape and out.dtype == np.float32, self.name
        return out


def dequantized(tensors: dict[str, SourceTensor], packing: Packing) -> dict[str, SourceTensor]:
    """`tensors` with every packed weight replaced by its Dequantized float tensor."""
    out = dict(tensors)
    for name in [n for n in tensors if n.endswith(packing.key)]:
        base = name[: -len(packing.key)]
        parts = {role: _part(tensors, base, suffix, name) for role, suffix in packing.parts.items()}
        for role, suffix in packing.optional.items():
            if base + suffix in tensors:
                parts[role] = tensors[base + suffix]
        for t in parts.values():
            out.pop(t.name, None)
        target = base + packing.output
        shape = packing.shape(parts)
        first = parts[next(iter(packing.parts))]
        nbytes = math.prod(shape) * 4
        out[target] = Dequantized(
            target, "F32", shape, first.file, 0, nbytes, tuple(parts.items()), packing.decode
        )
    return {n: t for n, t in out.items() if not n.endswith(packing.dropped)}


def _part(tensors: dict[str, SourceTensor], base: str, suffix: str, key: str) -> SourceTensor:
    found = tensors.get(base + suffix)
    if found is None:
        raise BadInput(f"the checkpoint has {key} but not {base + suffix} beside it")
    return found


# ---------------------------------------------------------------- values


def _e4m3fn_table() -> np.ndarray:
    """float8_e4m3fn, all 256 bit patterns: sign, 4 exponent bits (bias 7), 3 mantissa
    bits; exponent 0 is subnormal, and S.1111.111 is NaN (there is no infinity)."""
    bits = np.arange(256)
    sign = np.where(bits & 0x80, -1.0, 1.0)
    exp, man = (bits >> 3) & 0xF, bits & 0x7
    normal = (1 + man / 8) * np.exp2(exp - 7.0)
    subnormal = man / 8 * 2.0**-6
    table = sign * np.where(exp == 0, subnormal, normal)
    table[(bits & 0x7F) == 0x7F] = np.nan
    return table.astype(np.float32)


E4M3FN = _e4m3fn_table()

# safetensors dtype of an 8-bit float -> its bytes as float32
FLOAT8: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "F8_E4M3": lambda a: E4M3FN[a],
    # float8_e5m2 is the top byte of a float16
    "F8_E5M2": lambda a: (a.astype(np.uint16) << 8).view(np.float16).astype(np.float32),
}


def values(t: SourceTensor) -> np.ndarray:
    """A stored tensor's values: floats (8-bit ones too) as float32, integers as stored."""
    if t.dtype in FLOAT8:
        return FLOAT8[t.dtype](t.array())
    if t.dtype in DTYPES:
        return to_f32(t.array(), t.dtype)
    return t.array()


def scalar_ints(t: SourceTensor) -> tuple[int, ...]:
    """A small integer tensor's values, read now (compressed-tensors' weight_shape)."""
    return tuple(int(v) for v in np.asarray(t.array()).reshape(-1))


# ---------------------------------------------------------------- bits


def period(bits: int, stream: bool, word_bits: int = 32) -> tuple[int, int]:
    """(words, values): the smallest run of words that holds a whole number of values."""
    if not stream:
        return 1, word_bits // bits
    words = bits // math.gcd(word_bits, bits)
    return words, words * word_bits // bits


def unpack(words: np.ndarray, bits: int, axis: int, stream: bool) -> np.ndarray:
    """The `bits`-bit unsigned values packed, lowest bits first, in integer words along `axis`.

    `stream`: the values run on across words (GPTQ's 3-bit and compressed-tensors 0.20's,
    where a value may straddle two words); otherwise each word holds 32 // bits
    values and its spare top bits are unused (older compressed-tensors). Both are the same
    when bits divides the word size.
    """
    w = np.moveaxis(np.asarray(words), axis, 0)
    word_bits = w.dtype.itemsize * 8
    w = w.view(np.dtype(f"<u{w.dtype.itemsize}"))
    n_words, n_values = period(bits, stream, word_bits)
    if w.shape[0] % n_words:  # a stream cut at its last value: the rest is zeros
        pad = n_words - w.shape[0] % n_words
        w = np.concatenate([w, np.zeros((pad, *w.shape[1:]), w.dtype)])
    mask = (1 << bits) - 1
    out = np.empty((w.shape[0] // n_words * n_values, *w.shape[1:]), np.uint8)
    for j in range(n_values):
        first, shift = divmod(j * bits, word_bits)  # value j's word and bit in its period
        v = w[first::n_words] >> shift
        if shift + bits > word_bits:  # the value goes on in the next word
            v = v | (w[first + 1 :: n_words] << (word_bits - shift))
        out[j::n_values] = v & mask
    return np.moveaxis(out, 0, axis)


def expand(scale: np.ndarray, shape: tuple[int, ...], block: tuple[int, ...]) -> np.ndarray:
    """Per-block scales (or zero points) as one value per element of a `shape` weight.

    An axis of the scale longer than 1 covers `block` elements of the weight per entry (the
    last block may be cut short); an axis of 1 covers all. `block` is of the last axes; a
    scale of fewer dimensions gets trailing ones (a per-row vector, as llama.cpp reads it).
    """
    s = np.asarray(scale).reshape(scale.shape or (1,))
    while s.ndim < len(shape):
        s = s[..., None]
    block = (1,) * (len(shape) - len(block)) + tuple(block)
    for axis, size in enumerate(block):
        if s.shape[axis] != 1 and size != 1:
            s = np.repeat(s, size, axis=axis)
    return np.broadcast_to(s[tuple(slice(0, n) for n in shape)], shape)


def check_blocks(t: SourceTensor, shape: tuple[int, ...], block: tuple[int, ...]) -> None:
    """BadInput unless `t`'s shape is what `expand` takes for a weight of `shape`."""
    got = tuple(t.shape) or (1,)
    got = got + (1,) * (len(shape) - len(got))
    block = (1,) * (len(shape) - len(block)) + tuple(block)
    if len(got) != len(shape) or any(
        g not in (1, -(-n // b)) for g, n, b in zip(got, shape, block, strict=True)
    ):
        raise BadInput(
            f"tensor {t.name} is {t.shape}: not the scales of a {shape} weight in blocks of {block}"
        )


def setting(qconfig: dict[str, Any], *keys: str, default: Any = ...) -> Any:
    """The first of `keys` in quantization_config; BadInput when none is there and no default."""
    for key in keys:
        if qconfig.get(key) is not None:
            return qconfig[key]
    if default is ...:
        raise BadInput(f"config.json's quantization_config has no {' or '.join(keys)}")
    return default


def check_shape(t: SourceTensor, want: tuple[int, ...], what: str) -> None:
    if t.shape != want:
        raise BadInput(f"tensor {t.name} is {t.shape}, not {want} as {what} needs")


def check_dtype(t: SourceTensor, allowed: tuple[str, ...], scheme: str) -> None:
    if t.dtype not in allowed:
        want = " or ".join(allowed)
        raise BadInput(f"tensor {t.name} is {t.dtype}: {scheme} stores it as {want}")
