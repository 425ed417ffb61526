"""Quantization by llama.cpp itself (`llama_model_quantize`), for the K-quants and friends.

The call blocks for the whole file, so it runs in a worker thread while the
caller's thread reports progress. llama.cpp logs one line per tensor
("[  12/ 272] blk.1.ffn_up.weight - ..."): those lines, captured by
llmrun.engine.logs, are the progress, and the last error line is the message
when it fails.

An importance matrix goes in as llama-quantize passes it: a NULL-terminated array of
(name, values, count) in `params.imatrix`, and four `quantize.imatrix.*` metadata keys
that say what it was made from.
"""

from __future__ import annotations

import ctypes
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp

from llmrun.cpus import usable_cores
from llmrun.engine import logs
from llmrun.errors import EngineError
from llmrun.quantize.progress import QuantizeProgress
from llmrun.quantize.types import QuantType

if TYPE_CHECKING:
    from llmrun.quantize.imatrix import Imatrix

_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
POLL_SECONDS = 0.1


def llama_quantize(
    src: Path,
    dest: Path,
    qtype: QuantType,
    progress: QuantizeProgress,
    imatrix: Imatrix | None = None,
    imatrix_file: str | None = None,
) -> None:
    """Quantize the GGUF `src` into `dest` with all the cores this process may use, guided
    by `imatrix` if given (`imatrix_file`: where it was read from or saved, for the metadata)."""
    logs.install(verbose=False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(qtype.ftype)
    # The affinity mask and cgroup quota, not os.cpu_count(): in a container limited to two
    # cores of 64, 64 threads would take turns on two.
    params.nthread = usable_cores()
    params.allow_requantize = False  # only from F32/F16/BF16: requantizing loses quality
    keep_alive = _pass_imatrix(params, imatrix, imatrix_file) if imatrix is not None else None
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
    del keep_alive  # llama.cpp has copied the matrix by now
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


def _pass_imatrix(
    params: llama_cpp.llama_model_quantize_params, imatrix: Imatrix, file: str | None
) -> list[Any]:
    """Point `params` at the matrix and its metadata; returns what must outlive the call."""
    values = imatrix.importance()
    entries = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()  # zeroed terminator
    arrays = list(values.values())
    for entry, (name, array) in zip(entries, values.items(), strict=False):
        entry.name = name.encode()
        entry.data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entry.size = array.size
    params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    metadata: list[tuple[str, str | int]] = []
    if file:
        metadata.append(("quantize.imatrix.file", file))
    if imatrix.datasets:
        metadata.append(("quantize.imatrix.dataset", imatrix.datasets[0]))
    metadata.append(("quantize.imatrix.entries_count", len(values)))
    if imatrix.chunk_count > 0:
        metadata.append(("quantize.imatrix.chunks_count", imatrix.chunk_count))
    overrides = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()  # key "": the end
    for kv, (key, value) in zip(overrides, metadata, strict=False):
        kv.key = key.encode()
        if isinstance(value, int):
            kv.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            kv.value.val_i64 = value
        else:
            kv.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            kv.value.val_str = value.encode()[:127]
    params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    return [entries, arrays, overrides]
