"""llama.cpp's side of the converter tests: logits at every position, tokens, generation."""

from __future__ import annotations

from pathlib import Path

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
