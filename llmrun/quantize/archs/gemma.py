"""Gemma (GemmaForCausalLM), and what Gemma 2 and 3 inherit from it.

Quirks:
- Gemma's RMSNorm multiplies by (1 + weight); llama.cpp multiplies by the weight,
  so every norm weight is written plus one (in float32, as transformers computes it).
- The output layer is the token embedding; an `lm_head.weight` some tools save
  anyway is left out.
- The head size is explicit (`head_dim`), written as the key and value lengths.
- Gemma 2 and 3 alternate sliding-window and global layers; `swa_pattern` writes
  which is which from config.json's `layer_types`.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf
from gguf import GGUFWriter

from llmrun.quantize.archs.base import Converter, TensorPlan


def plus_one(values):  # type: ignore[no-untyped-def]
    return values + 1.0


class GemmaConverter(Converter):
    arch = gguf.MODEL_ARCH.GEMMA

    def swa_pattern(self, w: GGUFWriter) -> None:
        """Which layers use sliding-window attention, as config.json lists them (Gemma 2, 3)."""
        kinds = self.config.get("layer_types")
        if isinstance(kinds, list) and len(kinds) == self.n_layers:
            w.add_sliding_window_pattern([k == "sliding_attention" for k in kinds])

    def rename(self, hf_name: str) -> str | None:
        return None if hf_name == "lm_head.weight" else super().rename(hf_name)

    def adjust(self, plan: TensorPlan, hf_name: str) -> Iterable[TensorPlan]:
        yield plan.with_values(plus_one) if hf_name.endswith("norm.weight") else plan


CONVERTER = GemmaConverter
