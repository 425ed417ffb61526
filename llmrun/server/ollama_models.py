"""Ollama's model routes: /, /api/version, /api/tags, /api/show, /api/ps, /api/pull,
/api/delete, /api/copy.

Every stored model and models.toml alias that is here is listed by the name a
request uses for it (`name:QUANT` for store entries). The shapes are what
Ollama's clients read: `details` with every field a string (Zed, Open WebUI),
`model_info` keyed by the GGUF's own keys (Continue reads the context length
there), `capabilities` from the chat template and the vocabulary. A pull goes
through `llmrun pull` (the Hub), its progress as Ollama's status lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from llmrun.errors import LlmrunError, ModelNotFound
from llmrun.ggufinfo import GgufInfo, read_info
from llmrun.options import Sampling
from llmrun.server import schemas
from llmrun.server.ollama import NDJSON, ndjson, requested_model
from llmrun.server.openai_errors import ApiError, from_llmrun
from llmrun.server.transport import ClosingStream, read_json

if TYPE_CHECKING:
    from llmrun.generation import Prepared
    from llmrun.repofiles import RemoteFile
    from llmrun.server.pool import Entry, Pool

# The Ollama release whose API this one matches: clients gate features on it.
OLLAMA_VERSION = "0.12.0"
# llmrun's sampling names -> Ollama's parameter names, for /api/show's `parameters`.
PARAMETER_NAMES = {"temp": "temperature", "max_tokens": "num_predict"}
bad = schemas.bad


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parameter_size(n: int) -> str:
    """135M, 3.2B: as Ollama writes a parameter count."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M".replace(".00M", "M")
    return f"{n / 1e3:.2f}K" if n >= 1000 else str(n)


@functools.lru_cache(maxsize=256)
def _info(path: Path, mtime_ns: int) -> GgufInfo:
    return read_info(path)


def info_of(path: Path) -> GgufInfo:
    return _info(path, path.stat().st_mtime_ns)


def digest(prepared: Prepared) -> str:
    """The file's sha256 from its manifest, else a stable id of the file."""
    stored = prepared.resolved.stored
    sha = stored.manifest.get("sha256") if stored else None
    if isinstance(sha, str) and sha:
        return sha
    path = prepared.resolved.path
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def details(prepared: Prepared) -> dict[str, Any]:
    info = info_of(prepared.resolved.path)
    family = info.architecture or "unknown"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size(info.parameters),
        "quantization_level": prepared.resolved.quant or info.quant or "unknown",
    }


def listing(prepared: Prepared) -> dict[str, Any]:
    """One model of /api/tags."""
    path = prepared.resolved.path
    st = path.stat()
    stored = prepared.resolved.stored
    size = (stored.manifest.get("total_size") if stored else None) or st.st_size
    name = prepared.resolved.name
    return {
        "name": name,
        "model": name,
        "modified_at": iso(dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc)),
        "size": size,
        "digest": digest(prepared),
        "details": details(prepared),
    }


def capabilities(prepared: Prepared, pool: Pool) -> list[str]:
    from llmrun.templates import calls
    from llmrun.templates.reasoning import template_thinks

    path = prepared.resolved.path
    info = info_of(path)
    template = info.chat_template or ""
    caps = []
    if f"{info.architecture}.pooling_type" in info.metadata:
        caps.append("embedding")  # an embedding model
    else:
        caps.append("completion")
    if template and calls.detect(template).name != "generic":
        caps.append("tools")
    if template and template_thinks(template):
        caps.append("thinking")
    # llama.cpp also finds FIM tokens by their text, which only a loaded model tells.
    entry = pool.loaded_entry(prepared)
    if "tokenizer.ggml.fim_pre_token_id" in info.metadata or (
        entry is not None and entry.service is not None and entry.service.engine.model.fim_tokens()
    ):
        caps.append("insert")
    if prepared.load.mmproj is not None:
        caps.append("vision")  # images in `images`, with its projector
    return caps


def parameters_text(sampling: Sampling, defaults: Sampling) -> str:
    """The model's own generation defaults, one `name value` line each, as Ollama writes them."""
    lines = []
    for name in ("temp", "top_k", "top_p", "min_p", "repeat_penalty", "max_tokens", "seed"):
        value = getattr(sampling, name)
        if value != getattr(defaults, name):
            lines.append(f"{PARAMETER_NAMES.get(name, name):<30} {value}")
    lines += [f"{'stop':<30} {json.dumps(s)}" for s in sampling.stop]
    return "\n".join(lines)


def _model_info(info: GgufInfo) -> dict[str, Any]:
    keys = {k: v for k, v in info.metadata.items() if k != "tokenizer.chat_template"}
    keys.setdefault("general.architecture", info.architecture)
    keys["general.parameter_count"] = info.parameters
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in keys.items()}


class OllamaModels:
    """Ollama's model endpoints over the pool and the store."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def routes(self) -> list[Route]:
        return [
            Route("/", self.root, methods=["GET", "HEAD"]),
            Route("/api/version", self.version, methods=["GET", "HEAD"]),
            Route("/api/tags", self.tags, methods=["GET", "HEAD"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/pull", self.pull, methods=["POST"]),
            Route("/api/delete", self.delete, methods=["DELETE", "POST"]),
            Route("/api/copy", self.copy, methods=["POST"]),
        ]

    async def root(self, _: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, _: Request) -> JSONResponse:
        return JSONResponse({"version": OLLAMA_VERSION})

    async def tags(self, _: Request) -> JSONResponse:
        def models() -> list[dict[str, Any]]:
            return [listing(p) for p in self.pool.servable()]

        return JSONResponse({"models": await run_in_threadpool(models)})

    async def _named(self, request: Request) -> Prepared:
        name = requested_model(schemas.json_object(await read_json(request)))
        if not name:
            raise bad("model is required", "model")
        return await run_in_threadpool(self._servable, name)

    def _servable(self, name: str) -> Prepared:
        """A listed model by name: unlike a generation request, never the default instead."""
        from llmrun.resolve import resolve_model

        servable = self.pool.servable()
        listed_as = name.removesuffix(":latest")
        for p in servable:  # the name /api/tags gave it (serve FILE.gguf: the file's stem)
            if p.resolved.name == listed_as:
                return p
        try:
            resolved = resolve_model(name)
        except LlmrunError:
            raise ApiError(404, f"model {name!r} not found", param="model") from None
        for p in servable:
            if p.resolved.path.resolve() == resolved.path.resolve():
                return p
        raise ApiError(404, f"model {name!r} not found", param="model")

    async def show(self, request: Request) -> JSONResponse:
        prepared = await self._named(request)

        def describe() -> dict[str, Any]:
            path = prepared.resolved.path
            info = info_of(path)
            template = info.chat_template or ""
            params = parameters_text(prepared.sampling, Sampling())
            modelfile = f"# Modelfile generated by llmrun\nFROM {path}\n"
            if template:
                modelfile += f'TEMPLATE """{template}"""\n'
            modelfile += "".join(f"PARAMETER {line}\n" for line in params.splitlines())
            st = path.stat()
            return {
                "license": info.license or "",
                "modelfile": modelfile,
                "parameters": params,
                "template": template,
                "details": details(prepared),
                "model_info": _model_info(info),
                "capabilities": capabilities(prepared, self.pool),
                "modified_at": iso(dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc)),
            }

        return JSONResponse(await run_in_threadpool(describe))

    async def ps(self, _: Request) -> JSONResponse:
        def running(entry: Entry) -> dict[str, Any]:
            shown = listing(entry.prepared)
            assert entry.service is not None
            return {
                "name": shown["name"],
                "model": shown["model"],
                "size": entry.size,
                "digest": shown["digest"],
                "details": shown["details"],
                "expires_at": iso(entry.expires_at()),
                "size_vram": entry.size_vram,
                "context_length": entry.service.engine.slot_ctx,
            }

        loaded = self.pool.loaded()
        models = await run_in_threadpool(lambda: [running(e) for e in loaded])
        return JSONResponse({"models": models})

    async def delete(self, request: Request) -> Response:
        from llmrun.resolve import find_stored
        from llmrun.store import remove

        prepared = await self._named(request)
        name = prepared.resolved.name
        try:
            stored = await run_in_threadpool(find_stored, name)
        except LlmrunError as e:
            raise ApiError(404, f"model {name!r} not found: {e.message}", param="model") from None
        await self.pool.unload_now(prepared)
        try:
            for model in stored:
                await run_in_threadpool(remove, model)
        finally:
            self.pool.forget()
        return Response(status_code=200)

    async def copy(self, request: Request) -> Response:
        from llmrun import store
        from llmrun.registry import split_tag

        body = schemas.json_object(await read_json(request))
        source, dest = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not isinstance(dest, str) or not dest.strip():
            raise bad("source and destination are required", "destination")
        prepared = await run_in_threadpool(self._servable, source.strip())
        name, tag = split_tag(dest.strip())
        resolved = prepared.resolved
        quant = tag or resolved.quant or info_of(resolved.path).quant or "F16"
        manifest = resolved.stored.manifest if resolved.stored else {}
        try:
            await run_in_threadpool(
                functools.partial(
                    store.copy, resolved.path, name, quant, manifest=manifest, tag=resolved.name
                )
            )
        except LlmrunError as e:
            raise ApiError(400, str(e), param="destination") from None
        self.pool.forget()
        return Response(status_code=200)

    async def pull(self, request: Request) -> Response:
        body = schemas.json_object(await read_json(request))
        name = requested_model(body)
        if not name:
            raise bad("model is required", "model")
        stream = body.get("stream", True) is not False
        lines = pull_lines(name, self.pool)
        if stream:
            return ClosingStream(_as_lines(lines), on_close=lambda: None, media_type=NDJSON)
        last: dict[str, Any] = {}
        async for event in lines:
            last = event
        if "error" in last:
            raise ApiError(last.get("status_code", 500), last["error"])
        return JSONResponse({"status": "success"})


async def _as_lines(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    async for event in events:
        event.pop("status_code", None)
        yield ndjson(event)


async def pull_lines(name: str, pool: Pool) -> AsyncIterator[dict[str, Any]]:
    """`llmrun pull NAME` in a thread, its progress as Ollama's status objects."""
    from llmrun import hub

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def put(event: dict[str, Any] | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    class Lines(hub.PullProgress):
        def __init__(self) -> None:
            self.files: dict[str, tuple[str, int]] = {}  # name -> (digest, total)
            self.done: dict[str, int] = {}
            self.shown: dict[str, int] = {}

        def begin(self, files: Any, on_disk: Any) -> None:
            for f in files:
                self.files[f.name] = (_digest_of(f), f.size or 0)
                self.done[f.name] = on_disk.get(f.name, 0)
                self._show(f.name, force=True)

        def advance(self, name: str, nbytes: int) -> None:
            self.done[name] = max(self.done.get(name, 0) + nbytes, 0)
            self._show(name)

        def _show(self, name: str, force: bool = False) -> None:
            digest_, total = self.files.get(name, ("", 0))
            done = self.done.get(name, 0)
            step = max(total // 100, 1 << 20)  # a line per percent (or MiB), not per chunk
            if not force and done - self.shown.get(name, 0) < step and done < total:
                return
            self.shown[name] = done
            put(
                {
                    "status": f"pulling {digest_[:12]}",
                    "digest": f"sha256:{digest_}",
                    "total": total,
                    "completed": min(done, total) if total else done,
                }
            )

    def work() -> None:
        try:
            put({"status": "pulling manifest"})
            result = hub.pull(name, progress=Lines())
            put({"status": "verifying sha256 digest"})
            put({"status": "writing manifest"})
            if result.kind != "gguf":
                put(
                    {
                        "error": f"{name}: only a safetensors checkpoint was found; convert it "
                        "with llmrun quantize",
                        "status_code": 400,
                    }
                )
                return
            put({"status": "success"})
        except ModelNotFound as e:
            put({"error": str(e), "status_code": 404})
        except LlmrunError as e:
            put({"error": str(e), "status_code": from_llmrun(e).status})
        except Exception as e:  # reported to the client; the server goes on
            put({"error": f"pull failed: {e}", "status_code": 500})
        finally:
            put(None)

    task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while (event := await queue.get()) is not None:
            yield event
    finally:
        pool.forget()
        with contextlib.suppress(Exception):
            await task


def _digest_of(f: RemoteFile) -> str:
    return f.sha256 or f.git_oid or hashlib.sha256(f.name.encode()).hexdigest()
