"""llama.cpp's side of the converter tests: logits at every position, tokens, generation,
and a GGUF file compared with another (llama.cpp's reference converter's)."""

from __future__ import annotations

import hashlib
import mmap
import struct
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import llama_cpp
import numpy as np

from llmrun.engine import load_model, logs
from llmrun.ggufinfo import read_info
from llmrun.options import Load, Sampling
from llmrun.quantize import quantize
from llmrun.store import sha256_file
from tests.quantize_fixtures import cached

# float32 KV cache and no flash attention: the reference runs in float32 too.
EXACT = Load(ctx_size=256, threads=1, cache_type_k="f32", cache_type_v="f32", flash_attn="off")


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `ids`."""
    model = load_model(path, EXACT)
    try:
        return model.logits(ids)
    finally:
        model.close()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest difference, relative to the largest reference logit."""
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def generate(path: Path, prompt: str, n: int = 12) -> str:
    """Greedy text after `prompt` (EOS ignored), as `llmrun run --raw` would produce it."""
    model = load_model(path, Load(ctx_size=256, threads=1))
    try:
        sampling = Sampling(temp=0.0, max_tokens=n)
        text = "".join(model.generate(model.tokenize(prompt), sampling, ignore_eos=True))
        assert model.stats.gen_tokens == n
        return text
    finally:
        model.close()


def quantized_types_load_and_generate(ckpt: Path, folder: Path) -> None:
    """`ckpt` quantized straight to Q8_0 and to Q4_K_M (in `folder`): each file says its
    type, loads and generates."""
    for qtype in ("Q8_0", "Q4_K_M"):
        # The self-check (a child loads the file, 1-2 s) once: both load here anyway.
        path = folder / f"{qtype}.gguf"
        out = quantize(str(ckpt), type=qtype, output=path, check=qtype == "Q8_0").path
        assert read_info(out).quant == qtype
        assert generate(out, "The quick brown fox", n=8)


class Vocab:
    """llama.cpp's tokenizer of a GGUF file, loaded once (vocabulary only, no weights)."""

    def __init__(self, path: Path) -> None:
        logs.install(verbose=False)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self._model, f"llama.cpp cannot load {path}"
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

    def tokenize(self, text: str) -> list[int]:
        """The ids of `text`, special tokens added and parsed."""
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, len(buf), True, True)
        assert n >= 0
        return list(buf[:n])

    def close(self) -> None:
        llama_cpp.llama_model_free(self._model)


# ---------------------------------------------------------------- GGUF against GGUF

# Metadata that says who made a file rather than what it holds: two converters of one
# checkpoint legitimately differ there.
PROVENANCE: dict[str, str] = {
    "general.name": "llama.cpp's converter title-cases the folder name, llmrun uses it as is",
    "general.size_label": "llama.cpp's converter derives it from the parameter count",
    "general.type": "llama.cpp's converter labels every file 'model'",
    "general.quantization_version": "llama.cpp's converter writes it even in files with no "
    "quantized tensor, where llama.cpp does not read it",
}
# Keys one converter writes and the other leaves out, with the value llama.cpp assumes
# when a file lacks them: written or not, the file means the same if they agree.
ABSENT_MEANS: dict[str, Callable[[GgufFile], Any]] = {
    "{arch}.vocab_size": lambda f: len(f.fields["tokenizer.ggml.tokens"].value),
    # llama.cpp's defaults by vocabulary type: SentencePiece ("llama") adds BOS and a space.
    "tokenizer.ggml.add_bos_token": lambda f: f.value("tokenizer.ggml.model") == "llama",
    "tokenizer.ggml.add_eos_token": lambda f: False,
    "tokenizer.ggml.add_space_prefix": lambda f: f.value("tokenizer.ggml.model") == "llama",
}


class Field(NamedTuple):
    types: tuple[int, ...]  # the value type; for an array, ARRAY and then the item type
    value: Any


class Tensor(NamedTuple):
    type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # as stored: the innermost dimension first
    data: memoryview


class GgufFile:
    """Every key and tensor of a GGUF file, read whole with struct from a memory map.

    Not gguf-py's GGUFReader: it builds a numpy view per array item, which took about 5 s
    per file of a 49k vocabulary, the larger part of every comparison with llama.cpp's file.
    """

    def __init__(self, path: Path) -> None:
        with path.open("rb") as f:
            self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._at = 0
        assert self._take(4) == b"GGUF", f"{path} is not a GGUF file"
        self.version = self._scalar("I")
        n_tensors, n_fields = self._scalar("Q"), self._scalar("Q")
        self.fields: dict[str, Field] = {}
        for _ in range(n_fields):
            key = self._string()
            self.fields[key] = self._field(self._scalar("I"))
        index = []
        for _ in range(n_tensors):
            name = self._string()
            shape = tuple(self._scalar("Q") for _ in range(self._scalar("I")))
            kind = gguf.GGMLQuantizationType(self._scalar("I"))
            index.append((name, shape, kind, self._scalar("Q")))
        align = self.value("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
        start = -(-self._at // align) * align
        self.tensors: dict[str, Tensor] = {}
        view = memoryview(self._buf)
        for name, shape, kind, offset in index:
            block, type_size = gguf.GGML_QUANT_SIZES[kind]
            n_bytes = int(np.prod(shape, dtype=np.int64)) // block * type_size
            at = start + offset
            self.tensors[name] = Tensor(kind, shape, view[at : at + n_bytes])

    def value(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        return default if field is None else field.value

    def _take(self, n: int) -> bytes:
        out = self._buf[self._at : self._at + n]
        assert len(out) == n, "the file ends inside its header"
        self._at += n
        return out

    def _scalar(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self._take(struct.calcsize("<" + fmt)))[0]

    def _string(self) -> str:
        return self._take(self._scalar("Q")).decode("utf-8")

    def _field(self, kind: int) -> Field:
        if kind != gguf.GGUFValueType.ARRAY:
            return Field((kind,), self._item(kind))
        item, count = self._scalar("I"), self._scalar("Q")
        fmt = _SCALARS.get(item)
        if fmt is not None:  # one numpy read for the whole array
            dtype = np.dtype("<" + fmt)
            values = np.frombuffer(self._take(dtype.itemsize * count), dtype=dtype).tolist()
            return Field((kind, item), values)
        return Field((kind, item), [self._item(item) for _ in range(count)])

    def _item(self, kind: int) -> Any:
        if kind == gguf.GGUFValueType.STRING:
            return self._string()
        if kind == gguf.GGUFValueType.ARRAY:
            return self._field(kind).value
        return self._scalar(_SCALARS[kind])


# GGUF's fixed-size value types -> struct and numpy format (little-endian files only).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_SCALARS |= {10: "Q", 11: "q", 12: "d"}


def gguf_differences(ours: Path, theirs: Path, ignore: Mapping[str, str] = PROVENANCE) -> list[str]:
    """Every difference between two GGUF files, one line each; [] when they are the same.

    Tensors must agree in name, shape, type and bytes; metadata in key, value type and
    value, except the keys in `ignore` (key -> why) and a key only one file has whose
    value is what llama.cpp assumes without it (ABSENT_MEANS).
    """
    a, b = GgufFile(Path(ours)), GgufFile(Path(theirs))
    out = _tensor_differences(a, b)
    arch = str(a.value("general.architecture"))
    implied = {k.format(arch=arch): fn for k, fn in ABSENT_MEANS.items()}
    fields_a, fields_b = a.fields, b.fields
    for key in sorted(fields_a.keys() | fields_b.keys()):
        if key in ignore:
            continue
        fa, fb = fields_a.get(key), fields_b.get(key)
        if fa is None or fb is None:
            have, file = (fa, b) if fb is None else (fb, a)
            assert have is not None
            if key in implied and have.value == implied[key](file):
                continue
            out.append(f"metadata {key}: only in {'ours' if fb is None else 'theirs'}")
        elif fa.types != fb.types:
            out.append(f"metadata {key}: types {fa.types} and {fb.types}")
        elif fa.value != fb.value:
            out.append(f"metadata {key}: {_short(fa.value)} and {_short(fb.value)}")
    return out


def _tensor_differences(a: GgufFile, b: GgufFile) -> list[str]:
    ta, tb = a.tensors, b.tensors
    only = sorted(ta.keys() ^ tb.keys())
    out = [f"tensor {n}: only in {'ours' if n in ta else 'theirs'}" for n in only]
    for name in sorted(ta.keys() & tb.keys()):
        x, y = ta[name], tb[name]
        if x.type != y.type or x.shape != y.shape:
            out.append(
                f"tensor {name}: {x.type.name} {list(x.shape)} and {y.type.name} {list(y.shape)}"
            )
        elif x.data != y.data:
            out.append(f"tensor {name}: values differ")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value)} items)"


def llama_cpp_conversion(
    llama_cpp_src: Path, ckpt: Path, outtype: str = "f32", mmproj: bool = False
) -> Path:
    """`ckpt` converted by llama.cpp's convert_hf_to_gguf.py (the sdist's) to `outtype`
    (f32, f16, bf16, q8_0), or its projector with `mmproj`.

    Cached (quantize_fixtures.cached) under a digest of the checkpoint's bytes, the
    converter's version and the arguments: the same inputs give the same file, and the
    converter's run, 5-20 s on a tiny checkpoint, was most of a comparison's time.
    """
    args = ["--outtype", outtype] + (["--mmproj"] if mmproj else [])
    digest = hashlib.sha256(f"{llama_cpp_src.resolve()}\0{args}".encode())
    for f in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        digest.update(f"\0{f.relative_to(ckpt)}\0".encode())
        digest.update(f.read_bytes())

    def build(folder: Path) -> None:
        script = llama_cpp_src / "convert_hf_to_gguf.py"
        cmd = [sys.executable, str(script), str(ckpt), *args]
        r = subprocess.run(
            [*cmd, "--outfile", str(folder / "theirs.gguf")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]

    return cached(f"llama-cpp-{digest.hexdigest()[:16]}", build) / "theirs.gguf"


OUT = "{out}"  # in llama_tool_output's arguments: the file the tool writes


def llama_tool_output(tool: Path, *args: str | Path) -> Path:
    """The file llama.cpp's `tool` (llama-imatrix, say) writes when run with `args`, where
    OUT stands for that file's name.

    Cached as llama_cpp_conversion's are, under a digest of the tool's binary, the arguments
    and, for each Path among them, its bytes rather than its name: the same inputs give the
    same file. Paths the tool records in the file (llama-imatrix's datasets) are the first
    run's.
    """
    digest = hashlib.sha256(sha256_file(tool).encode())
    for arg in args:
        digest.update(b"\0" + (sha256_file(arg) if isinstance(arg, Path) else arg).encode())

    def build(folder: Path) -> None:
        cmd = [str(tool), *(str(folder / "out") if a == OUT else str(a) for a in args)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]

    return cached(f"llama-tool-{digest.hexdigest()[:16]}", build) / "out"
