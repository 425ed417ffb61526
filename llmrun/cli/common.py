"""What every command shares: the app, the stderr console, errors and notes.

The options the commands share are declared once in `llmrun.cli.flags`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from llmrun.cli import helpformat
from llmrun.options import parse_gpu_layers

helpformat.install()

app = typer.Typer(
    name="llmrun",
    help="Run quantized language models locally: pull, quantize, chat, run.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion: bash, zsh, fish
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Everything that is not a result goes to stderr. Rich drops colour when stderr
# is not a terminal and honours NO_COLOR.
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def quiet_stderr(quiet: bool, verbose: bool = False) -> None:
    """-q/--quiet: nothing on stderr (progress, notes, timings) but errors."""
    if quiet and verbose:
        from llmrun.errors import BadOption

        raise BadOption("-q/--quiet and -v/--verbose contradict each other", "choose one")
    err.quiet = quiet


def print_error(message: str, remedy: str | None = None) -> None:
    text = f"{message}; {remedy}" if remedy else message
    quiet, err.quiet = err.quiet, False  # -q silences the chatter, never the error
    try:
        err.print(f"[bold red]error:[/] {escape(text)}")
    finally:
        err.quiet = quiet


def print_json(data: Any) -> None:
    """A result as JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


GPU_INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=on" pip install --force-reinstall --no-cache-dir '
    '"llama-cpp-python>=0.3.36,<0.4"'
)


def note_cpu_only(n_gpu_layers: str, rpc: str | None = None) -> None:
    """-ngl asked for GPU layers where there is nothing to put them on: say so once."""
    if rpc or parse_gpu_layers(n_gpu_layers) in ("auto", 0):
        return
    from llmrun.engine.system import devices, is_gpu

    if any(is_gpu(d) for d in devices()):
        return
    err.print(
        f"note: llama.cpp sees no GPU here, so -ngl {n_gpu_layers} is ignored; "
        f"for CUDA: {GPU_INSTALL_HINT}",
        style="yellow",
        markup=False,
    )
