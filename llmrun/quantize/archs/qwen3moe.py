"""Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3's attention (per-head Q/K norms, no biases)
with a mixture of experts in every layer, and no shared expert.

llama.cpp's qwen3moe graph renormalizes the chosen experts' weights (norm_topk_prob
true, as every released Qwen3-MoE has it).
"""

from __future__ import annotations

import gguf

from llmrun.quantize.archs.moe import MoeConverter


class Qwen3MoeConverter(MoeConverter):
    arch = gguf.MODEL_ARCH.QWEN3MOE
    norm_top_k = True


CONVERTER = Qwen3MoeConverter
