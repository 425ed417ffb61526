"""Gemma 2 (Gemma2ForCausalLM): Gemma plus logit soft-capping, sliding-window attention
on every other layer (llama.cpp's fixed pattern for gemma2, the same as transformers'),
and norms after attention and after the feed-forward block (also +1)."""

from __future__ import annotations

import gguf
from gguf import GGUFWriter

from llmrun.quantize.archs.gemma import GemmaConverter


class Gemma2Converter(GemmaConverter):
    arch = gguf.MODEL_ARCH.GEMMA2

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_attn_logit_softcapping(float(self.hp("attn_logit_softcapping", default=50.0)))
        w.add_final_logit_softcapping(float(self.hp("final_logit_softcapping", default=30.0)))
        w.add_sliding_window(int(self.hp("sliding_window", default=4096)))
        self.swa_pattern(w)


CONVERTER = Gemma2Converter
