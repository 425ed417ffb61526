"""What every architecture module builds on: hyperparameters in, tensor plans out.

A module subclasses `Converter`, names its gguf-py architecture, and overrides
only what its family does differently: `metadata` (extra GGUF keys), `inputs`
(checkpoint tensors grouped, such as experts stacked: moe.py), `rename` (names
gguf-py's TensorNameMap does not know), `adjust` (permutations, +1 on norms...)
`extra` (tensors the checkpoint lacks, such as rope_freqs), `vocab` (the kind of
tokenizer export: encoders' WordPiece and Unigram, bert.py) and `adjust_vocab`
(special tokens the tokenizer files do not name, as GLM-4's). `hyperparameters`
picks the part of config.json that `hp` reads (the text model's; a projector's is
its vision tower's: projector.py).
A plan is lazy: the writer reads the source tensors when it writes the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.checkpoint import Checkpoint, SourceTensor
from llmrun.quantize.vocab import Vocab, load_vocab

# Tensors of Hugging Face checkpoints that llama.cpp computes itself: never written.
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")


# YaRN settings beyond the factor, as llama.cpp's converter writes them (llama.cpp's
# defaults otherwise): rope_parameters key -> GGUFWriter method
YARN_EXTRAS: dict[str, Callable[[GGUFWriter, float], None]] = {
    "extrapolation_factor": GGUFWriter.add_rope_scaling_yarn_ext_factor,
    "attention_factor": GGUFWriter.add_rope_scaling_yarn_attn_factor,
    "beta_fast": GGUFWriter.add_rope_scaling_yarn_beta_fast,
    "beta_slow": GGUFWriter.add_rope_scaling_yarn_beta_slow,
}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the GGUF file, to be written later.

    `layout` rearranges the stored array without reading it (a view: reshape,
    swapaxes); its first axis is the one the writer walks in chunks, and its
    C-order elements are the output's. `values` changes float32 values, one
    chunk at a time. `data` is for tensors computed here rather than read.
    `parts` (instead of `source`) are stacked on a new first axis, as experts
    are: the writer reads them one after the other, so `layout` applies to each.
    `fixed_type` is a family's rule for this tensor's GGUF type, given the type asked
    for (llama.cpp's tensor_force_quant); None leaves it to the writer's tables.
    `read` (with `parts` naming what it reads) makes the tensor from several inputs at
    write time, a few rows at a time: float32 values, or, with `raw_type`, bytes already
    of that GGML type (MXFP4 experts, kept as the checkpoint has them, whatever the type
    asked for).
    """

    name: str
    shape: tuple[int, ...]  # numpy order (rows last)
    kind: gguf.MODEL_TENSOR | None
    source: SourceTensor | None = None
    layout: Callable[[np.ndarray], np.ndarray] | None = None
    values: Callable[[np.ndarray], np.ndarray] | None = None
    data: np.ndarray | None = None
    parts: tuple[SourceTensor, ...] = ()
    fixed_type: Callable[[QT], QT] | None = None
    read: Callable[[], Iterator[np.ndarray]] | None = None
    raw_type: gguf.GGMLQuantizationType | None = None

    @property
    def inputs(self) -> tuple[SourceTensor, ...]:
        """The checkpoint tensors this plan reads."""
        return (self.source,) if self.source is not None else self.parts

    def with_values(self, fn: Callable[[np.ndarray], np.ndarray]) -> TensorPlan:
        return replace(self, values=fn)

    def with_layout(self, fn: Callable[[np.ndarray], np.ndarray]) -> TensorPlan:
        return replace(self, layout=fn)

    def with_type(self, rule: Callable[[QT], QT]) -> TensorPlan:
        return replace(self, fixed_type=rule)


def always(qtype: QT) -> Callable[[QT], QT]:
    """A `fixed_type` rule: `qtype` whatever was asked for."""
    return lambda asked: qtype


class Converter:
    """A Llama-like decoder: the defaults suit most families."""

    arch: ClassVar[gguf.MODEL_ARCH]
    # config.json keys of the layer count, first found wins
    layer_keys: ClassVar[tuple[str, ...]] = ("num_hidden_layers", "n_layers", "n_layer")
    # GGUF tensor a file cannot do without -> what to tell the user when it is missing
    required: ClassVar[dict[str, str]] = {
        "token_embd.weight": "the checkpoint has no token embedding (embed_tokens.weight)"
    }
    # Packed weights (MXFP4 experts) decoded to floats and written at the asked type,
    # rather than kept as they are (`quantize --dequantize-mxfp4`).
    dequantize_mxfp4: bool = False

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.config: dict[str, Any] = self.hyperparameters(dict(ckpt.config))
        self.n_layers = int(self.hp(*self.layer_keys))
        self.names = gguf.get_tensor_name_map(self.arch, self.n_layers)

    def hyperparameters(self, config: dict[str, Any]) -> dict[str, Any]:
        """What `hp` reads: the text model's settings (text_config over the top level)."""
        return {**config, **(config.get("text_config") or {})}

    # ------------------------------------------------------------ hyperparameters

    def hp(self, *keys: str, default: Any = ...) -> Any:
        """The first of `keys` in config.json; BadInput when none is there and no default."""
        for key in keys:
            if self.config.get(key) is not None:
                return self.config[key]
        if default is ...:
            raise BadInput(f"config.json has no {' or '.join(keys)}")
        return default

    @property
    def n_head(self) -> int:
        return int(self.hp("num_attention_heads"))

    @property
    def n_head_kv(self) -> int:
        return int(self.hp("num_key_value_heads", default=self.n_head))

    @property
    def head_dim(self) -> int:
        return int(self.hp("head_dim", default=self.hp("hidden_size") // self.n_head))

    @property
    def n_vocab(self) -> int:
        return int(self.hp("vocab_size"))

    def rope(self) -> dict[str, Any]:
        """RoPE settings, from transformers 5's rope_parameters or the older keys."""
        params = dict(self.config.get("rope_parameters") or self.config.get("rope_scaling") or {})
        params = dict(params.get("full_attention", params))
        params.setdefault("rope_theta", self.config.get("rope_theta"))
        params.setdefault("rope_type", params.get("type", "default"))
        return params

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    # ------------------------------------------------------------ metadata

    def metadata(self, w: GGUFWriter) -> None:
        """The architecture's GGUF keys."""
        w.add_block_count(self.n_layers)
        w.add_context_length(int(self.hp("max_position_embeddings")))
        w.add_embedding_length(int(self.hp("hidden_size")))
        w.add_feed_forward_length(int(self.hp("intermediate_size")))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_rms_eps(float(self.hp("rms_norm_eps")))
        if self.config.get("head_dim") is not None:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        w.add_vocab_size(self.n_vocab)
        rope = self.rope()
        if rope["rope_theta"] is not None:
            w.add_rope_freq_base(float(rope["rope_theta"]))
        self.rope_scaling(w, rope)

    def rope_scaling(self, w: GGUFWriter, rope: dict[str, Any]) -> None:
        kind, factor = str(rope["rope_type"]).lower(), rope.get("factor")
        if kind == "linear" and factor:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(factor))
        elif kind == "yarn" and factor:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(factor))
            w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
            for key, add in YARN_EXTRAS.items():
                if rope.get(key) is not None:
                    add(w, float(rope[key]))
        elif kind not in ("default", "llama3"):  # llama3 is a rope_freqs tensor (llama.py)
            raise BadInput(f"config.json: RoPE scaling {kind!r} is not supported")

    def vocab(self) -> Vocab:
        """The tokenizer as GGUF keys (default: byte-level BPE or SentencePiece, vocab.py)."""
        return load_vocab(self.ckpt, self.n_vocab)

    def adjust_vocab(self, vocab: Vocab) -> None:
        """Family quirks of the exported tokenizer, changed in place (default: none)."""

    # ------------------------------------------------------------ tensors

    def plans(self) -> list[TensorPlan]:
        """Every tensor to write, in order: the checkpoint's (renamed, adjusted), then extras."""
        out: list[TensorPlan] = []
        for hf_name, plan in self.inputs():
            if hf_name.endswith(SKIPPED_SUFFIXES):
                continue
            name = self.rename(hf_name)
            if name is None:
                continue
            plan = replace(plan, name=name, kind=self.kind_of(name))
            out.extend(self.adjust(plan, hf_name))
        out.extend(self.extra())
        self._check(out)
        return out

    def inputs(self) -> Iterator[tuple[str, TensorPlan]]:
        """(checkpoint name, plan not yet renamed) for each tensor, in checkpoint order."""
        for src in self.ckpt.tensors.values():
            yield src.name, TensorPlan(src.name, src.shape, None, src)

    def rename(self, hf_name: str) -> str | None:
        """The GGUF name of a checkpoint tensor; None to leave it out."""
        name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise BadInput(
                f"tensor {hf_name} of the checkpoint has no place in a {self.arch_name} GGUF",
                "is config.json's architecture right?",
            )
        return name

    def kind_of(self, name: str) -> gguf.MODEL_TENSOR | None:
        found = self.names.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
        return found[0] if found else None

    def adjust(self, plan: TensorPlan, hf_name: str) -> Iterable[TensorPlan]:
        """Family quirks for one tensor (default: none)."""
        yield plan

    def extra(self) -> Iterator[TensorPlan]:
        """Tensors computed from the config (default: none)."""
        yield from ()

    def _check(self, plans: list[TensorPlan]) -> None:
        seen: set[str] = set()
        for p in plans:
            if p.name in seen:
                raise BadInput(f"two tensors of the checkpoint both become {p.name}")
            seen.add(p.name)
        for name, problem in self.required.items():
            if name not in seen:
                raise BadInput(problem)


def computed(name: str, data: np.ndarray, kind: gguf.MODEL_TENSOR | None = None) -> TensorPlan:
    data = np.ascontiguousarray(data, dtype=np.float32)
    return TensorPlan(name, data.shape, kind, data=data)


def stacked(name: str, parts: Iterable[SourceTensor]) -> TensorPlan:
    """One tensor made of `parts` of one shape, stacked on a new first axis, read lazily."""
    parts = tuple(parts)
    shapes = {p.shape for p in parts}
    if len(shapes) != 1:
        raise BadInput(f"{name}: its {len(parts)} parts have different shapes {sorted(shapes)}")
    return TensorPlan(name, (len(parts), *parts[0].shape), None, parts=parts)
