"""Embeddings for the server, each request in a daemon thread of its own.

llama.cpp's calls wait for ever after a lost RPC worker, so an embedding does
not run on starlette's thread pool (its threads would keep the process from
exiting) but in a daemon thread, while the request polls the engine and
answers 503 once the engine has failed. The embedder's lock lets shutdown wait
for the request in flight before the model is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from llmrun.errors import ContextOverflow
from llmrun.server.openai_errors import ApiError
from llmrun.server.service import Service, shutting_down

if TYPE_CHECKING:
    import numpy as np

POLL_SECONDS = 0.25  # how often a waiting request looks at the engine

T = TypeVar("T")


async def embed(
    service: Service, inputs: list[str | list[int]], truncate: bool = False
) -> tuple[list[np.ndarray], int]:
    """One vector per input, and the tokens they took; `truncate` cuts long inputs (Ollama's)
    instead of refusing them."""
    return await unless_failed(service, _embed_all, service, inputs, truncate)


async def unless_failed(service: Service, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a daemon thread; a 503 instead if the engine fails first."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not result.done():
            (result.set_result if ok else result.set_exception)(value)

    def work() -> None:
        try:
            outcome = (True, fn(*args))
        except BaseException as e:  # handed to the request
            outcome = (False, e)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, *outcome)

    service.check_engine()
    threading.Thread(target=work, name="llmrun-embed", daemon=True).start()
    while True:
        done, _ = await asyncio.wait({result}, timeout=POLL_SECONDS)
        if done:
            return result.result()
        service.check_engine()


def _embed_all(
    service: Service, inputs: list[str | list[int]], truncate: bool
) -> tuple[list[np.ndarray], int]:
    embedder = service.embedder()  # made on the first embedding request
    with embedder.lock:  # shutdown waits for this request, then frees the model
        if embedder.closed:
            raise shutting_down()
        vectors, used = [], 0
        for i, item in enumerate(inputs):
            tokens = service.tokens(item, "input")
            if truncate:
                tokens = tokens[: embedder.n_ctx]
            try:
                vectors.append(embedder.embed(tokens))
            except ContextOverflow as e:
                raise ApiError(
                    400, f"input {i}: {e}", param="input", code="context_length_exceeded"
                ) from None
            used += len(tokens)
        return vectors, used
