"""Which of llama.cpp's BPE pre-tokenizers a tokenizer.json needs (`tokenizer.ggml.pre`).

First the way llama.cpp's own converter does it: the ids of a fixed text, hashed,
looked up in its table (pretok_hashes). A tokenizer that is not in the table is
matched by the shape of its pre-tokenizer (the steps and their regexes) against
the few llama.cpp implements under a known name, with a warning naming the hash.
When neither knows it, the closest safe choice is `default` with a warning; the
self-check after writing then compares token ids and fails on a real mismatch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

from llmrun.quantize.pretok_hashes import CHECK_TEXT, KNOWN_HASHES

# The Split regexes of tokenizer.json files that llama.cpp implements.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The pre-tokenizer's steps, as (type, the setting that decides its splits) -> llama.cpp name.
SHAPES: dict[tuple[tuple[str, Any], ...], str] = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
    (("Split", LLAMA3_REGEX), ("ByteLevel", False)): "llama-bpe",
    (("Split", QWEN2_REGEX), ("ByteLevel", False)): "qwen2",
}
FALLBACK = "default"


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # for tokenizer.ggml.pre
    hash: str  # of the check text's ids
    how: str  # "hash", "shape" or "fallback"

    @property
    def warning(self) -> str | None:
        if self.how == "hash":
            return None
        why = (
            f"matched by its regexes to {self.name!r}"
            if self.how == "shape"
            else f"using {self.name!r}; the self-check will tell whether ids agree"
        )
        return f"unknown BPE pre-tokenizer (hash {self.hash}): {why}"


def check_hash(tokenizer: Tokenizer) -> str:
    ids = tokenizer.encode(CHECK_TEXT).ids  # special tokens added, as llama.cpp's converter does
    return hashlib.sha256(str(ids).encode()).hexdigest()


def identify(tokenizer: Tokenizer) -> PreTokenizer:
    digest = check_hash(tokenizer)
    if digest in KNOWN_HASHES:
        return PreTokenizer(KNOWN_HASHES[digest], digest, "hash")
    pre = json.loads(tokenizer.to_str()).get("pre_tokenizer")
    name = SHAPES.get(shape(pre))
    if name is not None:
        return PreTokenizer(name, digest, "shape")
    return PreTokenizer(FALLBACK, digest, "fallback")


def shape(pre: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """The steps of a tokenizer.json pre_tokenizer, reduced to what decides the splits."""
    if not pre:
        return ()
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    out: list[tuple[str, Any]] = []
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            out.append((kind, bool(step.get("use_regex", True))))
        elif kind == "Digits":
            out.append((kind, bool(step.get("individual_digits", False))))
        elif kind == "Split":
            pattern = step.get("pattern", {})
            out.append((kind, pattern.get("Regex", pattern.get("String"))))
        else:
            out.append((str(kind), None))
    return tuple(out)
