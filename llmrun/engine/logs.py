"""llama.cpp's log lines: captured, not printed, unless the user asked (-v).

llama.cpp writes its chatter (model metadata, buffer sizes, warnings) through
one process-wide callback. We keep the recent lines so an error message can
quote the reason llama.cpp gave, and echo them to stderr only when verbose.
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque

import llama_cpp

_LEVEL_ERROR = 3
_LEVEL_CONT = 5

# A graph build alone logs hundreds of lines; keep enough to span one load.
_recent: deque[tuple[int, str]] = deque(maxlen=5000)
_state = {"verbose": False, "installed": False, "mtmd": False, "last_level": 0, "count": 0}


@llama_cpp.llama_log_callback
def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    if level == _LEVEL_CONT:
        level = _state["last_level"]
    _state["last_level"] = level
    line = text.decode("utf-8", errors="replace")
    _recent.append((level, line))
    _state["count"] += 1
    if _state["verbose"]:
        sys.stderr.write(line)
        sys.stderr.flush()


def install(verbose: bool = False) -> None:
    """Route llama.cpp's logs through us; idempotent, and may switch verbosity."""
    _state["verbose"] = verbose
    if not _state["installed"]:
        llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
        _state["installed"] = True


def route_mtmd() -> None:
    """Route the multimodal library's logs (it has its own logger) through us too."""
    if not _state["mtmd"]:
        from llama_cpp import mtmd_cpp

        mtmd_cpp.mtmd_helper_log_set(_on_log, ctypes.c_void_p(0))
        _state["mtmd"] = True


def last_error(default: str = "") -> str:
    """The most recent error line llama.cpp logged, for a one-line message."""
    for level, line in reversed(_recent):
        if level == _LEVEL_ERROR and line.strip():
            return line.strip()
    return default


def mark() -> int:
    """A position in the log, for `since` (a long call's progress lines)."""
    return _state["count"]


def since(position: int) -> list[str]:
    """The lines logged after `position` that are still kept."""
    n = min(_state["count"] - position, len(_recent))
    return [line for _, line in list(_recent)[len(_recent) - n :]] if n > 0 else []
