"""The OpenAI API's routes: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings.

Requests are checked (schemas.py), turned into tokens off the event loop, and
submitted to the engine, whose decode thread serves them all together; the
answers come back through each handle's async iterator and go out as OpenAI's
objects (responses.py), whole or as server-sent events. A client that goes
away mid-answer has its sequence cancelled at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmrun.engine.batch import Extras
from llmrun.errors import BadInput
from llmrun.server import embeddings, responses, schemas
from llmrun.server.answers import Choice, Tokens, delta_fields, finish_reason, message
from llmrun.server.openai_errors import ApiError
from llmrun.server.responses import FINISH_REASONS, Chunks, EventStream
from llmrun.server.transport import merged, read_json, whole_answers
from llmrun.templates.plan import Tools, plan_chat
from llmrun.templates.stream import AnswerReader

if TYPE_CHECKING:
    from llmrun.engine.batch import Handle
    from llmrun.engine.sampling import Grammar
    from llmrun.server.service import Service


@dataclass
class Job:
    """A request made ready for the engine: what to evaluate and how to read the answers."""

    prompts: list[list[int]]
    grammar: Grammar | str | None
    extras: Extras
    reader: AnswerReader = field(default_factory=AnswerReader)
    prompt_texts: list[str] = field(default_factory=list)  # completions: for echo, offsets


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
        return await self._answer(request, req, self._chat_job, chat=True)

    async def completions(self, request: Request) -> Response:
        req = schemas.parse_completion(await read_json(request))
        return await self._answer(request, req, self._completion_job, chat=False)

    def _chat_job(self, req: schemas.Generate) -> Job:
        s = self.service
        try:
            template = s.template()
        except BadInput as e:  # its remedy (--raw) is the command line's
            raise ApiError(
                400, f"{e.message}; use /v1/completions", param="messages", code="no_template"
            ) from None
        reasoning = s.reasoning if req.reasoning is None else ("on" if req.reasoning else "off")
        try:
            plan = plan_chat(
                template,
                req.messages,
                tools=Tools(req.tools, req.tool_choice, req.parallel_tool_calls),
                reasoning=reasoning,
                template_kwargs=req.template_kwargs,
                system=s.system,
            )
        except BadInput as e:  # the template refused this conversation
            raise ApiError(400, e.message, param="messages", code="template_error") from None
        reader = plan.reader
        if req.reasoning is False:  # reasoning_format none: thinking stays in the content
            reader = replace(reader, thinking=False)
        tokens = s.engine.model.tokenize(plan.prompt, add_special=True, parse_special=True)
        extras = Extras(logprobs=req.logprobs, special=reader.active)
        return Job([tokens], plan.grammar or req.grammar, extras, reader)

    def _completion_job(self, req: schemas.Generate) -> Job:
        model = self.service.engine.model
        prompts = [self.service.tokens(prompt, "prompt") for prompt in req.prompts]
        texts = [p if isinstance(p, str) else model.detokenize(p) for p in req.prompts]
        want_prompt = req.echo and req.logprobs is not None
        extras = Extras(logprobs=req.logprobs, echo=want_prompt, generate=not req.prompt_only)
        return Job(prompts, req.grammar, extras, prompt_texts=texts)

    async def _answer(
        self,
        request: Request,
        req: schemas.Generate,
        prepare: Callable[[schemas.Generate], Job],
        chat: bool,
    ) -> Response:
        def submit() -> tuple[Job, list[Handle]]:
            job = prepare(req)
            return job, self.service.submit(
                job.prompts, req.sampling, job.grammar, job.extras, req.n
            )

        # Templates, tokenizing and grammars take a while: not on the event loop.
        job, handles = await run_in_threadpool(submit)
        self.service.track(handles)
        if req.stream:
            return self._stream(req, job, handles, chat)
        return await self._complete(request, req, job, handles, chat)

    async def _complete(
        self, request: Request, req: schemas.Generate, job: Job, handles: list[Handle], chat: bool
    ) -> Response:
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
        tokens = Tokens(self.service.engine.model, job.extras.special)
        shape = self._chat_choice if chat else self._text_choice
        choices = [
            shape(req, job, tokens, Choice(i, h, job.reader), text)
            for i, (h, text) in enumerate(zip(handles, texts, strict=True))
        ]
        return JSONResponse(responses.completion(handles, choices, chat, self.service.model_name))

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
        self, req: schemas.Generate, job: Job, handles: list[Handle], chat: bool
    ) -> Response:
        chunks = Chunks(len(handles), chat, self.service.model_name)
        plain = not job.reader.active and job.extras.logprobs is None and not req.echo
        tokens = Tokens(self.service.engine.model, job.extras.special)
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
            failure = self.service.failure(handles)
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

        return EventStream(events(), on_close=lambda: self.service.release(handles))
