"""Mixtral (MixtralForCausalLM): Llama with a mixture of experts, so llama.cpp's llama
architecture with expert tensors.

Llama's quirks apply (Q/K rows permuted); the experts are `block_sparse_moe.experts.N.w1/w2/w3`
(gate, down, up), each intermediate_size wide. llama.cpp renormalizes the chosen
experts' weights, as Mixtral does (it has no norm_topk_prob).
"""

from __future__ import annotations

from llmrun.quantize.archs.llama import LlamaConverter
from llmrun.quantize.archs.moe import MoeConverter


class MixtralConverter(MoeConverter, LlamaConverter):
    norm_top_k = True


CONVERTER = MixtralConverter
