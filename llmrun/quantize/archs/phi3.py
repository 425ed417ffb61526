"""Phi-3 and Phi-3.5 mini (Phi3ForCausalLM).

Q, K and V come fused (`qkv_proj`, llama.cpp's attn_qkv) and so do the gate and up
projections (`gate_up_proj`, written as ffn_up of twice the width); NeoX-style RoPE,
so nothing is permuted. The 128k-context models' "longrope" scaling becomes two
tensors of per-dimension factors and an attention factor. llama.cpp runs Phi-3
without a sliding window, as transformers does unless the window is shorter than
the context; the window is written for Phi-3.5's sake (0 means none).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import gguf
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter, TensorPlan, computed


class Phi3Converter(Converter):
    arch = gguf.MODEL_ARCH.PHI3

    @property
    def rope_dims(self) -> int:
        partial = float(self.rope().get("partial_rotary_factor", 1.0))
        return int(partial * self.hp("hidden_size")) // self.n_head

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_rope_dimension_count(self.rope_dims)
        w.add_sliding_window(int(self.hp("sliding_window", default=0) or 0))
        original = self.hp("original_max_position_embeddings", default=None)
        if original:
            w.add_rope_scaling_orig_ctx_len(int(original))
        longrope = self.longrope()
        if longrope is not None:
            w.add_rope_scaling_attn_factors(longrope["attn_factor"])

    def rope_scaling(self, w: GGUFWriter, rope: dict[str, Any]) -> None:
        if str(rope["rope_type"]).lower() not in ("longrope", "su"):
            super().rope_scaling(w, rope)

    def longrope(self) -> dict[str, Any] | None:
        rope = self.rope()
        if str(rope["rope_type"]).lower() not in ("longrope", "su"):
            return None
        long, short = rope.get("long_factor"), rope.get("short_factor")
        if not long or not short or len(long) != len(short) or len(long) * 2 != self.rope_dims:
            raise BadInput("config.json: longrope needs long_factor and short_factor of rope_dim/2")
        ctx = int(self.hp("max_position_embeddings"))
        original = int(self.hp("original_max_position_embeddings"))
        scale = ctx / original
        attn = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
        return {"long": long, "short": short, "attn_factor": attn}

    def extra(self) -> Iterator[TensorPlan]:
        longrope = self.longrope()
        if longrope is not None:
            yield computed("rope_factors_long.weight", longrope["long"])
            yield computed("rope_factors_short.weight", longrope["short"])


CONVERTER = Phi3Converter
