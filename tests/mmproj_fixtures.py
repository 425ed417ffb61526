"""Tiny image-and-text checkpoints for `quantize --mmproj`, made with transformers and cached
as tests/quantize_fixtures.py caches its own (the key also holds a digest of this file).

One per family: SmolVLM (Idefics3), Gemma 3, Qwen2-VL and Qwen2.5-VL, each a two-layer text model
of quantize_fixtures.SMALL's size and a vision tower of a few layers, 8x8 patches (SmolVLM's
and Gemma 3's of 32x32 images), with the image processor's files the Hub's repos hold, and
transformers' embeddings of a test image (image-embeddings.npy). Tensors are saved
in the Hub's layout (transformers 5 saves its own: `model.language_model.`...), which is
what users download and what llama.cpp's converter reads.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.quantize_fixtures import SMALL, cache_root, cached, smollm2_tokenizer, sp_tokenizer

RECIPE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]
IMAGE = {"image_size": 32, "patch_size": 8}
HALF = [0.5, 0.5, 0.5]  # SigLIP's normalization
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # Qwen2-VL's (OpenAI CLIP's)
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

QWEN_PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "patch_size": 8,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "min_pixels": 32 * 32,
    "max_pixels": 256 * 256,
}


def _smolvlm_tokenizer() -> Path:
    """SmolLM2's tokenizer with SmolVLM's image tokens (llama.cpp's converter knows its
    pre-tokenizer)."""

    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(smollm2_tokenizer())
        extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
        tok.add_special_tokens({"additional_special_tokens": extra})
        tok.save_pretrained(out)

    return cached("tokenizer-smolvlm", build)


# family -> (transformers class, config class, config fields less the text sizes, tokenizer,
#            files of the image processor, Hub-layout renames of transformers 5's names)
Family = tuple[str, str, dict[str, Any], Callable[[], Path], dict[str, Any], dict[str, str]]
FAMILIES: dict[str, Family] = {
    "smolvlm": (
        "Idefics3ForConditionalGeneration",
        "Idefics3Config",
        {
            # SmolVLM's config.json names the text model's class, which llama.cpp reads
            "text_config": {"architectures": ["VLlama3ForCausalLM"], "rope_theta": 100000.0},
            "vision_config": {
                **IMAGE,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
            },
            "scale_factor": 2,
            "tie_word_embeddings": False,
        },
        _smolvlm_tokenizer,
        {
            "preprocessor_config.json": {
                "image_processor_type": "Idefics3ImageProcessor",
                "image_mean": HALF,
                "image_std": HALF,
                "size": {"longest_edge": 64},
                "max_image_size": {"longest_edge": 32},
                "do_image_splitting": True,
            }
        },
        {},  # transformers saves Idefics3 as the Hub has it
    ),
    "gemma3": (
        "Gemma3ForConditionalGeneration",
        "Gemma3Config",
        {
            "text_config": {
                "head_dim": 64,
                "query_pre_attn_scalar": 64,
                "sliding_window": 8,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            "vision_config": {
                **IMAGE,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "vision_use_head": False,  # as Gemma 3's
            },
            "mm_tokens_per_image": 4,  # 4x4 patches pooled to 2x2
        },
        lambda: sp_tokenizer("gemma"),
        {
            "preprocessor_config.json": {
                "image_processor_type": "Gemma3ImageProcessor",
                "image_mean": HALF,
                "image_std": HALF,
                "size": {"height": 32, "width": 32},
            },
            "processor_config.json": {"processor_class": "Gemma3Processor", "image_seq_length": 4},
        },
        {
            r"^model\.language_model\.": "language_model.model.",
            r"^(model\.)?vision_tower\.": "vision_tower.vision_model.",  # SigLIP's own prefix
            r"^model\.multi_modal_projector\.": "multi_modal_projector.",
            r"^lm_head\.": "language_model.lm_head.",
        },
    ),
    "qwen2vl": (  # its text part is Qwen2.5-VL's: only the projector is compared
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLConfig",
        {
            "text_config": {
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 1000000.0,
                    "mrope_section": [8, 12, 12],
                },
                "tie_word_embeddings": True,
            },
            "vision_config": {
                "patch_size": 8,
                "embed_dim": 64,
                "hidden_size": SMALL["hidden_size"],  # Qwen2-VL's name for the output width
                "mlp_ratio": 2,
                "depth": 3,
                "num_heads": 2,
            },
        },
        smollm2_tokenizer,
        {"preprocessor_config.json": QWEN_PREPROCESSOR},
        {r"^model\.language_model\.": "model.", r"^model\.visual\.": "visual."},
    ),
    "qwen25vl": (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLConfig",
        {
            "text_config": {
                # the sections of a 64-wide head's 32 rotary pairs: time, height, width
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 1000000.0,
                    "mrope_section": [8, 12, 12],
                },
                "tie_word_embeddings": False,
            },
            "vision_config": {
                "patch_size": 8,
                "hidden_size": 64,
                "intermediate_size": 128,
                "depth": 4,  # llama.cpp maps the merger's mlp.2 only below the layer count
                "num_heads": 2,
                "out_hidden_size": SMALL["hidden_size"],
                "window_size": 112,  # Qwen2.5-VL's, which llama.cpp assumes (it stores none)
                "fullatt_block_indexes": [1, 3],
            },
        },
        smollm2_tokenizer,
        {"preprocessor_config.json": QWEN_PREPROCESSOR},
        {r"^model\.language_model\.": "model.", r"^model\.visual\.": "visual."},
    ),
}


# The test image's (height, width) by family, chosen so that llama.cpp's mtmd and
# transformers' image processor hand the vision tower the same pixels (image-embeddings.npy
# holds transformers' embeddings of it):
# - Gemma 3: its 32x32 input size, taken as it is.
# - SmolVLM: twice the 32x32 tile wide at longest_edge 64, so neither side resizes it; both cut
#   the same two tiles, then a global view that both resample with Pillow's Lanczos filter
#   (mtmd's resize_pillow is a port of it).
# - Qwen2-VL, Qwen2.5-VL: multiples of patch x merge (16) within both sides' pixel limits
#   (mtmd wants at least 8 merged tokens), so neither resizes; 8 merged tokens wide, one more
#   than Qwen2.5-VL's 112-pixel attention window (7 of them), so that its windows show.
IMAGE_SIZES = {"smolvlm": (32, 64), "gemma3": (32, 32), "qwen2vl": (48, 128), "qwen25vl": (48, 128)}


def sample_image(family: str) -> np.ndarray:
    """`family`'s test image of random pixels, (height, width, 3) uint8."""
    height, width = IMAGE_SIZES[family]
    return np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def tiny_vlm(family: str) -> Path:
    """A random image-and-text checkpoint of `family`, with a real tokenizer and the
    image processor's files, in a folder tiny-<family> (llama.cpp's converter reads
    more than a name into other folder names)."""

    def build(folder: Path) -> None:
        import torch
        import transformers

        out = folder / f"tiny-{family}"
        out.mkdir()
        torch.set_num_threads(1)  # the machine is shared; the models are tiny
        model_cls, config_cls, fields, tokenizer, files, renames = FAMILIES[family]
        for f in tokenizer().iterdir():
            if f.is_file() and f.name != ".done":
                shutil.copy(f, out / f.name)
        tok = transformers.AutoTokenizer.from_pretrained(out)
        vocab = max(len(tok), max(tok.get_vocab().values()) + 1)
        special = {
            f"{k}_id": getattr(tok, f"{k}_id")
            for k in ("bos_token", "eos_token", "pad_token")
            if getattr(tok, f"{k}_id", None) is not None
        }
        text = {"vocab_size": vocab, **SMALL, **special, **fields["text_config"]}
        config = getattr(transformers, config_cls)(**{**fields, "text_config": text})
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(config).eval()
        with torch.no_grad():  # random norms too, so that a wrong norm convention shows
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(0.1 * torch.randn_like(p))
                elif not p.any():  # Gemma 3's projection starts at zero
                    p.normal_(0.0, 0.08)
        model.save_pretrained(out)
        _to_hub_layout(out, renames)
        for name, content in files.items():
            (out / name).write_text(json.dumps(content, indent=1))
        np.save(out / "image-embeddings.npy", _image_embeddings(model, out, sample_image(family)))

    name = f"tiny-vlm-{family}-{RECIPE}"
    for old in cache_root().glob(f"tiny-vlm-{family}-*"):  # what earlier recipes built
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return cached(name, build) / f"tiny-{family}"


def _image_embeddings(model: Any, folder: Path, image: np.ndarray) -> np.ndarray:
    """transformers' image processor (from `folder`'s files), vision tower and projector on
    `image`: the embeddings of each view it makes, in order, as (tokens, text width)."""
    import inspect

    import torch
    from transformers import AutoImageProcessor

    inputs = AutoImageProcessor.from_pretrained(folder)(images=[image], return_tensors="pt")
    takes = inspect.signature(model.get_image_features).parameters
    with torch.no_grad():
        out = model.get_image_features(**{k: v for k, v in inputs.items() if k in takes})
    width = model.config.text_config.hidden_size
    return torch.cat([f.reshape(-1, width) for f in out.pooler_output]).float().numpy()


def _to_hub_layout(folder: Path, renames: dict[str, str]) -> None:
    """Rename the saved tensors as the Hub's checkpoints of the family name them."""
    if not renames:
        return
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    renamed = {}
    for name, value in tensors.items():
        for pattern, replacement in renames.items():
            name = re.sub(pattern, replacement, name)
        renamed[name] = value
    save_file(renamed, path, metadata={"format": "pt"})
