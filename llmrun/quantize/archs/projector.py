"""The vision tower and projector of an image-and-text checkpoint, as the mmproj GGUF
(architecture "clip") that llama.cpp's mtmd loads beside the text model.

What llama.cpp's `convert_hf_to_gguf.py --mmproj` writes (its MmprojModel): the tower's
sizes from config.json's vision_config, the projection width from the text model's, the
image normalization from preprocessor_config.json (and processor_config.json), and
the tower's tensors renamed by gguf-py's MMPROJ table. A family module subclasses
`ProjectorConverter` as `PROJECTOR`: its projector type, which checkpoint tensors are
the tower's (`prefixes`), the types it fixes (`fixed_types`), and its quirks through
the hooks of `Converter`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import Any, ClassVar

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter

from llmrun.errors import BadInput
from llmrun.quantize.archs.base import Converter, TensorPlan, always


def f16_if_asked(asked: QT) -> QT:
    """Patch embeddings: F16 in an F16 file, F32 otherwise (llama.cpp's rule)."""
    return QT.F16 if asked == QT.F16 else QT.F32


KEEP_F32 = always(QT.F32)


class ProjectorConverter(Converter):
    arch = gguf.MODEL_ARCH.MMPROJ
    projector_type: ClassVar[str]  # clip.projector_type: gguf.VisionProjectorType
    # MmprojModel.n_block_keys, the vision tower's layer count
    layer_keys = ("n_layers", "num_hidden_layers", "n_layer", "num_layers", "depth", "layers")
    required: ClassVar[dict[str, str]] = {
        "v.patch_embd.weight": "the checkpoint's vision tower has no patch embedding"
    }
    # checkpoint prefix of the tower's tensors -> the name llama.cpp's converter reads them
    # by (the Hub's layout); tensors under none of them are the text model's
    prefixes: ClassVar[dict[str, str]]
    # part of a checkpoint name -> its GGUF type given the one asked for; first match wins
    fixed_types: ClassVar[dict[str, Callable[[QT], QT]]] = {}
    # ... and by part of the GGUF name, checked after those (MmprojModel's own rule)
    fixed_gguf_types: ClassVar[dict[str, Callable[[QT], QT]]] = {".patch_embd.weight": f16_if_asked}

    def hyperparameters(self, config: dict[str, Any]) -> dict[str, Any]:
        vision = config.get("vision_config")
        if not isinstance(vision, dict):
            raise BadInput(
                "config.json has no vision_config: the checkpoint has no vision tower",
                "leave out --mmproj",
            )
        return dict(vision)

    # ------------------------------------------------------------ hyperparameters

    @property
    def n_embd_text(self) -> int:
        """The text model's width: what the projector's output must have."""
        config = self.ckpt.config
        text = {**config, **(config.get("text_config") or {})}
        if not text.get("hidden_size"):
            raise BadInput("config.json gives no hidden_size for the text model")
        return int(text["hidden_size"])

    @cached_property
    def preprocessor(self) -> dict[str, Any]:
        """preprocessor_config.json, then processor_config.json (its image_processor) on top."""
        pre = self.ckpt.json("preprocessor_config.json")
        processor = self.ckpt.json("processor_config.json")
        return {**pre, **processor, **(processor.get("image_processor") or {})}

    def image_norm(self, key: str) -> list[float]:
        values = self.preprocessor.get(key)
        if not isinstance(values, list) or len(values) < 3:
            raise BadInput(
                f"{self.ckpt.folder}: preprocessor_config.json gives no {key}",
                "the projector needs the image processor's files: pull the whole repo",
            )
        return [float(v) for v in values]

    # ------------------------------------------------------------ metadata

    def metadata(self, w: GGUFWriter) -> None:
        """MmprojModel's keys; a family adds its own after these."""
        w.add_type(gguf.GGUFType.MMPROJ)
        w.add_clip_has_vision_encoder(True)
        w.add_vision_projection_dim(self.n_embd_text)
        w.add_vision_image_size(int(self.hp("image_size")))
        w.add_vision_patch_size(int(self.hp("patch_size")))
        w.add_vision_embedding_length(int(self.hp("hidden_size", "width")))
        w.add_vision_feed_forward_length(int(self.hp("intermediate_size")))
        w.add_vision_block_count(self.n_layers)
        w.add_vision_head_count(int(self.hp("num_attention_heads", "num_heads", "heads")))
        w.add_vision_image_mean(self.image_norm("image_mean"))
        w.add_vision_image_std(self.image_norm("image_std"))
        w.add_clip_projector_type(self.projector_type)

    # ------------------------------------------------------------ tensors

    def inputs(self) -> Iterator[tuple[str, TensorPlan]]:
        """The tower's tensors only, named as in the Hub's layout."""
        for src in self.ckpt.tensors.values():
            name = self.tower_name(src.name)
            if name is not None:
                yield name, TensorPlan(name, src.shape, None, src)

    def tower_name(self, hf_name: str) -> str | None:
        for prefix, replacement in self.prefixes.items():
            if hf_name.startswith(prefix):
                return replacement + hf_name[len(prefix) :]
        return None

    def adjust(self, plan: TensorPlan, hf_name: str) -> Iterable[TensorPlan]:
        rule = next((r for part, r in self.fixed_types.items() if part in hf_name), None)
        if rule is None:
            rule = next((r for part, r in self.fixed_gguf_types.items() if part in plan.name), None)
        yield plan.with_type(rule) if rule is not None else plan
