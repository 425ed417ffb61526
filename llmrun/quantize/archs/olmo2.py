"""OLMo 2 (Olmo2ForCausalLM): norms after attention and after the feed-forward instead of
before them, Q/K norms over the whole projection (not per head), NeoX-style RoPE.

Nothing is renamed or permuted beyond gguf-py's table; llama.cpp's olmo2 graph computes
the head size as hidden/heads, so a checkpoint with its own head_dim is refused.
"""

from __future__ import annotations

import gguf

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter
from llmrun.quantize.checkpoint import Checkpoint


class Olmo2Converter(Converter):
    arch = gguf.MODEL_ARCH.OLMO2

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        if self.head_dim * self.n_head != int(self.hp("hidden_size")):
            raise BadInput(
                f"config.json: head_dim {self.head_dim} is not hidden_size/num_attention_heads, "
                "which llama.cpp's olmo2 assumes"
            )


CONVERTER = Olmo2Converter
