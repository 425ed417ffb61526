"""Llama and its look-alikes: Llama 2/3.x, SmolLM, Mistral (LlamaForCausalLM, MistralForCausalLM).

Quirks:
- Q and K rows are permuted: Hugging Face stores each head's rotary pairs as two
  halves (rotate_half), llama.cpp's llama graph wants them interleaved.
- Llama 3.1+ "llama3" RoPE scaling becomes a `rope_freqs` tensor of per-dimension
  factors, which llama.cpp multiplies into the rotary frequencies.
- llama.cpp reads the RoPE dimension count for this architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import gguf
import numpy as np
from gguf import GGUFWriter

from llmrun.quantize.archs.base import Converter, TensorPlan, computed


def rope_permute(n_head: int) -> Callable[[np.ndarray], np.ndarray]:
    """Per head, rows [x0..x(d/2-1), y0..y(d/2-1)] -> [x0, y0, x1, y1, ...], as a view.

    The result has shape (n_head, d/2, 2, *rest): its C order is the permuted
    tensor's, and the writer walks it head by head.
    """

    def permute(a: np.ndarray) -> np.ndarray:
        rest = a.shape[1:]
        return a.reshape(n_head, 2, a.shape[0] // n_head // 2, *rest).swapaxes(1, 2)

    return permute


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's RoPE scaling (the transformers formula)."""
    base = float(rope.get("rope_theta") or 10000.0)
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


class LlamaConverter(Converter):
    arch = gguf.MODEL_ARCH.LLAMA

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_rope_dimension_count(self.head_dim)

    def adjust(self, plan: TensorPlan, hf_name: str) -> Iterable[TensorPlan]:
        if plan.kind == gguf.MODEL_TENSOR.ATTN_Q:
            plan = plan.with_layout(rope_permute(self.n_head))
        elif plan.kind == gguf.MODEL_TENSOR.ATTN_K:
            plan = plan.with_layout(rope_permute(self.n_head_kv))
        yield plan

    def extra(self) -> Iterator[TensorPlan]:
        rope = self.rope()
        if str(rope["rope_type"]).lower() == "llama3":
            factors = llama3_rope_factors(rope, self.head_dim)
            yield computed("rope_freqs.weight", factors, gguf.MODEL_TENSOR.ROPE_FREQS)


CONVERTER = LlamaConverter
