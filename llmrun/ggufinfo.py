"""Check a GGUF file and read what it says about itself, before llama.cpp sees it.

llama.cpp may abort the whole process on a damaged file, so every model goes
through `read_info` first: cheap checks (exists, magic, version), then the
metadata and the tensor index, parsed here with `struct` from a memory map, then
a check that every tensor's data lies inside the file. Tensor data is never read.

Not gguf-py's GGUFReader: it needs numpy and builds an array view per field, which
made this the largest cost of a one-shot `llmrun run` (0.2 s with the imports).
Only gguf-py's constant tables are used; `import gguf` stays unrun (see lazypkg).
"""

from __future__ import annotations

import collections
import functools
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import gguf

from llmrun.errors import BadModelFile

GGUF_MAGIC = b"GGUF"
HEADER_SIZE = 24  # magic, version, tensor count, metadata count
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

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

# GGUF metadata value types (gguf.GGUFValueType) with a fixed size -> struct format.
SCALARS: dict[int, str] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
SCALARS |= {10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


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


class TensorInfo(NamedTuple):
    """One entry of a GGUF file's tensor index."""

    name: str
    shape: tuple[int, ...]
    type: str  # "Q4_K", "F32", ... (gguf.GGMLQuantizationType's names)
    n_elements: int
    n_bytes: int


class _Cut(Exception):
    """The header asks for bytes past the end of the file."""


class _Truncated(Exception):
    """The header is whole but the tensor data runs past the end of the file."""

    def __init__(self, expected: int) -> None:
        super().__init__(expected)
        self.expected = expected


class _Header:
    """The metadata and tensor index of a GGUF file, read from a buffer."""

    def __init__(self, buf: Any, order: str) -> None:
        self.buf, self.order, self.offset = buf, order, 4  # past the magic
        self.version = self._scalar("I")
        n_tensors, n_fields = self._scalar("Q"), self._scalar("Q")
        self.metadata: dict[str, Any] = {}
        self.array_lengths: dict[str, int] = {}  # every array's length, kept or skipped
        for _ in range(n_fields):
            key = self._string()
            value_type = self._scalar("I")
            if value_type == ARRAY:
                item_type, count = self._scalar("I"), self._scalar("Q")
                self.array_lengths[key] = count
                if count > SMALL_ARRAY:
                    self._skip_array(item_type, count)
                    continue
                self.metadata[key] = [self._value(item_type) for _ in range(count)]
            else:
                self.metadata[key] = self._value(value_type)
        self._offsets: list[int] = []  # each tensor's data offset, from the data section's start
        self.tensors = [self._tensor() for _ in range(n_tensors)]
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ValueError(f"general.alignment is {alignment!r}")
        self.data_start = -(-self.offset // alignment) * alignment
        self.data_end = self.data_start + max(
            (offset + t.n_bytes for t, offset in zip(self.tensors, self._offsets, strict=True)),
            default=0,
        )

    def _take(self, n: int) -> int:
        start = self.offset
        if start + n > len(self.buf):
            raise _Cut
        self.offset += n
        return start

    def _scalar(self, fmt: str) -> Any:
        code = _struct(self.order + fmt)
        return code.unpack_from(self.buf, self._take(code.size))[0]

    def _string(self) -> str:
        n = self._scalar("Q")
        start = self._take(n)
        return bytes(self.buf[start : start + n]).decode("utf-8")

    def _value(self, value_type: int) -> Any:
        if value_type == STRING:
            return self._string()
        if value_type == ARRAY:
            item_type, count = self._scalar("I"), self._scalar("Q")
            return [self._value(item_type) for _ in range(count)]
        fmt = SCALARS.get(value_type)
        if fmt is None:
            raise ValueError(f"unknown metadata value type {value_type}")
        return self._scalar(fmt)

    def _skip_array(self, item_type: int, count: int) -> None:
        if item_type in SCALARS:
            self._take(count * struct.calcsize(SCALARS[item_type]))
        elif item_type == STRING:  # walk the lengths: the vocabulary's ~50k strings
            length, buf, offset, size = (
                _struct(self.order + "Q"),
                self.buf,
                self.offset,
                len(self.buf),
            )
            for _ in range(count):
                if offset + 8 > size:
                    raise _Cut
                offset += 8 + length.unpack_from(buf, offset)[0]
            if offset > size:
                raise _Cut
            self.offset = offset
        else:
            for _ in range(count):
                self._value(item_type)

    def _tensor(self) -> TensorInfo:
        name = self._string()
        shape = tuple(self._scalar("Q") for _ in range(self._scalar("I")))
        raw_type = self._scalar("I")
        self._offsets.append(self._scalar("Q"))
        kind = gguf.GGMLQuantizationType(raw_type)  # ValueError for a type we do not know
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
        n = 1
        for d in shape:
            n *= d
        return TensorInfo(name, shape, kind.name, n, n * type_size // block)


@functools.cache
def _struct(fmt: str) -> struct.Struct:
    # One compiled format per code: a header has thousands of scalars.
    return struct.Struct(fmt)


@functools.lru_cache(maxsize=8)
def _parse(path: Path, size: int, mtime_ns: int, inode: int) -> _Header:
    # Keyed by what stat says too: a file replaced or rewritten is read again.
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        version = buf[4:8]
        order = ">" if int.from_bytes(version, "little") & 0xFFFF == 0 else "<"
        header = _Header(buf, order)
        header.buf = None  # the map closes here
    if header.data_end > size:
        raise _Truncated(header.data_end)
    return header


def tensor_index(path: Path | str) -> list[TensorInfo]:
    """The file's tensors (name, shape, type, sizes), after read_info's checks."""
    path = Path(path)
    read_info(path)
    return list(_parse(path, *_identity(path)).tensors)


def read_info(path: Path | str) -> GgufInfo:
    """Check a GGUF file and read its metadata; BadModelFile when it is not usable."""
    path = Path(path)
    size = _check_header(path)
    try:
        header = _parse(path, *_identity(path))
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
    except (ValueError, KeyError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        raise BadModelFile(f"{path}: damaged GGUF file ({type(e).__name__}: {e})") from None
    return _info(header, path, size)


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


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
    if version not in SUPPORTED_VERSIONS:
        raise BadModelFile(
            f"{path}: GGUF version {version} is not supported "
            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})",
            "upgrade llmrun, or convert the file again",
        )
    return st.st_size


def _info(header: _Header, path: Path, size: int) -> GgufInfo:
    meta = header.metadata
    arch = _str(meta.get("general.architecture"))
    tensors = header.tensors
    return GgufInfo(
        path=path,
        size=size,
        version=header.version,
        architecture=arch,
        name=_str(meta.get("general.name")),
        parameters=sum(t.n_elements for t in tensors),
        context_length=_int(meta.get(f"{arch}.context_length")),
        block_count=_int(meta.get(f"{arch}.block_count")),
        quant=quant_name(_int(meta.get("general.file_type")), tensors),
        chat_template=_str(meta.get("tokenizer.chat_template")),
        license=_str(meta.get("general.license")),
        bos_token_id=_int(meta.get("tokenizer.ggml.bos_token_id")),
        eos_token_id=_int(meta.get("tokenizer.ggml.eos_token_id")),
        tensor_count=len(tensors),
        vocab_size=header.array_lengths.get("tokenizer.ggml.tokens"),
        metadata=dict(meta),  # a copy: the parse is cached
        tensor_bytes={t.name: t.n_bytes for t in tensors},
    )


def quant_name(file_type: int | None, tensors: Sequence[TensorInfo] = ()) -> str | None:
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
            weights[t.type] += t.n_elements
    return weights.most_common(1)[0][0] if weights else None


def format_count(n: int) -> str:
    """A parameter count the way model cards write it: 135M, 1.7B, 8.0B."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}".replace(".0", "")
    return str(n)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
