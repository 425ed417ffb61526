"""What every command shares: the app, the stderr console, errors and notes.

The options the commands share are declared once in `llmrun.cli.flags`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import typer

from llmrun.cli import helpformat
from llmrun.options import parse_gpu_layers

if TYPE_CHECKING:
    from rich.console import Console

helpformat.install()

app = typer.Typer(
    name="llmrun",
    help="Run quantized language models locally: pull, quantize, chat, run.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion: bash, zsh, fish
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# What makes rich treat stderr as a terminal when it is not one (rich's Console reads them).
TERMINAL_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


class StderrConsole:
    """The stderr console: rich's Console, made when something is printed.

    rich costs 45 ms to import, a tenth of a one-shot `llmrun run` that prints nothing on
    stderr. `quiet` (-q) may be set before the console exists; `is_terminal` answers without
    rich unless the environment asks rich to decide. Everything else is the Console's.
    """

    def __init__(self) -> None:
        self._console: Console | None = None
        self._quiet = False

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # Rich drops colour when stderr is not a terminal and honours NO_COLOR.
            self._console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
            self._console.quiet = self._quiet
        return self._console

    @property
    def quiet(self) -> bool:
        return self._quiet if self._console is None else self._console.quiet

    @quiet.setter
    def quiet(self, value: bool) -> None:
        self._quiet = value
        if self._console is not None:
            self._console.quiet = value

    @property
    def is_terminal(self) -> bool:
        if self._console is None and not any(k in os.environ for k in TERMINAL_ENV):
            return sys.stderr.isatty()
        return self.console.is_terminal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


# Everything that is not a result goes to stderr.
err = StderrConsole()


def quiet_stderr(quiet: bool, verbose: bool = False) -> None:
    """-q/--quiet: nothing on stderr (progress, notes, timings) but errors."""
    if quiet and verbose:
        from llmrun.errors import BadOption

        raise BadOption("-q/--quiet and -v/--verbose contradict each other", "choose one")
    err.quiet = quiet


def print_error(message: str, remedy: str | None = None) -> None:
    from rich.markup import escape

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
