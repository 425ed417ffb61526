"""GPT-OSS (GptOssForCausalLM), from OpenAI's MXFP4 release or a BF16/F16/F32 checkpoint:
attention with biases,
per-head sinks and a sliding window on every other layer, YaRN RoPE, and experts with
biases, stored stacked.

Quirks:
- transformers keeps each layer's experts as `mlp.experts.gate_up_proj` of n_expert x
  hidden x 2*ff, gate and up columns interleaved (gate, up, gate, ...), and `down_proj` of
  n_expert x ff x hidden: both transposed from llama.cpp's, which takes them as views.
  Their biases (`gate_up_proj_bias`, interleaved too, and `down_proj_bias`) go with them.
- `self_attn.sinks` lacks the `.weight` gguf-py's names expect.
- OpenAI's released checkpoints hold the experts in MXFP4 (`*_blocks`, `*_scales`: rows
  already out x in, gate and up rows interleaved). They are repacked into ggml's MXFP4
  blocks, whatever the type asked for, as llama.cpp's converter does (mxfp4.py), a
  layer's expert at a time; or decoded to floats with `dequantize_mxfp4`.
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
from llmrun.quantize import mxfp4
from llmrun.quantize.archs.base import TensorPlan
from llmrun.quantize.archs.moe import MoeConverter, transposed, viewed
from llmrun.quantize.checkpoint import SourceTensor

Layout = Callable[[np.ndarray], np.ndarray]
Read = Callable[[], Iterator[np.ndarray]]
QT = gguf.GGMLQuantizationType
PACKED = re.compile(
    r"(?P<stem>.+\.experts)\.(?P<what>gate_up_proj|down_proj)_(?P<part>blocks|scales)"
)
EXPERTS = re.compile(r"(?P<stem>.+\.experts)\.(?P<what>gate_up_proj|down_proj)(?P<bias>_bias)?")


def _columns(start: int) -> Layout:
    """Every other column from `start`, rows and columns swapped: one of gate or up."""
    return lambda a: a.swapaxes(-1, -2)[..., start::2, :]


def _every_other(start: int) -> Layout:
    return lambda a: a[..., start::2]


class GptOssConverter(MoeConverter):
    arch = gguf.MODEL_ARCH.GPT_OSS
    norm_top_k = False

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
        blocks: dict[str, SourceTensor] = {}
        for hf_name, plan in inputs:
            if (m := PACKED.fullmatch(hf_name)) is not None and plan.source is not None:
                key = f"{m['stem']}.{m['what']}"
                if m["part"] == "blocks":
                    blocks[key] = plan.source
                elif key not in blocks:
                    raise BadInput(f"the checkpoint has {hf_name} but no {key}_blocks")
                else:
                    yield from self.mxfp4(m["stem"], m["what"], blocks.pop(key), plan.source)
                continue
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
        if blocks:
            raise BadInput(f"the checkpoint has {next(iter(blocks))}_blocks but no _scales")

    def mxfp4(
        self, stem: str, what: str, blocks: SourceTensor, scales: SourceTensor
    ) -> Iterator[tuple[str, TensorPlan]]:
        """MXFP4 experts as plans that repack (or decode) them at write time, an expert at
        a time; gate_up's rows interleave gate and up."""
        n, rows, n_blocks, size = blocks.shape
        if (n, rows, n_blocks) != scales.shape or size != 16 or n != self.n_expert:
            raise BadInput(
                f"{blocks.name} {blocks.shape} and {scales.name} {scales.shape} are not "
                f"{self.n_expert} experts' MXFP4 blocks and scales"
            )
        picks = {"down_proj": [slice(None)], "gate_up_proj": [slice(0, None, 2), slice(1, None, 2)]}
        names = {"down_proj": ["down_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
        for pick, proj in zip(picks[what], names[what], strict=True):
            name = f"{stem}.{proj}.weight"
            shape = (n, len(range(rows)[pick]), n_blocks * mxfp4.BLOCK)
            fn = mxfp4.dequantize if self.dequantize_mxfp4 else mxfp4.to_ggml
            plan = TensorPlan(
                name,
                shape,
                None,
                parts=(blocks, scales),
                read=_per_expert(fn, blocks, scales, pick),
                raw_type=None if self.dequantize_mxfp4 else QT.MXFP4,
            )
            yield name, plan


def _per_expert(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    blocks: SourceTensor,
    scales: SourceTensor,
    rows: slice,
) -> Read:
    """Reads `fn(blocks, scales)` of `rows`, one expert after the other."""
    return lambda: (
        fn(b[rows], s[rows]) for b, s in zip(blocks.array(), scales.array(), strict=True)
    )


CONVERTER = GptOssConverter
