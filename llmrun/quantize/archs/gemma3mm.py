"""Gemma 3 with vision (Gemma3ForConditionalGeneration), text part only: Gemma 3's
language model (gemma3.py) from under `language_model.`; the vision tower is left out."""

from __future__ import annotations

from llmrun.quantize.archs.gemma3 import Gemma3Converter
from llmrun.quantize.archs.multimodal import TextOfMultimodal


class Gemma3TextOfMultimodalConverter(TextOfMultimodal, Gemma3Converter):
    pass


CONVERTER = Gemma3TextOfMultimodalConverter
