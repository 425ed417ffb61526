"""`llmrun worker`: lend this machine's devices to another llmrun over llama.cpp's RPC."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from llmrun.cli.common import app, err
from llmrun.cli.flags import ThreadsOpt
from llmrun.errors import BadOption, EngineError


@app.command("worker")
def worker_cmd(
    host: Annotated[
        str, typer.Option("--host", help="IPv4 address to listen on (0.0.0.0: all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on.")] = 50052,
    threads: ThreadsOpt = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Keep received weights here, so a client that loads the same model "
            "again sends hashes instead of tensors.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve this machine's GPUs (else its CPU) to `llmrun ... --rpc host:port`.

    Examples: llmrun worker --host 0.0.0.0 --port 50052
    then, on the other machine: llmrun run qwen3-4b "Hi" --rpc 192.168.1.20:50052
    """
    from llmrun.cpus import default_threads
    from llmrun.engine import rpc  # loads llama.cpp: only when asked

    if threads is not None and threads <= 0:
        raise BadOption(f"-t/--threads must be > 0, got {threads}")
    rpc.require()
    address = rpc.check_listen_address(host, port)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    devices = rpc.worker_devices()
    if not devices:
        raise EngineError("llama.cpp reports no device to serve on this machine")
    warning = (
        "llama.cpp's RPC protocol has no authentication and no encryption: anyone who can "
        f"reach {address}:{port} can use this machine's devices and memory. "
        "Run workers on a trusted network only."
    )
    style = "yellow" if ipaddress.ip_address(address).is_loopback else "bold red"
    err.print(f"warning: {warning}", style=style, markup=False)
    # llama.cpp prints its banner and each connection with printf: keep stdout for results.
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    failed = threading.Event()

    def run() -> None:
        rpc.serve_worker(
            address,
            port,
            threads or default_threads(),
            str(cache_dir) if cache_dir else None,
            devices,
        )
        failed.set()  # the server only returns when it could not start

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    err.print(
        f"llmrun worker: serving {len(devices)} device(s) on {address}:{port} "
        f"({', '.join(str(d.get('description') or d.get('name')) for d in devices)}); "
        "Ctrl-C stops it",
        markup=False,
    )
    threading.Thread(target=run, name="llmrun-rpc-server", daemon=True).start()
    try:
        while not failed.wait(0.5):
            pass
    except KeyboardInterrupt:
        return
    raise EngineError(f"llama.cpp's RPC server could not listen on {address}:{port}")
