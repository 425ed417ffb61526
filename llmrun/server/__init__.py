"""`llmrun serve`: an OpenAI-compatible HTTP server over the batching engine.

serve.py runs it (load, listen, shut down on a signal); app.py builds the
Starlette app over one Service (service.py: the engine and the answers in
flight, shared by every API); openai.py holds the OpenAI routes, with their
request schemas (schemas.py), response objects and SSE chunks (responses.py)
and error objects (openai_errors.py); embeddings.py runs embeddings in threads
of their own; transport.py is the HTTP plumbing any API needs.

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
