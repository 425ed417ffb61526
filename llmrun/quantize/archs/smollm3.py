"""SmolLM3 (SmolLM3ForCausalLM): Llama (Q/K rows permuted) with NoPE layers, every
fourth layer attending without RoPE.

llama.cpp's smollm3 fixes that pattern (layer i uses RoPE unless (i+1) % 4 == 0)
rather than reading it from the file, so a config whose no_rope_layers says otherwise
is refused, as is sliding-window attention, which its graph lacks.
"""

from __future__ import annotations

import gguf

from llmrun.errors import BadInput
from llmrun.quantize.archs.llama import LlamaConverter
from llmrun.quantize.checkpoint import Checkpoint

NO_ROPE_STEP = 4  # llama.cpp's n_no_rope_layer_step for smollm3


class SmolLM3Converter(LlamaConverter):
    arch = gguf.MODEL_ARCH.SMOLLM3

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        llama_cpps = [int((i + 1) % NO_ROPE_STEP != 0) for i in range(self.n_layers)]
        given = self.hp("no_rope_layers", default=llama_cpps)
        if [int(x) for x in given] != llama_cpps:
            raise BadInput(
                f"config.json: no_rope_layers {given} is not llama.cpp's smollm3 pattern "
                f"(no RoPE in every {NO_ROPE_STEP}th layer)"
            )
        if self.config.get("use_sliding_window"):
            raise BadInput("config.json: use_sliding_window is set; llama.cpp's smollm3 has none")


CONVERTER = SmolLM3Converter
