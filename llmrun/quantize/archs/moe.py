"""What mixture-of-experts families share: experts stacked, expert counts, routing checks.

Checkpoints store each expert's projections apart (`mlp.experts.7.gate_proj.weight`);
llama.cpp wants one 3-D tensor per projection and layer (`blk.N.ffn_gate_exps`,
shape n_expert x rows x columns in numpy order). `stack_experts` groups them into
plans of stacked parts, which the writer reads one expert at a time. Checkpoints in
transformers 5's own layout (experts stacked, gate and up fused) and Granite's are
split instead (`split_gate_up`): two views of one tensor, nothing copied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import ClassVar

import numpy as np
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter, TensorPlan, stacked
from llmrun.quantize.checkpoint import Checkpoint, SourceTensor

# `<stem>.experts.<index>.<projection>.weight`: Qwen's, OLMoE's (gate_proj...), Mixtral's (w1...)
EXPERT = re.compile(r"(?P<stem>.+\.experts)\.(?P<index>\d+)\.(?P<proj>\w+)\.weight")
# transformers 5's own layout, already stacked: gate_up_proj (n_expert x 2*ff x hidden,
# gate rows first) and down_proj (n_expert x hidden x ff), parameters without `.weight`
FUSED = re.compile(r"(?P<stem>.+\.experts)\.(?P<proj>gate_up_proj|down_proj)")


def stack_experts(
    inputs: Iterable[tuple[str, TensorPlan]], n_expert: int
) -> Iterator[tuple[str, TensorPlan]]:
    """Per-expert tensors as one stacked plan each, where their first expert was.

    The stacked plan is named `<stem>.experts.<projection>.weight`, the name gguf-py's
    TensorNameMap knows for merged experts; other inputs pass through unchanged.
    """
    order: list[tuple[str, TensorPlan] | str] = []
    groups: dict[str, dict[int, SourceTensor]] = {}
    for hf_name, plan in inputs:
        m = EXPERT.fullmatch(hf_name)
        if m is None or plan.source is None:
            order.append((hf_name, plan))
            continue
        merged = f"{m['stem']}.{m['proj']}.weight"
        if merged not in groups:
            groups[merged] = {}
            order.append(merged)
        groups[merged][int(m["index"])] = plan.source
    for item in order:
        if isinstance(item, tuple):
            yield item
            continue
        parts = groups[item]
        if sorted(parts) != list(range(n_expert)):
            raise BadInput(
                f"the checkpoint has {len(parts)} experts for {item} "
                f"(numbered {min(parts)} to {max(parts)}), config.json says {n_expert}",
                "is the download complete?",
            )
        yield item, stacked(item, (parts[i] for i in range(n_expert)))


def unfuse_experts(
    inputs: Iterable[tuple[str, TensorPlan]], n_expert: int, hidden: int
) -> Iterator[tuple[str, TensorPlan]]:
    """transformers 5's stacked experts under the merged names of `stack_experts`."""
    for hf_name, plan in inputs:
        m = FUSED.fullmatch(hf_name)
        if m is None:
            yield hf_name, plan
            continue
        # Another layout (GPT-OSS's is transposed) would split into wrong halves silently.
        hidden_axis = -1 if m["proj"] == "gate_up_proj" else -2
        if len(plan.shape) != 3 or plan.shape[0] != n_expert or plan.shape[hidden_axis] != hidden:
            raise BadInput(
                f"tensor {hf_name} has shape {plan.shape}: not {n_expert} experts' matrices "
                f"in transformers' layout (hidden size {hidden})"
            )
        stem = m["stem"]
        if m["proj"] == "down_proj":
            yield f"{stem}.down_proj.weight", plan
        else:
            yield from split_gate_up(plan, f"{stem}.gate_proj.weight", f"{stem}.up_proj.weight")


def transposed(a: np.ndarray) -> np.ndarray:
    """Rows and columns of each matrix swapped, as a view (experts stored transposed)."""
    return a.swapaxes(-1, -2)


def viewed(
    plan: TensorPlan, name: str, layout: Callable[[np.ndarray], np.ndarray] | None
) -> tuple[str, TensorPlan]:
    """`plan` renamed, read through `layout`; its shape is the view's (of no data)."""
    if layout is None:
        return name, replace(plan, name=name)
    shape = layout(np.broadcast_to(np.uint8(0), plan.shape)).shape
    return name, replace(plan, name=name, shape=shape, layout=layout)


def split_gate_up(plan: TensorPlan, gate: str, up: str) -> Iterator[tuple[str, TensorPlan]]:
    """A fused projection (gate rows, then up rows, on the next-to-last axis) as two plans
    named `gate` and `up`, each a view of its half: nothing is copied or read here."""
    assert plan.layout is None, f"{plan.name}: a split replaces the plan's layout"
    rows = plan.shape[-2]
    if rows % 2:
        raise BadInput(f"{plan.name}: {rows} rows cannot be split into gate and up halves")
    half = rows // 2
    shape = (*plan.shape[:-2], half, plan.shape[-1])
    yield gate, replace(plan, name=gate, shape=shape, layout=lambda a: a[..., :half, :])
    yield up, replace(plan, name=up, shape=shape, layout=lambda a: a[..., half:, :])


class MoeConverter(Converter):
    """A decoder whose every layer's feed-forward is a mixture of experts.

    A family names `norm_top_k`: whether llama.cpp's graph for its architecture
    rescales the chosen experts' weights to sum to one. llama.cpp fixes that per
    architecture rather than reading it from the file, so a checkpoint that routes
    otherwise cannot be converted faithfully and is refused.
    """

    norm_top_k: ClassVar[bool]

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        self.n_expert = int(self.hp("num_local_experts", "num_experts", "n_routed_experts"))
        self.n_expert_used = int(self.hp("num_experts_per_tok", "num_experts_per_token"))
        norm = bool(self.config.get("norm_topk_prob", self.norm_top_k))
        if norm != self.norm_top_k:
            always = "always" if self.norm_top_k else "never"
            raise BadInput(
                f"config.json: norm_topk_prob is {norm}, but llama.cpp's {self.arch_name} "
                f"{always} renormalizes the chosen experts' weights"
            )
        # Qwen's configs can leave some layers dense; llama.cpp's graphs expect experts in all.
        step = int(self.config.get("decoder_sparse_step") or 1)
        if self.config.get("mlp_only_layers") or step != 1:
            raise BadInput(
                f"config.json: some layers have no experts (mlp_only_layers, decoder_sparse_step), "
                f"which llama.cpp's {self.arch_name} does not support"
            )

    def metadata(self, w: GGUFWriter) -> None:
        super().metadata(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        # Qwen's experts (and shared expert) have their own sizes; Mixtral's and OLMoE's
        # are intermediate_size, which llama.cpp then uses.
        if (n_ff := self.config.get("moe_intermediate_size")) is not None:
            w.add_expert_feed_forward_length(int(n_ff))
        shared = ("shared_expert_intermediate_size", "shared_intermediate_size")  # Qwen, Granite
        if (n_ff := self.hp(*shared, default=None)) is not None:
            w.add_expert_shared_feed_forward_length(int(n_ff))

    def inputs(self) -> Iterator[tuple[str, TensorPlan]]:
        yield from stack_experts(self.unfused(super().inputs()), self.n_expert)

    def unfused(self, inputs: Iterable[tuple[str, TensorPlan]]) -> Iterator[tuple[str, TensorPlan]]:
        """Experts stored stacked, under `stack_experts`' merged names (a family's own layout)."""
        yield from unfuse_experts(inputs, self.n_expert, int(self.hp("hidden_size")))
