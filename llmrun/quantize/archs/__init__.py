"""One module per architecture family, found through config.json's `architectures`.

Each module defines `CONVERTER`, a subclass of `archs.base.Converter`. Families
that share a module (Mistral is Llama to llama.cpp) share a row here.
"""

from __future__ import annotations

import importlib

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter
from llmrun.quantize.checkpoint import Checkpoint

# config.json "architectures"[0] -> module of llmrun.quantize.archs
ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Mistral3ForConditionalGeneration": "mistral3",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3mm",
    "Phi3ForCausalLM": "phi3",
    "Qwen3MoeForCausalLM": "qwen3moe",
    "Qwen2MoeForCausalLM": "qwen2moe",
    "MixtralForCausalLM": "mixtral",
    "OlmoeForCausalLM": "olmoe",
    "GraniteForCausalLM": "granite",
    "Olmo2ForCausalLM": "olmo2",
    "SmolLM3ForCausalLM": "smollm3",
    "Glm4ForCausalLM": "glm4",
    "Exaone4ForCausalLM": "exaone4",
    "Ernie4_5ForCausalLM": "ernie4_5",
    "GraniteMoeForCausalLM": "granitemoe",
    "GraniteMoeSharedForCausalLM": "granitemoe",
    "GptOssForCausalLM": "gptoss",
    "Lfm2ForCausalLM": "lfm2",
    "Llama4ForConditionalGeneration": "llama4",
}


def converter_for(ckpt: Checkpoint) -> Converter:
    arch = ckpt.architecture
    module = ARCHITECTURES.get(arch or "")
    if module is None:
        what = f"architecture {arch!r}" if arch else "a config.json without architectures"
        raise BadInput(
            f"{ckpt.folder}: {what} is not supported",
            # Two dozen names do not fit one line: the count, and where the list is.
            f"{len(ARCHITECTURES)} are: `llmrun quantize --list-archs` lists them",
        )
    return importlib.import_module(f"llmrun.quantize.archs.{module}").CONVERTER(ckpt)
