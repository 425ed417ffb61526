"""Run the HTTP server: resolve and load the model, listen, serve until a signal.

Ctrl-C or SIGTERM stops accepting connections, lets in-flight answers finish
for up to GRACE_SECONDS, cancels what is left, and returns normally (exit 0).
A second signal cancels at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from llmrun.engine import rpc
from llmrun.engine.batch import BatchEngine
from llmrun.engine.embed import Embedder
from llmrun.errors import BadInput, BadOption
from llmrun.generation import prepare
from llmrun.server.app import create_app
from llmrun.server.service import Service
from llmrun.templates.plan import REASONING_MODES
from llmrun.templates.render import Template, read_template_file

GRACE_SECONDS = 10
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the stop signal after a clean shutdown.

    uvicorn re-raises it so the process dies of it (exit 130, or killed by
    SIGTERM); a server that was asked to stop and did is a success for us.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit:  # a second signal: stop waiting for the answers in flight
            self.force_exit = True
        self.should_exit = True


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, made before the model loads so a busy port fails fast."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        raise BadInput(
            f"cannot listen on {host}:{port}: {e.strerror or e}", "pick another --port or --host"
        ) from None
    return sock


def serve(
    model: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    parallel: int = 4,
    api_key: str | None = None,
    embeddings: bool = False,
    system: str | None = None,
    chat_template: Path | None = None,
    reasoning: str = "auto",
    verbose: bool = False,
    announce: Callable[[str], None] = print,
    **options: Any,
) -> None:
    """Serve `model` until stopped; `options` are prepare()'s (load and sampling flags).

    `chat_template` (a file) replaces the model's template; `reasoning` (auto, on, off)
    is the default for requests that do not say.
    """
    if parallel < 1:
        raise BadOption(f"--parallel must be >= 1, got {parallel}")
    if not 0 <= port <= 65535:
        raise BadOption(f"--port must be between 0 and 65535, got {port}")
    if api_key is not None and not api_key.strip():
        raise BadOption("--api-key must not be empty")
    if reasoning not in REASONING_MODES:
        raise BadOption(
            f"--reasoning must be one of {', '.join(REASONING_MODES)}, got {reasoning!r}"
        )
    if chat_template is not None:
        Template(read_template_file(chat_template), f"chat template {chat_template}")  # checked
    prepared = prepare(model, system=system, verbose=verbose, **options)
    sock = listen(host, port)
    with contextlib.closing(sock):
        engine = BatchEngine(prepared.resolved.path, prepared.load, parallel)
        if prepared.load.rpc:  # a lost worker fails the requests, not the server
            rpc.on_lost(engine.fail)
            rpc.on_lost(
                lambda message: announce(
                    f"error: {message}; requests now get 503: restart llmrun serve "
                    "once the worker is back"
                )
            )
        app = create_app(
            engine,
            prepared.resolved.name,
            api_key,
            sampling=prepared.sampling,
            system=prepared.system,
            embedder=Embedder(engine.model, threads=prepared.load.threads) if embeddings else None,
            chat_template=chat_template,
            reasoning=reasoning,
        )
        config = uvicorn.Config(
            app,
            log_level="info" if verbose else "warning",
            access_log=verbose,
            lifespan="off",
            ws="none",
            loop="asyncio",
            # A backstop: answers are cancelled after GRACE_SECONDS (see _serve).
            timeout_graceful_shutdown=GRACE_SECONDS + 5,
        )
        engine.start()
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        announce(
            f"serving {prepared.resolved.name} on http://{shown}:{bound_port}/v1 "
            f"({parallel} sequences of {engine.slot_ctx} tokens); Ctrl-C to stop"
        )
        asyncio.run(_serve(Server(config), sock, engine, app.state.service))


async def _serve(
    server: Server, sock: socket.socket, engine: BatchEngine, service: Service
) -> None:
    grace = asyncio.ensure_future(_cancel_after_grace(server, service))
    try:
        await server.serve(sockets=[sock])
    finally:
        grace.cancel()
        # Waits for an embedding in flight, before the model goes; after a lost RPC worker
        # llama.cpp would wait for ever, so then the process just ends.
        if service.embedder is not None and not engine.failure:
            await asyncio.to_thread(service.embedder.close)
        # While the event loop still runs: the engine tells each handle it is done through it.
        await asyncio.to_thread(engine.stop, True)


async def _cancel_after_grace(server: Server, service: Service) -> None:
    """Once asked to stop: let answers in flight finish for a while, then end them.

    Ended this way, a stream gets an error event and its connection closes
    normally, rather than being cut when uvicorn gives up on it.
    """
    while not server.should_exit:
        await asyncio.sleep(0.1)
    deadline = time.monotonic() + GRACE_SECONDS
    while service.live and time.monotonic() < deadline and not server.force_exit:
        await asyncio.sleep(0.1)
    service.cancel_all()
