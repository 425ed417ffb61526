"""A Hugging Face checkpoint folder: config.json and safetensors, read lazily.

Tensors are listed from the safetensors headers (gguf-py's `SafetensorsLocal`)
and their data is memory-mapped one tensor at a time, when it is written, so a
conversion never holds more than one tensor's pages. Every file is checked up
front: a truncated or damaged checkpoint is an error before anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.utility import SafetensorsLocal

from llmrun.errors import BadInput

INDEX = "model.safetensors.index.json"

# safetensors dtype -> how its bytes are read. numpy has no bfloat16: BF16 is read as
# uint16 and widened to float32 by `to_f32`.
DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
# Bytes of packed weights (MXFP4 blocks and scales), which only their family's module unpacks.
PACKED_DTYPES: dict[str, np.dtype] = {"U8": np.dtype("u1")}


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of the checkpoint, not yet read."""

    name: str
    dtype: str  # "F32", "F16" or "BF16"; "U8" for packed weights
    shape: tuple[int, ...]
    file: Path
    offset: int  # of its data in the file
    nbytes: int

    def array(self) -> np.ndarray:
        """The tensor's data, memory-mapped read-only, in its stored representation."""
        dtype = {**DTYPES, **PACKED_DTYPES}[self.dtype]
        if self.nbytes == 0:
            return np.zeros(self.shape, dtype)
        count = self.nbytes // dtype.itemsize
        return np.memmap(self.file, dtype, "r", self.offset, (count,)).reshape(self.shape)


def to_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    """Values of a stored array (or a slice of one) as float32."""
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


@dataclass
class Checkpoint:
    folder: Path
    config: dict[str, Any]
    tensors: dict[str, SourceTensor]

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures") or []
        return archs[0] if archs and isinstance(archs[0], str) else None

    def file(self, name: str) -> Path | None:
        """A file of the checkpoint folder, if present."""
        path = self.folder / name
        return path if path.is_file() else None

    def json(self, name: str) -> dict[str, Any]:
        """A JSON file of the folder as a dict; {} when absent."""
        path = self.file(name)
        return read_json(path) if path else {}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} is not a JSON object")
    return data


def open_checkpoint(folder: Path) -> Checkpoint:
    """List a checkpoint's tensors and read its config; BadInput when it is not one."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BadInput(
            f"{folder} has no config.json: it is not a Hugging Face checkpoint",
            "give the folder that holds config.json and *.safetensors",
        )
    config = read_json(config_path)
    tensors: dict[str, SourceTensor] = {}
    for path in _safetensors_files(folder):
        for name, t in read_safetensors(path).items():
            if name in tensors:
                raise BadInput(f"tensor {name} is in two files of {folder}")
            tensors[name] = t
    # One order however the checkpoint is sharded: by name, layer numbers as numbers.
    return Checkpoint(folder, config, dict(sorted(tensors.items(), key=lambda kv: _natural(kv[0]))))


def _natural(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name)]


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / INDEX
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise BadInput(f"{index} has no weight_map")
        files = [folder / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise BadInput(
                f"{folder} lacks {', '.join(missing)} (named in {INDEX})",
                "the download is incomplete: pull it again",
            )
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        extra = " (PyTorch .bin files are not supported)" if any(folder.glob("*.bin")) else ""
        raise BadInput(f"{folder} has no .safetensors files{extra}")
    return files


def read_safetensors(path: Path) -> dict[str, SourceTensor]:
    """The tensors of one safetensors file, each checked to lie inside the file."""
    try:
        with SafetensorsLocal(path) as local:
            listed = dict(local)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path} is not a valid safetensors file: {e}") from None
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror or e}") from None
    size = path.stat().st_size
    out: dict[str, SourceTensor] = {}
    for name, t in listed.items():
        r = t.data_range
        if r.offset + r.size > size:
            raise BadInput(
                f"{path} is truncated: tensor {name} needs bytes up to {r.offset + r.size} "
                f"but the file has {size}",
                "download it again",
            )
        shape = tuple(int(n) for n in t.shape)
        if t.dtype in DTYPES:
            want = int(np.prod(shape, dtype=np.int64)) * DTYPES[t.dtype].itemsize
            if want != r.size:
                raise BadInput(f"{path}: tensor {name} has {r.size} bytes for shape {shape}")
        out[name] = SourceTensor(name, t.dtype, shape, path, r.offset, r.size)
    return out
