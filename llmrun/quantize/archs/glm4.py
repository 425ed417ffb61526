"""GLM-4-0414 (Glm4ForCausalLM): norms after attention and after the feed-forward as well
as before, Q/K/V biases, gate and up fused (`gate_up_proj`, written as ffn_up of twice
the width, as llama.cpp's glm4 reads it), and RoPE over part of each head
(partial_rotary_factor, half by default). The rotary pairs need no permutation.

Its tokenizer files leave special tokens unnamed (no BOS, no end of turn): llama.cpp's
converter fills in <|endoftext|> as BOS, EOS and UNK and <|user|> as end of turn where
the files name none, and so do we.
"""

from __future__ import annotations

import gguf
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter
from llmrun.quantize.vocab import Vocab

# special token kind -> GLM-4's token for it, where the tokenizer files name none
SPECIALS = {
    "eos": "<|endoftext|>",
    "eot": "<|user|>",
    "unk": "<|endoftext|>",
    "bos": "<|endoftext|>",
}


class Glm4Converter(Converter):
    arch = gguf.MODEL_ARCH.GLM4

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        partial = float(self.rope().get("partial_rotary_factor", 0.5))
        w.add_rope_dimension_count(int(self.head_dim * partial))

    def adjust_vocab(self, vocab: Vocab) -> None:
        ids = {t: i for i, t in enumerate(vocab.tokens)}
        named = vocab.special.special_token_ids
        for kind, token in SPECIALS.items():
            if kind in named:
                continue
            if token not in ids:
                raise BadInput(f"GLM-4's tokenizer has no {token} token (its {kind})")
            named[kind] = ids[token]


CONVERTER = Glm4Converter
