"""OLMoE (OlmoeForCausalLM): a Llama-like decoder with a mixture of experts and Q/K
norms over the whole projection (not per head), NeoX-style RoPE.

llama.cpp's olmoe graph does not renormalize the chosen experts' weights
(norm_topk_prob false) and has no clamp of Q/K/V, so a clip_qkv is refused; it sizes
the K norm as the Q norm, so it needs as many K/V heads as query heads (OLMoE has).
"""

from __future__ import annotations

import gguf

from llmrun.errors import BadInput
from llmrun.quantize.archs.moe import MoeConverter
from llmrun.quantize.checkpoint import Checkpoint


class OlmoeConverter(MoeConverter):
    arch = gguf.MODEL_ARCH.OLMOE
    norm_top_k = False

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        if self.config.get("clip_qkv") is not None:
            raise BadInput("config.json: clip_qkv is set, and llama.cpp's olmoe cannot clamp Q/K/V")
        if self.n_head_kv != self.n_head:
            raise BadInput(
                f"config.json: {self.n_head_kv} K/V heads for {self.n_head} query heads; "
                "llama.cpp's olmoe needs as many"
            )


CONVERTER = OlmoeConverter
