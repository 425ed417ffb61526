"""LoRA adapter files (`--lora FILE[:SCALE]`): checked against the base model before loading.

llama.cpp refuses a bad adapter with a log line and a NULL, or may abort on a damaged
file; we read the adapter's header ourselves first (ggufinfo), so that a missing file, a
model given where an adapter belongs, or an adapter made for another base model is one
clear message before anything loads.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmrun.errors import BadModelFile
from llmrun.ggufinfo import GgufInfo, TensorInfo, read_info, tensor_index
from llmrun.options import Adapter

CONVERT_HINT = "convert a PEFT adapter with `llmrun quantize ADAPTER_DIR --lora-base MODEL`"
LORA_SUFFIXES = (".lora_a", ".lora_b")


def check_adapters(adapters: Sequence[Adapter], base: GgufInfo) -> None:
    """Each adapter is a LoRA GGUF whose tensors fit `base`; BadModelFile naming the first
    that is not."""
    base_tensors: dict[str, TensorInfo] | None = None
    for adapter in adapters:
        info = read_info(adapter.path)
        meta = info.metadata
        kind = meta.get("general.type")
        if kind != "adapter" or meta.get("adapter.type") != "lora":
            what = f"general.type is {kind!r}" if kind != "adapter" else "not a LoRA"
            raise BadModelFile(
                f"--lora {adapter.path} is not a LoRA adapter ({what})", CONVERT_HINT
            )
        if info.architecture != base.architecture:
            raise BadModelFile(
                f"--lora {adapter.path} is for a {info.architecture} model, "
                f"but {base.path.name} is {base.architecture}",
                "give the adapter's own base model",
            )
        if base_tensors is None:
            base_tensors = {t.name: t for t in tensor_index(base.path)}
        _check_shapes(adapter, tensor_index(adapter.path), base_tensors, base)


def _check_shapes(
    adapter: Adapter,
    tensors: list[TensorInfo],
    base_tensors: dict[str, TensorInfo],
    base: GgufInfo,
) -> None:
    pairs: dict[str, dict[str, TensorInfo]] = {}
    for t in tensors:
        for suffix in LORA_SUFFIXES:
            if t.name.endswith(suffix):
                pairs.setdefault(t.name.removesuffix(suffix), {})[suffix] = t
    if not pairs:
        raise BadModelFile(f"--lora {adapter.path} has no LoRA tensors (*.lora_a, *.lora_b)")
    for name, pair in pairs.items():
        target = base_tensors.get(name)
        a, b = pair.get(".lora_a"), pair.get(".lora_b")
        if a is None or b is None:
            raise BadModelFile(f"--lora {adapter.path}: {name} lacks its lora_a or lora_b")
        # ggml order: W is (in, out); A is (in, r), B is (r, out). Token embeddings are
        # stored flipped (llama.cpp's llm_build_inp_embd), so only their presence is checked.
        fits = target is not None and (
            name.startswith("token_embd.")
            or (target.shape[:2] == (a.shape[0], b.shape[1]) and a.shape[1] == b.shape[0])
        )
        if not fits:
            raise BadModelFile(
                f"--lora {adapter.path} does not fit {base.path.name}: "
                + ("it has no " if target is None else "shapes differ for ")
                + name,
                "the adapter was made for another base model",
            )


def describe(adapters: Sequence[Adapter]) -> str:
    """One line for -v: which adapters are applied, at which scale."""
    return "lora: " + (", ".join(a.describe() for a in adapters) or "none")
