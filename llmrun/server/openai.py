"""The OpenAI API's routes: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings.

Requests are checked (schemas.py), turned into tokens off the event loop, and
submitted to the engine, whose decode thread serves them all together; the
answers come back through each handle's async iterator and go out as OpenAI's
objects (responses.py), whole or as server-sent events. A client that goes
away mid-answer has its sequence cancelled at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmrun.errors import BadInput
from llmrun.prompt import chat_tokens
from llmrun.server import embeddings, responses, schemas
from llmrun.server.openai_errors import ApiError
from llmrun.server.responses import Chunks, EventStream
from llmrun.server.transport import merged, read_json, whole_answers

if TYPE_CHECKING:
    from llmrun.engine.batch import Handle
    from llmrun.server.service import Service


class OpenAI:
    """The OpenAI endpoints over one Service."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models),
            Route("/v1/models/{name:path}", self.model),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ]

    # ------------------------------------------------------------ small endpoints

    async def models(self, _: Request) -> JSONResponse:
        s = self.service
        return JSONResponse(
            {"object": "list", "data": [responses.model_object(s.model_name, s.created)]}
        )

    async def model(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name != self.service.model_name:
            raise ApiError(
                404, f"model {name!r} is not served here", param="model", code="model_not_found"
            )
        return JSONResponse(responses.model_object(name, self.service.created))

    async def embeddings(self, request: Request) -> JSONResponse:
        req = schemas.parse_embeddings(await read_json(request))
        vectors, used = await embeddings.embed(self.service, req.inputs)
        return JSONResponse(
            responses.embedding_list(vectors, req.encoding_format, used, self.service.model_name)
        )

    # ------------------------------------------------------------ generation

    async def chat(self, request: Request) -> Response:
        req = schemas.parse_chat(await read_json(request))
        return await self._answer(request, req, self._chat_prompts, chat=True)

    async def completions(self, request: Request) -> Response:
        req = schemas.parse_completion(await read_json(request))
        return await self._answer(request, req, self._prompts, chat=False)

    def _chat_prompts(self, req: schemas.Generate) -> list[list[int]]:
        s = self.service
        try:
            template = s.template()
        except BadInput as e:  # its remedy (--raw) is the command line's
            raise ApiError(
                400, f"{e.message}; use /v1/completions", param="messages", code="no_template"
            ) from None
        return [chat_tokens(s.engine.model, template, req.messages, system=s.system)]

    def _prompts(self, req: schemas.Generate) -> list[list[int]]:
        return [self.service.tokens(prompt, "prompt") for prompt in req.prompts]

    async def _answer(
        self,
        request: Request,
        req: schemas.Generate,
        prompts: Callable[[schemas.Generate], list[list[int]]],
        chat: bool,
    ) -> Response:
        def submit() -> list[Handle]:
            return self.service.submit(prompts(req), req.sampling, req.grammar)

        # Templates, tokenizing and grammars take a while: not on the event loop.
        handles = await run_in_threadpool(submit)
        self.service.track(handles)
        if req.stream:
            return self._stream(req, handles, chat)
        return await self._complete(request, handles, chat)

    async def _complete(self, request: Request, handles: list[Handle], chat: bool) -> Response:
        """Wait for whole answers; a client that leaves cancels them."""
        try:
            texts = await whole_answers(request, handles)
        finally:
            self.service.release(handles)
        if texts is None:
            return Response(status_code=499)  # nobody is listening; nginx's "client closed"
        failure = self.service.failure(handles)
        if failure:
            raise failure
        return JSONResponse(responses.completion(handles, texts, chat, self.service.model_name))

    def _stream(self, req: schemas.Generate, handles: list[Handle], chat: bool) -> Response:
        chunks = Chunks(len(handles), chat, self.service.model_name)

        async def events() -> AsyncIterator[str]:
            if chat:
                yield chunks.opening()
            async for i, piece in merged(handles):
                yield chunks.piece(i, piece)
            failure = self.service.failure(handles)
            if failure:
                yield responses.sse(failure.body())
                return
            yield chunks.finish(handles)
            if req.include_usage:
                yield chunks.usage(handles)
            yield responses.DONE

        return EventStream(events(), on_close=lambda: self.service.release(handles))
