"""One module per architecture family, found through config.json's `architectures`.

Each module defines `CONVERTER`, a subclass of `archs.base.Converter`. Families
that share a module (Mistral is Llama to llama.cpp) share a row here. An image-and-text
family's module also defines `PROJECTOR` (a `projector.ProjectorConverter`): its vision
tower as an mmproj file, for `quantize --mmproj`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter
from llmrun.quantize.checkpoint import Checkpoint

if TYPE_CHECKING:
    from llmrun.quantize.archs.projector import ProjectorConverter

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
    "Idefics3ForConditionalGeneration": "smolvlm",
    "SmolVLMForConditionalGeneration": "smolvlm",
    "Qwen2VLForConditionalGeneration": "qwen2vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen25vl",
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
    # Encoders, for embeddings (`serve --embeddings`, `llmrun embed`)
    "BertModel": "bert",
    "NomicBertModel": "nomic_bert",
    "XLMRobertaModel": "xlmroberta",
    "Lfm2ForCausalLM": "lfm2",
    "Llama4ForConditionalGeneration": "llama4",
}


def converter_for(ckpt: Checkpoint) -> Converter:
    return _module(ckpt).CONVERTER(ckpt)


def projector_for(ckpt: Checkpoint) -> ProjectorConverter:
    """The converter of the checkpoint's vision tower and projector (the mmproj file)."""
    module = _module(ckpt)
    if not hasattr(module, "PROJECTOR"):
        raise BadInput(
            f"{ckpt.folder}: llmrun writes no projector (mmproj) for {ckpt.architecture}",
            f"--mmproj takes {', '.join(projector_architectures())}",
        )
    return module.PROJECTOR(ckpt)


def projector_architectures() -> list[str]:
    """The architectures whose projector `quantize --mmproj` writes."""
    return [a for a, m in ARCHITECTURES.items() if hasattr(_import(m), "PROJECTOR")]


def _module(ckpt: Checkpoint) -> ModuleType:
    arch = ckpt.architecture
    module = ARCHITECTURES.get(arch or "")
    if module is None:
        what = f"architecture {arch!r}" if arch else "a config.json without architectures"
        raise BadInput(
            f"{ckpt.folder}: {what} is not supported",
            # Two dozen names do not fit one line: the count, and where the list is.
            f"{len(ARCHITECTURES)} are: `llmrun quantize --list-archs` lists them",
        )
    return _import(module)


def _import(module: str) -> ModuleType:
    return importlib.import_module(f"llmrun.quantize.archs.{module}")
