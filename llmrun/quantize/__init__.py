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

from llmrun.quantize.pipeline import Result, quantize
from llmrun.quantize.progress import QuantizeProgress
from llmrun.quantize.types import DEFAULT_TYPE, TYPES, QuantType, get_type, types_table

__all__ = [
    "DEFAULT_TYPE",
    "TYPES",
    "QuantType",
    "QuantizeProgress",
    "Result",
    "get_type",
    "quantize",
    "types_table",
]
