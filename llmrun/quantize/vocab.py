"""Tokenizer export: a checkpoint's tokenizer as GGUF `tokenizer.*` keys.

Two kinds, as llama.cpp knows them:

- byte-level BPE from tokenizer.json (`tokenizer.ggml.model = gpt2`): tokens, token
  types, merges, and the pre-tokenizer name (see pretokenizer.py);
- SentencePiece from tokenizer.model (`llama`): pieces, scores and types, for
  Llama-2-style, Mistral, Gemma and Phi-3 checkpoints.

Special token ids, merges and the chat template come through gguf-py's
`SpecialVocab`. Whether BOS/EOS are added is not read from config flags but
observed: the source tokenizer encodes a word with and without special tokens.
The source tokenizer is kept as `reference` for the self-check after writing.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFWriter, TokenType

from llmrun.errors import BadInput
from llmrun.quantize.checkpoint import Checkpoint
from llmrun.quantize.pretokenizer import PreTokenizer, identify

SPACE = "\u2581"  # SentencePiece's visible space
# llama.cpp's keys for BertNormalizer settings (newer gguf-py than we require names them)
NORMALIZER_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
NORMALIZER_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"
LOOKS_SPECIAL = ("<pad>", "<mask>", "<2mass>", "[@BOS@]")  # added tokens some models forget to mark


@dataclass
class Reference:
    """The checkpoint's own tokenizer, for comparing ids."""

    what: str  # "tokenizer.json" or "tokenizer.model"
    encode: Callable[[str, bool], list[int]]  # (text, add_special) -> ids


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "gpt2", "llama" (vocab_encoders.py: "bert", "t5")
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    special: gguf.SpecialVocab
    reference: Reference
    pre: PreTokenizer | None = None
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None  # SentencePiece Unigram ("t5")
    precompiled_charsmap: bytes | None = None  # its normalizer, as SentencePiece stores it
    lowercase: bool | None = None  # WordPiece ("bert"): BertNormalizer's settings
    strip_accents: bool | None = None
    warnings: list[str] = field(default_factory=list)

    def write(self, w: GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre.name if self.pre else "default")
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)
        if self.remove_extra_whitespaces is not None:
            w.add_remove_extra_whitespaces(self.remove_extra_whitespaces)
        if self.precompiled_charsmap:
            w.add_precompiled_charsmap(self.precompiled_charsmap)
        for key, value in (
            (NORMALIZER_LOWERCASE, self.lowercase),
            (NORMALIZER_STRIP_ACCENTS, self.strip_accents),
        ):
            if value is not None:
                w.add_bool(key, value)
        with quiet_gguf():  # "no handler for cls": gguf-py's older writers lack a few kinds
            self.special.add_to_gguf(w, quiet=True)


def load_vocab(ckpt: Checkpoint, n_vocab: int) -> Vocab:
    """The checkpoint's tokenizer, padded to the model's `n_vocab` rows."""
    sentencepiece = ckpt.file("tokenizer.model")
    if sentencepiece and not (_tiktoken(sentencepiece) and ckpt.file("tokenizer.json")):
        vocab = _sentencepiece(ckpt, n_vocab)
    elif ckpt.file("tokenizer.json"):
        vocab = _bpe(ckpt, n_vocab)
    else:
        raise BadInput(
            f"{ckpt.folder} has no tokenizer.json or tokenizer.model",
            "copy the tokenizer files of the model into the folder",
        )
    _observe_special(vocab)
    if vocab.special.chat_template is None and ckpt.file("chat_template.jinja"):
        vocab.special.chat_template = (ckpt.folder / "chat_template.jinja").read_text("utf-8")
    return vocab


def _tiktoken(path: Path) -> bool:
    """A tokenizer.model that is tiktoken's text format (base64 token, rank), not a protobuf."""
    with path.open("rb") as f:
        first = f.readline(200)
    return bool(re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+\r?\n?", first))


# ---------------------------------------------------------------- byte-level BPE


def _bpe(ckpt: Checkpoint, n_vocab: int) -> Vocab:
    from tokenizers import Tokenizer

    path = ckpt.folder / "tokenizer.json"
    data = ckpt.json("tokenizer.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "SentencePiece-style BPE" if model.get("byte_fallback") else model.get("type")
        raise BadInput(
            f"{path}: a {kind} tokenizer without tokenizer.model is not supported",
            "byte-level BPE (tokenizer.json) and SentencePiece (tokenizer.model) are",
        )
    vocab: dict[str, int] = model.get("vocab") or {}
    tokens, types = token_table(n_vocab, {i: t for t, i in vocab.items()}, data.get("added_tokens"))
    tokenizer = Tokenizer.from_file(str(path))
    pre = identify(tokenizer)
    ref = Reference(
        "tokenizer.json",
        lambda text, special: tokenizer.encode(text, add_special_tokens=special).ids,
    )
    with quiet_gguf():
        special = gguf.SpecialVocab(ckpt.folder, load_merges=True, n_vocab=n_vocab)
    warnings = [pre.warning] if pre.warning else []
    return Vocab("gpt2", tokens, types, None, special, ref, pre, warnings=warnings)


def token_table(
    n_vocab: int, by_id: dict[int, str], added: list[dict[str, Any]] | None
) -> tuple[list[str], list[int]]:
    """Tokens and types for ids 0..n_vocab-1; ids nobody uses become [PADn], UNUSED."""
    top = max([*by_id, *(a["id"] for a in added or [])], default=-1)
    if top >= n_vocab:
        raise BadInput(f"the tokenizer has token id {top} but the model only {n_vocab} rows")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(TokenType.UNUSED)] * n_vocab
    for i, text in by_id.items():
        tokens[i], types[i] = text, int(TokenType.NORMAL)
    for a in added or []:
        tokens[a["id"]], types[a["id"]] = _added(a)
    return tokens, types


def _added(token: dict[str, Any]) -> tuple[str, int]:
    """An added token: control when special, else user-defined (its text pre-normalized)."""
    text: str = token["content"]
    if token.get("special") or _looks_special(text):
        return text, int(TokenType.CONTROL)
    return text.replace(SPACE, " "), int(TokenType.USER_DEFINED)


def _looks_special(text: str) -> bool:
    return (
        text in LOOKS_SPECIAL
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


# ---------------------------------------------------------------- SentencePiece


def _sentencepiece(ckpt: Checkpoint, n_vocab: int) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    path = ckpt.folder / "tokenizer.model"
    try:
        sp = SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise BadInput(f"{path} is not a SentencePiece model: {e}") from None
    n_sp = sp.vocab_size()
    if n_sp > n_vocab:
        raise BadInput(f"{path} has {n_sp} pieces but the model only {n_vocab} rows")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-1000.0] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    for i in range(n_sp):
        tokens[i], scores[i], types[i] = sp.id_to_piece(i), sp.get_score(i), sp_type(sp, i)
    for a in _added_tokens(ckpt):
        if a["id"] < n_vocab:
            tokens[a["id"]], types[a["id"]] = _added(a)
            scores[a["id"]] = -1000.0

    add_prefix = sp.encode("a", out_type=str)[0].startswith(SPACE)
    ref = _reference(ckpt, sp)
    with quiet_gguf():
        special = gguf.SpecialVocab(ckpt.folder, load_merges=False, n_vocab=n_vocab)
    return Vocab("llama", tokens, types, scores, special, ref, add_space_prefix=add_prefix)


def sp_type(sp: Any, i: int) -> int:
    for test, kind in (
        (sp.is_unknown, TokenType.UNKNOWN),
        (sp.is_control, TokenType.CONTROL),
        (sp.is_unused, TokenType.UNUSED),
        (sp.is_byte, TokenType.BYTE),
    ):
        if test(i):
            return int(kind)
    return int(TokenType.NORMAL)


def _added_tokens(ckpt: Checkpoint) -> list[dict[str, Any]]:
    """Tokens added on top of the SentencePiece model: tokenizer.json, else tokenizer_config."""
    added = ckpt.json("tokenizer.json").get("added_tokens")
    if isinstance(added, list):
        return added
    decoder = ckpt.json("tokenizer_config.json").get("added_tokens_decoder") or {}
    out = [{"id": int(i), **t} for i, t in decoder.items() if isinstance(t, dict)]
    for text, i in ckpt.json("added_tokens.json").items():
        if not any(t["id"] == i for t in out):
            out.append({"id": i, "content": text})
    return out


def _reference(ckpt: Checkpoint, sp: Any) -> Reference:
    """The SentencePiece model itself, which llama.cpp's tokenizer follows.

    Not tokenizer.json: the `tokenizers` library departs from SentencePiece on
    purpose (no space prefix before text that starts with a space), while llama.cpp
    does what SentencePiece does. BOS/EOS are added as tokenizer.json's post-processor
    does, else as tokenizer_config.json says (Llama's defaults: BOS, no EOS).
    """
    config = ckpt.json("tokenizer_config.json")
    add_bos, add_eos = config.get("add_bos_token", True), config.get("add_eos_token", False)
    if ckpt.file("tokenizer.json"):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(ckpt.folder / "tokenizer.json"))
        add_bos, add_eos, _ = _adds(lambda t, s: tok.encode(t, add_special_tokens=s).ids)

    def encode(text: str, special: bool) -> list[int]:
        ids = sp.encode(text)
        if special:
            ids = [sp.bos_id()] * bool(add_bos) + ids + [sp.eos_id()] * bool(add_eos)
        return ids

    return Reference("tokenizer.model", encode)


@contextlib.contextmanager
def quiet_gguf() -> Iterator[None]:
    """gguf-py logs its doubts about post-processors it half understands; we observe the
    tokenizer instead (below), so those warnings would only be noise on stderr."""
    logger = logging.getLogger("gguf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------- BOS and EOS


def _observe_special(vocab: Vocab) -> None:
    """Set add_bos/add_eos (and their ids) to what the source tokenizer really does."""
    add_bos, add_eos, full = _adds(vocab.reference.encode)
    special = vocab.special
    special.add_special_token["bos"] = add_bos
    special.add_special_token["eos"] = add_eos
    if add_bos:
        special.special_token_ids["bos"] = full[0]
    if add_eos:
        special.special_token_ids["eos"] = full[-1]


def _adds(encode: Callable[[str, bool], list[int]]) -> tuple[bool, bool, list[int]]:
    """(adds BOS, adds EOS, ids with special tokens) of a word, as `encode` tokenizes it."""
    plain, full = encode("Hello", False), encode("Hello", True)
    extra = len(full) > len(plain)
    return extra and full[: len(plain)] != plain, extra and full[-len(plain) :] != plain, full
