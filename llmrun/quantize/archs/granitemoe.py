"""Granite MoE (GraniteMoeForCausalLM, and GraniteMoeSharedForCausalLM with a shared
expert): dense Granite's attention and multipliers (granite.py), and experts stored
already stacked.

Quirks:
- Each layer's experts are one `input_linear` (n_expert x 2*ff x hidden: gate rows,
  then up rows) and one `output_linear` (down); the shared expert's `input_linear`
  is fused the same way. The fused ones are split into llama.cpp's gate and up.
- llama.cpp's granitemoe graph renormalizes the chosen experts' weights, as Granite's
  router does (a softmax over the top-k logits).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import gguf

from llmrun.quantize.archs.base import TensorPlan
from llmrun.quantize.archs.granite import GraniteConverter
from llmrun.quantize.archs.moe import MoeConverter, split_gate_up

T = gguf.MODEL_TENSOR
# Fused checkpoint tensor -> the GGUF tensors of its gate and up halves
FUSED: dict[str, tuple[gguf.MODEL_TENSOR, gguf.MODEL_TENSOR]] = {
    "block_sparse_moe.input_linear.weight": (T.FFN_GATE_EXP, T.FFN_UP_EXP),
    "shared_mlp.input_linear.weight": (T.FFN_GATE_SHEXP, T.FFN_UP_SHEXP),
}
LAYER = re.compile(r"\.layers\.(\d+)\.(.+)")


class GraniteMoeConverter(MoeConverter, GraniteConverter):
    arch = gguf.MODEL_ARCH.GRANITE_MOE
    norm_top_k = True

    def inputs(self) -> Iterator[tuple[str, TensorPlan]]:
        for hf_name, plan in super().inputs():
            m = LAYER.search(hf_name)
            halves = FUSED.get(m[2]) if m else None
            if m is None or halves is None:
                yield hf_name, plan
                continue
            # GGUF names: rename() maps them to themselves
            gate, up = (gguf.TENSOR_NAMES[t].format(bid=int(m[1])) + ".weight" for t in halves)
            yield from split_gate_up(plan, gate, up)


CONVERTER = GraniteMoeConverter
