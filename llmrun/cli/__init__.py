"""The `llmrun` command: a thin Typer layer over the library.

Each command lives in its own module and registers itself on `app`. This module
owns the one mapping from exceptions to messages and exit codes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

import typer
from typer import _click

from llmrun.cli.common import app, print_error, quiet_stderr
from llmrun.errors import LlmrunError

# Importing a command module registers its commands on `app`.
from llmrun.cli import chat, info, models, pull, quantize, run, serve, ps  # noqa: F401  isort: skip
from llmrun.cli import bench, eval, worker, cache, embed  # noqa: F401  isort: skip

EXIT_INTERRUPTED = 130


def version_line() -> str:
    """`llmrun X.Y.Z (llama-cpp-python A.B.C)`, from package metadata: llama.cpp stays unloaded."""
    from importlib.metadata import PackageNotFoundError, version

    from llmrun import __version__

    try:
        ours = version("llmrun")
    except PackageNotFoundError:  # run from a source tree that is not installed
        ours = __version__
    try:
        return f"llmrun {ours} (llama-cpp-python {version('llama-cpp-python')})"
    except PackageNotFoundError:
        return f"llmrun {ours}"


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_line() + "\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "-V",
        "--version",
        help="Print the version and exit.",
        callback=_show_version,
        is_eager=True,
    ),
) -> None:
    # No docstring: the app's help stays the one --help shows.
    pass


# Typer 0.27 and later carry their own copy of click (the click package is not imported:
# 40 ms of every command's start-up).
USAGE_ERRORS: tuple[type[Exception], ...] = (_click.exceptions.ClickException,)
ABORTS: tuple[type[BaseException], ...] = (typer.Abort,)


def quiet_ggml_aborts(environ: MutableMapping[str, str] = os.environ) -> None:
    """When llama.cpp aborts (GGML_ASSERT, a C++ exception), one line, not a gdb backtrace.

    ggml attaches gdb to print the process's backtrace unless GGML_NO_BACKTRACE is set;
    it reads the variable when it aborts, so setting it before llama.cpp loads is enough.
    LLMRUN_DEBUG=1 keeps the backtrace, and a value the user set is left alone.
    """
    if environ.get("LLMRUN_DEBUG") != "1":
        environ.setdefault("GGML_NO_BACKTRACE", "1")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turn failures into one line."""
    debug = os.environ.get("LLMRUN_DEBUG") == "1"
    quiet_ggml_aborts()
    quiet_stderr(False)  # -q is one command's: not the next in-process call's
    try:
        code = app(args=argv, prog_name="llmrun", standalone_mode=False)
    except LlmrunError as e:
        if debug:
            raise
        print_error(str(e))
        code = e.exit_code
    except ABORTS:
        code = EXIT_INTERRUPTED
    except USAGE_ERRORS as e:
        if debug:
            raise
        e.show()
        code = e.exit_code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`llmrun run ... | head -1`): not our failure.
        _silence_stdout()
        code = 0
    except Exception as e:
        if debug:
            raise
        print_error(
            f"unexpected {type(e).__name__}: {e}", "rerun with LLMRUN_DEBUG=1 for a traceback"
        )
        code = 1
    if code == EXIT_INTERRUPTED:
        sys.stderr.write("\n")
    sys.exit(code if isinstance(code, int) else 0)


def _silence_stdout() -> None:
    # Python would complain again while flushing at exit; point stdout at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


__all__ = ["app", "main", "typer"]
