"""Ollama's generation API: /api/chat, /api/generate, /api/embed and /api/embeddings.

Ollama's field names and defaults: `stream` is true unless the request says
false, and a stream is NDJSON, one object per line, the last with `done: true`,
`done_reason` and the timings in nanoseconds. `options` map onto llmrun's
sampling names (OPTION_FIELDS); num_ctx and num_gpu choose how the model is
loaded (a model loaded otherwise is loaded again once idle). Options that only
tune speed are ignored; ones that would change the answer and that we cannot
honour are refused (DEFAULT_ONLY_OPTIONS). A chat is built exactly as for the
OpenAI API (jobs.py); tool calls come back with their arguments as an object.
An empty prompt (or no messages) only loads the model, or with keep_alive 0
unloads it. Errors are `{"error": "..."}`, mid-stream too. The model routes
(tags, show, ps, pull, ...) are ollama_models.py's.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llama_cpp.llama_grammar import JSON_GBNF
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmrun.engine.batch import Extras
from llmrun.engine.images import Image, image_from_base64, with_markers
from llmrun.errors import BadInput, BadOption
from llmrun.options import check_param
from llmrun.prompt import user_message
from llmrun.server import embeddings, observe, schemas
from llmrun.server.answers import Choice, Tokens
from llmrun.server.jobs import Job, chat_job
from llmrun.server.pool import UNSET, Lease, Pool, Unset, parse_keep_alive
from llmrun.server.transport import ClosingStream, merged, read_json, whole_answers

if TYPE_CHECKING:
    from llmrun.engine.batch import Handle
    from llmrun.server.service import Service
    from llmrun.templates.calls import Parsed
    from llmrun.templates.stream import Delta

NDJSON = "application/x-ndjson"
RAW_REMEDY = "send it to /api/generate with raw: true"
# The engine's reasons -> Ollama's done_reason.
DONE_REASONS = {
    "stop": "stop",
    "eos": "stop",
    "length": "length",
    "context": "length",
    "cancelled": "stop",
    "error": "stop",
    "timeout": "length",  # with "timed_out": true beside it
}
# options.X -> llmrun's Sampling name.
OPTION_FIELDS = {
    "num_predict": "max_tokens",
    "temperature": "temp",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "seed": "seed",
    "stop": "stop",
}
# Options that change the answer, accepted only at Ollama's defaults (llama.cpp's
# penalty window is 64 tokens, Ollama's default repeat_last_n).
DEFAULT_ONLY_OPTIONS: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "typical_p": (1,),
    "tfs_z": (1,),
    "mirostat": (0,),
    "repeat_last_n": (64,),
}
# Anything else in options (num_thread, num_batch, use_mmap, low_vram, ...) only tunes
# speed or memory, or is unknown to Ollama too, which ignores it as we do.


def error_body(status: int, message: str) -> dict[str, Any]:
    """Ollama's error object."""
    return {"error": message}


def now_iso() -> str:
    """Ollama's created_at: RFC 3339 in UTC."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.isoformat(timespec="microseconds").replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


def ndjson(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


bad = schemas.bad


# ---------------------------------------------------------------- requests


@dataclass
class Ask:
    """A chat or generate request, checked."""

    gen: schemas.Generate
    model: str | None = None
    stream: bool = True
    keep_alive: float | Unset | None = UNSET
    ctx: int | None = None  # options.num_ctx: tokens per sequence
    gpu_layers: int | None = None  # options.num_gpu
    # /api/generate only
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    raw: bool = False
    context: list[int] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)

    async def lease(self, pool: Pool) -> Lease:
        return await pool.lease(
            self.model, keep_alive=self.keep_alive, ctx=self.ctx, gpu_layers=self.gpu_layers
        )


def requested_model(body: dict[str, Any]) -> str | None:
    """`model`, or the older `name`."""
    value = body.get("model") or body.get("name")
    return None if value is None else schemas.model_name(value)


def _keep_alive(body: dict[str, Any]) -> float | Unset | None:
    if body.get("keep_alive") is None:
        return UNSET
    try:
        return parse_keep_alive(body["keep_alive"])
    except BadOption as e:
        raise bad(str(e), "keep_alive") from None


def _options(value: Any, ask: Ask) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise bad("options must be an object", "options")
    for name, v in value.items():
        if v is None:
            continue
        where = f"options.{name}"
        if name in OPTION_FIELDS:
            key = OPTION_FIELDS[name]
            if name == "num_predict" and isinstance(v, int) and v <= 0:
                v = -1  # 0, -1 and -2 (fill the context) all mean no limit here
            if name == "stop" and isinstance(v, str):
                v = [v]
            try:
                ask.gen.sampling[key] = check_param(key, v, where=where)
            except BadOption as e:
                raise bad(str(e), where) from None
        elif name == "num_ctx":
            ask.ctx = schemas.int_field(where, v, 1)
        elif name == "num_gpu":
            ask.gpu_layers = None if v == -1 else schemas.int_field(where, v, 0)
        elif name in DEFAULT_ONLY_OPTIONS and v not in DEFAULT_ONLY_OPTIONS[name]:
            raise bad(f"{where}={json.dumps(v)} is not supported by this server", where)


def _format(value: Any) -> str | None:
    """`format`: "json", or a JSON schema the answer must fit."""
    if value in (None, ""):
        return None
    if value == "json":
        return JSON_GBNF
    if isinstance(value, dict):
        return schemas.schema_grammar(json.dumps(value, sort_keys=True))
    raise bad('format must be "json" or a JSON schema object', "format")


def _think(gen: schemas.Generate, value: Any) -> None:
    """`think`: true or false, or gpt-oss's effort (low, medium, high)."""
    if value is None:
        return
    if isinstance(value, bool):
        gen.reasoning = value
        gen.template_kwargs.setdefault("enable_thinking", value)  # Qwen 3's and QwQ's switch
    elif value in ("low", "medium", "high"):
        gen.reasoning = True
        gen.template_kwargs.setdefault("reasoning_effort", value)
    else:
        raise bad(f"think must be true, false, low, medium or high, got {json.dumps(value)}")


def _common(body: dict[str, Any]) -> Ask:
    ask = Ask(schemas.Generate(), model=requested_model(body), keep_alive=_keep_alive(body))
    if body.get("stream") is not None:
        ask.stream = schemas.bool_field("stream", body["stream"])
    _options(body.get("options"), ask)
    ask.gen.grammar = _format(body.get("format"))
    _think(ask.gen, body.get("think"))
    if body.get("timeout") is not None:  # llmrun's own: seconds in all (capped by --timeout)
        ask.gen.timeout = schemas.seconds("timeout", body["timeout"])
    if body.get("logprobs"):
        ask.gen.logprobs = schemas.int_field("top_logprobs", body.get("top_logprobs") or 0, 0, 20)
    return ask


def _message(i: int, msg: Any) -> dict[str, Any]:
    """An Ollama message as the OpenAI one the chat machinery reads."""
    if not isinstance(msg, dict):
        raise bad(f"messages[{i}] must be an object with role and content", "messages")
    images = _images(msg.get("images"), f"messages[{i}].images")
    out: dict[str, Any] = {"role": msg.get("role"), "content": msg.get("content") or ""}
    if images:
        if msg.get("role") != "user":
            raise bad(f"messages[{i}]: only user messages may carry images", "messages")
        out["content"] = with_markers(out["content"], len(images))
    if msg.get("thinking"):
        out["reasoning_content"] = msg["thinking"]
    if msg.get("tool_calls"):
        out["tool_calls"] = msg["tool_calls"]
    if msg.get("role") == "tool" and (msg.get("tool_name") or msg.get("name")):
        out["name"] = msg.get("tool_name") or msg.get("name")
    parsed = schemas.parse_message(i, out)
    if images:
        parsed["images"] = images
    return parsed


def _images(value: Any, where: str) -> list[Image]:
    """Ollama's `images`: base64 strings, each an image file."""
    if not value:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad(f"{where} must be a list of base64 strings", "images")
    try:
        return [image_from_base64(v, f"{where}[{j}]") for j, v in enumerate(value)]
    except BadInput as e:
        raise bad(str(e), "images") from None


def parse_chat(body: Any) -> Ask:
    body = schemas.json_object(body)
    ask = _common(body)
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise bad("messages must be a list", "messages")
    ask.gen.messages = [_message(i, m) for i, m in enumerate(messages)]
    if body.get("tools"):
        ask.gen.tools = schemas.tools_field(body["tools"])
    return ask


def parse_generate(body: Any) -> Ask:
    body = schemas.json_object(body)
    ask = _common(body)
    for name in ("prompt", "suffix", "system"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad(f"{name} must be a string", name)
    ask.prompt = body.get("prompt") or ""
    ask.suffix = body.get("suffix") or ""
    ask.system = body.get("system") or None
    if body.get("raw") is not None:
        ask.raw = schemas.bool_field("raw", body["raw"])
    if body.get("template"):
        raise bad(
            "template is not supported: llmrun renders the model's own chat template; "
            "send raw: true with the prompt formatted as you want it",
            "template",
        )
    ask.images = _images(body.get("images"), "images")
    context = body.get("context") or []
    if not (isinstance(context, list) and all(type(t) is int for t in context)):
        raise bad("context must be a list of token ids", "context")
    ask.context = context
    return ask


def generate_job(service: Service, ask: Ask) -> Job:
    """/api/generate's prompt: fill-in-the-middle, raw, or the template around one user turn."""
    model = service.engine.model
    extras = Extras(logprobs=ask.gen.logprobs)
    # An image in an earlier answer's context is a negative id; only a vision model has them.
    if not all(0 <= t < model.n_vocab or (t < 0 and model.images) for t in ask.context):
        raise bad(f"context must hold token ids in 0..{model.n_vocab - 1}", "context")
    if ask.suffix:
        fim = model.fim_tokens()
        if fim is None:
            raise bad(
                f"{service.model_name} does not support insert: it has no "
                "fill-in-the-middle tokens",
                "suffix",
            )
        pre, suf, mid = fim
        text = model.tokenize(ask.prompt, add_special=False, parse_special=False)
        after = model.tokenize(ask.suffix, add_special=False, parse_special=False)
        head = [model.bos] if model.add_bos else []
        return Job([[*head, pre, *text, suf, *after, mid]], ask.gen.grammar, extras)
    if ask.raw:
        prompt = with_markers(ask.prompt, len(ask.images)) if ask.images else ask.prompt
        try:
            tokens = model.tokenize(
                prompt, add_special=not ask.context, parse_special=True, images=ask.images
            )
        except BadInput as e:  # a bad image, or images for a model without a projector
            raise bad(str(e), "images") from None
        return Job([ask.context + tokens], ask.gen.grammar, extras)
    system = [{"role": "system", "content": ask.system}] if ask.system else []
    ask.gen.messages = [*system, user_message(ask.prompt, ask.images)]
    job = chat_job(service, ask.gen, RAW_REMEDY, param="prompt")
    if ask.context:  # an earlier answer's context: this turn follows it
        tokens = job.prompts[0]
        if model.add_bos and tokens[:1] == [model.bos]:
            tokens = tokens[1:]
        job.prompts[0] = ask.context + tokens
    return job


# ---------------------------------------------------------------- the routes


class Ollama:
    """Ollama's generation endpoints over the pool's models."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def routes(self) -> list[Route]:
        return [
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/embeddings", self.embeddings, methods=["POST"]),
        ]

    async def chat(self, request: Request) -> Response:
        started = time.perf_counter()
        ask = parse_chat(await read_json(request))
        if not ask.gen.messages:
            return await self._load_only(ask, chat=True)
        return await self._answer(request, ask, started, chat=True)

    async def generate(self, request: Request) -> Response:
        started = time.perf_counter()
        ask = parse_generate(await read_json(request))
        if not ask.prompt and not ask.suffix:
            return await self._load_only(ask, chat=False)
        return await self._answer(request, ask, started, chat=False)

    async def _load_only(self, ask: Ask, chat: bool) -> JSONResponse:
        """No prompt: load the model (done_reason load), or with keep_alive 0 unload it."""
        head = {"model": ask.model or "", "created_at": now_iso()}
        body = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
        if ask.keep_alive == 0:
            prepared = await run_in_threadpool(self.pool.find, ask.model)
            await self.pool.unload_now(prepared)
            return JSONResponse({**head, **body, "done": True, "done_reason": "unload"})
        lease = await ask.lease(self.pool)
        head["model"] = ask.model or lease.service.model_name
        await self.pool.settle(lease)
        return JSONResponse({**head, **body, "done": True, "done_reason": "load"})

    async def _answer(self, request: Request, ask: Ask, started: float, chat: bool) -> Response:
        deadline = self.pool.settings.deadline(started, ask.gen.timeout)
        lease = await ask.lease(self.pool)
        service = lease.service
        observe.note(request, service)

        def submit() -> tuple[Job, Handle]:
            job = chat_job(service, ask.gen, RAW_REMEDY) if chat else generate_job(service, ask)
            gen = ask.gen
            handles = service.submit(
                job.prompts, gen.sampling, job.grammar, job.extras, deadline=deadline
            )
            return job, handles[0]

        try:
            job, handle = await run_in_threadpool(submit)
        except BaseException:
            lease.release()
            raise
        service.track([handle])
        observe.note(request, service, [handle])
        answer = Answer(self.pool, lease, ask, job, handle, started, chat)
        if ask.stream:
            stall = self.pool.settings.send_timeout
            return ClosingStream(answer.lines(), answer.close, NDJSON, stall_seconds=stall)
        try:
            return await answer.whole(request)
        finally:
            answer.close()

    # ------------------------------------------------------------ embeddings

    async def embed(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        body = schemas.json_object(await read_json(request))
        ask = Ask(schemas.Generate(), model=requested_model(body), keep_alive=_keep_alive(body))
        _options(body.get("options"), ask)
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise bad("input must be a string or a list of strings", "input")
        truncate = body.get("truncate", True) is not False
        dimensions = body.get("dimensions")
        if dimensions is not None:
            dimensions = schemas.int_field("dimensions", dimensions, 1)
        lease = await ask.lease(self.pool)
        observe.note(request, lease.service)
        try:
            vectors, used = ([], 0)
            if inputs:
                vectors, used = await embeddings.embed(lease.service, inputs, truncate=truncate)
        finally:
            await self.pool.settle(lease)
        if dimensions is not None:
            vectors = [_shortened(v, dimensions) for v in vectors]
        return JSONResponse(
            {
                "model": ask.model or lease.service.model_name,
                "embeddings": [v.tolist() for v in vectors],
                "total_duration": ns(time.perf_counter() - started),
                "load_duration": ns(lease.waited),
                "prompt_eval_count": used,
            }
        )

    async def embeddings(self, request: Request) -> JSONResponse:
        """The older endpoint: one `prompt`, one `embedding`."""
        body = schemas.json_object(await read_json(request))
        ask = Ask(schemas.Generate(), model=requested_model(body), keep_alive=_keep_alive(body))
        _options(body.get("options"), ask)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise bad("prompt must be a string", "prompt")
        lease = await ask.lease(self.pool)
        observe.note(request, lease.service)
        try:
            vector: list[float] = []
            if prompt:
                vectors, _ = await embeddings.embed(lease.service, [prompt], truncate=True)
                vector = vectors[0].tolist()
        finally:
            await self.pool.settle(lease)
        return JSONResponse({"embedding": vector})


def _shortened(vector: Any, dimensions: int) -> Any:
    """The first `dimensions` values, scaled back to unit length (as Ollama does)."""
    import numpy as np

    cut = vector[:dimensions]
    norm = float(np.linalg.norm(cut))
    return cut / norm if norm > 0 else cut


class Answer:
    """One chat or generate answer on its way out, whole or as NDJSON lines."""

    def __init__(
        self,
        pool: Pool,
        lease: Lease,
        ask: Ask,
        job: Job,
        handle: Handle,
        started: float,
        chat: bool,
    ) -> None:
        self.pool = pool
        self.lease = lease
        self.service = lease.service
        self.ask = ask
        self.job = job
        self.handle = handle
        self.started = started
        self.chat = chat
        self.choice = Choice(0, handle, job.reader)
        self.tokens = Tokens(self.service.engine.model, job.extras.special)
        self.name = ask.model or self.service.model_name

    def close(self) -> None:
        self.service.release([self.handle])
        self.lease.release()

    def head(self) -> dict[str, Any]:
        return {"model": self.name, "created_at": now_iso()}

    def body(self, content: str = "", thinking: str = "", calls: Parsed | None = None) -> dict:
        """The text part of a line: chat's message, or generate's response."""
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                msg["thinking"] = thinking
            if calls is not None and calls.calls:
                msg["tool_calls"] = [
                    {"function": {"index": i, "name": c.name, "arguments": _arguments(c.arguments)}}
                    for i, c in enumerate(calls.calls)
                ]
            return {"message": msg}
        out: dict[str, Any] = {"response": content}
        if thinking:
            out["thinking"] = thinking
        return out

    def logprobs(self) -> dict[str, Any]:
        if self.job.extras.logprobs is None:
            return {}
        return {"logprobs": [self.tokens.entry(lp) for lp in self.choice.new_logprobs()]}

    def final(self) -> dict[str, Any]:
        h = self.handle
        end = h.finished_at or time.perf_counter()
        prompt_end = h.prompt_done_at or end
        out: dict[str, Any] = {
            "done": True,
            "done_reason": DONE_REASONS[h.finish_reason or "stop"],
            "total_duration": ns(time.perf_counter() - self.started),
            "load_duration": ns(self.lease.waited),
            "prompt_eval_count": h.prompt_tokens,
            "prompt_eval_duration": ns(prompt_end - h.submitted_at),
            "eval_count": h.completion_tokens,
            "eval_duration": ns(end - prompt_end),
        }
        if h.finish_reason == "timeout":
            out["timed_out"] = True
        if not self.chat:
            out["context"] = [*h.tokens, *h.generated]
        return out

    def _lines_of(self, deltas: list[Delta]) -> list[str]:
        lines = []
        for d in deltas:
            if d.call_index >= 0:
                continue  # calls go out whole, once parsed
            if d.reasoning or d.content:
                body = self.body(d.content, d.reasoning)
                lines.append(ndjson({**self.head(), **body, **self.logprobs(), "done": False}))
        return lines

    async def lines(self) -> AsyncIterator[str]:
        async for _, piece in merged([self.handle]):
            for line in self._lines_of(self.choice.feed(piece)):
                yield line
        failure = self.service.failure([self.handle])
        if failure:
            yield ndjson({"error": failure.message})
            return
        deltas, parsed = self.choice.finish()
        for line in self._lines_of(deltas):
            yield line
        if parsed.calls:
            yield ndjson({**self.head(), **self.body(calls=parsed), "done": False})
        self.close()
        await self.pool.settle(self.lease)
        yield ndjson({**self.head(), **self.body(), **self.logprobs(), **self.final()})

    async def whole(self, request: Request) -> Response:
        texts = await whole_answers(request, [self.handle])
        if texts is None:
            return Response(status_code=499)  # nobody is listening
        failure = self.service.failure([self.handle])
        if failure:
            raise failure
        self.choice.feed(texts[0])
        _, parsed = self.choice.finish()
        self.close()
        await self.pool.settle(self.lease)
        body = self.body(parsed.content, parsed.reasoning, parsed)
        return JSONResponse({**self.head(), **body, **self.logprobs(), **self.final()})


def _arguments(text: str) -> Any:
    """A call's arguments as the object Ollama sends (the text when it is not JSON)."""
    try:
        return json.loads(text)
    except ValueError:
        return text
