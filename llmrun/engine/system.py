"""What llama.cpp reports about this machine: versions, CPU features, backends, devices.

llama-cpp-python binds `llama_print_system_info` and `llama_supports_gpu_offload`
but not ggml's backend device API, so we bind the few functions we need on the
already-loaded llama library (dlsym on it also finds the ggml libraries it links).
Each lookup fails soft: a build without a symbol reports less, never crashes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib

import llmrun
from llmrun import store
from llmrun.cpus import default_threads
from llmrun.engine import logs

# enum ggml_backend_dev_type, in ggml-backend.h order.
DEVICE_TYPES = ("cpu", "gpu", "igpu", "accel", "meta")
GPU_TYPES = ("gpu", "igpu")  # what -ngl offloads layers to; RPC workers' devices say "gpu" too

_vp = ctypes.c_void_p
# name -> (restype, argtypes) of the ggml functions we use.
_SIGNATURES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "ggml_version": (ctypes.c_char_p, ()),
    "ggml_commit": (ctypes.c_char_p, ()),
    "ggml_backend_reg_count": (ctypes.c_size_t, ()),
    "ggml_backend_reg_get": (_vp, (ctypes.c_size_t,)),
    "ggml_backend_reg_name": (ctypes.c_char_p, (_vp,)),
    "ggml_backend_dev_count": (ctypes.c_size_t, ()),
    "ggml_backend_dev_get": (_vp, (ctypes.c_size_t,)),
    "ggml_backend_dev_name": (ctypes.c_char_p, (_vp,)),
    "ggml_backend_dev_description": (ctypes.c_char_p, (_vp,)),
    "ggml_backend_dev_type": (ctypes.c_int, (_vp,)),
    "ggml_backend_dev_memory": (
        None,
        (_vp, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)),
    ),
    "ggml_backend_dev_backend_reg": (_vp, (_vp,)),
    "ggml_backend_reg_by_name": (_vp, (ctypes.c_char_p,)),
    "ggml_backend_reg_get_proc_address": (_vp, (_vp, ctypes.c_char_p)),
    "ggml_backend_register": (None, (_vp,)),
    "ggml_set_abort_callback": (_vp, (_vp,)),
    "ggml_backend_dev_by_type": (_vp, (ctypes.c_int,)),
    "ggml_backend_dev_buffer_type": (_vp, (_vp,)),
    # graph nodes, for eval callbacks (llmrun.engine.ggml)
    "ggml_op_name": (ctypes.c_char_p, (ctypes.c_int,)),
    "ggml_backend_buffer_is_host": (ctypes.c_bool, (_vp,)),
    "ggml_backend_tensor_get": (None, (_vp, _vp, ctypes.c_size_t, ctypes.c_size_t)),
}


def _libraries() -> list[ctypes.CDLL]:
    libs = [llama_lib._lib]
    try:
        from llama_cpp import _ggml  # loads libggml; absent in some versions

        libs.append(_ggml.libggml)
    except (ImportError, OSError, AttributeError):
        pass
    return libs


def bind(name: str) -> Any | None:
    """A fresh ctypes function for `name` (not the shared attribute llama_cpp may use)."""
    restype, argtypes = _SIGNATURES[name]
    proto = ctypes.CFUNCTYPE(restype, *argtypes)
    for lib in _libraries():
        try:
            return proto((name, lib))
        except AttributeError:
            continue
    return None


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", errors="replace") if raw else None


def parse_features(text: str) -> dict[str, dict[str, str]]:
    """`"CPU : SSE3 = 1 | AVX = 1 | ..."` -> {"CPU": {"SSE3": "1", "AVX": "1"}}."""
    features: dict[str, dict[str, str]] = {}
    backend = "llama.cpp"
    for part in text.split("|"):
        part = part.strip()
        if " : " in part:  # a new backend's section starts
            backend, _, part = (s.strip() for s in part.partition(" : "))
        key, sep, value = part.partition("=")
        if sep and key.strip():
            features.setdefault(backend, {})[key.strip()] = value.strip()
    return features


def devices() -> list[dict[str, Any]]:
    """The ggml backend devices: name, description, type, backend, free/total memory."""
    fns = {name: bind(name) for name in _SIGNATURES if name.startswith("ggml_backend_")}
    count, get = fns["ggml_backend_dev_count"], fns["ggml_backend_dev_get"]
    if count is None or get is None:
        return []
    found = []
    for i in range(count()):
        dev = get(i)
        if not dev:
            continue
        item: dict[str, Any] = {"index": i}
        if fns["ggml_backend_dev_name"]:
            item["name"] = _text(fns["ggml_backend_dev_name"](dev))
        if fns["ggml_backend_dev_description"]:
            item["description"] = _text(fns["ggml_backend_dev_description"](dev))
        if fns["ggml_backend_dev_type"]:
            kind = fns["ggml_backend_dev_type"](dev)
            item["type"] = DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else str(kind)
        if fns["ggml_backend_dev_backend_reg"] and fns["ggml_backend_reg_name"]:
            reg = fns["ggml_backend_dev_backend_reg"](dev)
            item["backend"] = _text(fns["ggml_backend_reg_name"](reg)) if reg else None
        if fns["ggml_backend_dev_memory"]:
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            fns["ggml_backend_dev_memory"](dev, ctypes.byref(free), ctypes.byref(total))
            item["memory_free"], item["memory_total"] = free.value, total.value
        found.append(item)
    return found


def cpu_buffer_type() -> int | None:
    """The CPU device's buffer type (ggml_backend_buffer_type_t), for tensor overrides."""
    by_type, buft = bind("ggml_backend_dev_by_type"), bind("ggml_backend_dev_buffer_type")
    if by_type is None or buft is None:
        return None
    dev = by_type(DEVICE_TYPES.index("cpu"))
    return buft(dev) if dev else None


def is_gpu(device: dict[str, Any]) -> bool:
    """Whether llama.cpp can offload layers to this device (one of devices())."""
    return device.get("type") in GPU_TYPES


def backends() -> list[str]:
    """The registered ggml backends ("CPU", "CUDA", "Metal", ...)."""
    count, get = bind("ggml_backend_reg_count"), bind("ggml_backend_reg_get")
    name = bind("ggml_backend_reg_name")
    if count is None or get is None or name is None:
        return []
    return [n for i in range(count()) if (n := _text(name(get(i))))]


def build_id() -> str:
    """Which llama.cpp build this is ("0.9.4 abc1234"), from ggml itself: no package metadata."""
    version, commit = bind("ggml_version"), bind("ggml_commit")
    return " ".join(t for t in (_text(f()) if f else None for f in (version, commit)) if t)


def system_info() -> dict[str, Any]:
    """Everything `llmrun info` shows, as plain JSON-ready values."""
    # A GPU backend logs while it starts; keep that off the terminal.
    logs.install()
    version, commit = bind("ggml_version"), bind("ggml_commit")
    raw = _text(llama_cpp.llama_print_system_info()) or ""
    found = devices()
    from huggingface_hub import constants as hf_constants  # read env at import: import late

    return {
        "llmrun": llmrun.__version__,
        "llama_cpp_python": llama_cpp.__version__,
        "ggml_version": _text(version()) if version else None,
        "ggml_commit": _text(commit()) if commit else None,
        "backends": backends(),
        "devices": found,
        # llama.cpp's llama_supports_gpu_offload() is true for any RPC build; say what is here.
        "supports_gpu_offload": any(is_gpu(d) for d in found),
        "supports_mmap": bool(llama_cpp.llama_supports_mmap()),
        "supports_mlock": bool(llama_cpp.llama_supports_mlock()),
        "features": parse_features(raw),
        "system_info": raw.strip(),
        "default_threads": default_threads(),
        "cpu_count": os.cpu_count(),
        "llmrun_home": str(store.home()),
        "hf_cache": str(hf_constants.HF_HUB_CACHE),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
    }
