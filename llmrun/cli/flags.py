"""The options the commands share, declared once.

Options are `Annotated` aliases. The load and sampling flags that run, chat, serve and
bench share are one `GenerationOptions`, added to a command by `@generation_options()`
and handed on under the same names to the library.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from llmrun.options import SAMPLING_CHECKS

# ---------------------------------------------------------------- shell completion


def model_names() -> list[str]:
    """What MODEL can be, for shell completion: stored name:QUANT and names, then aliases."""
    from llmrun import registry, store
    from llmrun.resolve import DEMO_ALIAS

    names: list[str] = []
    for m in store.list_models():
        names += [m.tag, m.name]
    names += [DEMO_ALIAS, *registry.load_registry().models]
    return list(dict.fromkeys(names))


def complete_model(incomplete: str) -> list[str]:
    """The model names that start with `incomplete`; nothing when the store cannot be read."""
    try:
        names = model_names()
    except Exception:  # a broken models.toml must not print a traceback into the shell
        return []
    return [n for n in names if n.startswith(incomplete)]


# ---------------------------------------------------------------- shared options

ModelArg = Annotated[
    str | None,
    typer.Argument(
        metavar="MODEL",
        autocompletion=complete_model,
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
    typer.Option(
        "-ngl",
        "--n-gpu-layers",
        metavar="N|auto|all",
        help="Layers to offload to the GPU: N, auto or all.",
    ),
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
        "-t",
        "--threads",
        help="CPU threads. [default: the cores free at load, up to 8]",
        show_default=False,
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
    str,
    typer.Option(
        "-fa", "--flash-attn", metavar="on|off|auto", help="Flash attention: on, off or auto."
    ),
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
GrammarFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--grammar-file", help="Constrain the output to this GBNF grammar.", show_default=False
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
NCpuMoeOpt = Annotated[
    int | None,
    typer.Option(
        "--n-cpu-moe",
        metavar="N",
        help="MoE models: keep the experts of the first N layers on the CPU. "
        "[default: as few as make the rest fit the GPU]",
        show_default=False,
    ),
]
LoraOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--lora",
        metavar="FILE[:SCALE]",
        help="Apply a LoRA adapter GGUF, scaled (default 1.0); repeatable.",
        show_default=False,
    ),
]
MmprojOpt = Annotated[
    str | None,
    typer.Option(
        "--mmproj",
        metavar="FILE",
        help="The model's image projector GGUF (mmproj); a pulled vision model finds its own.",
        show_default=False,
    ),
]
RawOpt = Annotated[bool, typer.Option("--raw", help="Plain completion: no chat template.")]
ChatTemplateOpt = Annotated[
    Path | None,
    typer.Option(
        "--chat-template",
        help="Jinja chat template file (or a tokenizer_config.json) to use instead of the model's.",
        show_default=False,
    ),
]
ThinkOpt = Annotated[
    str,
    typer.Option(
        "--think",
        metavar="on|off|auto",
        help="Thinking models: on, off (ask the template not to think) or auto.",
    ),
]
HideThinkingOpt = Annotated[
    bool, typer.Option("--hide-thinking", help="Drop the model's thinking instead of showing it.")
]
ToolsOpt = Annotated[
    Path | None,
    typer.Option(
        "--tools",
        help='JSON file of OpenAI tool definitions; each call prints {"name", "arguments"}.',
        show_default=False,
    ),
]
ToolChoiceOpt = Annotated[
    str,
    typer.Option("--tool-choice", help="auto, none, required, or a function's name."),
]
VerbosePromptOpt = Annotated[
    bool,
    typer.Option("--verbose-prompt", help="Print the prompt, as the model sees it, on stderr."),
]
VerboseOpt = Annotated[
    bool, typer.Option("-v", "--verbose", help="Timings and llama.cpp's logs on stderr.")
]


@dataclass(frozen=True)
class GenerationOptions:
    """The load and sampling flags as given; None (or the flag's default) means not given.

    Field order is the order the flags appear in --help.
    """

    n_gpu_layers: str = "auto"
    ctx_size: int | None = None
    threads: int | None = None
    temp: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    flash_attn: str = "auto"
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    verbose: bool = False
    rpc: str | None = None
    n_cpu_moe: int | None = None
    lora: list[str] | None = None
    mmproj: str | None = None

    def sampling(self) -> dict[str, Any]:
        """The keywords the library takes for sampling (temp=..., stop=...)."""
        return {name: getattr(self, name) for name in SAMPLING_CHECKS if name in FLAG_PARAMS}

    def load(self) -> dict[str, Any]:
        """The keywords the library takes for loading (n_gpu_layers=..., rpc=...)."""
        return {name: getattr(self, name) for name in FLAG_PARAMS if name not in SAMPLING_CHECKS}

    def library(self) -> dict[str, Any]:
        """sampling() and load() together: what generation.run/prepare and serve take."""
        return {**self.sampling(), **self.load()}


# Field name -> its Typer parameter: the one place these flags are declared for commands.
FLAG_PARAMS: dict[str, Any] = {
    "n_gpu_layers": NglOpt,
    "ctx_size": CtxOpt,
    "threads": ThreadsOpt,
    "temp": TempOpt,
    "top_k": TopKOpt,
    "top_p": TopPOpt,
    "min_p": MinPOpt,
    "repeat_penalty": RepeatPenaltyOpt,
    "max_tokens": MaxTokensOpt,
    "seed": SeedOpt,
    "stop": StopOpt,
    "flash_attn": FlashAttnOpt,
    "cache_type_k": CacheTypeKOpt,
    "cache_type_v": CacheTypeVOpt,
    "verbose": VerboseOpt,
    "rpc": RpcOpt,
    "n_cpu_moe": NCpuMoeOpt,
    "lora": LoraOpt,
    "mmproj": MmprojOpt,
}
ALL_FLAGS = tuple(FLAG_PARAMS)


def generation_options(
    names: tuple[str, ...] = ALL_FLAGS, param: str = "options"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the flags `names` in place of its parameter `param: GenerationOptions`.

    Typer reads a command's parameters from its signature, so the wrapper's signature lists
    the flags where `param` stood; the wrapper gathers them back into one GenerationOptions.
    """
    defaults = {f.name: f.default for f in fields(GenerationOptions)}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            if p.name != param:
                params.append(p)
                continue
            params += [
                inspect.Parameter(
                    name, p.kind, annotation=FLAG_PARAMS[name], default=defaults[name]
                )
                for name in names
            ]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names if name in kwargs}
            return func(*args, **kwargs, **{param: GenerationOptions(**given)})

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


ImageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--image",
        metavar="FILE",
        help="An image for the model to look at (JPEG, PNG, WebP, GIF, BMP); `-` reads it "
        "from stdin; repeatable. Needs a vision model.",
        show_default=False,
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option("-q", "--quiet", help="Nothing on stderr but errors: no progress, no notes."),
]

# The prompt cache (run, chat).
NoCacheOpt = Annotated[
    bool,
    typer.Option("--no-cache", help="Do not use or fill the prompt cache (see `llmrun cache`)."),
]
CacheMinOpt = Annotated[
    int,
    typer.Option(
        "--cache-min", metavar="N", help="Keep prompt prefixes of at least N tokens in the cache."
    ),
]
CacheSizeOpt = Annotated[
    str,
    typer.Option(
        "--cache-size",
        metavar="SIZE",
        help="Most disk the prompt cache takes (2GiB, 500M); least recently used go first.",
    ),
]
# For the commands that pull a missing model first (run, chat).
NoPullOpt = Annotated[
    bool, typer.Option("--no-pull", help="Never download: use only models already here.")
]
