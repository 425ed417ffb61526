"""Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration): Qwen2-VL's text part (qwen2vl.py), and
its projector as llama.cpp's "qwen2.5vl_merger": SiLU gated MLPs and RMS norms in the ViT,
and window attention on all layers but every n-th (config.json's fullatt_block_indexes,
evenly spaced).
"""

from __future__ import annotations

import itertools

import gguf
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.qwen2vl import Qwen2VLConverter, Qwen2VLProjector


class Qwen25VLProjector(Qwen2VLProjector):
    projector_type = gguf.VisionProjectorType.QWEN25VL

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_vision_use_silu(True)
        w.add_vision_n_wa_pattern(self.window_pattern())

    def window_pattern(self) -> int:
        """Every n-th layer attends to the whole image, the others within windows."""
        full = self.hp("fullatt_block_indexes")
        n = full[0] + 1
        if any(b - a != n for a, b in itertools.pairwise(full)):
            raise BadInput(f"config.json: fullatt_block_indexes {full} are not evenly spaced")
        return int(n)


CONVERTER = Qwen2VLConverter
PROJECTOR = Qwen25VLProjector
