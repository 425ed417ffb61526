"""llama.cpp's side of the converter tests: logits at every position, tokens, generation,
and a GGUF file compared with another (llama.cpp's reference converter's)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np

from llmrun.engine import load_model, logs
from llmrun.options import Load, Sampling

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
ABSENT_MEANS: dict[str, Callable[[gguf.GGUFReader], Any]] = {
    "{arch}.vocab_size": lambda r: len(r.fields["tokenizer.ggml.tokens"].data),
    # llama.cpp's defaults by vocabulary type: SentencePiece ("llama") adds BOS and a space.
    "tokenizer.ggml.add_bos_token": lambda r: _vocab_model(r) == "llama",
    "tokenizer.ggml.add_eos_token": lambda r: False,
    "tokenizer.ggml.add_space_prefix": lambda r: _vocab_model(r) == "llama",
}


def _vocab_model(r: gguf.GGUFReader) -> str:
    return str(r.fields["tokenizer.ggml.model"].contents())


def gguf_differences(ours: Path, theirs: Path, ignore: Mapping[str, str] = PROVENANCE) -> list[str]:
    """Every difference between two GGUF files, one line each; [] when they are the same.

    Tensors must agree in name, shape, type and bytes; metadata in key, value type and
    value, except the keys in `ignore` (key -> why) and a key only one file has whose
    value is what llama.cpp assumes without it (ABSENT_MEANS).
    """
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    out = _tensor_differences(a, b)
    arch = str(a.fields["general.architecture"].contents())
    implied = {k.format(arch=arch): fn for k, fn in ABSENT_MEANS.items()}
    fields_a, fields_b = _metadata(a), _metadata(b)
    for key in sorted(fields_a.keys() | fields_b.keys()):
        if key in ignore:
            continue
        fa, fb = fields_a.get(key), fields_b.get(key)
        if fa is None or fb is None:
            have, reader = (fa, b) if fb is None else (fb, a)
            assert have is not None
            if key in implied and have.contents() == implied[key](reader):
                continue
            out.append(f"metadata {key}: only in {'ours' if fb is None else 'theirs'}")
        elif fa.types != fb.types:
            out.append(f"metadata {key}: types {fa.types} and {fb.types}")
        elif fa.contents() != fb.contents():
            out.append(f"metadata {key}: {_short(fa.contents())} and {_short(fb.contents())}")
    return out


def _metadata(r: gguf.GGUFReader) -> dict[str, gguf.ReaderField]:
    """The key-value fields, less the header's (GGUF.version, GGUF.tensor_count...)."""
    return {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}


def _tensor_differences(a: gguf.GGUFReader, b: gguf.GGUFReader) -> list[str]:
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    only = sorted(ta.keys() ^ tb.keys())
    out = [f"tensor {n}: only in {'ours' if n in ta else 'theirs'}" for n in only]
    for name in sorted(ta.keys() & tb.keys()):
        x, y = ta[name], tb[name]
        shape_x, shape_y = [int(n) for n in x.shape], [int(n) for n in y.shape]
        if x.tensor_type != y.tensor_type or shape_x != shape_y:
            out.append(
                f"tensor {name}: {x.tensor_type.name} {shape_x} and {y.tensor_type.name} {shape_y}"
            )
        elif not np.array_equal(np.asarray(x.data), np.asarray(y.data)):
            out.append(f"tensor {name}: values differ")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value)} items)"


def llama_cpp_conversion(llama_cpp_src: Path, ckpt: Path, out: Path, outtype: str = "f32") -> Path:
    """`ckpt` converted by llama.cpp's convert_hf_to_gguf.py (the sdist's) to `outtype`
    (f32, f16, bf16), as `out`."""
    script = llama_cpp_src / "convert_hf_to_gguf.py"
    r = subprocess.run(
        [sys.executable, str(script), str(ckpt), "--outtype", outtype, "--outfile", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out
