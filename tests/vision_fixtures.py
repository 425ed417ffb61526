"""A tiny image-and-text model for the vision tests, made at test time and cached.

The checkpoint is quantize_fixtures' random Gemma 3 (two text layers, a one-layer SigLIP
vision tower on 32x32 images, 4 image tokens) with the tower under the Hub's tensor names
and the preprocessor_config.json that llama.cpp's converter reads the image size and
normalization from; transformers' reference is the original (tiny_checkpoint("gemma3mm")).
llama.cpp's own converter (the vendored convert_hf_to_gguf.py) makes both GGUFs: the text
model, and with --mmproj the projector. Test images are written here by hand (PNG, BMP), so no
image library is needed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.quantize_fixtures import cached, tiny_checkpoint

IMAGE_SIZE = 32  # the tiny tower's input: images this size are not resized
IMAGE_TOKENS = 16  # its 4x4 patches unpooled (the original pools them to 4): a louder image
MEAN = STD = [0.5, 0.5, 0.5]  # SigLIP's normalization
RECIPE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]


@dataclass(frozen=True)
class VisionModel:
    checkpoint: Path  # the transformers checkpoint (Gemma3ForConditionalGeneration)
    model: Path  # its text model GGUF (F32)
    mmproj: Path  # its projector GGUF (F32)


# transformers starts Gemma 3's image projection at zeros: every image would read the same
PROJECTION = "multi_modal_projector.mm_input_projection_weight"


# A random two-layer model with tied embeddings repeats its last token whatever came before;
# with its attention outputs (after Gemma's post-attention norm) scaled up, the image it
# attends to changes what it says. Text weights only: transformers' reference (the vision
# tower and projector) is not affected.
ATTENTION_GAIN = 9.0


def projection(shape: tuple[int, ...]) -> Any:
    """The random image projection the checkpoint gets in place of the zeros (a torch tensor);
    the same every call, so transformers' reference can be given it too."""
    import torch

    generator = torch.Generator().manual_seed(1)
    return 0.5 * torch.randn(shape, generator=generator)


def reference_model() -> Any:
    """transformers' Gemma 3 of the checkpoint (the original, transformers' own tensor names),
    with the same image projection."""
    import torch
    import transformers

    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(
        tiny_checkpoint("gemma3mm"), dtype=torch.float32, mm_tokens_per_image=IMAGE_TOKENS
    ).eval()
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        weight.copy_(projection(tuple(weight.shape)))
    return model


def gemma3_vision_checkpoint() -> Path:
    """The tiny Gemma 3 image-and-text checkpoint, with its preprocessor config."""

    def build(out: Path) -> None:
        from safetensors.torch import load_file, save_file

        src = tiny_checkpoint("gemma3mm")
        for f in src.iterdir():
            if f.is_file() and f.name not in (".done", "model.safetensors"):
                shutil.copy(f, out / f.name)
        # transformers 5 saves the tower as vision_tower.*; the Hub's Gemma 3 checkpoints (and
        # llama.cpp's converter) have vision_tower.vision_model.*
        tensors = {
            k.replace("vision_tower.", "vision_tower.vision_model.", 1): v
            for k, v in load_file(src / "model.safetensors").items()
        }
        tensors[PROJECTION] = projection(tuple(tensors[PROJECTION].shape))
        for k in tensors:  # attention louder than the residual stream: see ATTENTION_GAIN
            if k.endswith("post_attention_layernorm.weight"):
                tensors[k] = tensors[k] + ATTENTION_GAIN
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((out / "config.json").read_text())
        config["mm_tokens_per_image"] = IMAGE_TOKENS
        (out / "config.json").write_text(json.dumps(config, indent=1))
        preprocessor = {
            "image_processor_type": "Gemma3ImageProcessor",
            "processor_class": "Gemma3Processor",
            "image_mean": MEAN,
            "image_std": STD,
            "image_seq_length": config["mm_tokens_per_image"],
            "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "do_normalize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_resize": True,
            "resample": 2,
        }
        (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))

    return cached(f"vision-gemma3-ckpt-{RECIPE}", build)


def gemma3_vision(llama_cpp_src: Path) -> VisionModel:
    """The checkpoint and its two GGUFs, made by llama.cpp's converter."""
    ckpt = gemma3_vision_checkpoint()

    def build(out: Path) -> None:
        script = llama_cpp_src / "convert_hf_to_gguf.py"
        for name, extra in (("model.gguf", []), ("mmproj-model-f32.gguf", ["--mmproj"])):
            r = subprocess.run(
                [sys.executable, str(script), str(ckpt), "--outtype", "f32",
                 "--outfile", str(out / name), *extra],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr[-3000:]

    folder = cached(f"vision-gemma3-gguf-{RECIPE}", build)
    return VisionModel(ckpt, folder / "model.gguf", folder / "mmproj-model-f32.gguf")


# ---------------------------------------------------------------- images, by hand


def pixels(seed: int, size: int = IMAGE_SIZE) -> bytes:
    """size x size RGB bytes: a pattern that differs with `seed`."""
    return bytes(
        (x * (7 + seed) + y * (3 + 2 * seed) + c * 85 + seed * 40) % 256
        for y in range(size)
        for x in range(size)
        for c in range(3)
    )


def png(rgb: bytes, size: int = IMAGE_SIZE) -> bytes:
    """An 8-bit RGB PNG of `rgb` (rows top to bottom)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\0" + rgb[y * size * 3 : (y + 1) * size * 3] for y in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def bmp(rgb: bytes, size: int = IMAGE_SIZE) -> bytes:
    """A 24-bit BMP of `rgb` (stored bottom-up, BGR, rows padded to 4 bytes)."""
    row_bytes = (size * 3 + 3) & ~3
    rows = []
    for y in reversed(range(size)):
        row = rgb[y * size * 3 : (y + 1) * size * 3]
        bgr = b"".join(row[i : i + 3][::-1] for i in range(0, len(row), 3))
        rows.append(bgr + b"\0" * (row_bytes - len(bgr)))
    data = b"".join(rows)
    info = struct.pack("<IiiHHIIiiII", 40, size, size, 1, 24, 0, len(data), 2835, 2835, 0, 0)
    header = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(data), 0, 0, 14 + len(info))
    return header + info + data
