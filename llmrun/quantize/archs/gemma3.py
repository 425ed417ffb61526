"""Gemma 3, text only (Gemma3ForCausalLM; the multimodal checkpoints are not supported).

Gemma 2's layout without attention soft-capping, with per-head Q and K norms
(+1 like every Gemma norm), five sliding-window layers to one global layer, and two
RoPE bases: `rope_theta` for global layers, a local one for sliding layers. In
transformers 5's config they are rope_parameters.full_attention and
.sliding_attention; before, rope_theta and rope_local_base_freq.
"""

from __future__ import annotations

from typing import Any

import gguf
from gguf import GGUFWriter

from llmrun.quantize.archs.gemma import GemmaConverter


class Gemma3Converter(GemmaConverter):
    arch = gguf.MODEL_ARCH.GEMMA3

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        if self.hp("final_logit_softcapping", default=None):
            w.add_final_logit_softcapping(float(self.hp("final_logit_softcapping")))
        window = self.hp("sliding_window", default=None)
        if window and self.hp("sliding_window_pattern", default=6) != 1:
            w.add_sliding_window(int(window))
            self.swa_pattern(w)
            local = self.local_theta()
            if local:
                w.add_rope_freq_base_swa(float(local))

    def rope(self) -> dict[str, Any]:
        rope = super().rope()
        if rope["rope_theta"] is None:
            rope["rope_theta"] = 1_000_000.0  # Gemma 3's default for global layers
        return rope

    def local_theta(self) -> float | None:
        """The RoPE base of sliding-window layers."""
        params = (self.config.get("rope_parameters") or {}).get("sliding_attention") or {}
        return params.get("rope_theta") or self.hp("rope_local_base_freq", default=None)


CONVERTER = Gemma3Converter
