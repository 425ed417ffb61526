"""Quantization by llama.cpp itself (`llama_model_quantize`), for the K-quants and friends.

The call blocks for the whole file, so it runs in a worker thread while the
caller's thread reports progress. llama.cpp logs one line per tensor
("[  12/ 272] blk.1.ffn_up.weight - ..."): those lines, captured by
llmrun.engine.logs, are the progress, and the last error line is the message
when it fails.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import llama_cpp

from llmrun.engine import logs
from llmrun.errors import EngineError
from llmrun.quantize.progress import QuantizeProgress
from llmrun.quantize.types import QuantType

_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
POLL_SECONDS = 0.1


def llama_quantize(src: Path, dest: Path, qtype: QuantType, progress: QuantizeProgress) -> None:
    """Quantize the GGUF `src` into `dest` with all cores."""
    logs.install(verbose=False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(qtype.ftype)
    params.nthread = os.cpu_count() or 1
    params.allow_requantize = False  # only from F32/F16/BF16: requantizing loses quality
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["rc"] = llama_cpp.llama_model_quantize(
                str(src).encode(), str(dest).encode(), params
            )
        except BaseException as e:  # reported by the caller's thread
            result["error"] = e

    seen = logs.mark()
    worker = threading.Thread(target=work, name="llama_model_quantize", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        progress.tick(_last_tensor(seen))
    progress.end()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    if result.get("rc") != 0:
        raise EngineError(
            f"llama.cpp could not quantize {src.name} to {qtype.name}: "
            f"{logs.last_error('no reason given')}",
            "rerun with LLMRUN_DEBUG=1, or try another --type",
        )


def _last_tensor(since: int) -> str:
    for line in reversed(logs.since(since)):
        m = _TENSOR_LINE.search(line)
        if m:
            return f"[{m.group(1)}/{m.group(2)}] {m.group(3)}"
    return ""
