"""GPT-OSS (GptOssForCausalLM), from a BF16/F16/F32 checkpoint: attention with biases,
per-head sinks and a sliding window on every other layer, YaRN RoPE, and experts with
biases, stored stacked.

Quirks:
- transformers keeps each layer's experts as `mlp.experts.gate_up_proj` of n_expert x
  hidden x 2*ff, gate and up columns interleaved (gate, up, gate, ...), and `down_proj` of
  n_expert x ff x hidden: both transposed from llama.cpp's, which takes them as views.
  Their biases (`gate_up_proj_bias`, interleaved too, and `down_proj_bias`) go with them.
- `self_attn.sinks` lacks the `.weight` gguf-py's names expect.
- OpenAI's released checkpoints hold the experts in MXFP4 (`*_blocks`, `*_scales`), which
  llmrun does not repack yet: those are refused, with the way around.
- llama.cpp's gpt-oss graph takes the softmax over the chosen experts' logits, as
  transformers does, and the SwiGLU limit and alpha as constants.
- llama.cpp's YaRN rounds the correction range outwards, as transformers' `truncate: true`;
  GPT-OSS says false, which no GGUF key expresses: its logits differ by about 1e-3 there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

import gguf
import numpy as np
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import TensorPlan
from llmrun.quantize.archs.moe import MoeConverter, transposed, viewed
from llmrun.quantize.checkpoint import Checkpoint

Layout = Callable[[np.ndarray], np.ndarray]
EXPERTS = re.compile(r"(?P<stem>.+\.experts)\.(?P<what>gate_up_proj|down_proj)(?P<bias>_bias)?")


def _columns(start: int) -> Layout:
    """Every other column from `start`, rows and columns swapped: one of gate or up."""
    return lambda a: a.swapaxes(-1, -2)[..., start::2, :]


def _every_other(start: int) -> Layout:
    return lambda a: a[..., start::2]


class GptOssConverter(MoeConverter):
    arch = gguf.MODEL_ARCH.GPT_OSS
    norm_top_k = False

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        if any(name.endswith("_blocks") for name in ckpt.tensors):
            raise BadInput(
                f"{ckpt.folder}: the experts are MXFP4, which llmrun cannot convert yet",
                "convert a BF16 release of the model (such as unsloth/gpt-oss-20b-BF16)",
            )

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_sliding_window(int(self.hp("sliding_window")))
        w.add_expert_feed_forward_length(int(self.hp("intermediate_size")))

    def inputs(self) -> Iterator[tuple[str, TensorPlan]]:
        for hf_name, plan in super().inputs():
            if hf_name.endswith(".self_attn.sinks"):
                hf_name += ".weight"
            yield hf_name, plan

    def unfused(self, inputs: Iterable[tuple[str, TensorPlan]]) -> Iterator[tuple[str, TensorPlan]]:
        for hf_name, plan in inputs:
            m = EXPERTS.fullmatch(hf_name)
            if m is None:
                yield hf_name, plan
                continue
            bias = m["bias"] is not None
            stem, suffix = m["stem"], "bias" if bias else "weight"
            if m["what"] == "down_proj":
                yield viewed(plan, f"{stem}.down_proj.{suffix}", None if bias else transposed)
                continue
            pick = _every_other if bias else _columns
            yield viewed(plan, f"{stem}.gate_proj.{suffix}", pick(0))
            yield viewed(plan, f"{stem}.up_proj.{suffix}", pick(1))


CONVERTER = GptOssConverter
