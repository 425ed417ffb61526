"""LFM2 (Lfm2ForCausalLM): a hybrid of gated short-convolution layers and attention
layers (config.json's layer_types, "conv" or "full_attention"), as llama.cpp's lfm2.

Quirks:
- The key-value head count is per layer: 0 for a convolution layer, which tells
  llama.cpp's graph that the layer convolves.
- Each convolution kernel is stored as a 1-channel Conv1d weight (hidden x 1 x L);
  llama.cpp wants it 2-D (hidden x L).
- The feed-forward width written is the one the model builds: with
  block_auto_adjust_ff_dim, 2/3 of intermediate_size, times block_ffn_dim_multiplier,
  rounded up to block_multiple_of.
- Attention RoPE is NeoX-style in llama.cpp's graph: Q and K rows stay as stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import gguf
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter, TensorPlan

LAYER_KINDS = ("conv", "full_attention")


class Lfm2Converter(Converter):
    arch = gguf.MODEL_ARCH.LFM2

    @property
    def layer_types(self) -> list[str]:
        kinds = list(self.hp("layer_types"))
        if len(kinds) != self.n_layers or not set(kinds) <= set(LAYER_KINDS):
            raise BadInput(
                f"config.json: layer_types {kinds} is not one of {LAYER_KINDS} per layer "
                f"for {self.n_layers} layers"
            )
        return kinds

    def feed_forward_length(self) -> int:
        n_ff = int(self.hp("block_ff_dim", "intermediate_size"))
        if self.hp("block_auto_adjust_ff_dim"):
            n_ff = int(2 * n_ff / 3)
            if (multiplier := self.config.get("block_ffn_dim_multiplier")) is not None:
                n_ff = int(multiplier * n_ff)
            step = int(self.hp("block_multiple_of"))
            n_ff = step * ((n_ff + step - 1) // step)
        return n_ff

    def metadata(self, w: GGUFWriter) -> None:
        w.add_block_count(self.n_layers)
        w.add_context_length(int(self.hp("max_position_embeddings")))
        w.add_embedding_length(int(self.hp("hidden_size")))
        w.add_feed_forward_length(self.feed_forward_length())
        w.add_head_count(self.n_head)
        w.add_head_count_kv([0 if t == "conv" else self.n_head_kv for t in self.layer_types])
        rope = self.rope()
        if rope["rope_theta"] is not None:
            w.add_rope_freq_base(float(rope["rope_theta"]))
        self.rope_scaling(w, rope)
        w.add_layer_norm_rms_eps(float(self.hp("norm_eps")))
        w.add_vocab_size(self.n_vocab)
        w.add_shortconv_l_cache(int(self.hp("conv_L_cache")))

    def adjust(self, plan: TensorPlan, hf_name: str) -> Iterable[TensorPlan]:
        if plan.kind == gguf.MODEL_TENSOR.SHORTCONV_CONV and len(plan.shape) == 3:
            shape = (plan.shape[0], plan.shape[2])
            plan = replace(plan, shape=shape, layout=lambda a: a.reshape(shape))
        yield plan


CONVERTER = Lfm2Converter
