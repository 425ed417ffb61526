"""How many layers to put on the GPU, and whether the context fits at all.

A pure function of the GGUF's tensor sizes, the devices' free memory, the
context and the KV cache types, so it can be tested with made-up devices.
llama.cpp offloads the *last* N blocks; N = n_layers + 1 also moves the output
layer. With several GPUs it splits the offloaded blocks in proportion to free
memory, and so do we.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmrun.errors import BadOption
from llmrun.ggufinfo import GgufInfo

MIB = 1 << 20
GIB = 1 << 30

# Bytes per element of each KV cache type (ggml block bytes / block size).
KV_TYPE_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "iq4_nl": 18 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
}
# Left free on every device: the driver's own use, fragmentation, other programs.
MARGIN_FRACTION = 0.05
MARGIN_MIN = 512 * MIB
N_UBATCH = 512  # the engine's micro-batch; the compute buffer scales with it
CONTEXT_STEP = 256  # llama.cpp pads the context to a multiple of 256

_BLOCK = re.compile(r"^blk\.(\d+)\.")
# A MoE block's expert tensors (llama.cpp's --cpu-moe pattern), kept on the host first when
# the model does not fit: they are most of its bytes and few of its reads per token.
_EXPERTS = re.compile(r"^blk\.(\d+)\.ffn_(up|down|gate|gate_up)_exps\.")


def experts_pattern(layer: int) -> str:
    """The regex llama.cpp's tensor_buft_overrides matches for layer `layer`'s experts."""
    return rf"blk\.{layer}\.ffn_(up|down|gate|gate_up)_exps"


@dataclass(frozen=True)
class Device:
    name: str
    free: int
    total: int

    @property
    def budget(self) -> int:
        return self.free - max(MARGIN_MIN, int(self.total * MARGIN_FRACTION))


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a model, read from its GGUF."""

    n_layers: int
    layer_bytes: tuple[int, ...]  # weights of each block blk.N.*
    output_bytes: int  # output layer (+ its norm), offloaded as layer n_layers
    n_embd: int
    n_vocab: int
    n_head: int
    kv_elems_per_token: int  # K + V elements per token per layer (n_embd_k_gqa + n_embd_v_gqa)
    n_ctx_train: int
    expert_bytes: tuple[int, ...] = ()  # of each block's expert tensors; () for a dense model

    @classmethod
    def from_gguf(cls, info: GgufInfo) -> ModelShape:
        meta, arch = info.metadata, info.architecture or ""

        def num(key: str, default: int = 0) -> int:
            value = meta.get(f"{arch}.{key}", default)
            # Some models give per-layer values; the largest is the safe bound.
            return int(max(value) if isinstance(value, (list, tuple)) else value)

        n_layers = info.block_count or num("block_count")
        layer_bytes, expert_bytes = [0] * n_layers, [0] * n_layers
        for name, size in info.tensor_bytes.items():
            match = _BLOCK.match(name)
            if match and int(match.group(1)) < n_layers:
                layer_bytes[int(match.group(1))] += size
                if _EXPERTS.match(name):
                    expert_bytes[int(match.group(1))] += size
        tensors = info.tensor_bytes
        # Tied embeddings: llama.cpp copies token_embd to the GPU as the output layer.
        output = tensors.get("output.weight", tensors.get("token_embd.weight", 0))
        n_embd = num("embedding_length")
        n_head = num("attention.head_count", 1) or 1
        n_head_kv = num("attention.head_count_kv", n_head) or n_head
        head_k = num("attention.key_length", n_embd // n_head)
        head_v = num("attention.value_length", n_embd // n_head)
        return cls(
            n_layers=n_layers,
            layer_bytes=tuple(layer_bytes),
            output_bytes=output + tensors.get("output_norm.weight", 0),
            n_embd=n_embd,
            n_vocab=info.vocab_size or num("vocab_size"),
            n_head=n_head,
            kv_elems_per_token=n_head_kv * (head_k + head_v),
            n_ctx_train=info.context_length or 0,
            expert_bytes=tuple(expert_bytes) if any(expert_bytes) else (),
        )


@dataclass(frozen=True)
class Placement:
    """What one device holds under a plan."""

    device: str
    layers: int
    weight_bytes: int
    kv_bytes: int
    compute_bytes: int
    budget: int | None  # None: host memory, checked separately (weights are mmapped)

    @property
    def total(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.compute_bytes

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget


@dataclass(frozen=True)
class Plan:
    n_gpu_layers: int  # what llama.cpp is given
    n_layers: int
    ctx: int
    placements: tuple[Placement, ...]  # GPU devices, then "CPU" for the rest
    reason: str  # how the count was chosen
    cpu_moe: int = 0  # the first blocks whose experts stay on the host, as --n-cpu-moe

    @property
    def fits(self) -> bool:
        return all(p.fits for p in self.placements)

    def describe(self) -> str:
        """One line per device, for -v."""
        lines = [f"offload: {self.n_gpu_layers}/{self.n_layers + 1} layers on GPU ({self.reason})"]
        if self.cpu_moe:
            lines.append(f"  experts of the first {self.cpu_moe} layers on the CPU")
        for p in self.placements:
            lines.append(
                f"  {p.device}: {p.layers} layers, weights {p.weight_bytes / MIB:.0f} MiB, "
                f"KV {p.kv_bytes / MIB:.0f} MiB, compute {p.compute_bytes / MIB:.0f} MiB"
                + (f" (budget {p.budget / MIB:.0f} MiB)" if p.budget is not None else "")
            )
        return "\n".join(lines)


def reserve(devices: Sequence[Device], n: int) -> list[Device]:
    """The devices with `n` bytes of the first one's free memory taken (a projector's)."""
    if not devices or n <= 0:
        return list(devices)
    first = devices[0]
    return [Device(first.name, max(first.free - n, 0), first.total), *devices[1:]]


def kv_bytes(shape: ModelShape, ctx: int, layers: int, type_k: str, type_v: str) -> int:
    per_elem = (KV_TYPE_BYTES[type_k] + KV_TYPE_BYTES[type_v]) / 2
    return int(shape.kv_elems_per_token * per_elem * ctx * layers)


def compute_bytes(shape: ModelShape, ctx: int) -> int:
    """A generous estimate of llama.cpp's compute buffer for one micro-batch.

    Logits and activations for N_UBATCH tokens, plus attention scores for the
    whole context (the non-flash-attention path, the larger of the two).
    """
    activations = N_UBATCH * 4 * (shape.n_vocab + 8 * shape.n_embd)
    scores = N_UBATCH * ctx * shape.n_head * 4
    return activations + scores


def _split(k: int, devices: Sequence[Device]) -> list[int]:
    """Offloaded layer counts per device, in proportion to free memory."""
    if not devices:
        return []
    total_free = sum(max(d.free, 0) for d in devices) or 1
    counts, given, cumulative = [], 0, 0.0
    for d in devices:
        cumulative += max(d.free, 0) / total_free
        upto = round(k * cumulative)
        counts.append(upto - given)
        given = upto
    counts[-1] += k - given
    return counts


def _placements(
    shape: ModelShape,
    devices: Sequence[Device],
    k: int,
    ctx: int,
    type_k: str,
    type_v: str,
    cpu_moe: int = 0,
) -> tuple[Placement, ...]:
    """Where the last k layers go (k == n_layers + 1 includes the output layer), the
    experts of the first `cpu_moe` blocks staying on the host."""
    # Offloaded blocks are the last ones; index n_layers stands for the output layer.
    kept = [
        shape.expert_bytes[i] if i < cpu_moe and shape.expert_bytes else 0
        for i in range(shape.n_layers)
    ]
    sizes = [*(b - e for b, e in zip(shape.layer_bytes, kept, strict=True)), shape.output_bytes]
    offloaded = list(range(shape.n_layers + 1 - k, shape.n_layers + 1))
    result, start = [], 0
    for device, count in zip(devices, _split(k, devices), strict=True):
        mine = offloaded[start : start + count]
        start += count
        blocks = sum(1 for i in mine if i < shape.n_layers)
        result.append(
            Placement(
                device=device.name,
                layers=len(mine),
                weight_bytes=sum(sizes[i] for i in mine),
                kv_bytes=kv_bytes(shape, ctx, blocks, type_k, type_v),
                compute_bytes=compute_bytes(shape, ctx) if mine else 0,
                budget=device.budget,
            )
        )
    cpu_blocks = shape.n_layers - sum(1 for i in offloaded if i < shape.n_layers)
    result.append(
        Placement(
            device="CPU",
            layers=shape.n_layers + 1 - k,
            weight_bytes=sum(sizes[: shape.n_layers + 1 - k]) + sum(kept),
            kv_bytes=kv_bytes(shape, ctx, cpu_blocks, type_k, type_v),
            compute_bytes=compute_bytes(shape, ctx),
            budget=None,
        )
    )
    return tuple(result)


def plan_offload(
    shape: ModelShape,
    devices: Sequence[Device],
    *,
    ctx: int,
    request: int | str = "auto",
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    n_cpu_moe: int | None = None,
) -> Plan:
    """Choose the layer count for -ngl N|auto|all on these GPU devices.

    auto: as many layers as fit every device's budget; all: everything or a
    clear error with the numbers; N: exactly N (capped at the model's layers).
    A MoE model that does not fit keeps experts on the host first, from the first
    block on, as few as needed; `n_cpu_moe` fixes that count instead.
    """
    most = shape.n_layers + 1
    moe = min(n_cpu_moe, shape.n_layers) if n_cpu_moe is not None and shape.expert_bytes else 0

    def place(k: int, m: int | None = None) -> tuple[Placement, ...]:
        m = moe if m is None else m  # read at call time: moe changes below
        return _placements(shape, devices, k, ctx, cache_type_k, cache_type_v, m)

    def plan(k: int, reason: str, m: int | None = None) -> Plan:
        m = moe if m is None else m
        return Plan(k, shape.n_layers, ctx, place(k, m), reason, m)

    if not devices:
        return plan(0, "no GPU device")
    if isinstance(request, int):
        return plan(min(request, most), "as requested")
    if n_cpu_moe is None and shape.expert_bytes and not all(p.fits for p in place(most)):
        for m in range(1, shape.n_layers + 1):  # every layer on the GPU, its experts not
            if all(p.fits for p in place(most, m)):
                return plan(most, f"{request}: experts on the CPU first", m)
        moe = shape.n_layers  # not even then: all experts on the host, and fewer layers
    if request == "all":
        placements = place(most)
        if not all(p.fits for p in placements):
            need = sum(p.total for p in placements if p.device != "CPU")
            free = sum(max(d.budget, 0) for d in devices)
            raise BadOption(
                f"-ngl all needs {need / GIB:.2f} GiB of GPU memory but {free / GIB:.2f} GiB is "
                f"usable at context {ctx}",
                "use -ngl auto, a smaller -c/--ctx-size, or -ctk/-ctv q8_0",
            )
        return plan(most, "all layers")
    for k in range(most, -1, -1):
        if all(p.fits for p in place(k)):
            return plan(k, "auto: as many as fit")
    return plan(0, "auto: nothing fits")  # pragma: no cover


def host_available() -> int | None:
    """Memory the OS can give us now (Linux MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_host_context(
    plan: Plan, shape: ModelShape, available: int | None, type_k: str, type_v: str
) -> None:
    """KV cache and compute buffer in host memory must fit; say the largest ctx that does."""
    if available is None:
        return
    cpu = next(p for p in plan.placements if p.device == "CPU")
    budget = available - MARGIN_MIN
    if cpu.kv_bytes + cpu.compute_bytes <= budget:
        return
    cpu_blocks = shape.n_layers - min(plan.n_gpu_layers, shape.n_layers)
    largest = 0
    for ctx in range(CONTEXT_STEP, plan.ctx, CONTEXT_STEP):
        if kv_bytes(shape, ctx, cpu_blocks, type_k, type_v) + compute_bytes(shape, ctx) > budget:
            break
        largest = ctx
    need = cpu.kv_bytes + cpu.compute_bytes
    remedy = f"use -c {largest} or less" if largest else "free some memory"
    raise BadOption(
        f"a context of {plan.ctx} tokens needs {need / GIB:.2f} GiB for its KV cache and buffers "
        f"but {max(budget, 0) / GIB:.2f} GiB of memory is available",
        f"{remedy} (or -ctk/-ctv q8_0 to halve the cache)",
    )
