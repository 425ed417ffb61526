"""The OpenAI-compatible HTTP API over a BatchEngine, as a Starlette (ASGI) app.

Requests are checked (schemas.py), turned into tokens off the event loop, and
submitted to the engine, whose decode thread serves them all together; the
answers come back through each handle's async iterator. A client that goes
away mid-answer has its sequence cancelled at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from llmrun.engine.template import ChatTemplate
from llmrun.errors import BadInput, ContextOverflow, EngineStopped
from llmrun.options import Sampling
from llmrun.prompt import chat_tokens
from llmrun.server import schemas
from llmrun.server.openai_errors import HANDLERS, ApiError, error_body

if TYPE_CHECKING:
    from llmrun.engine.batch import BatchEngine, Handle
    from llmrun.engine.embed import Embedder

MAX_BODY = 4 << 20  # bytes; larger bodies get 413
DRAIN_LIMIT = 64 << 20  # an oversize body up to this is read and dropped, so the 413 arrives
# The engine's reasons -> OpenAI's finish_reason.
FINISH_REASONS = {
    "stop": "stop",
    "eos": "stop",
    "length": "length",
    "context": "length",
    "cancelled": "stop",
    "error": "stop",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PIECE = "\0piece\0"  # stands for the text in a streamed event's ready-made frame
PIECE_JSON = json.dumps(PIECE)


T = TypeVar("T")

# ---------------------------------------------------------------- plumbing


class BearerAuth:
    """Every request needs `Authorization: Bearer KEY`, compared in constant time."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            body = error_body(
                401,
                "missing or wrong API key: send Authorization: Bearer KEY",
                code="invalid_api_key",
            )
            headers = {"WWW-Authenticate": "Bearer"}
            await JSONResponse(body, status_code=401, headers=headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


class EventStream(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends (a client that
    leaves makes Starlette cancel it, perhaps before the first event)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


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


def sse(data: Any) -> str:
    return "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"


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


def usage(handles: list[Handle]) -> dict[str, int]:
    prompt = sum(h.prompt_tokens for h in handles)
    completion = sum(h.completion_tokens for h in handles)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def engine_failure(handles: list[Handle], shutting_down: bool) -> ApiError | None:
    """Why the answers cannot be given whole, if they cannot."""
    failed = next((h for h in handles if h.finish_reason == "error"), None)
    if failed is not None:
        return ApiError(500, f"generation failed: {failed.error}", code="engine_error")
    if shutting_down and any(h.finish_reason == "cancelled" for h in handles):
        return ApiError(503, "the server is shutting down", code="unavailable")
    return None


# ---------------------------------------------------------------- the API


@dataclass
class Api:
    """What the endpoints share: the engine, the served name, the defaults."""

    engine: BatchEngine
    model_name: str
    sampling: Sampling = field(default_factory=Sampling)
    system: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    shutting_down: bool = False
    live: set[Handle] = field(default_factory=set)  # submitted and not yet answered
    embedder: Embedder | None = None  # with serve --embeddings
    _template: ChatTemplate | None = None

    def cancel_all(self) -> None:
        """At shutdown, after the grace period: end every answer still in flight."""
        self.shutting_down = True
        for h in list(self.live):
            h.cancel()

    def _release(self, handles: list[Handle]) -> None:
        for h in handles:
            h.cancel()  # a no-op for the finished ones
            self.live.discard(h)

    # ------------------------------------------------------------ small endpoints

    async def health(self, _: Request) -> JSONResponse:
        if self.engine.failure:
            return JSONResponse(
                {"status": "error", "error": self.engine.failure, "model": self.model_name},
                status_code=503,
            )
        return JSONResponse({"status": "ok", "model": self.model_name, **self.engine.stats()})

    def model_object(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "llmrun",
        }

    async def models(self, _: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self.model_object()]})

    async def model(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name != self.model_name:
            raise ApiError(
                404, f"model {name!r} is not served here", param="model", code="model_not_found"
            )
        return JSONResponse(self.model_object())

    async def embeddings(self, request: Request) -> JSONResponse:
        req = schemas.parse_embeddings(await read_json(request))
        if self.embedder is None:
            raise ApiError(
                400,
                "this server was not started for embeddings: start llmrun serve with --embeddings",
                param="model",
                code="embeddings_not_supported",
            )
        data, used = await self._unless_failed(self._embed, req)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": self.model_name,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            }
        )

    async def _unless_failed(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a thread of its own; a 503 instead if the engine fails first.

        A lost RPC worker leaves llama.cpp's calls waiting for ever, so the thread is
        a daemon (starlette's thread pool would keep the process from exiting).
        """
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

        self._check_engine()
        threading.Thread(target=work, name="llmrun-embed", daemon=True).start()
        while True:
            done, _ = await asyncio.wait({result}, timeout=0.25)
            if done:
                return result.result()
            self._check_engine()

    def _check_engine(self) -> None:
        """A 503 once the engine has failed for good (a lost RPC worker)."""
        if self.engine.failure:
            raise ApiError(503, f"{self.engine.failure}; restart llmrun serve", code="unavailable")

    def _embed(self, req: schemas.Embed) -> tuple[list[dict[str, Any]], int]:
        embedder = self.embedder
        assert embedder is not None
        with embedder.lock:  # shutdown waits for this request, then frees the model
            if embedder.closed:
                raise ApiError(503, "the server is shutting down", code="unavailable")
            return self._embed_all(req, embedder)

    def _embed_all(
        self, req: schemas.Embed, embedder: Embedder
    ) -> tuple[list[dict[str, Any]], int]:
        model = self.engine.model
        data, used = [], 0
        for i, item in enumerate(req.inputs):
            if isinstance(item, str):
                tokens = model.tokenize(item, add_special=True, parse_special=False)
            elif all(0 <= t < model.n_vocab for t in item):
                tokens = item
            else:
                raise ApiError(400, f"token ids must be in 0..{model.n_vocab - 1}", param="input")
            try:
                vector = embedder.embed(tokens)
            except ContextOverflow as e:
                raise ApiError(
                    400, f"input {i}: {e}", param="input", code="context_length_exceeded"
                ) from None
            used += len(tokens)
            if req.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
                encoded: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                encoded = vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        return data, used

    # ------------------------------------------------------------ generation

    async def chat(self, request: Request) -> Response:
        req = schemas.parse_chat(await read_json(request))
        return await self._answer(request, req, self._submit_chat, chat=True)

    async def completions(self, request: Request) -> Response:
        req = schemas.parse_completion(await read_json(request))
        return await self._answer(request, req, self._submit_prompts, chat=False)

    async def _answer(
        self,
        request: Request,
        req: schemas.Generate,
        submit: Callable[[schemas.Generate], list[Handle]],
        chat: bool,
    ) -> Response:
        # Templates, tokenizing and grammars take a while: not on the event loop.
        handles = await run_in_threadpool(submit, req)
        self.live.update(handles)  # here, on the event loop, where they are released
        if req.stream:
            return self._stream(req, handles, chat)
        return await self._complete(request, handles, chat)

    def template(self) -> ChatTemplate:
        if self._template is None:
            try:
                self._template = ChatTemplate(self.engine.model)
            except BadInput as e:  # its remedy (--raw) is the command line's
                raise ApiError(
                    400, f"{e.message}; use /v1/completions", param="messages", code="no_template"
                ) from None
        return self._template

    def _submit_chat(self, req: schemas.Generate) -> list[Handle]:
        tokens = chat_tokens(self.engine.model, self.template(), req.messages, system=self.system)
        return self._submit(req, [tokens])

    def _submit_prompts(self, req: schemas.Generate) -> list[Handle]:
        model = self.engine.model
        prompts = []
        for prompt in req.prompts:
            if isinstance(prompt, str):
                prompts.append(model.tokenize(prompt, add_special=True, parse_special=False))
            elif all(0 <= t < model.n_vocab for t in prompt):
                prompts.append(prompt)
            else:
                raise ApiError(400, f"token ids must be in 0..{model.n_vocab - 1}", param="prompt")
        return self._submit(req, prompts)

    def _submit(self, req: schemas.Generate, prompts: list[list[int]]) -> list[Handle]:
        self._check_engine()
        sampling = self.sampling.merged(req.sampling)
        handles: list[Handle] = []
        try:
            for tokens in prompts:
                handles.append(self.engine.submit(tokens, sampling, req.grammar))
        except EngineStopped:  # the engine is draining: we are shutting down
            raise ApiError(503, "the server is shutting down", code="unavailable") from None
        except BaseException:
            for h in handles:  # the prompts before the one refused
                h.cancel()
            raise
        return handles

    async def _complete(self, request: Request, handles: list[Handle], chat: bool) -> Response:
        """Wait for whole answers; a client that leaves cancels them."""
        texts = [""] * len(handles)

        async def collect() -> None:
            async for i, piece in merged(handles):
                texts[i] += piece

        work = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(until_disconnect(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._release(handles)
            gone.cancel()
            work.cancel()
        if not work.done() or work.cancelled():
            return Response(status_code=499)  # nobody is listening; nginx's "client closed"
        work.result()
        failure = engine_failure(handles, self.shutting_down)
        if failure:
            raise failure
        choices = [
            self._choice(i, text, FINISH_REASONS[h.finish_reason or "stop"], chat)
            for i, (h, text) in enumerate(zip(handles, texts, strict=True))
        ]
        kind = "chat.completion" if chat else "text_completion"
        return JSONResponse({**self._head(kind, chat), "choices": choices, "usage": usage(handles)})

    def _head(self, kind: str, chat: bool) -> dict[str, Any]:
        prefix = "chatcmpl-" if chat else "cmpl-"
        return {
            "id": prefix + secrets.token_hex(12),
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "system_fingerprint": None,
        }

    @staticmethod
    def _choice(i: int, text: str, finish: str | None, chat: bool) -> dict[str, Any]:
        if chat:
            return {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}

    @staticmethod
    def _delta(i: int, text: str | None, finish: str | None, chat: bool, role: bool = False):
        if not chat:
            return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if role:
            delta["role"] = "assistant"
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _stream(self, req: schemas.Generate, handles: list[Handle], chat: bool) -> Response:
        head = self._head("chat.completion.chunk" if chat else "text_completion", chat)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return sse({**head, "choices": choices, **extra})

        # One event per token: made from a ready frame around the piece's own JSON.
        frames = [
            chunk([self._delta(i, PIECE, None, chat)]).split(PIECE_JSON)
            for i in range(len(handles))
        ]

        async def events() -> AsyncIterator[str]:
            if chat:
                yield chunk([self._delta(i, "", None, chat, True) for i in range(len(handles))])
            async for i, piece in merged(handles):
                before, after = frames[i]
                yield before + json.dumps(piece, ensure_ascii=False) + after
            failure = engine_failure(handles, self.shutting_down)
            if failure:
                yield sse(failure.body())
                return
            finish = [FINISH_REASONS[h.finish_reason or "stop"] for h in handles]
            yield chunk([self._delta(i, None, f, chat) for i, f in enumerate(finish)])
            if req.include_usage:
                yield chunk([], usage=usage(handles))
            yield "data: [DONE]\n\n"

        return EventStream(events(), on_close=lambda: self._release(handles))


def create_app(
    engine: BatchEngine,
    model_name: str,
    api_key: str | None = None,
    *,
    sampling: Sampling | None = None,
    system: str | None = None,
    embedder: Embedder | None = None,
) -> Starlette:
    """The ASGI app serving `engine` as `model_name`; with `api_key`, every request needs it.

    `sampling` holds the defaults a request's own fields override (the command's
    flags and the model's params); `system` is used when a chat has no system message.
    """
    api = Api(engine, model_name, sampling or Sampling(), system, embedder=embedder)
    routes = [
        Route("/health", api.health),
        Route("/v1/models", api.models),
        Route("/v1/models/{name:path}", api.model),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
    ]
    middleware = [Middleware(BearerAuth, key=api_key)] if api_key else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=HANDLERS)
    app.state.api = api
    return app
