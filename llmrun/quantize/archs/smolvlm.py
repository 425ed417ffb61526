"""SmolVLM and Idefics3 (SmolVLMForConditionalGeneration, Idefics3ForConditionalGeneration).

The text part is a Llama (llama.py) under `model.text_model.`. The projector
(`quantize --mmproj`) is a SigLIP tower under `model.vision_model.` and a connector
that folds each 2x2 (config.json's scale_factor) patches into one token, one linear layer
(`model.connector.modality_projection.proj`): llama.cpp's "idefics3" projector. As
llama.cpp's converter: the embeddings stay F32, GELU, the tower's layer-norm epsilon,
and the longest image edge the processor resizes to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter

from llmrun.quantize.archs.llama import LlamaConverter
from llmrun.quantize.archs.multimodal import TextOfMultimodal
from llmrun.quantize.archs.projector import KEEP_F32, ProjectorConverter

# SmolVLM2's vision_config leaves these out: transformers' defaults
SMOLVLM_VISION_DEFAULTS = {
    "hidden_size": 1152,
    "num_attention_heads": 16,
    "intermediate_size": 3072,
}


class SmolVLMConverter(TextOfMultimodal, LlamaConverter):
    def hyperparameters(self, config: dict[str, Any]) -> dict[str, Any]:
        # SmolVLM2's text_config leaves the head count out: transformers' default
        return {"num_attention_heads": 32, **super().hyperparameters(config)}


class SmolVLMProjector(ProjectorConverter):
    projector_type = gguf.VisionProjectorType.IDEFICS3
    prefixes: ClassVar[dict[str, str]] = {
        "model.vision_model.": "model.vision_model.",
        "model.connector.": "model.connector.",
    }
    fixed_types: ClassVar[dict[str, Callable[[QT], QT]]] = {".embeddings.": KEEP_F32}

    def hyperparameters(self, config: dict[str, Any]) -> dict[str, Any]:
        vision = super().hyperparameters(config)
        if vision.get("model_type") == "smolvlm_vision":
            vision = {**SMOLVLM_VISION_DEFAULTS, **vision}
        return vision

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_vision_attention_layernorm_eps(float(self.hp("layer_norm_eps", default=1e-5)))
        w.add_vision_projector_scale_factor(int(self.ckpt.config.get("scale_factor", 2)))
        w.add_vision_use_gelu(True)
        edge = (self.preprocessor.get("size") or {}).get("longest_edge")
        w.add_vision_preproc_image_size(int(edge or self.hp("image_size")))


CONVERTER = SmolVLMConverter
PROJECTOR = SmolVLMProjector
