"""Qwen3 (Qwen3ForCausalLM): Qwen2 without the Q/K/V biases, with per-head Q and K norms.

The head size is its own setting (`head_dim`, 128 for every Qwen3), not hidden/heads;
the base converter writes it as the key and value lengths.
"""

from __future__ import annotations

import gguf

from llmrun.quantize.archs.base import Converter


class Qwen3Converter(Converter):
    arch = gguf.MODEL_ARCH.QWEN3


CONVERTER = Qwen3Converter
