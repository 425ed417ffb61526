"""Generation options: one table of names, types, ranges and defaults.

The CLI flags, models.toml `[params]` and the engine all use these names, so a
per-model default, a flag and a library keyword are the same thing.
The other spellings the API, JSONL batch lines and the chat's /set accept are one
alias table (ALIASES), with per surface which of them it takes (SURFACES).
Precedence: flag > models.toml entry > built-in default (llama.cpp's defaults).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from llmrun.errors import BadOption


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def _between(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}"


def _positive_or_unlimited(v: int) -> str | None:
    return None if v > 0 or v == -1 else "must be a positive number of tokens, or -1 for no limit"


def _seed(v: int) -> str | None:
    return None if -1 <= v <= 0xFFFFFFFF else "must be -1 (random) or between 0 and 4294967295"


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen and when generation stops. Defaults follow llama.cpp."""

    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int = -1
    seed: int = -1
    stop: tuple[str, ...] = field(default=())

    def merged(self, overrides: Mapping[str, Any]) -> Sampling:
        """A copy with the given (already validated) values replaced; None means unset."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known and v is not None})


# name -> (python type, check). The check returns None when fine, else why not.
SAMPLING_CHECKS: dict[str, tuple[type, Callable[[Any], str | None] | None]] = {
    "temp": (float, _at_least(0.0)),
    "top_k": (int, _at_least(0)),
    "top_p": (float, _between(0.0, 1.0)),
    "min_p": (float, _between(0.0, 1.0)),
    "repeat_penalty": (float, _at_least(0.0)),
    "max_tokens": (int, _positive_or_unlimited),
    "seed": (int, _seed),
    "stop": (list, None),
}

# Other spellings of the sampling names: OpenAI's, and the short flags' letters.
ALIASES: dict[str, str] = {
    "temperature": "temp",
    "max_completion_tokens": "max_tokens",
    "n": "max_tokens",
    "s": "seed",
}


@dataclass(frozen=True)
class Spellings:
    """Which spellings of the sampling names one surface (API, JSONL line, /set) accepts."""

    aliases: tuple[str, ...]  # keys of ALIASES it takes too
    without: tuple[str, ...] = ()  # sampling names it does not take under their own name


SURFACES: dict[str, Spellings] = {
    # OpenAI's names; top_k, min_p and repeat_penalty as llama.cpp's server spells them.
    "api": Spellings(("temperature", "max_completion_tokens"), without=("temp",)),
    "batch": Spellings(("temperature",)),  # a JSONL line may be written for the OpenAI API
    "set": Spellings(("n", "s", "temperature")),  # what one types after the flags
}


def spellings(surface: str) -> dict[str, str]:
    """Spelling -> sampling name, for everything `surface` accepts."""
    spec = SURFACES[surface]
    own = {name: name for name in SAMPLING_CHECKS if name not in spec.without}
    return own | {alias: ALIASES[alias] for alias in spec.aliases}


# Keys a models.toml `[models.X.params]` table may hold: the sampling options plus
# a default system prompt.
PARAM_TYPES: dict[str, type] = {name: typ for name, (typ, _) in SAMPLING_CHECKS.items()}
PARAM_TYPES["system"] = str

# Flag spelling for messages, so an error names what the user typed.
FLAG_NAMES = {
    "temp": "--temp",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "repeat_penalty": "--repeat-penalty",
    "max_tokens": "-n/--max-tokens",
    "seed": "-s/--seed",
    "stop": "--stop",
    "system": "--system",
    "ctx_size": "-c/--ctx-size",
    "threads": "-t/--threads",
    "n_gpu_layers": "-ngl/--n-gpu-layers",
    "lora": "--lora",
}


def check_param(name: str, value: Any, where: str | None = None) -> Any:
    """Validate one generation parameter; return it normalised (ints as floats where due).

    `where` names the source (a models.toml path and key) for the message; by
    default the message names the flag.
    """
    label = where or FLAG_NAMES.get(name, name)
    if name not in PARAM_TYPES:
        raise BadOption(f"unknown parameter {label!r}", f"known: {', '.join(sorted(PARAM_TYPES))}")
    typ = PARAM_TYPES[name]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
            raise BadOption(f"{label} must be a list of non-empty strings")
        return tuple(value)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise BadOption(f"{label} must be {typ.__name__}, got {value!r}")
    check = SAMPLING_CHECKS.get(name, (typ, None))[1]
    problem = check(value) if check else None
    if problem:
        raise BadOption(f"{label} {problem}, got {value!r}")
    return value


# ---------------------------------------------------------------- loading options

FLASH_ATTN_VALUES = ("auto", "on", "off")
UNQUANTIZED_CACHE = ("f32", "f16", "bf16")
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
GPU_LAYERS_WORDS = ("auto", "all")
DEFAULT_CTX = 4096
DEFAULT_RPC_PORT = 50052  # llama.cpp rpc-server's


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter GGUF applied on top of the model, and how strongly (llama.cpp's scale)."""

    path: Path
    scale: float = 1.0

    def describe(self) -> str:
        return f"{self.path} (scale {self.scale:g})"


@dataclass(frozen=True)
class Load:
    """How a model is loaded: context, threads, offload, KV cache types."""

    n_gpu_layers: int | str = "auto"  # N, "auto" or "all"
    ctx_size: int = 0  # 0: the model's entry, else DEFAULT_CTX, capped at the trained context
    threads: int = 0  # 0: cpus.default_threads(), the cores free when the model loads
    flash_attn: str = "auto"  # on, off or auto, as llama.cpp's -fa
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    verbose: bool = False
    parallel: int = 1  # sequences decoded together (serve, --batch)
    rpc: tuple[str, ...] = ()  # RPC workers, host:port, whose devices take layers too
    n_cpu_moe: int | None = None  # MoE: experts of the first N blocks on the host; None: planned
    lora: tuple[Adapter, ...] = ()  # adapters applied to the context, in order
    mmproj: Path | None = None  # an image projector GGUF loaded beside the model (images.py)


def parse_gpu_layers(text: str) -> int | str:
    """`-ngl` accepts a count, `auto` or `all`."""
    word = text.strip().lower()
    if word in GPU_LAYERS_WORDS:
        return word
    try:
        n = int(word)
    except ValueError:
        raise BadOption(
            f"-ngl/--n-gpu-layers must be a number of layers, 'auto' or 'all', got {text!r}"
        ) from None
    if n < 0:
        raise BadOption(f"-ngl/--n-gpu-layers must be >= 0, got {n}")
    return n


def parse_rpc(text: str | None) -> tuple[str, ...]:
    """`--rpc host[:port][,host[:port]...]` -> ("host:port", ...), checked."""
    if not text:
        return ()
    endpoints: list[str] = []
    for part in text.split(","):
        part = part.strip()
        host, sep, port_text = part.rpartition(":")
        if not sep:
            host, port_text = part, str(DEFAULT_RPC_PORT)
        if not host or "/" in host or ":" in host:
            raise BadOption(
                f"--rpc: {part!r} is not host:port",
                "give workers as host:port[,host:port...] (IPv4 or a host name)",
            )
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise BadOption(f"--rpc: bad port in {part!r}", "ports are 1 to 65535")
        endpoint = f"{host}:{port}"
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    return tuple(endpoints)


def parse_lora(specs: Sequence[str] | None) -> tuple[Adapter, ...]:
    """`--lora FILE[:SCALE]` (repeatable) -> Adapters; the files are checked later (adapters.py).

    The scale is what follows the last colon when that is a number, so a path with a colon
    in it still works as long as it does not end in ":<number>".
    """
    adapters: list[Adapter] = []
    for spec in specs or ():
        path, sep, tail = spec.rpartition(":")
        scale = 1.0
        if sep and path:
            try:
                scale = float(tail)
            except ValueError:
                path = spec  # the colon belongs to the path
        else:
            path = spec
        if not math.isfinite(scale):
            raise BadOption(f"--lora {spec!r}: the scale must be a finite number")
        if not path.strip():
            raise BadOption(f"--lora {spec!r} names no file", "give --lora FILE[:SCALE]")
        adapters.append(Adapter(Path(path).expanduser(), scale))
    return tuple(adapters)


def check_load(load: Load) -> Load:
    if load.ctx_size < 0:
        raise BadOption(f"-c/--ctx-size must be > 0, got {load.ctx_size}")
    if load.threads < 0:
        raise BadOption(f"-t/--threads must be > 0, got {load.threads}")
    if load.n_cpu_moe is not None and load.n_cpu_moe < 0:
        raise BadOption(f"--n-cpu-moe must be >= 0, got {load.n_cpu_moe}")
    if load.flash_attn not in FLASH_ATTN_VALUES:
        raise BadOption(f"-fa/--flash-attn must be on, off or auto, got {load.flash_attn!r}")
    for flag, value in (
        ("-ctk/--cache-type-k", load.cache_type_k),
        ("-ctv/--cache-type-v", load.cache_type_v),
    ):
        if value not in CACHE_TYPES:
            raise BadOption(f"{flag} must be one of {', '.join(CACHE_TYPES)}, got {value!r}")
    if load.cache_type_v not in UNQUANTIZED_CACHE:
        # llama.cpp stores a quantized V cache only with flash attention.
        if load.flash_attn == "off":
            raise BadOption(
                f"-ctv {load.cache_type_v} needs flash attention, but -fa is off",
                "drop -fa off, or use -ctv f16",
            )
        load = replace(load, flash_attn="on")
    return load


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_SIZE_SCALE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, where: str = "--max-memory") -> int:
    """Bytes from "8G", "512MiB", "1.5g" or a plain number of bytes (K, M, G are binary)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise BadOption(f"{where} must be a size such as 8G or 512M, got {text!r}")
    return int(float(match.group(1)) * _SIZE_SCALE[match.group(2).lower()])
