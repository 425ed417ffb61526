"""The server's Starlette (ASGI) app: one Service, the routes of the APIs over it, the API key.

create_app builds the Service (service.py) that the APIs share, mounts /health
and the OpenAI API's routes (openai.py), and with an API key puts BearerAuth in
front of them all. Every error goes out through openai_errors.HANDLERS.
Shutdown is serve.py's: it ends what is left in flight through
`app.state.service`, then stops the engine.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from llmrun.options import Sampling
from llmrun.server.openai import OpenAI
from llmrun.server.openai_errors import HANDLERS, error_body
from llmrun.server.service import Service

if TYPE_CHECKING:
    from llmrun.engine.batch import BatchEngine
    from llmrun.engine.embed import Embedder


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


def health_route(service: Service) -> Route:
    """/health: 200 with the engine's stats, or 503 once it has failed."""

    async def health(_: Request) -> JSONResponse:
        if service.engine.failure:
            return JSONResponse(
                {"status": "error", "error": service.engine.failure, "model": service.model_name},
                status_code=503,
            )
        return JSONResponse({"status": "ok", "model": service.model_name, **service.engine.stats()})

    return Route("/health", health)


def create_app(
    engine: BatchEngine,
    model_name: str,
    api_key: str | None = None,
    *,
    sampling: Sampling | None = None,
    system: str | None = None,
    embedder: Embedder | None = None,
    chat_template: Path | None = None,
    reasoning: str = "auto",
) -> Starlette:
    """The ASGI app serving `engine` as `model_name`; with `api_key`, every request needs it.

    `sampling` holds the defaults a request's own fields override (the command's
    flags and the model's params); `system` is used when a chat has no system message;
    `chat_template` (a file) replaces the model's; `reasoning` is --reasoning's default.
    """
    service = Service(
        engine,
        model_name,
        sampling or Sampling(),
        system,
        embedder,
        chat_template=chat_template,
        reasoning=reasoning,
    )
    routes = [health_route(service), *OpenAI(service).routes()]
    middleware = [Middleware(BearerAuth, key=api_key)] if api_key else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=HANDLERS)
    app.state.service = service
    return app
