"""The tokenizers of encoder (embedding) models, as llama.cpp's converter exports them.

- WordPiece (BERT, bge, all-MiniLM, nomic-embed-text v1): `tokenizer.ggml.model = bert`.
  llama.cpp's WordPiece wants "phantom space" pieces: a word-initial piece gets a leading
  "\u2581", a continuation loses its "##", control tokens stay as they are.
- SentencePiece Unigram (XLM-RoBERTa: bge-m3, multilingual-e5): `t5`, from
  sentencepiece.bpe.model, realigned to Hugging Face's ids (fairseq's <s> <pad> </s> <unk>
  first, every piece one id later), with the model's normalizer (its precompiled
  character map, whether it adds a dummy prefix and squeezes whitespace); from
  tokenizer.json when the checkpoint has no SentencePiece model.

Special token ids and whether CLS/SEP (<s>/</s>) are added come through gguf-py's
`SpecialVocab`, which reads tokenizer.json's post-processor, as llama.cpp's converter does.
"""

from __future__ import annotations

import base64
from typing import Any

import gguf
from gguf import TokenType

from llmrun.errors import BadInput
from llmrun.quantize.checkpoint import Checkpoint
from llmrun.quantize.pretokenizer import identify
from llmrun.quantize.vocab import SPACE, Reference, Vocab, quiet_gguf, sp_type, token_table

UNIGRAM_FILE = "sentencepiece.bpe.model"
# fairseq's first four tokens, where Hugging Face's XLM-R puts them: (text, type)
FAIRSEQ_HEAD = (
    ("<s>", TokenType.CONTROL),
    ("<pad>", TokenType.CONTROL),
    ("</s>", TokenType.CONTROL),
    ("<unk>", TokenType.UNKNOWN),
)
UNSCORED = -10000.0  # llama.cpp's converter's score for padding rows


def tokenizer_kind(ckpt: Checkpoint) -> str:
    """tokenizer.json's model type: "WordPiece" or "Unigram" (BadInput otherwise)."""
    kind = (ckpt.json("tokenizer.json").get("model") or {}).get("type")
    if kind not in ("WordPiece", "Unigram"):
        raise BadInput(
            f"{ckpt.folder}: an encoder with a {kind or 'missing'} tokenizer.json is not supported",
            "WordPiece (BERT) and Unigram (XLM-RoBERTa) are",
        )
    return kind


def _hf_reference(ckpt: Checkpoint) -> Reference:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt.folder / "tokenizer.json"))
    return Reference(
        "tokenizer.json", lambda text, special: tok.encode(text, add_special_tokens=special).ids
    )


def _special(ckpt: Checkpoint, n_vocab: int) -> gguf.SpecialVocab:
    with quiet_gguf():
        return gguf.SpecialVocab(ckpt.folder, load_merges=False, n_vocab=n_vocab)


# ---------------------------------------------------------------- WordPiece


def wordpiece(ckpt: Checkpoint, n_vocab: int) -> Vocab:
    from tokenizers import Tokenizer

    if tokenizer_kind(ckpt) != "WordPiece":
        raise BadInput(f"{ckpt.folder}/tokenizer.json is not a WordPiece tokenizer")
    data = ckpt.json("tokenizer.json")
    vocab: dict[str, int] = data["model"].get("vocab") or {}
    tokens, types = token_table(n_vocab, {i: t for t, i in vocab.items()}, data.get("added_tokens"))
    tokens = [_phantom(t, k) for t, k in zip(tokens, types, strict=True)]
    # llama.cpp's WordPiece has no pre-tokenizer variants: the name only records which
    # tokenizer it is (by llama.cpp's hash table), and an unknown one needs no warning.
    pre = identify(Tokenizer.from_file(str(ckpt.folder / "tokenizer.json")))
    vocab = Vocab("bert", tokens, types, None, _special(ckpt, n_vocab), _hf_reference(ckpt), pre)
    _normalizer(data.get("normalizer") or {}, vocab)
    return vocab


def _normalizer(normalizer: dict[str, Any], vocab: Vocab) -> None:
    """Lowercasing and accent stripping, as tokenizer.json's normalizer says (llama.cpp's
    defaults otherwise: both on)."""
    kind = normalizer.get("type")
    if kind == "Lowercase":
        vocab.lowercase = True
    elif kind == "StripAccents":
        vocab.strip_accents = True
    elif kind == "BertNormalizer":
        if "lowercase" in normalizer:
            vocab.lowercase = normalizer["lowercase"]
        if "strip_accents" in normalizer:
            vocab.strip_accents = normalizer["strip_accents"]
    elif kind == "Sequence":
        for step in normalizer.get("normalizers", []):
            _normalizer(step, vocab)


def _phantom(token: str, kind: int) -> str:
    if kind == TokenType.CONTROL:
        return token
    return token[2:] if token.startswith("##") else SPACE + token


# ---------------------------------------------------------------- Unigram


def unigram(ckpt: Checkpoint, n_vocab: int) -> Vocab:
    """From sentencepiece.bpe.model when the checkpoint has it, else from tokenizer.json."""
    path = ckpt.file(UNIGRAM_FILE)
    if path is None:
        return _unigram_json(ckpt, n_vocab)
    from sentencepiece import SentencePieceProcessor

    try:
        sp = SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise BadInput(f"{path} is not a SentencePiece model: {e}") from None
    spec = normalizer_spec(path.read_bytes())
    size = max(n_vocab, sp.vocab_size())
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores = [UNSCORED] * size
    types = [int(TokenType.UNUSED)] * size
    for i in range(sp.vocab_size()):
        tokens[i], scores[i], types[i] = sp.id_to_piece(i), sp.get_score(i), sp_type(sp, i)
    # Hugging Face's ids: fairseq's four first, then piece i (from 3 on) at i + 1.
    tokens = [t for t, _ in FAIRSEQ_HEAD] + tokens[3:-1]
    scores = [0.0] * len(FAIRSEQ_HEAD) + scores[3:-1]
    types = [int(k) for _, k in FAIRSEQ_HEAD] + types[3:-1]
    return Vocab(
        "t5",
        tokens,
        types,
        scores,
        _special(ckpt, len(tokens)),
        _hf_reference(ckpt),
        add_space_prefix=spec["add_dummy_prefix"],
        remove_extra_whitespaces=spec["remove_extra_whitespaces"],
        precompiled_charsmap=spec["precompiled_charsmap"] or None,
    )


def _unigram_json(ckpt: Checkpoint, n_vocab: int) -> Vocab:
    """tokenizer.json's Unigram, in Hugging Face's ids already, as llama.cpp's converter reads
    it: its scores, the unknown token, special tokens as control, other added ones as
    user-defined; the space prefix from tokenizer_config.json."""
    if tokenizer_kind(ckpt) != "Unigram":
        raise BadInput(f"{ckpt.folder}/tokenizer.json is not a Unigram tokenizer")
    data = ckpt.json("tokenizer.json")
    config = ckpt.json("tokenizer_config.json")
    pieces: list[list[Any]] = data["model"].get("vocab") or []
    added = {a["id"]: a for a in data.get("added_tokens") or []}
    by_text = {a["content"]: i for i, a in added.items()}
    unk = by_text.get(config.get("unk_token"), data["model"].get("unk_id", 3))
    size = max(n_vocab, len(pieces))
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores = [UNSCORED] * size
    types = [int(TokenType.UNUSED)] * size
    for i, (piece, score) in enumerate(pieces):
        tokens[i], scores[i] = piece, float(score)
        types[i] = int(_json_type(i, unk, added))
    return Vocab(
        "t5",
        tokens,
        types,
        scores,
        _special(ckpt, size),
        _hf_reference(ckpt),
        add_space_prefix=bool(config.get("add_prefix_space", _prepends_space(data))),
        # llama.cpp's converter takes clean_up_tokenization_spaces (a decoding setting); what
        # squeezes runs of whitespace when encoding is a WhitespaceSplit pre-tokenizer.
        remove_extra_whitespaces=_splits_on_whitespace(data),
        precompiled_charsmap=_charsmap(data.get("normalizer") or {}),
    )


def _json_type(i: int, unk: int, added: dict[int, dict[str, Any]]) -> TokenType:
    if i == unk:
        return TokenType.UNKNOWN
    if i in added:
        return TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED
    return TokenType.NORMAL


def _pre_steps(data: dict[str, Any]) -> list[dict[str, Any]]:
    pre = data.get("pre_tokenizer") or {}
    return pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]


def _splits_on_whitespace(data: dict[str, Any]) -> bool:
    return any(step.get("type") == "WhitespaceSplit" for step in _pre_steps(data))


def _prepends_space(data: dict[str, Any]) -> bool:
    """Whether tokenizer.json's Metaspace puts "▁" before the text (its default: yes)."""
    for step in _pre_steps(data):
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never"
    return True


def _charsmap(normalizer: dict[str, Any]) -> bytes | None:
    """The Precompiled normalizer's character map (base64 in tokenizer.json), if any."""
    if normalizer.get("type") == "Precompiled" and normalizer.get("precompiled_charsmap"):
        return base64.b64decode(normalizer["precompiled_charsmap"])
    for step in normalizer.get("normalizers") or []:
        found = _charsmap(step)
        if found:
            return found
    return None


# SentencePiece's ModelProto: normalizer_spec is field 3; in it (NormalizerSpec) the fields
# below, with the defaults of sentencepiece_model.proto.
_NORMALIZER_SPEC = 3
_NORMALIZER_FIELDS = {
    2: "precompiled_charsmap",
    3: "add_dummy_prefix",
    4: "remove_extra_whitespaces",
}


def normalizer_spec(model: bytes) -> dict[str, object]:
    """The normalizer settings of a serialized SentencePiece model (no protobuf needed)."""
    spec: dict[str, object] = {
        "precompiled_charsmap": b"",
        "add_dummy_prefix": True,
        "remove_extra_whitespaces": True,
    }
    for field, value in _fields(model):
        if field == _NORMALIZER_SPEC and isinstance(value, bytes):
            for inner, v in _fields(value):
                if inner in _NORMALIZER_FIELDS:
                    name = _NORMALIZER_FIELDS[inner]
                    spec[name] = v if isinstance(v, bytes) else bool(v)
    return spec


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((field, value))
        elif wire == 2:
            n, i = _varint(data, i)
            out.append((field, data[i : i + n]))
            i += n
        elif wire in (1, 5):  # fixed 64 / 32 bits (scores and such): skipped
            i += 8 if wire == 1 else 4
        else:
            raise BadInput(f"not a SentencePiece model (protobuf wire type {wire})")
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data):
            raise BadInput("not a SentencePiece model (a truncated protobuf)")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
