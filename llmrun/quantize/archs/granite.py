"""Granite 3.x, dense (GraniteForCausalLM): Llama (Q/K rows permuted) with four multipliers.

The multipliers become llama.cpp's scales: attention_multiplier replaces
1/sqrt(head_dim), embedding_multiplier and residual_multiplier scale the embeddings
and each residual branch, logits_scaling divides the logits (llama.cpp requires the
logit scale). Granite MoE (granitemoe.py) builds on this converter.
"""

from __future__ import annotations

import gguf
from gguf import GGUFWriter

from llmrun.quantize.archs.llama import LlamaConverter

# config.json multiplier -> the GGUFWriter method of llama.cpp's scale
SCALES = {
    "attention_multiplier": GGUFWriter.add_attention_scale,
    "embedding_multiplier": GGUFWriter.add_embedding_scale,
    "residual_multiplier": GGUFWriter.add_residual_scale,
    "logits_scaling": GGUFWriter.add_logit_scale,
}


class GraniteConverter(LlamaConverter):
    arch = gguf.MODEL_ARCH.GRANITE

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        for key, add in SCALES.items():
            if (value := self.config.get(key)) is not None:
                add(w, float(value))


CONVERTER = GraniteConverter
