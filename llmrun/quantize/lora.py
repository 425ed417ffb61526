"""PEFT LoRA adapters: to a GGUF adapter in llama.cpp's layout, or merged into a checkpoint.

A PEFT adapter folder holds adapter_config.json (rank r, lora_alpha, target modules) and
adapter_model.safetensors: per adapted weight W (out, in) of the base model, lora_A (r, in)
and lora_B (out, r), so that the adapted weight is W + alpha/r * B @ A.

The GGUF adapter follows llama.cpp's convert_lora_to_gguf.py: general.type "adapter",
adapter.type "lora", adapter.lora.alpha, and per weight `<gguf name>.lora_a` and
`.lora_b` with numpy shapes (r, in) and (out, r). B's rows are W's rows, so the family's
row rearrangement of W (llama's Q/K rope permutation) applies to B unchanged, and A is
written as it is. Names and rearrangements come from the base model's architecture module,
so an adapter converts exactly as its base model does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter

from llmrun import store
from llmrun.errors import BadInput, BadOption
from llmrun.quantize import DEFAULT_ADAPTER_TYPE
from llmrun.quantize.archs import converter_for
from llmrun.quantize.archs.base import Converter, TensorPlan
from llmrun.quantize.checkpoint import (
    DTYPES,
    SourceTensor,
    open_checkpoint,
    read_json,
    read_safetensors,
    to_f32,
)
from llmrun.quantize.progress import QuantizeProgress
from llmrun.quantize.source import Source, find_source
from llmrun.quantize.types import QuantType, get_type
from llmrun.quantize.writer import write_gguf

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's wrapper around the base model's own names
HALVES = {".lora_A.weight": "a", ".lora_B.weight": "b"}

# adapter_config.json settings a llama.cpp adapter cannot express: (test, what it is).
UNSUPPORTED: tuple[tuple[Callable[[dict[str, Any]], bool], str], ...] = (
    (lambda c: bool(c.get("use_dora")), "DoRA (use_dora)"),
    (lambda c: bool(c.get("fan_in_fan_out")), "fan_in_fan_out (Conv1D) layers"),
    (lambda c: bool(c.get("rank_pattern") or c.get("alpha_pattern")), "per-layer ranks or alphas"),
    (lambda c: bool(c.get("modules_to_save")), "modules saved whole (modules_to_save)"),
    (lambda c: c.get("bias", "none") != "none" or bool(c.get("lora_bias")), "trained biases"),
)


@dataclass(frozen=True)
class Pair:
    """The two halves of one adapted weight."""

    a: SourceTensor  # (r, in)
    b: SourceTensor  # (out, r)


@dataclass(frozen=True)
class LoraAdapter:
    folder: Path
    alpha: float  # as llama.cpp reads it: the scale is alpha / r
    rank: int
    pairs: dict[str, Pair]  # the base checkpoint's tensor name -> its halves

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def open_adapter(folder: Path) -> LoraAdapter:
    """Read and check a PEFT LoRA adapter folder; BadInput when it is not one we convert."""
    folder = Path(folder).expanduser()
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise BadInput(
            f"{folder} has no {ADAPTER_CONFIG}: it is not a PEFT adapter",
            "give the folder PEFT's save_pretrained wrote",
        )
    config = read_json(config_path)
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise BadInput(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")
    for test, what in UNSUPPORTED:
        if test(config):
            raise BadInput(f"{folder}: adapters with {what} cannot be converted")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        bin_only = (folder / "adapter_model.bin").exists()
        extra = " (adapter_model.bin, PyTorch's format, is not supported)" if bin_only else ""
        raise BadInput(f"{folder} has no {ADAPTER_WEIGHTS}{extra}")
    rank, alpha = int(config.get("r") or 0), float(config.get("lora_alpha") or 0)
    if rank <= 0 or alpha <= 0:
        raise BadInput(f"{config_path}: r and lora_alpha must be positive")
    if config.get("use_rslora"):  # rank-stabilized: alpha/sqrt(r), written as llama.cpp's alpha/r
        alpha *= math.sqrt(rank)
    return LoraAdapter(folder, alpha, rank, _pairs(read_safetensors(weights), weights, rank))


def _pairs(tensors: dict[str, SourceTensor], path: Path, rank: int) -> dict[str, Pair]:
    halves: dict[str, dict[str, SourceTensor]] = {}
    for name, t in tensors.items():
        suffix = next((s for s in HALVES if name.endswith(s)), None)
        if suffix is None:
            what = "token embeddings" if "lora_embedding" in name else "not a lora_A or lora_B"
            raise BadInput(f"{path}: tensor {name} ({what}) cannot be converted")
        if t.dtype not in DTYPES:
            raise BadInput(f"{path}: tensor {name} is {t.dtype}; adapters must be F32, F16 or BF16")
        base = name.removeprefix(PREFIX).removesuffix(suffix) + ".weight"
        halves.setdefault(base, {})[HALVES[suffix]] = t
    pairs: dict[str, Pair] = {}
    for base, half in halves.items():
        a, b = half.get("a"), half.get("b")
        if a is None or b is None:
            raise BadInput(f"{path}: {base} has only one of lora_A and lora_B")
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise BadInput(
                f"{path}: {base} has halves of shapes {a.shape} and {b.shape}, not r={rank}"
            )
        pairs[base] = Pair(a, b)
    if not pairs:
        raise BadInput(f"{path} holds no LoRA tensors")
    return pairs


def _target(adapter: LoraAdapter, conv: Converter, hf_name: str) -> SourceTensor:
    """The base weight an adapter pair changes, checked to be there and of its shape."""
    pair = adapter.pairs[hf_name]
    weight = conv.ckpt.tensors.get(hf_name)
    if weight is None:
        raise BadInput(
            f"the adapter changes {hf_name}, which {conv.ckpt.folder} has not",
            "give the adapter's own base model",
        )
    if weight.shape != (pair.b.shape[0], pair.a.shape[1]):
        raise BadInput(
            f"the adapter's {hf_name} is {pair.b.shape[0]}x{pair.a.shape[1]}, "
            f"but the base model's is {'x'.join(map(str, weight.shape))}",
            "give the adapter's own base model",
        )
    return weight


def adapter_plans(adapter: LoraAdapter, conv: Converter) -> list[TensorPlan]:
    """The GGUF adapter's tensors: per adapted weight, its lora_a and lora_b."""
    plans: list[TensorPlan] = []
    for hf_name, pair in adapter.pairs.items():
        _target(adapter, conv, hf_name)
        name = conv.rename(hf_name)
        if name is None:
            raise BadInput(f"the adapter changes {hf_name}, which {conv.arch_name} GGUFs leave out")
        kind = conv.kind_of(name)
        # B takes whatever the family does to W's rows (it has the same rows).
        adjusted = list(conv.adjust(TensorPlan(name, pair.b.shape, kind, pair.b), hf_name))
        if len(adjusted) != 1 or adjusted[0].values is not None:
            raise BadInput(f"{conv.arch_name}: an adapter of {hf_name} cannot be converted yet")
        b = adjusted[0]
        if b.name != name or b.shape != pair.b.shape:
            raise BadInput(f"{conv.arch_name}: an adapter of {hf_name} cannot be converted yet")
        plans.append(TensorPlan(f"{name}.lora_a", pair.a.shape, kind, pair.a))
        plans.append(replace(b, name=f"{name}.lora_b"))
    return plans


@dataclass(frozen=True)
class Converted:
    path: Path
    name: str
    quant: str
    kept: bool = False  # the output existed and was left alone (no --force)
    seconds: float = 0.0


def convert_adapter(
    adapter_dir: Path | str,
    base: str,
    *,
    type: str = DEFAULT_ADAPTER_TYPE,
    output: Path | None = None,
    force: bool = False,
    progress: QuantizeProgress | None = None,
) -> Converted:
    """A PEFT adapter of the checkpoint `base` (a folder, or a name `quantize` finds) to a
    GGUF adapter: by default ADAPTER_DIR/<its name>-<TYPE>.gguf."""
    progress = progress or QuantizeProgress()
    qtype = _adapter_type(type)
    started = time.monotonic()
    adapter = open_adapter(Path(adapter_dir))
    source = base_checkpoint(base, "--lora-base")
    conv = converter_for(open_checkpoint(source.path))
    plans = adapter_plans(adapter, conv)
    out = (
        Path(output).expanduser()
        if output
        else adapter.folder / f"{adapter.name}-{qtype.name}.gguf"
    )
    if out.exists() and not force:
        progress.note(f"{out} exists: kept (--force to make it again)")
        return Converted(out, adapter.name, qtype.name, kept=True)

    def metadata(w: GGUFWriter) -> None:
        w.add_type("adapter")
        w.add_string("adapter.type", "lora")
        w.add_name(adapter.name)
        w.add_float32("adapter.lora.alpha", adapter.alpha)

    with store.atomic_write(out) as tmp:
        progress.stage(f"converting the adapter to {qtype.name}")
        write_gguf(tmp, conv.arch_name, metadata, plans, qtype, progress, adapter=True)
    return Converted(out, adapter.name, qtype.name, seconds=time.monotonic() - started)


def _adapter_type(name: str) -> QuantType:
    qtype = get_type(name)
    if not qtype.direct:  # llama.cpp's quantizer takes models, not adapters
        raise BadOption(
            f"an adapter is written as F32, F16, BF16 or Q8_0, not {qtype.name}",
            "adapters are small: F16 (the default) loses nothing that matters",
        )
    return qtype


def base_checkpoint(spec: str, flag: str) -> Source:
    source = find_source(spec)
    if source.kind != "checkpoint":
        raise BadInput(
            f"{flag} {spec} is a GGUF file; adapters need the base model's checkpoint",
            "give the folder with config.json and *.safetensors, or a pulled checkpoint",
        )
    return source


# ---------------------------------------------------------------- --merge-lora


@dataclass(frozen=True)
class MergedTensor(SourceTensor):
    """A base weight with the adapter baked in, W + scale * B @ A, computed when written
    (one tensor in memory at a time, like any other)."""

    weight: SourceTensor | None = None
    pair: Pair | None = None
    scale: float = 1.0

    def array(self) -> np.ndarray:
        assert self.weight is not None and self.pair is not None
        w = to_f32(self.weight.array(), self.weight.dtype)
        a = to_f32(self.pair.a.array(), self.pair.a.dtype)
        b = to_f32(self.pair.b.array(), self.pair.b.dtype)
        return w + np.float32(self.scale) * (b @ a)


def merged_plans(
    plans: list[TensorPlan], adapter: LoraAdapter, conv: Converter
) -> list[TensorPlan]:
    """`plans` of the base checkpoint with each adapted weight replaced by its merged one."""
    for hf_name in adapter.pairs:
        _target(adapter, conv, hf_name)
    out: list[TensorPlan] = []
    for plan in plans:
        src = plan.source
        pair = adapter.pairs.get(src.name) if src is not None else None
        if src is None or pair is None:
            out.append(plan)
            continue
        merged = MergedTensor(
            src.name, "F32", src.shape, src.file, 0, int(np.prod(src.shape)) * 4,
            weight=src, pair=pair, scale=adapter.scale,
        )  # fmt: skip
        out.append(replace(plan, source=merged))
    return out
