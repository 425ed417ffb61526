"""The inference engine over llama.cpp: loading a model, generation, batching, embeddings.

Also llama.cpp's logs, system and device info, and RPC workers. Other packages
(quantize/, for one) call llama-cpp-python too, for their own ends.
"""

from __future__ import annotations

from llmrun.engine.model import Model, Stats, load_model

__all__ = ["Model", "Stats", "load_model"]
