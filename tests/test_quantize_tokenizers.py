"""Tokenizer parity: llama.cpp, reading our GGUF, gives the source tokenizer's ids.

Byte-level BPE is compared with `tokenizers` (tokenizer.json) on hard strings.
SentencePiece is compared with `sentencepiece` itself, which llama.cpp follows, and
with `tokenizers` wherever the two libraries agree by design: `tokenizers` adds no
space prefix before text that already starts with whitespace, nor after a special
token, where SentencePiece and llama.cpp do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from llmrun.ggufinfo import read_info
from llmrun.quantize import quantize
from tests.quantize_checks import Vocab
from tests.quantize_fixtures import tiny_checkpoint

pytestmark = pytest.mark.slow

HARD = (
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t\t",
    " leading",
    "trailing ",
    "a  b   c    d",
    "   spaced   out   ",
    "multiple\n\nnewlines\r\nand\rcarriage returns",
    "12345678901234567890",
    "3.14159 2,718 1e-10 0x1F -42",
    "def f(x):\n\treturn {'a': [1, 2, 3]}  # comment\n",
    "if (a && b) { return c->d; } else { x += 1; }",
    "日本語のテキストと中文字符和한국어",
    "Привет, мир! Ελληνικά",
    "émoji 😀🚀👍🏽 👨‍👩‍👧 family",
    "café naïve résumé Ångström façade",
    "I'm we'll they're it's HE'S 'quoted'",
    "https://example.com/path?q=1&r=2#frag",
    "ALLCAPS and MiXeD cAsE",
    "a\u00a0b\u2009c zero\u200bwidth",
    "e\u0301 combining, \ufb01 ligature",
    # Not here: U+216B (Ⅻ): llama.cpp's `smollm` digit split takes letter-numbers (Nl)
    # as digits, `tokenizers` does not; a llama.cpp difference, not a conversion one.
)
# Special tokens in text, per tokenizer of the tiny checkpoints.
SPECIAL = {
    "llama": "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "qwen2": "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>",
    "llama3": "<|im_start|>user\nHi<|im_end|>\n<|end_of_text|>",
    "mistral": "<s>[INST] Hi [/INST]</s>",
    "gemma": "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "phi3": "<|user|>\nHi there<|end|>\n<|assistant|>\n",
}
SPECIAL["lfm2"] = SPECIAL["llama4"] = SPECIAL["llama"]
# lfm2 and llama4 have SmolLM2's tokenizer, as llama: their own converters export it
BPE = ("llama", "qwen2", "llama3", "lfm2", "llama4")
SENTENCEPIECE = ("mistral", "gemma", "phi3")


def converted(arch: str, tmp_path: Path) -> Vocab:
    """llama.cpp's tokenizer of the tiny checkpoint, converted by llmrun."""
    out = quantize(str(tiny_checkpoint(arch)), type="Q8_0", output=tmp_path / f"{arch}.gguf")
    return Vocab(out.path)


@pytest.mark.parametrize("arch", BPE)
def test_bpe_ids_equal_tokenizers(arch: str, tmp_path: Path) -> None:
    llama = converted(arch, tmp_path)
    source = Tokenizer.from_file(str(tiny_checkpoint(arch) / "tokenizer.json"))
    for text in (*HARD, SPECIAL[arch]):
        assert llama.tokenize(text) == source.encode(text).ids, repr(text)
    llama.close()


@pytest.mark.parametrize("arch", SENTENCEPIECE)
def test_sentencepiece_ids(arch: str, tmp_path: Path) -> None:
    llama = converted(arch, tmp_path)
    ckpt = tiny_checkpoint(arch)
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    source = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    bos = [sp.bos_id()] if source.encode("a").ids[0] == sp.bos_id() else []
    for text in HARD:
        assert llama.tokenize(text) == bos + sp.encode(text), repr(text)
        if not text[:1].isspace():
            assert llama.tokenize(text) == source.encode(text).ids, repr(text)
    # After a special token llama.cpp adds SentencePiece's space prefix again, `tokenizers`
    # (legacy=False) does not: the special tokens themselves must agree, and all of it
    # where there is no prefix (Gemma).
    got, want = llama.tokenize(SPECIAL[arch]), source.encode(SPECIAL[arch]).ids
    added = {t["id"] for t in json.loads((ckpt / "tokenizer.json").read_text())["added_tokens"]}
    assert [i for i in got if i in added] == [i for i in want if i in added]
    if not sp.encode("a", out_type=str)[0].startswith("\u2581"):
        assert got == want
    llama.close()


@pytest.mark.parametrize(
    ("arch", "pre", "warned"),
    [("llama", "smollm", False), ("qwen2", "qwen2", True), ("llama3", "llama-bpe", True)],
)
def test_pre_tokenizer_names(arch: str, pre: str, warned: bool, tmp_path: Path, llmrun) -> None:
    """SmolLM2's tokenizer is in llama.cpp's hash table; the ones trained here are not and
    are recognized by their regexes, with a warning that names the hash."""
    out = tmp_path / "m.gguf"
    result = llmrun("quantize", str(tiny_checkpoint(arch)), "--type", "F16", "-o", str(out))
    assert result.code == 0, result.stderr
    assert read_info(out).metadata["tokenizer.ggml.pre"] == pre
    assert ("unknown BPE pre-tokenizer (hash " in result.stderr) == warned


def test_unknown_pre_tokenizer_fails_the_self_check(tmp_path: Path, llmrun) -> None:
    """A regex llama.cpp does not know: warned, converted with the fallback, and then
    refused, because llama.cpp's ids differ from the source's. No file is left."""
    ckpt = tmp_path / "odd"
    shutil.copytree(tiny_checkpoint("qwen2"), ckpt)
    data = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}+|[^\p{L}\p{N}]"
    (ckpt / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "out" / "odd.gguf"
    result = llmrun("quantize", str(ckpt), "--type", "Q8_0", "-o", str(out))
    assert result.code == 1
    assert "unknown BPE pre-tokenizer (hash " in result.stderr
    assert "self-check: llama.cpp tokenizes" in result.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir())
