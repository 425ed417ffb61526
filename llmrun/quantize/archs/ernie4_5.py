"""ERNIE 4.5, dense (Ernie4_5ForCausalLM): Llama's layout with the rotary pairs already
interleaved as llama.cpp's normal RoPE wants them, so nothing is permuted.

Checkpoints in transformers' layout only (separate Q, K and V); the older remote-code
layout (`ernie.` prefix, fused qkv_proj) is not handled here.
"""

from __future__ import annotations

import gguf

from llmrun.quantize.archs.base import Converter


class Ernie45Converter(Converter):
    arch = gguf.MODEL_ARCH.ERNIE4_5


CONVERTER = Ernie45Converter
