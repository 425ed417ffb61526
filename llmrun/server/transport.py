"""HTTP plumbing any API needs: bounded JSON bodies, merged answer streams, leaving clients.

Nothing here knows an API's shapes; refusals are ApiErrors (openai_errors.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from llmrun.server.openai_errors import ApiError

if TYPE_CHECKING:
    from llmrun.engine.batch import Handle

MAX_BODY = 4 << 20  # bytes; larger bodies get 413
DRAIN_LIMIT = 64 << 20  # an oversize body up to this is read and dropped, so the 413 arrives


async def read_json(request: Request, limit: int = MAX_BODY) -> Any:
    """The body as JSON, refusing more than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_LIMIT:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_LIMIT:
            break
    if size > limit:
        raise _too_large(limit)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(
            400, f"the request body is not valid JSON: {e}", code="invalid_json"
        ) from None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"the request body is larger than {limit >> 20} MiB", code="request_too_large"
    )


class ClosingStream(StreamingResponse):
    """A streamed body whose `on_close` runs however the response ends (a client that
    leaves makes Starlette cancel it, perhaps before the first chunk).

    A client that stops reading fills the socket's buffers, and then a send waits; one
    that waits longer than `stall_seconds` ends the response (and so its answer), so a
    stalled reader never holds a sequence for ever.
    """

    def __init__(
        self,
        chunks: AsyncIterator[str],
        on_close: Callable[[], None],
        media_type: str,
        headers: dict[str, str] | None = None,
        stall_seconds: float = 30.0,
    ) -> None:
        super().__init__(chunks, media_type=media_type, headers=headers)
        self.on_close = on_close
        self.stall_seconds = stall_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.stall_seconds)
            except TimeoutError:
                raise _Stalled from None

        try:
            await super().__call__(scope, receive, bounded)
        except _Stalled:
            pass  # the client is gone for all we can tell; the connection closes
        finally:
            self.on_close()


class _Stalled(Exception):
    """A send to the client waited past ClosingStream.stall_seconds."""


async def merged(handles: list[Handle]) -> AsyncIterator[tuple[int, str]]:
    """(index, piece) from several handles as the pieces come."""
    if len(handles) == 1:
        async for piece in handles[0].aiter():
            yield 0, piece
        return
    queue: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue()

    async def pump(i: int, h: Handle) -> None:
        async for piece in h.aiter():
            await queue.put((i, piece))
        await queue.put((i, None))

    tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            i, piece = await queue.get()
            if piece is None:
                left -= 1
            else:
                yield i, piece
    finally:
        for t in tasks:
            t.cancel()


async def until_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def whole_answers(request: Request, handles: list[Handle]) -> list[str] | None:
    """Every handle's text once all are done; None if the client left first.

    The caller releases the handles, which cancels those still going.
    """
    texts = [""] * len(handles)

    async def collect() -> None:
        async for i, piece in merged(handles):
            texts[i] += piece

    work = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(until_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        work.cancel()
    if not work.done() or work.cancelled():
        return None
    work.result()
    return texts
