"""Qwen1.5-MoE and Qwen2-MoE (Qwen2MoeForCausalLM): Qwen2's attention (Q/K/V biases)
with routed experts plus one shared expert in every layer.

The shared expert's output is scaled by sigmoid(shared_expert_gate . x); gguf-py
names its tensors (`ffn_*_shexp`, `ffn_gate_inp_shexp`). llama.cpp's qwen2moe graph
does not renormalize the chosen experts' weights (norm_topk_prob false).
"""

from __future__ import annotations

import gguf

from llmrun.quantize.archs.moe import MoeConverter


class Qwen2MoeConverter(MoeConverter):
    arch = gguf.MODEL_ARCH.QWEN2MOE
    norm_top_k = False


CONVERTER = Qwen2MoeConverter
