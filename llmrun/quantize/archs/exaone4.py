"""EXAONE 4.0 (Exaone4ForCausalLM): norms after attention and after the feed-forward,
per-head Q/K norms, NeoX-style RoPE, and (32B) three sliding-window layers to one
global layer that attends without RoPE.

The window and the per-layer pattern (config.json's layer_types) are written as
llama.cpp's converter writes them; llama.cpp itself turns sliding attention on only
for the 64-layer model, and otherwise runs RoPE in every layer.
"""

from __future__ import annotations

import gguf
from gguf import GGUFWriter

from llmrun.quantize.archs.base import Converter


class Exaone4Converter(Converter):
    arch = gguf.MODEL_ARCH.EXAONE4

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        window = self.config.get("sliding_window")
        if window is None:
            return
        w.add_sliding_window(int(window))
        if types := self.config.get("layer_types"):
            w.add_sliding_window_pattern([t == "sliding_attention" for t in types])


CONVERTER = Exaone4Converter
