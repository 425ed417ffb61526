"""Nomic's BERT for embeddings (NomicBertModel: nomic-embed-text v1, v1.5).

A BERT (bert.py) with rotary positions instead of a position table, Q/K/V fused
(`Wqkv`), a SwiGLU feed-forward (fc11 up, fc12 gate, fc2 down), no biases, and
GPT-2-style config names (n_embd, n_head, n_inner, n_positions). nomic-embed-text v1 and
v1.5 declare 8192 positions but were trained on 2048, which is what is written, as
llama.cpp's converter does. Its vocabulary is WordPiece, or XLM-RoBERTa's Unigram for
the multilingual v2; v2's mixture of experts is not supported.
"""

from __future__ import annotations

import gguf
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.bert import BertConverter
from llmrun.quantize.checkpoint import Checkpoint
from llmrun.quantize.vocab import Vocab
from llmrun.quantize.vocab_encoders import tokenizer_kind, unigram, wordpiece

# (n_positions, max_trained_positions) -> the context length llama.cpp's converter writes
TRAINED_POSITIONS = {(8192, 2048): 2048, (2048, 2048): 512}
# What llama.cpp's nomic-bert graph computes; a config that says otherwise is refused.
REQUIRED = {
    "activation_function": "swiglu",
    "causal": False,
    "qkv_proj_bias": False,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "prenorm": False,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
}
VOCABS = {"WordPiece": wordpiece, "Unigram": unigram}


class NomicBertConverter(BertConverter):
    arch = gguf.MODEL_ARCH.NOMIC_BERT

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        if self.config.get("moe_every_n_layers"):
            raise BadInput("nomic-embed-text v2's mixture of experts is not supported")
        for key, want in REQUIRED.items():
            if self.config.get(key) != want:
                raise BadInput(
                    f"config.json: {key} = {self.config.get(key)!r} is not supported "
                    f"(llama.cpp's nomic-bert needs {want!r})"
                )

    @property
    def context_length(self) -> int:
        positions = (
            int(self.hp("n_positions")),
            int(self.hp("max_trained_positions", default=2048)),
        )
        if positions not in TRAINED_POSITIONS:
            raise BadInput(
                f"config.json: n_positions = {positions[0]} with max_trained_positions = "
                f"{positions[1]} is not a nomic-embed-text model llama.cpp knows"
            )
        return TRAINED_POSITIONS[positions]

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        # llama.cpp's converter reads the config through transformers' NomicBertConfig,
        # which adds head_dim; written alike (llama.cpp derives the same value without it).
        head_dim = int(self.hp("n_embd", "hidden_size")) // int(self.hp("n_head"))
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)

    def vocab(self) -> Vocab:
        return VOCABS[tokenizer_kind(self.ckpt)](self.ckpt, self.n_vocab)


CONVERTER = NomicBertConverter
