"""Everything that touches llama-cpp-python: loading, generation, system info."""

from __future__ import annotations

from llmrun.engine.model import Model, Stats, load_model

__all__ = ["Model", "Stats", "load_model"]
