"""`llmrun serve`: an OpenAI-compatible HTTP server over the batching engine.

Needs the optional `server` extra (Starlette and uvicorn); `missing_extra()`
says so without importing them.
"""

from __future__ import annotations

import importlib.util

EXTRA_MODULES = ("starlette", "uvicorn")
INSTALL_HINT = 'pip install "llmrun[server]"'


def missing_extra() -> list[str]:
    """The server extra's modules that are not installed."""
    return [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
