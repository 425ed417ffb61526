"""What every command shares: the app, the stderr console, and the shared options.

Options are `Annotated` aliases defined once; a command lists the ones it takes
and hands them on under the same names to the library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from llmrun.options import parse_gpu_layers

app = typer.Typer(
    name="llmrun",
    help="Run quantized language models locally: pull, quantize, chat, run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Everything that is not a result goes to stderr. Rich drops colour when stderr
# is not a terminal and honours NO_COLOR.
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def print_error(message: str, remedy: str | None = None) -> None:
    text = f"{message}; {remedy}" if remedy else message
    err.print(f"[bold red]error:[/] {escape(text)}")


def print_json(data: Any) -> None:
    """A result as JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------- shared options

ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="A .gguf path, a store name name[:QUANT], an alias from models.toml, "
        "or org/repo[:QUANT]. Default: the registry's default model.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout, for scripts.")]
YesOpt = Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")]

# Generation. None means "not given": the model's models.toml entry, then the
# built-in default, decide.
NglOpt = Annotated[
    str,
    typer.Option("-ngl", "--n-gpu-layers", help="Layers to offload to the GPU: N, auto or all."),
]
CtxOpt = Annotated[
    int | None,
    typer.Option(
        "-c",
        "--ctx-size",
        help="Context size in tokens. [default: model entry, else 4096]",
        show_default=False,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "-t", "--threads", help="CPU threads. [default: all cores, up to 8]", show_default=False
    ),
]
TempOpt = Annotated[
    float | None,
    typer.Option("--temp", help="Temperature; 0 is greedy. [default: 0.8]", show_default=False),
]
TopKOpt = Annotated[
    int | None,
    typer.Option("--top-k", help="Top-k sampling; 0 disables. [default: 40]", show_default=False),
]
TopPOpt = Annotated[
    float | None,
    typer.Option("--top-p", help="Top-p (nucleus) sampling. [default: 0.95]", show_default=False),
]
MinPOpt = Annotated[
    float | None,
    typer.Option("--min-p", help="Min-p sampling. [default: 0.05]", show_default=False),
]
RepeatPenaltyOpt = Annotated[
    float | None,
    typer.Option(
        "--repeat-penalty",
        help="Penalty for repeated tokens; 1 disables. [default: 1.0]",
        show_default=False,
    ),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "-n",
        "--max-tokens",
        help="Most tokens to generate; -1 for no limit. [default: -1]",
        show_default=False,
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "-s", "--seed", help="Random seed; -1 for random. [default: -1]", show_default=False
    ),
]
StopOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--stop", help="Stop when this text is generated (repeatable).", show_default=False
    ),
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", help="System prompt.", show_default=False)
]
FlashAttnOpt = Annotated[
    str, typer.Option("-fa", "--flash-attn", help="Flash attention: on, off or auto.")
]
CacheTypeKOpt = Annotated[str, typer.Option("-ctk", "--cache-type-k", help="KV cache type for K.")]
CacheTypeVOpt = Annotated[str, typer.Option("-ctv", "--cache-type-v", help="KV cache type for V.")]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", help="Constrain the output: json.", show_default=False),
]
JsonSchemaOpt = Annotated[
    Path | None,
    typer.Option(
        "--json-schema", help="Constrain the output to this JSON Schema file.", show_default=False
    ),
]
DraftOpt = Annotated[
    str | None,
    typer.Option(
        "--draft", help="Speculative decoding by prompt lookup: ngram.", show_default=False
    ),
]
DraftModelOpt = Annotated[
    str | None,
    typer.Option(
        "--draft-model",
        help="Speculative decoding with a small model of the same vocabulary.",
        show_default=False,
    ),
]
RpcOpt = Annotated[
    str | None,
    typer.Option(
        "--rpc",
        help="RPC workers (`llmrun worker`) that take layers too: host:port[,host:port...].",
        show_default=False,
    ),
]
RawOpt = Annotated[bool, typer.Option("--raw", help="Plain completion: no chat template.")]
VerboseOpt = Annotated[
    bool, typer.Option("-v", "--verbose", help="Timings and llama.cpp's logs on stderr.")
]

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


SAMPLING_FLAGS = ("temp", "top_k", "top_p", "min_p", "repeat_penalty", "max_tokens", "seed", "stop")
LOAD_FLAGS = (
    "n_gpu_layers",
    "ctx_size",
    "threads",
    "flash_attn",
    "cache_type_k",
    "cache_type_v",
    "verbose",
    "rpc",
)


def pick(values: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The subset of a command's arguments that a library function takes."""
    return {name: values[name] for name in names if name in values}


# For the commands that pull a missing model first (run, chat).
NoPullOpt = Annotated[
    bool, typer.Option("--no-pull", help="Never download: use only models already here.")
]
