"""Gemma 3 with vision (Gemma3ForConditionalGeneration).

The text part is Gemma 3's language model (gemma3.py) from under `language_model.`.
The projector (`quantize --mmproj`) is a SigLIP tower (`vision_tower.vision_model.`) and Gemma 3's
projector (`multi_modal_projector.`: an RMSNorm, +1 as every Gemma norm, and one
matrix): llama.cpp's "gemma3" projector, which pools the patches down to
`image_seq_length` tokens (256 in the released models; a tiny model writes its factor).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter

from llmrun.quantize.archs.base import TensorPlan, always
from llmrun.quantize.archs.gemma import plus_one
from llmrun.quantize.archs.gemma3 import Gemma3Converter
from llmrun.quantize.archs.multimodal import TextOfMultimodal
from llmrun.quantize.archs.projector import KEEP_F32, ProjectorConverter

DEFAULT_POOLING = 4  # what llama.cpp assumes: 64x64 patches pooled to 16x16 tokens


class Gemma3TextOfMultimodalConverter(TextOfMultimodal, Gemma3Converter):
    pass


class Gemma3Projector(ProjectorConverter):
    projector_type = gguf.VisionProjectorType.GEMMA3
    prefixes: ClassVar[dict[str, str]] = {
        "vision_tower.vision_model.": "vision_tower.vision_model.",
        "multi_modal_projector.": "multi_modal_projector.",
        # transformers 5 leaves SigLIP's vision_model. out (and saves without model.)
        "vision_tower.": "vision_tower.vision_model.",
        "model.vision_tower.": "vision_tower.vision_model.",
        "model.multi_modal_projector.": "multi_modal_projector.",
    }
    # the input projection in F16 whatever was asked (llama.cpp issue 13025)
    fixed_types: ClassVar[dict[str, Callable[[QT], QT]]] = {
        "input_projection": always(QT.F16),
        ".embeddings.": KEEP_F32,
    }

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_vision_attention_layernorm_eps(float(self.hp("layer_norm_eps", default=1e-6)))
        w.add_vision_use_gelu(True)
        tokens = int(self.preprocessor.get("image_seq_length", 256))
        pooling = (int(self.hp("image_size")) // int(self.hp("patch_size"))) // int(tokens**0.5)
        if pooling > 0 and pooling != DEFAULT_POOLING:
            w.add_vision_projector_scale_factor(pooling)

    def tower_name(self, hf_name: str) -> str | None:
        name = super().tower_name(hf_name)
        if name is None or "vision_model.head." in name:  # a SigLIP head Gemma does not use
            return None
        return name.replace("_weight", ".weight")  # mm_input_projection_weight

    def adjust(self, plan: TensorPlan, hf_name: str) -> Iterable[TensorPlan]:
        if "soft_emb_norm.weight" in hf_name:
            plan = plan.with_values(plus_one)
        yield from super().adjust(plan, hf_name)


CONVERTER = Gemma3TextOfMultimodalConverter
PROJECTOR = Gemma3Projector
