"""llmrun: run quantized language models locally."""

from __future__ import annotations

from llmrun.lazypkg import defer_init

__version__ = "0.1.0"

# Before anything imports them: the engine uses only llama-cpp-python's ctypes bindings,
# and read_info only gguf-py's constant tables (see lazypkg).
defer_init("llama_cpp", "llama_cpp.llama_cpp")
defer_init("gguf", "gguf.constants")
