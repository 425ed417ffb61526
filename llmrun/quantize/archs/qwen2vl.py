"""Qwen2-VL (Qwen2VLForConditionalGeneration), and what Qwen2.5-VL (qwen25vl.py) builds on.

The text part is Qwen2 (qwen2.py) as llama.cpp's qwen2vl architecture: multimodal
RoPE, whose sections of each head (time, height, width) config.json's mrope_section
gives; the Hub's checkpoints keep the text model at the top (`model.layers`),
transformers 5 under `model.language_model.`.

The projector (`quantize --mmproj`) is the ViT under `visual.`: llama.cpp's
"qwen2vl_merger". As llama.cpp's converter: each fused QKV is split into Q, K and V;
the 3-D patch convolution (two frames) into two 2-D ones, `v.patch_embd.weight` and
`.weight.1`; Qwen2-VL's vision_config calls the tower's width embed_dim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, ClassVar

import gguf
import numpy as np
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import TensorPlan
from llmrun.quantize.archs.multimodal import TextOfMultimodal
from llmrun.quantize.archs.projector import ProjectorConverter
from llmrun.quantize.archs.qwen2 import Qwen2Converter

QKV = ("q", "k", "v")
FRAMES = 2  # temporal_patch_size: llama.cpp's graph takes two


class Qwen2VLConverter(TextOfMultimodal, Qwen2Converter):
    arch = gguf.MODEL_ARCH.QWEN2VL

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        sections = list(self.rope().get("mrope_section") or [])
        if sections:
            w.add_rope_dimension_sections([*sections, 0, 0, 0, 0][:4])

    def rope_scaling(self, w: GGUFWriter, rope: dict[str, Any]) -> None:
        if str(rope["rope_type"]).lower() != "mrope":  # the sections, not a scaling
            super().rope_scaling(w, rope)


class Qwen2VLProjector(ProjectorConverter):
    projector_type = gguf.VisionProjectorType.QWEN2VL
    prefixes: ClassVar[dict[str, str]] = {"visual.": "visual.", "model.visual.": "visual."}

    def hyperparameters(self, config: dict[str, Any]) -> dict[str, Any]:
        vision = super().hyperparameters(config)
        if "embed_dim" in vision:  # Qwen2-VL's hidden_size is the text model's width, which
            # llama.cpp's converter writes as the feed-forward length (clip.cpp reads neither)
            width = {"hidden_size": vision["embed_dim"], "intermediate_size": vision["hidden_size"]}
            vision = {**vision, **width}
        return {"image_size": 560, **vision}  # llama.cpp's default; the ViT takes any size

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_vision_attention_layernorm_eps(float(self.ckpt.config.get("rms_norm_eps", 1e-6)))

    def inputs(self) -> Iterator[tuple[str, TensorPlan]]:
        for hf_name, plan in super().inputs():
            if ".qkv." not in hf_name:
                yield hf_name, plan
                continue
            rows = plan.shape[0] // len(QKV)
            for i, part in enumerate(QKV):
                third = replace(plan, shape=(rows, *plan.shape[1:]), layout=_rows(i, rows))
                yield hf_name.replace(".qkv.", f".{part}."), third

    def adjust(self, plan: TensorPlan, hf_name: str) -> Iterable[TensorPlan]:
        if not hf_name.endswith("patch_embed.proj.weight"):
            yield from super().adjust(plan, hf_name)
            return
        out, channels, frames, height, width = plan.shape
        if frames != FRAMES:
            raise BadInput(f"{hf_name}: {frames} frames per patch; llama.cpp takes {FRAMES}")
        for i, suffix in enumerate(("", ".1")):
            shape = (out, channels, height, width)
            frame = replace(plan, name=plan.name + suffix, shape=shape, layout=_frame(i))
            yield from super().adjust(frame, hf_name)


def _rows(i: int, n: int) -> Callable[[np.ndarray], np.ndarray]:
    """The i-th block of n rows, as a view."""
    return lambda a: a[i * n : (i + 1) * n]


def _frame(i: int) -> Callable[[np.ndarray], np.ndarray]:
    """Frame i of a (out, channels, frames, height, width) convolution, as a view."""
    return lambda a: a[:, :, i]


CONVERTER = Qwen2VLConverter
PROJECTOR = Qwen2VLProjector
