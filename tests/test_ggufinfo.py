"""read_info on the real SmolLM2 file and on the ways a file goes wrong."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import gguf
import pytest

from llmrun.errors import BadModelFile
from llmrun.ggufinfo import format_count, quant_name, read_info, tensor_index

SMOLLM2_SIZE = 98_362_432


def test_reads_the_real_file(smollm2: Path) -> None:
    info = read_info(smollm2)
    assert info.path == smollm2
    assert info.size == SMOLLM2_SIZE == smollm2.stat().st_size
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.quant == "Q4_1"
    assert info.context_length == 8192
    assert info.block_count == 30
    assert info.parameters == 134_515_008
    assert format_count(info.parameters) == "135M"
    assert info.vocab_size == 49152
    assert info.tensor_count == 272
    assert info.license == "apache-2.0"
    assert (info.bos_token_id, info.eos_token_id) == (1, 2)
    assert info.chat_template and "<|im_start|>" in info.chat_template
    # Scalars and strings are kept; the vocabulary and merges are not.
    assert info.metadata["general.name"] == info.name
    assert info.metadata["llama.attention.head_count"] == 9
    assert info.metadata["general.languages"] == ["en"]
    assert "tokenizer.ggml.tokens" not in info.metadata
    assert "tokenizer.ggml.merges" not in info.metadata


def test_is_fast(smollm2: Path, tmp_path: Path) -> None:
    """Fast because it parses the header only, skipping the long arrays, and never the weights.

    Counted in Python calls, not seconds, so that a busy machine cannot fail it: about 150 000
    here, where the stock GGUFReader makes 6.5 million on this file (2 s).
    """
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        info = read_info(smollm2)
    finally:
        sys.setprofile(None)
    assert calls < 1_000_000
    # The weights are never read: the same answer from a copy whose tensor data is a hole.
    hollow = _copy(smollm2, tmp_path / "hollow.gguf", 2_000_000)
    os.truncate(hollow, SMOLLM2_SIZE)
    assert dataclasses.replace(read_info(hollow), path=smollm2) == info


def _copy(src: Path, dest: Path, size: int | None = None) -> Path:
    """A real copy (never a link: we are about to damage it), cut to `size` bytes."""
    with src.open("rb") as f, dest.open("wb") as out:
        if size is None:
            shutil.copyfileobj(f, out)
        else:
            out.write(f.read(size))
    return dest


def _fails(path: Path) -> str:
    with pytest.raises(BadModelFile) as e:
        read_info(path)
    return str(e.value)


def test_truncated_download_says_how_much_is_missing(smollm2: Path, tmp_path: Path) -> None:
    cut = _copy(smollm2, tmp_path / "cut.gguf")
    os.truncate(cut, SMOLLM2_SIZE - 5)
    message = _fails(cut)
    assert f"truncated: expected {SMOLLM2_SIZE} bytes, file has {SMOLLM2_SIZE - 5}" in message
    assert "delete it and download again" in message
    assert str(cut) in message


def test_first_megabyte_only(smollm2: Path, tmp_path: Path) -> None:
    message = _fails(_copy(smollm2, tmp_path / "head.gguf", 1_000_000))
    assert "truncated" in message and "download again" in message


@pytest.mark.parametrize("size", [5, 23, 24, 40, 1000, 700_000, 1_785_000, 1_785_700])
def test_cut_anywhere_in_the_header(smollm2: Path, tmp_path: Path, size: int) -> None:
    # The header (metadata and tensor index) is about 1.8 MB: cut inside it.
    assert "truncated" in _fails(_copy(smollm2, tmp_path / "cut.gguf", size))


def test_damaged_header(smollm2: Path, tmp_path: Path) -> None:
    path = _copy(smollm2, tmp_path / "damaged.gguf", 200_000)
    with path.open("r+b") as f:
        f.seek(100)
        f.write(os.urandom(4000))
    assert str(path) in _fails(path)


def test_not_gguf(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello, this is not a model\n")
    assert _fails(text) == f"{text} is not a GGUF file"
    lfs = tmp_path / "lfs.gguf"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    assert "Git LFS pointer" in _fails(lfs)


def test_empty_missing_and_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.touch()
    assert _fails(empty).startswith(f"{empty} is empty")
    assert _fails(tmp_path / "missing.gguf") == f"no such file: {tmp_path / 'missing.gguf'}"
    assert _fails(tmp_path) == f"{tmp_path} is not a file"


def test_unsupported_version(tmp_path: Path) -> None:
    path = tmp_path / "v9.gguf"
    path.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(40))
    assert "GGUF version 9 is not supported" in _fails(path)


def test_quant_names() -> None:
    assert quant_name(int(gguf.LlamaFileType.MOSTLY_Q4_K_M)) == "Q4_K_M"
    assert quant_name(int(gguf.LlamaFileType.ALL_F32)) == "F32"
    assert quant_name(int(gguf.LlamaFileType.MOSTLY_BF16)) == "BF16"
    assert quant_name(None) is None


def test_quant_falls_back_to_the_main_tensor_type(smollm2: Path) -> None:
    tensors = tensor_index(smollm2)
    # Without general.file_type: the type holding most matrix weights.
    assert quant_name(None, tensors) == "Q4_1"
    assert quant_name(int(gguf.LlamaFileType.GUESSED), tensors) == "Q4_1"


@pytest.mark.parametrize(
    ("n", "text"),
    [(135_000_000, "135M"), (1_710_000_000, "1.7B"), (8_030_000_000, "8B"), (999, "999")],
)
def test_format_count(n: int, text: str) -> None:
    assert format_count(n) == text
