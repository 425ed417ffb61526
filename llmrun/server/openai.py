"""The OpenAI API's routes: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings.

Requests are checked (schemas.py), turned into tokens off the event loop, and
submitted to the engine, whose decode thread serves them all together; the
answers come back through each handle's async iterator and go out as OpenAI's
objects (responses.py), whole or as server-sent events. A client that goes
away mid-answer has its sequence cancelled at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmrun.server import embeddings, observe, responses, schemas
from llmrun.server.answers import Choice, Tokens, delta_fields, finish_reason, message
from llmrun.server.jobs import Job, chat_job, completion_job, fetch_images
from llmrun.server.openai_errors import ApiError
from llmrun.server.responses import FINISH_REASONS, Chunks, EventStream
from llmrun.server.transport import merged, read_json, whole_answers

if TYPE_CHECKING:
    from llmrun.engine.batch import Handle
    from llmrun.generation import Prepared
    from llmrun.server.pool import Lease, Pool
    from llmrun.server.service import Service


RAW_REMEDY = "use /v1/completions"


class OpenAI:
    """The OpenAI endpoints over the pool's models."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

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
        servable = await run_in_threadpool(self.pool.servable)
        data = [responses.model_object(p.resolved.name, _created(p)) for p in servable]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        servable = await run_in_threadpool(self.pool.servable)
        for p in servable:
            if p.resolved.name == name:
                return JSONResponse(responses.model_object(name, _created(p)))
        raise ApiError(
            404, f"model {name!r} is not served here", param="model", code="model_not_found"
        )

    async def embeddings(self, request: Request) -> JSONResponse:
        req = schemas.parse_embeddings(await read_json(request))
        lease = await self.pool.lease(req.model)
        observe.note(request, lease.service)
        try:
            vectors, used = await embeddings.embed(lease.service, req.inputs)
        finally:
            lease.release()
        name = req.model or lease.service.model_name
        return JSONResponse(responses.embedding_list(vectors, req.encoding_format, used, name))

    # ------------------------------------------------------------ generation

    async def chat(self, request: Request) -> Response:
        req = schemas.parse_chat(await read_json(request))
        allow = self.pool.settings.allow_image_urls
        await run_in_threadpool(fetch_images, req.messages, allow)
        return await self._answer(request, req, chat=True)

    async def completions(self, request: Request) -> Response:
        req = schemas.parse_completion(await read_json(request))
        return await self._answer(request, req, chat=False)

    async def _answer(self, request: Request, req: schemas.Generate, chat: bool) -> Response:
        deadline = self.pool.settings.deadline(time.perf_counter(), req.timeout)
        lease = await self.pool.lease(req.model)
        service = lease.service
        observe.note(request, service)

        def submit() -> tuple[Job, list[Handle]]:
            job = chat_job(service, req, RAW_REMEDY) if chat else completion_job(service, req)
            handles = service.submit(
                job.prompts, req.sampling, job.grammar, job.extras, req.n, deadline
            )
            return job, handles

        try:
            # Templates, tokenizing and grammars take a while: not on the event loop.
            job, handles = await run_in_threadpool(submit)
        except BaseException:
            lease.release()
            raise
        service.track(handles)
        observe.note(request, service, handles)
        if req.stream:
            return self._stream(lease, req, job, handles, chat)
        try:
            return await self._complete(request, service, req, job, handles, chat)
        finally:
            lease.release()

    async def _complete(
        self,
        request: Request,
        service: Service,
        req: schemas.Generate,
        job: Job,
        handles: list[Handle],
        chat: bool,
    ) -> Response:
        """Wait for whole answers; a client that leaves cancels them."""
        try:
            texts = await whole_answers(request, handles)
        finally:
            service.release(handles)
        if texts is None:
            return Response(status_code=499)  # nobody is listening; nginx's "client closed"
        failure = service.failure(handles)
        if failure:
            raise failure
        tokens = Tokens(service.engine.model, job.extras.special)
        shape = self._chat_choice if chat else self._text_choice
        choices = [
            shape(req, job, tokens, Choice(i, h, job.reader), text)
            for i, (h, text) in enumerate(zip(handles, texts, strict=True))
        ]
        name = req.model or service.model_name
        return JSONResponse(responses.completion(handles, choices, chat, name))

    @staticmethod
    def _chat_choice(
        req: schemas.Generate, job: Job, tokens: Tokens, choice: Choice, text: str
    ) -> dict[str, Any]:
        choice.feed(text)
        _, parsed = choice.finish()
        h = choice.handle
        logprobs = None
        if job.extras.logprobs is not None:
            logprobs = {"content": [tokens.entry(lp) for lp in h.logprobs], "refusal": None}
        return {
            "index": choice.index,
            "message": message(parsed),
            "logprobs": logprobs,
            "finish_reason": finish_reason(h, parsed, FINISH_REASONS),
        }

    @staticmethod
    def _text_choice(
        req: schemas.Generate, job: Job, tokens: Tokens, choice: Choice, text: str
    ) -> dict[str, Any]:
        h = choice.handle
        prompt_text = job.prompt_texts[choice.index // req.n]
        logprobs = None
        if job.extras.logprobs is not None:
            generated = [lp.token for lp in h.logprobs]
            logprobs = tokens.legacy(h.logprobs, generated, len(prompt_text))
            if job.extras.echo:
                echoed = tokens.legacy(h.prompt_logprobs, h.tokens, 0)
                logprobs = {k: echoed[k] + logprobs[k] for k in logprobs}
        return {
            "index": choice.index,
            "text": prompt_text + text if req.echo else text,
            "logprobs": logprobs,
            "finish_reason": responses.finish_reason(h),
        }

    def _stream(
        self, lease: Lease, req: schemas.Generate, job: Job, handles: list[Handle], chat: bool
    ) -> Response:
        service = lease.service
        chunks = Chunks(len(handles), chat, req.model or service.model_name)
        plain = not job.reader.active and job.extras.logprobs is None and not req.echo
        tokens = Tokens(service.engine.model, job.extras.special)
        choices = [Choice(i, h, job.reader) for i, h in enumerate(handles)]

        def events_of(choice: Choice, deltas: list, last: bool = False) -> list[str]:
            """A piece's events; its tokens' logprobs go with the first (or wait for one)."""
            lps = None
            if job.extras.logprobs is not None and (deltas or last):
                lps = choice.new_logprobs()
            if chat:
                logprobs = {"content": [tokens.entry(lp) for lp in lps]} if lps else None
                if lps and not deltas:
                    deltas = [None]
                out = []
                for d in deltas:
                    fields = {"content": ""} if d is None else delta_fields(d)
                    out.append(chunks.change(choice.index, fields, logprobs))
                    logprobs = None
                return out
            text = "".join(d.content for d in deltas)
            if not text and not lps:
                return []
            logprobs = None
            if lps is not None:
                offset = len(job.prompt_texts[choice.index // req.n]) + choice.stream.length
                offset -= len(text)
                logprobs = tokens.legacy(lps, [lp.token for lp in lps], offset)
            return [chunks.text(choice.index, text, logprobs)]

        def echo_events(choice: Choice) -> list[str]:
            h = choice.handle
            prompt_text = job.prompt_texts[choice.index // req.n]
            logprobs = None
            if job.extras.echo:
                logprobs = tokens.legacy(h.prompt_logprobs, h.tokens, 0)
            return [chunks.text(choice.index, prompt_text, logprobs)]

        # Echo: a choice's prompt goes first, when its first piece (or its end) shows that the
        # prompt, and so its logprobs, have been evaluated.
        echoing = set(range(len(choices))) if req.echo and not chat else set()

        async def events() -> AsyncIterator[str]:
            if chat:
                yield chunks.opening()
            async for i, piece in merged(handles):
                if plain:
                    yield chunks.piece(i, piece)
                    continue
                if i in echoing:
                    echoing.discard(i)
                    for event in echo_events(choices[i]):
                        yield event
                for event in events_of(choices[i], choices[i].feed(piece)):
                    yield event
            failure = service.failure(handles)
            if failure:
                yield responses.sse(failure.body())
                return
            reasons = []
            for choice in choices:
                if choice.index in echoing:
                    for event in echo_events(choice):
                        yield event
                deltas, parsed = choice.finish()
                for event in events_of(choice, deltas, last=True):
                    yield event
                reasons.append(finish_reason(choice.handle, parsed, FINISH_REASONS))
            yield chunks.finish(handles, reasons)
            if req.include_usage:
                yield chunks.usage(handles)
            yield responses.DONE

        def close() -> None:
            service.release(handles)
            lease.release()

        return EventStream(events(), close, self.pool.settings.send_timeout)


def _created(prepared: Prepared) -> int:
    """A model's creation time for OpenAI's listing: its file's mtime."""
    try:
        return int(prepared.resolved.path.stat().st_mtime)
    except OSError:
        return 0
