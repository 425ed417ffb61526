"""Pre-quantized checkpoints: config.json's quantization_config, and weights decoded as read.

One module per scheme, found through `quant_method`; each reads its settings into a
`base.Scheme`: how its weights are packed and how they decode. The packed tensors of a
weight become one float32 tensor under the weight's own name, so every architecture
module converts the checkpoint as if it had never been quantized. Decoding is exact:
scale * (q - zero) in float32, as llama.cpp's converter computes it.
"""

from __future__ import annotations

import importlib
from typing import Any

from llmrun.errors import BadInput
from llmrun.quantize.checkpoint import SourceTensor
from llmrun.quantize.imports.base import dequantized

# quantization_config "quant_method" -> module of llmrun.quantize.imports
SCHEMES: dict[str, str] = {
    "gptq": "gptq",
    "awq": "awq",
    "compressed-tensors": "compressed",
    "fp8": "fp8",
}
# Schemes that an architecture's own module reads (not dequantized here): gpt-oss's MXFP4
# experts, which archs/gptoss.py keeps as MXFP4 as llama.cpp does.
READ_BY_ARCHITECTURE = ("mxfp4",)


def quantization_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """config.json's quantization_config (or its text model's), if any."""
    for where in (config, config.get("text_config") or {}):
        qconfig = where.get("quantization_config")
        if isinstance(qconfig, dict) and qconfig:
            return qconfig
    return None


def dequantize_checkpoint(
    config: dict[str, Any], tensors: dict[str, SourceTensor]
) -> tuple[dict[str, SourceTensor], str | None]:
    """The checkpoint's tensors with packed weights as float ones, and what it was (or None)."""
    qconfig = quantization_config(config)
    if qconfig is None:
        return tensors, None
    method = str(qconfig.get("quant_method") or "").lower()
    if method in READ_BY_ARCHITECTURE:
        return tensors, None
    module = SCHEMES.get(method)
    if module is None:
        what = f"quant_method {method!r}" if method else "a quantization_config of no method"
        raise BadInput(
            f"config.json: {what} is not supported ({', '.join(SCHEMES)} checkpoints are)",
            "convert the model's unquantized (BF16/F16) release instead",
        )
    scheme = importlib.import_module(f"llmrun.quantize.imports.{module}").scheme(qconfig)
    for packing in scheme.packings:
        tensors = dequantized(tensors, packing)
    return tensors, scheme.description
