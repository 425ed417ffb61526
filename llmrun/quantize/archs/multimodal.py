"""The text part of an image-and-text checkpoint: its language model's tensors only.

Checkpoints store the language model under `language_model.` (transformers' saved
layout, `language_model.model.layers...`), `model.language_model.` (transformers 5's
own), `model.text_model.` (Idefics3, SmolVLM) or at the top (Qwen2.5-VL's `model.layers`),
beside a vision tower and projector that llama.cpp reads from a separate mmproj
file (projector.py, `quantize --mmproj`); those are left out here. The base converter
already reads text_config.
"""

from __future__ import annotations

from collections.abc import Iterator

from llmrun.quantize.archs.base import Converter, TensorPlan

# checkpoint prefix -> what the text model's own checkpoint would call it
TEXT_PREFIXES = {
    "model.language_model.": "model.",
    "model.text_model.": "model.",
    "language_model.": "",
}
VISION_PREFIXES = (
    "vision_tower.",
    "vision_model.",  # Llama 4's
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.vision_model.",
    "model.multi_modal_projector.",
    "model.vision_model.",  # Idefics3, SmolVLM
    "model.connector.",
    "visual.",  # Qwen2-VL, Qwen2.5-VL
    "model.visual.",
)


def text_name(hf_name: str) -> str | None:
    """The name of a tensor in the text model's own layout; None for the vision part."""
    if hf_name.startswith(VISION_PREFIXES):
        return None
    for prefix, replacement in TEXT_PREFIXES.items():
        if hf_name.startswith(prefix):
            return replacement + hf_name[len(prefix) :]
    return hf_name  # lm_head.weight


class TextOfMultimodal(Converter):
    """Put first among a family converter's bases: it renames inputs, then the family converts."""

    def inputs(self) -> Iterator[tuple[str, TensorPlan]]:
        for hf_name, plan in super().inputs():
            if (name := text_name(hf_name)) is not None:
                yield name, plan
