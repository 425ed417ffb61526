"""BERT encoders for embeddings (BertModel: all-MiniLM, bge), and what nomic_bert.py and
xlmroberta.py build on.

Quirks, as llama.cpp's converter has them:
- Bidirectional attention (`causal_attention = false`), layer norms with biases, learned
  absolute positions (`position_embd`) and token-type embeddings (`token_types`, whose
  row count is written as the tokenizer's token_type_count).
- How to pool a text into one vector comes from sentence-transformers' files, when the
  checkpoint has them: modules.json names the Pooling folder, whose config.json says mean,
  CLS or last token. Without them the GGUF says nothing and llama.cpp picks its default.
- Older checkpoints prefix names with `bert.` and call LayerNorm's parameters gamma and
  beta; the pooler (a dense layer for next-sentence prediction) and the masked-LM and NSP
  heads are left out: an embedding is the pooled hidden states.
- The vocabulary is WordPiece (vocab_encoders.py); XLM-RoBERTa's is a Unigram.
"""

from __future__ import annotations

import json
from typing import Any

import gguf
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter
from llmrun.quantize.vocab import Vocab
from llmrun.quantize.vocab_encoders import wordpiece

# Prefixes of older or task-head checkpoints, dropped before names are looked up.
PREFIXES = ("bert.", "roberta.")
# Checkpoint tensors an embedding does not use.
UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
UNUSED_PREFIXES = ("cls.predictions", "cls.seq_relationship", "lm_head.")
# LayerNorm parameters under their TensorFlow-era names.
OLD_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}

# sentence-transformers' Pooling config -> llama.cpp's pooling type, first match wins.
POOLING_FLAGS = (
    ("pooling_mode_mean_tokens", gguf.PoolingType.MEAN),
    ("pooling_mode_cls_token", gguf.PoolingType.CLS),
    ("pooling_mode_lasttoken", gguf.PoolingType.LAST),
)
POOLING_MODES = {
    "mean": gguf.PoolingType.MEAN,
    "cls": gguf.PoolingType.CLS,
    "lasttoken": gguf.PoolingType.LAST,
}


class BertConverter(Converter):
    arch = gguf.MODEL_ARCH.BERT

    def metadata(self, w: GGUFWriter) -> None:
        """llama.cpp's generic keys for the config's names, then the encoder's."""
        w.add_block_count(self.n_layers)
        w.add_context_length(self.context_length)
        w.add_embedding_length(int(self.hp("hidden_size", "n_embd")))
        w.add_feed_forward_length(int(self.hp("intermediate_size", "n_inner")))
        w.add_head_count(int(self.hp("num_attention_heads", "n_head")))
        if self.config.get("num_key_value_heads") is not None:
            w.add_head_count_kv(self.n_head_kv)
        rope_theta = self.hp("rope_theta", "rotary_emb_base", default=None)
        if rope_theta is not None:
            w.add_rope_freq_base(float(rope_theta))
        w.add_layer_norm_eps(float(self.hp("layer_norm_eps", "layer_norm_epsilon")))
        w.add_causal_attention(False)
        pooling = self.pooling()
        if pooling is not None:
            w.add_pooling_type(pooling)
        w.add_token_type_count(int(self.hp("type_vocab_size", default=1)))

    @property
    def context_length(self) -> int:
        return int(self.hp("max_position_embeddings", "n_positions"))

    def pooling(self) -> gguf.PoolingType | None:
        """The pooling of sentence-transformers' Pooling module, when the checkpoint has one."""
        folder = next(
            (m.get("path") for m in self.modules() if str(m.get("type", "")).endswith("Pooling")),
            None,
        )
        if folder is None:
            return None
        config: dict[str, Any] = self.ckpt.json(f"{folder}/config.json")
        for flag, kind in POOLING_FLAGS:
            if config.get(flag):
                return kind
        if config.get("pooling_mode") in POOLING_MODES:
            return POOLING_MODES[config["pooling_mode"]]
        raise BadInput(
            f"{self.ckpt.folder}/{folder}/config.json: a pooling other than mean, CLS or "
            "last token is not supported"
        )

    def modules(self) -> list[dict[str, Any]]:
        """sentence-transformers' modules.json (a list of the model's stages); [] if none."""
        path = self.ckpt.file("modules.json")
        if path is None:
            return []
        try:
            modules = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise BadInput(f"cannot read {path}: {e}") from None
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise BadInput(f"{path} is not a list of modules")
        return modules

    def vocab(self) -> Vocab:
        return wordpiece(self.ckpt, self.n_vocab)

    def rename(self, hf_name: str) -> str | None:
        name = hf_name
        for prefix in PREFIXES:
            name = name.removeprefix(prefix)
        for old, new in OLD_SUFFIXES.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        if name in UNUSED or name.startswith(UNUSED_PREFIXES):
            return None
        return super().rename(name)


CONVERTER = BertConverter
