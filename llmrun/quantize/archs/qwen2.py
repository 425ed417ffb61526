"""Qwen2 and Qwen2.5 (Qwen2ForCausalLM).

Llama's layout with biases on Q, K and V, and NeoX-style RoPE: llama.cpp's qwen2
graph rotates the halves as Hugging Face stores them, so nothing is permuted.
"""

from __future__ import annotations

import gguf

from llmrun.quantize.archs.base import Converter


class Qwen2Converter(Converter):
    arch = gguf.MODEL_ARCH.QWEN2


CONVERTER = Qwen2Converter
