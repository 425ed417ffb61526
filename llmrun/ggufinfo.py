"""Check a GGUF file and read what it says about itself, before llama.cpp sees it.

llama.cpp may abort the whole process on a damaged file, so every model goes
through `read_info` first: cheap checks (exists, magic, version), then the
metadata through gguf-py's memory-mapped `GGUFReader`, then a check that every
tensor's data lies inside the file. Tensor data is never read.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

from llmrun.errors import BadModelFile

GGUF_MAGIC = b"GGUF"
HEADER_SIZE = 24  # magic, version, tensor count, metadata count

# Arrays longer than this (the vocabulary, merges, token types) are skipped
# while parsing and left out of `metadata`: they cost most of the parse time.
SMALL_ARRAY = 64

# What a file that is not GGUF usually is, by its first bytes: a hint for the message.
NOT_GGUF_HINTS: tuple[tuple[bytes, str], ...] = (
    (b"version https://git-lfs", "a Git LFS pointer, not the model itself"),
    (b"<!DOCTYPE", "a web page, not a model; the download went wrong"),
    (b"<html", "a web page, not a model; the download went wrong"),
    (b"{", "JSON text, not a model"),
    (b"PK\x03\x04", "a zip archive (a PyTorch checkpoint?); convert it with `llmrun quantize`"),
    (b"ggjt", "an old GGML/GGJT file; convert it to GGUF"),
    (b"ggml", "an old GGML file; convert it to GGUF"),
)

# gguf value types whose items have a fixed size, for skipping long arrays.
_FIXED_SIZES = {t: np.dtype(d).itemsize for t, d in gguf.GGUFReader.gguf_scalar_to_np.items()}


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file says about itself."""

    path: Path
    size: int  # bytes
    version: int
    architecture: str | None
    name: str | None
    parameters: int  # sum of the tensors' element counts
    context_length: int | None
    block_count: int | None
    quant: str | None  # "Q4_K_M", "F16", ...
    chat_template: str | None
    license: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    tensor_count: int
    vocab_size: int | None
    metadata: dict[str, Any] = field(default_factory=dict)  # scalars, strings, short arrays
    tensor_bytes: dict[str, int] = field(default_factory=dict)  # name -> bytes, for offload plans


class _Cut(Exception):
    """The header asks for bytes past the end of the file."""


class _Truncated(Exception):
    """The header is whole but the tensor data runs past the end of the file."""

    def __init__(self, expected: int) -> None:
        super().__init__(expected)
        self.expected = expected


class _Reader(gguf.GGUFReader):
    """GGUFReader with bounds checks, and a fast skip over long metadata arrays.

    The stock reader builds numpy views for each of the ~100k vocabulary
    strings (two seconds for a 49k vocabulary); we only need their extent.
    These overrides use the reader's internal helpers, stable since gguf 0.6.
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
        if offset + np.dtype(dtype).itemsize * int(count) > self.data.nbytes:
            raise _Cut
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
        if gguf.GGUFValueType(raw_type) != gguf.GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        count, itype = int(alen[0]), gguf.GGUFValueType(int(raw_itype[0]))
        if count <= SMALL_ARRAY or itype == gguf.GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        start = orig_offs + 12
        if itype == gguf.GGUFValueType.STRING:
            end = self._skip_strings(start, count)
        else:
            end = start + count * _FIXED_SIZES[itype]
        if end > self.data.nbytes:
            raise _Cut
        # No data indices: `contents()` is empty, the length stays in parts[1].
        return end - orig_offs, [raw_itype, alen], [], [gguf.GGUFValueType.ARRAY, itype]

    def _skip_strings(self, offs: int, count: int) -> int:
        order = "<" if self.endianess == gguf.GGUFEndian.LITTLE else ">"
        length = struct.Struct(order + "Q")
        buf, size = memoryview(self.data), self.data.nbytes
        for _ in range(count):
            if offs + 8 > size:
                raise _Cut
            offs += 8 + length.unpack_from(buf, offs)[0]
        return offs

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        # Each tensor-info field's parts: name len, name, n_dims, dims, type, offset.
        expected = start_offs
        for f in fields:
            dims, raw_type, offset = f.parts[3], f.parts[4], f.parts[5]
            n = 1
            for d in dims.tolist():
                n *= int(d)
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_type[0]))]
            expected = max(expected, start_offs + int(offset[0]) + n * type_size // block)
        if expected > self.data.nbytes:
            raise _Truncated(expected)
        super()._build_tensors(start_offs, fields)


def read_info(path: Path | str) -> GgufInfo:
    """Check a GGUF file and read its metadata; BadModelFile when it is not usable."""
    path = Path(path)
    size = _check_header(path)
    try:
        reader = _Reader(path)
    except _Truncated as e:
        raise BadModelFile(
            f"{path}: truncated: expected {e.expected} bytes, file has {size}",
            "delete it and download again",
        ) from None
    except _Cut:
        raise BadModelFile(
            f"{path}: truncated or damaged: its header runs past the end of the file "
            f"({size} bytes)",
            "delete it and download again",
        ) from None
    except Exception as e:  # gguf-py raises ValueError, KeyError, IndexError...
        raise BadModelFile(f"{path}: damaged GGUF file ({type(e).__name__}: {e})") from None
    return _info(reader, path, size)


def _check_header(path: Path) -> int:
    """Exists, is a file, starts with the GGUF magic and a version we read; returns the size."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadModelFile(f"no such file: {path}") from None
    except OSError as e:
        raise BadModelFile(f"cannot read {path}: {e.strerror or e}") from None
    if not path.is_file():
        raise BadModelFile(f"{path} is not a file")
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as e:
        raise BadModelFile(f"cannot read {path}: {e.strerror or e}") from None
    if not head:
        raise BadModelFile(f"{path} is empty", "delete it and download again")
    if head[:4] != GGUF_MAGIC:
        hint = next((h for sig, h in NOT_GGUF_HINTS if head.lstrip().startswith(sig)), None)
        looks = f": it looks like {hint}" if hint else ""
        raise BadModelFile(f"{path} is not a GGUF file{looks}")
    if len(head) < HEADER_SIZE:
        raise BadModelFile(
            f"{path}: truncated: the file ends inside its header, at {len(head)} bytes",
            "delete it and download again",
        )
    version = int.from_bytes(head[4:8], "little")
    if version & 0xFFFF == 0:  # written on a big-endian machine
        version = int.from_bytes(head[4:8], "big")
    if version not in READER_SUPPORTED_VERSIONS:
        raise BadModelFile(
            f"{path}: GGUF version {version} is not supported "
            f"(supported: {', '.join(map(str, READER_SUPPORTED_VERSIONS))})",
            "upgrade llmrun, or convert the file again",
        )
    return st.st_size


def _info(reader: gguf.GGUFReader, path: Path, size: int) -> GgufInfo:
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        skipped_array = f.types[:1] == [gguf.GGUFValueType.ARRAY] and not f.data
        if key.startswith("GGUF.") or skipped_array:
            continue  # reader bookkeeping, or a long array we skipped
        try:
            meta[key] = f.contents()
        except (ValueError, UnicodeDecodeError):
            continue
    arch = _str(meta.get("general.architecture"))
    tensors = reader.tensors
    return GgufInfo(
        path=path,
        size=size,
        version=int(reader.fields["GGUF.version"].parts[0][0]),
        architecture=arch,
        name=_str(meta.get("general.name")),
        parameters=sum(int(t.n_elements) for t in tensors),
        context_length=_int(meta.get(f"{arch}.context_length")),
        block_count=_int(meta.get(f"{arch}.block_count")),
        quant=quant_name(_int(meta.get("general.file_type")), tensors),
        chat_template=_str(meta.get("tokenizer.chat_template")),
        license=_str(meta.get("general.license")),
        bos_token_id=_int(meta.get("tokenizer.ggml.bos_token_id")),
        eos_token_id=_int(meta.get("tokenizer.ggml.eos_token_id")),
        tensor_count=len(tensors),
        vocab_size=_array_len(reader, "tokenizer.ggml.tokens"),
        metadata=meta,
        tensor_bytes={t.name: int(t.n_bytes) for t in tensors},
    )


def quant_name(file_type: int | None, tensors: Sequence[Any] = ()) -> str | None:
    """`general.file_type` as a name ("Q4_K_M"), else the type holding most weights."""
    if file_type is not None:
        try:
            ft = gguf.LlamaFileType(file_type)
        except ValueError:
            pass
        else:
            if ft != gguf.LlamaFileType.GUESSED:
                return ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # Norms and biases are 1-D and stay F32 in every quant: count only matrices.
    weights: collections.Counter[str] = collections.Counter()
    for t in tensors:
        if len(t.shape) >= 2:
            weights[t.tensor_type.name] += int(t.n_elements)
    return weights.most_common(1)[0][0] if weights else None


def format_count(n: int) -> str:
    """A parameter count the way model cards write it: 135M, 1.7B, 8.0B."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}".replace(".0", "")
    return str(n)


def _array_len(reader: gguf.GGUFReader, key: str) -> int | None:
    # A metadata field's parts: key length, key, value type, item type, count, items...
    f = reader.fields.get(key)
    is_array = f is not None and f.types[:1] == [gguf.GGUFValueType.ARRAY]
    return int(f.parts[4][0]) if is_array else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else None
