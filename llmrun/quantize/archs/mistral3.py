"""Mistral Small 3.1/3.2 with vision (Mistral3ForConditionalGeneration), text part only:
a Mistral (Llama to llama.cpp: Q/K rows permuted) from under `language_model.`, written
as llama.cpp's mistral3 architecture; the Pixtral vision tower is left out.

Only text models of model_type "mistral": Ministral 3's (YaRN with Llama 4's attention
temperature) and Mistral 4's (mixture of experts) need more than this converter writes.
"""

from __future__ import annotations

import gguf

from llmrun.errors import BadInput
from llmrun.quantize.archs.llama import LlamaConverter
from llmrun.quantize.archs.multimodal import TextOfMultimodal
from llmrun.quantize.checkpoint import Checkpoint


class Mistral3Converter(TextOfMultimodal, LlamaConverter):
    arch = gguf.MODEL_ARCH.MISTRAL3

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        kind = self.config.get("model_type")
        if kind != "mistral":
            raise BadInput(f"config.json: a {kind!r} text model; only 'mistral' is supported")


CONVERTER = Mistral3Converter
