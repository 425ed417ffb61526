"""XLM-RoBERTa encoders for embeddings (XLMRobertaModel: bge-m3, multilingual-e5).

A BERT (bert.py) with two differences, as llama.cpp's converter has them:
- RoBERTa numbers positions from pad_token_id + 1 (fairseq's habit), so the first
  pad_token_id + 1 rows of the position table are never used: they are cut off, and the
  context length is that many positions shorter.
- Its vocabulary is a SentencePiece Unigram (sentencepiece.bpe.model), exported as
  llama.cpp's `t5` tokenizer (vocab_encoders.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import gguf

from llmrun.quantize.archs.base import TensorPlan
from llmrun.quantize.archs.bert import BertConverter
from llmrun.quantize.vocab import Vocab
from llmrun.quantize.vocab_encoders import unigram


class XlmRobertaConverter(BertConverter):
    arch = gguf.MODEL_ARCH.BERT

    @property
    def position_offset(self) -> int:
        pad = self.config.get("pad_token_id")
        return 0 if pad is None else int(pad) + 1

    @property
    def context_length(self) -> int:
        return super().context_length - self.position_offset

    def vocab(self) -> Vocab:
        return unigram(self.ckpt, self.n_vocab)

    def adjust(self, plan: TensorPlan, hf_name: str) -> Iterable[TensorPlan]:
        skip = self.position_offset
        if plan.kind == gguf.MODEL_TENSOR.POS_EMBD and skip:
            shape = (plan.shape[0] - skip, *plan.shape[1:])
            plan = replace(plan, shape=shape, layout=lambda a: a[skip:])
        yield plan


CONVERTER = XlmRobertaConverter
