"""Hugging Face checkpoint -> GGUF: our own converter, and llama.cpp's quantizer beyond Q8_0.

source.py       MODEL|DIR|FILE.gguf -> what to convert
checkpoint.py   config.json and safetensors, read lazily
archs/          one module per architecture family: metadata, renames, quirks
vocab.py        tokenizer export (BPE from tokenizer.json, SentencePiece)
writer.py       the GGUF file, streamed tensor by tensor
llama_quant.py  llama_model_quantize for the K-quants
selfcheck.py    the file loads and tokenizes like its source
pipeline.py     quantize(): all of the above, atomically
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The default --type, here so that `llmrun quantize --help` needs no gguf (llmrun.quantize.types).
DEFAULT_TYPE = "Q4_K_M"
DEFAULT_ADAPTER_TYPE = "F16"  # LoRA adapters (lora.py): small, so half precision
DEFAULT_MMPROJ_TYPE = "F16"  # projectors (--mmproj), as llama.cpp's converter writes them

if TYPE_CHECKING:
    from llmrun.quantize.pipeline import Result, quantize
    from llmrun.quantize.progress import QuantizeProgress
    from llmrun.quantize.types import TYPES, QuantType, get_type, types_table

# The rest loads on first use (PEP 562): the pipeline imports gguf, numpy and llama.cpp.
_LAZY = {
    "Result": "pipeline",
    "quantize": "pipeline",
    "QuantizeProgress": "progress",
    "TYPES": "types",
    "QuantType": "types",
    "get_type": "types",
    "types_table": "types",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "DEFAULT_ADAPTER_TYPE",
    "DEFAULT_MMPROJ_TYPE",
    "DEFAULT_TYPE",
    "TYPES",
    "QuantType",
    "QuantizeProgress",
    "Result",
    "get_type",
    "quantize",
    "types_table",
]
