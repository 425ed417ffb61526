"""The server's Starlette (ASGI) app: the model pool, the APIs over it, the API key.

create_app mounts /health, the OpenAI API (openai.py) and Ollama's (ollama.py,
ollama_models.py) over one Pool (pool.py), and with an API key puts BearerAuth
in front of them all. Errors go out in the shape of the API whose path was
asked (ERROR_SHAPES): Ollama's `{"error": "..."}` under /api/, OpenAI's
elsewhere. Shutdown is serve.py's: it ends what is left in flight through
`app.state.pool`, then unloads the models.
"""

from __future__ import annotations

import hmac

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from llmrun.errors import LlmrunError
from llmrun.server import ollama
from llmrun.server.observe import AccessLog, Metrics, Observe
from llmrun.server.ollama import Ollama
from llmrun.server.ollama_models import OllamaModels
from llmrun.server.openai import OpenAI
from llmrun.server.openai_errors import ApiError, from_llmrun
from llmrun.server.pool import Pool

HEALTH = "/health"
# Path prefix -> the error body of that API; OpenAI's for the rest.
ERROR_SHAPES = {"/api/": ollama.error_body}


def respond_error(path: str, err: ApiError) -> JSONResponse:
    shape = next((f for prefix, f in ERROR_SHAPES.items() if path.startswith(prefix)), None)
    body = shape(err.status, err.message) if shape else err.body()
    return JSONResponse(body, status_code=err.status, headers=err.headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return respond_error(request.url.path, exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404/405 and friends."""
    assert isinstance(exc, HTTPException)
    err = ApiError(exc.status_code, exc.detail, headers=exc.headers)
    return respond_error(request.url.path, err)


async def _llmrun_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LlmrunError)
    return respond_error(request.url.path, from_llmrun(exc))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: answer 500 in the usual shape; the server keeps serving."""
    err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
    return respond_error(request.url.path, err)


HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_error,
    LlmrunError: _llmrun_error,
    Exception: _unexpected_error,
}


class BearerAuth:
    """Every request needs `Authorization: Bearer KEY`, compared in constant time."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == HEALTH:
            # Load balancers ask without the key: they get the status only.
            scope["llmrun.authorized"] = self._allowed(scope)
        elif scope["type"] == "http" and not self._allowed(scope):
            err = ApiError(
                401,
                "missing or wrong API key: send Authorization: Bearer KEY",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await respond_error(scope.get("path", ""), err)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


def health_route(pool: Pool) -> Route:
    """/health: 200 with the loaded models' counters, or 503 once the engine has failed;
    without the API key (where there is one), the status alone."""

    async def health(request: Request) -> JSONResponse:
        services = pool.services()
        failure = pool.failure or next(
            (s.engine.failure for s in services if s.engine.failure), None
        )
        default = pool.default.resolved.name if pool.default else None
        if not request.scope.get("llmrun.authorized", True):
            status = "error" if failure else "ok"
            return JSONResponse({"status": status}, status_code=503 if failure else 200)
        if failure:
            return JSONResponse(
                {"status": "error", "error": failure, "model": default}, status_code=503
            )
        models = [{"model": s.model_name, **s.engine.stats()} for s in services]
        totals = {
            key: sum(m[key] for m in models)
            for key in ("active", "waiting", "steps", "generated_tokens")
        }
        return JSONResponse(
            {
                "status": "ok",
                "model": default,
                "parallel": pool.settings.parallel,
                **totals,
                "models": models,
            }
        )

    return Route(HEALTH, health)


def metrics_route(metrics: Metrics) -> Route:
    async def scrape(_: Request) -> Response:
        body, kind = await run_in_threadpool(metrics.render)
        return Response(body, media_type=kind)

    return Route("/metrics", scrape)


def create_app(
    pool: Pool,
    api_key: str | None = None,
    *,
    metrics: bool = False,
    log_format: str = "off",
    log_prompts: bool = False,
) -> Starlette:
    """The ASGI app serving the pool's models; with `api_key`, every request but /health
    needs it. `metrics` adds /metrics; `log_format` is the access log's (observe.py)."""
    routes = [
        health_route(pool),
        *OpenAI(pool).routes(),
        *Ollama(pool).routes(),
        *OllamaModels(pool).routes(),
    ]
    counters = Metrics(pool) if metrics else None
    if counters is not None:
        routes.append(metrics_route(counters))
        pool.on_load.append(counters.loaded)
        pool.on_unload.append(counters.unloaded)
    # Outermost first: every request is logged, a refused one too.
    middleware = [
        Middleware(Observe, log=AccessLog(log_format), metrics=counters, log_prompts=log_prompts)
    ]
    if api_key:
        middleware.append(Middleware(BearerAuth, key=api_key))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=HANDLERS)
    app.state.pool = pool
    return app
