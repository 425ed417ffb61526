"""Run the HTTP server: check the flags, load MODEL if given, listen, serve until a signal.

Ctrl-C or SIGTERM stops accepting connections, lets in-flight answers finish
for up to `shutdown_grace` seconds, cancels what is left, and returns normally (exit 0).
A second signal cancels at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from llmrun.engine import rpc
from llmrun.errors import BadInput, BadOption, ModelNotFound
from llmrun.generation import Prepared, prepare
from llmrun.options import parse_size
from llmrun.server import INSTALL_HINT
from llmrun.server.app import create_app
from llmrun.server.observe import LOG_FORMATS
from llmrun.server.openai_errors import ApiError
from llmrun.server.pool import Pool, Settings, listed, parse_keep_alive
from llmrun.templates.plan import REASONING_MODES
from llmrun.templates.render import Template, read_template_file

SHUTDOWN_GRACE = 10.0  # seconds: uvicorn's and most orchestrators' stop timeouts are longer
SEND_BUFFER = 128 << 10  # bytes of kernel send buffer per connection
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
        # Connections inherit it: a bounded kernel buffer per client (not autotuned up to
        # megabytes), so a client that stops reading stalls our sends within a few hundred
        # KiB, and --send-timeout then ends its answer.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
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
    only: bool = False,
    max_models: int = 3,
    keep_alive: str = "5m",
    max_memory: str | None = None,
    timeout: float = 600.0,
    max_queue: int = 512,
    send_timeout: float = 30.0,
    shutdown_grace: float = SHUTDOWN_GRACE,
    metrics: bool = False,
    log_format: str = "text",
    log_prompts: bool = False,
    allow_image_urls: bool = False,
    verbose: bool = False,
    quiet: bool = False,
    pull: bool = True,
    progress: Any = None,
    announce: Callable[[str], None] = print,
    **options: Any,
) -> None:
    """Serve until stopped: `model` loaded at once (and any other on request, unless `only`);
    with no `model`, every model here, each loaded when a request names it.

    `options` are prepare()'s load and sampling flags, for every model. `chat_template`
    (a file) replaces the models' templates; `reasoning` (auto, on, off) is the default
    for requests that do not say. `max_models`, `keep_alive` and `max_memory` are the
    pool's (pool.py). `quiet` leaves uvicorn only its errors to log.
    """
    if parallel < 1:
        raise BadOption(f"--parallel must be >= 1, got {parallel}")
    if max_models < 1:
        raise BadOption(f"--max-models must be >= 1, got {max_models}")
    if not 0 <= port <= 65535:
        raise BadOption(f"--port must be between 0 and 65535, got {port}")
    if api_key is not None and not api_key.strip():
        raise BadOption("--api-key must not be empty")
    if reasoning not in REASONING_MODES:
        raise BadOption(
            f"--reasoning must be one of {', '.join(REASONING_MODES)}, got {reasoning!r}"
        )
    if timeout <= 0 or send_timeout <= 0:
        raise BadOption(f"--timeout and --send-timeout must be > 0 seconds, got {timeout}")
    if max_queue < 0:
        raise BadOption(f"--max-queue must be >= 0, got {max_queue}")
    if shutdown_grace < 0:
        raise BadOption(f"--shutdown-grace must be >= 0 seconds, got {shutdown_grace:g}")
    if log_format not in LOG_FORMATS:
        raise BadOption(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    if metrics and importlib.util.find_spec("prometheus_client") is None:
        raise BadInput("--metrics needs prometheus-client", f"install it: {INSTALL_HINT}")
    if only and model is None:
        raise BadOption("--only needs a MODEL to serve")
    # Adapters are made for one base model: they go with MODEL, the others load without.
    lora = options.pop("lora", None)
    if lora and model is None:
        raise BadOption("--lora needs a MODEL to serve", "adapters are made for one base model")
    mmproj = options.pop("mmproj", None)  # a projector is made for one model too
    if mmproj and model is None:
        raise BadOption("--mmproj needs a MODEL to serve", "a projector is made for one model")
    if chat_template is not None:
        Template(read_template_file(chat_template), f"chat template {chat_template}")  # checked
    settings = Settings(
        flags={**options, "verbose": verbose},
        system=system,
        parallel=parallel,
        max_models=max_models,
        keep_alive=parse_keep_alive(keep_alive, "--keep-alive"),
        max_memory=parse_size(max_memory) if max_memory else None,
        embeddings=embeddings,
        chat_template=chat_template,
        reasoning=reasoning,
        timeout=timeout,
        max_queue=max_queue,
        send_timeout=send_timeout,
        allow_image_urls=allow_image_urls,
    )
    # Every flag is checked (and MODEL found, pulled if need be) before anything listens.
    default: Prepared | None = None
    if model is not None:
        default = prepare(
            model, system=system, verbose=verbose, pull=pull, progress=progress, lora=lora,
            mmproj=mmproj, **options,
        )  # fmt: skip
    else:
        with contextlib.suppress(ModelNotFound):  # no default model is fine: requests name one
            prepare(None, system=system, verbose=verbose, pull=False, **options)
    sock = listen(host, port)
    with contextlib.closing(sock):
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        asyncio.run(
            _serve(
                sock,
                settings,
                default,
                only=only,
                api_key=api_key,
                app_options={
                    "metrics": metrics,
                    "log_format": log_format,
                    "log_prompts": log_prompts,
                },
                log_level="info" if verbose else "error" if quiet else "warning",
                shutdown_grace=shutdown_grace,
                announce=announce,
                url=f"http://{shown}:{bound_port}",
            )
        )


async def _serve(
    sock: socket.socket,
    settings: Settings,
    default: Prepared | None,
    *,
    only: bool,
    api_key: str | None,
    app_options: dict[str, Any],
    log_level: str,
    shutdown_grace: float,
    announce: Callable[[str], None],
    url: str,
) -> None:
    pool = Pool(settings, only=only)
    if settings.flags.get("rpc"):  # a lost worker fails the requests, not the server
        rpc.on_lost(pool.fail)
        rpc.on_lost(
            lambda message: announce(
                f"error: {message}; requests now get 503: restart llmrun serve "
                "once the worker is back"
            )
        )
    pool.start()
    app = create_app(pool, api_key, **app_options)  # first: its metrics see MODEL's load
    try:
        if default is not None:
            pool.default = listed(default)
            try:
                lease = await pool.lease(None, keep_alive=None)  # MODEL stays until sent away
            except ApiError as e:  # it does not fit, say: the command fails as before
                raise BadInput(e.message) from None
            engine = lease.service.engine
            lease.release()
            others = "only this model (--only)" if only else "other models on request"
            announce(
                f"serving {default.resolved.name} on {url}/v1 and {url}/api "
                f"({settings.parallel} sequences of {engine.slot_ctx} tokens; {others}); "
                "Ctrl-C to stop"
            )
        else:
            announce(
                f"serving every local model on {url}/v1 and {url}/api, each loaded on request "
                f"(up to {settings.max_models} at once); Ctrl-C to stop"
            )
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,  # ours (observe.py) says more
            lifespan="off",
            ws="none",
            loop="asyncio",
            # A backstop: answers are cancelled after the grace period (see below).
            timeout_graceful_shutdown=shutdown_grace + 5,
        )
        server = Server(config)
        grace = asyncio.ensure_future(_cancel_after_grace(server, pool, shutdown_grace))
        try:
            await server.serve(sockets=[sock])
        finally:
            grace.cancel()
    finally:
        # While the event loop still runs: the engines tell each handle it is done through it.
        await pool.close()


async def _cancel_after_grace(server: Server, pool: Pool, seconds: float) -> None:
    """Once asked to stop: let answers in flight finish for a while, then end them.

    Ended this way, a stream gets an error event and its connection closes
    normally, rather than being cut when uvicorn gives up on it.
    """
    while not server.should_exit:
        await asyncio.sleep(0.1)
    pool.shutting_down = True  # new requests get 503 while the answers finish
    deadline = time.monotonic() + seconds
    while pool.live and time.monotonic() < deadline and not server.force_exit:
        await asyncio.sleep(0.1)
    pool.cancel_all()
