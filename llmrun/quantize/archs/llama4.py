"""Llama 4 (Llama4ForConditionalGeneration), text part only, as llama.cpp's llama4:
a mixture of experts (sigmoid router, a shared expert) in every
interleave_moe_layer_step-th layer, dense feed-forwards between; chunked attention with
every fourth layer global and without RoPE (NoPE); the vision tower is left out.

Quirks:
- config.json's intermediate_size is the experts' width, intermediate_size_mlp the
  dense layers': written as llama.cpp's expert and plain feed-forward lengths.
- Experts are stored stacked and transposed: `experts.gate_up_proj` of n_expert x
  hidden x 2*ff (gate columns, then up) and `experts.down_proj` of n_expert x ff x
  hidden; llama.cpp takes them as views.
- Q and K rows stay as stored: Llama 4 rotates interleaved pairs, as llama.cpp's graph.
- llama.cpp fixes the layer pattern (NoPE and global every fourth layer), the chunk
  (8192), the attention temperature of NoPE layers and the Q/K norm (all but the
  128-expert model) rather than reading them: configs that differ are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import gguf
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter, TensorPlan
from llmrun.quantize.archs.llama import LlamaConverter
from llmrun.quantize.archs.moe import FUSED, MoeConverter, transposed, viewed
from llmrun.quantize.archs.multimodal import TextOfMultimodal
from llmrun.quantize.checkpoint import Checkpoint

PATTERN_STEP = 4  # llama.cpp's: layers 4, 8, ... attend globally, without RoPE
# config.json key -> the value llama.cpp's llama4 assumes
FIXED: dict[str, Any] = {
    "attention_chunk_size": 8192,
    "attn_temperature_tuning": True,
    "floor_scale": 8192,
    "attn_scale": 0.1,
}


class Llama4Converter(TextOfMultimodal, MoeConverter, LlamaConverter):
    arch = gguf.MODEL_ARCH.LLAMA4
    norm_top_k = False

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        self.n_ff_expert = int(self.hp("intermediate_size"))
        self.config["intermediate_size"] = int(self.hp("intermediate_size_mlp"))
        self.step = int(self.hp("interleave_moe_layer_step"))
        self._check_fixed()

    def _check_fixed(self) -> None:
        n = range(self.n_layers)
        want = {
            "moe_layers": [i for i in n if (i + 1) % self.step == 0],
            "no_rope_layers": [int((i + 1) % PATTERN_STEP != 0) for i in n],
            "layer_types": [
                "chunked_attention" if (i + 1) % PATTERN_STEP else "full_attention" for i in n
            ],
            "use_qk_norm": self.n_expert != 128,
            **FIXED,
        }
        for key, value in want.items():
            given = self.config.get(key, value)
            if given != value:
                raise BadInput(f"config.json: {key} is {given}; llama.cpp's llama4 assumes {value}")

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_interleave_moe_layer_step(self.step)
        w.add_expert_feed_forward_length(self.n_ff_expert)

    def unfused(self, inputs: Iterable[tuple[str, TensorPlan]]) -> Iterator[tuple[str, TensorPlan]]:
        ff = self.n_ff_expert
        for hf_name, plan in inputs:
            m = FUSED.fullmatch(hf_name)
            if m is None:
                yield hf_name, plan
                continue
            stem = m["stem"]
            hidden = int(self.hp("hidden_size"))
            down = m["proj"] == "down_proj"
            want = (self.n_expert, ff, hidden) if down else (self.n_expert, hidden, 2 * ff)
            if plan.shape != want:
                raise BadInput(
                    f"tensor {hf_name} has shape {plan.shape}, not {want}: not the experts "
                    "in Llama 4's layout"
                )
            if down:
                yield viewed(plan, f"{stem}.down_proj.weight", transposed)
                continue
            yield viewed(plan, f"{stem}.gate_proj.weight", lambda a: transposed(a)[..., :ff, :])
            yield viewed(plan, f"{stem}.up_proj.weight", lambda a: transposed(a)[..., ff:, :])

    def adjust(self, plan: TensorPlan, hf_name: str) -> Iterable[TensorPlan]:
        return Converter.adjust(self, plan, hf_name)  # no Q/K permutation, unlike Llama


CONVERTER = Llama4Converter
