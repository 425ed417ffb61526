"""Tiny encoder checkpoints for the embedding-model tests, made with transformers and cached.

Three random two-layer encoders with real tokenizers and sentence-transformers' pooling
files, plus transformers' pooled vectors of TEXTS (reference.json):

- bert: BertModel with a WordPiece tokenizer built here with `tokenizers` from bge-small's
  vocabulary (llama.cpp's models/ggml-vocab-bert-bge.gguf, in its sdist), so that it is
  bge's tokenizer: llama.cpp's converter knows it by its hash (an unknown WordPiece
  tokenizer makes it refuse). CLS pooling, as bge.
- nomic_bert: transformers' NomicBertModel, saved as nomic-ai's checkpoints are (fused
  Wqkv, fc11/fc12/fc2, GPT-2-style config names), the same WordPiece tokenizer, mean pooling.
- xlmroberta: XLMRobertaModel with a SentencePiece Unigram trained here, XLM-R style
  (sentencepiece.bpe.model beside tokenizer.json), mean pooling as multilingual-e5;
  xlmroberta_json: the same without sentencepiece.bpe.model (tokenizer.json only).

Cached through quantize_fixtures.cached, under names holding this file's digest (the
entries of older digests are deleted).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tests.quantize_fixtures import cache_root, cached, corpus

RECIPE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
# Hard strings: spaces, tabs and newlines, digits, accents, CJK, emoji, apostrophes, case.
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces,\ttabs\tand\n\nnewlines\n",
    "Numbers 12345 and 3.14159, then café, naïve, Ångström.",
    "日本語のテキスト and emoji 😀🚀",
    "I'm sure you'll see it's THEIR'S",
)
SMALL = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "layer_norm_eps": 1e-12,
}
POOLING = {"bert": "cls", "nomic_bert": "mean", "xlmroberta": "mean", "xlmroberta_json": "mean"}


def _cached(name: str, build: Any) -> Path:
    """quantize_fixtures.cached under `name-RECIPE`; what older recipes built is deleted."""
    root = cache_root()
    if root.is_dir():
        for old in root.glob(f"{name}-*"):
            if old.is_dir() and not old.name.endswith(RECIPE):
                shutil.rmtree(old, ignore_errors=True)
    return cached(f"{name}-{RECIPE}", build)


def wordpiece_tokenizer(llama_cpp_src: Path) -> Path:
    """bge-small-en-v1.5's tokenizer (uncased WordPiece, 30522 tokens), rebuilt here."""

    def build(out: Path) -> None:
        import gguf
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
        from transformers import BertTokenizerFast

        reader = gguf.GGUFReader(llama_cpp_src / "models" / "ggml-vocab-bert-bge.gguf")
        tokens = reader.fields["tokenizer.ggml.tokens"].contents()
        types = reader.fields["tokenizer.ggml.token_type"].contents()
        vocab = {_unphantom(t, k): i for i, (t, k) in enumerate(zip(tokens, types, strict=True))}
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        tok.decoder = decoders.WordPiece()
        fast = BertTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            mask_token="[MASK]",
            do_lower_case=True,
        )
        fast.save_pretrained(out)

    return _cached("embed-tokenizer-wordpiece", build)


def _unphantom(token: str, kind: int) -> str:
    """The WordPiece token behind llama.cpp's phantom-space one (this old file leaves the
    [unusedN] tokens as they are)."""
    if kind == 3 or token.startswith("[unused"):  # control
        return token
    return token[1:] if token.startswith("\u2581") else "##" + token


def unigram_tokenizer() -> Path:
    """An XLM-RoBERTa tokenizer around a small SentencePiece Unigram trained here."""

    def build(out: Path) -> None:
        import sentencepiece as spm
        from transformers import AutoTokenizer

        (out / "corpus.txt").write_text("\n".join(corpus()), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(out / "corpus.txt"),
            model_prefix=str(out / "sp"),
            vocab_size=800,
            model_type="unigram",
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            character_coverage=1.0,
            minloglevel=2,
        )
        src = out / "src"
        src.mkdir()
        shutil.copy(out / "sp.model", src / "sentencepiece.bpe.model")
        (src / "tokenizer_config.json").write_text('{"tokenizer_class": "XLMRobertaTokenizer"}')
        final = out / "hf"
        AutoTokenizer.from_pretrained(src).save_pretrained(final)
        shutil.copy(out / "sp.model", final / "sentencepiece.bpe.model")

    return _cached("embed-tokenizer-unigram", build) / "hf"


def embed_checkpoint(arch: str, llama_cpp_src: Path) -> Path:
    """A random two-layer encoder of `arch` (bert, nomic_bert, xlmroberta), with its
    tokenizer, pooling files and reference.json: transformers' ids and pooled vectors."""

    if arch == "xlmroberta_json":
        return _without_sentencepiece(embed_checkpoint("xlmroberta", llama_cpp_src))

    def build(out: Path) -> None:
        import torch
        import transformers

        torch.set_num_threads(1)  # the machine is shared; the models are tiny
        tok_dir = (
            unigram_tokenizer() if arch == "xlmroberta" else wordpiece_tokenizer(llama_cpp_src)
        )
        for f in tok_dir.iterdir():
            if f.is_file() and f.name != ".done":
                shutil.copy(f, out / f.name)
        tok = transformers.AutoTokenizer.from_pretrained(out)
        vocab = max(len(tok), max(tok.get_vocab().values()) + 1)
        torch.manual_seed(0)
        model = _MODELS[arch](vocab, tok)
        with torch.no_grad():  # random norms and biases too, so that a wrong convention shows
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(0.1 * torch.randn_like(p))
        model.eval()
        if arch == "nomic_bert":
            _save_nomic(model, out)
        else:
            model.save_pretrained(out)
        _pooling_files(out, POOLING[arch])
        _save_reference(model, tok, POOLING[arch], out)

    return _cached(f"embed-{arch}", build)


def _without_sentencepiece(src: Path) -> Path:
    """`src` without sentencepiece.bpe.model: the Unigram comes from tokenizer.json alone."""

    def build(out: Path) -> None:
        shutil.copytree(src, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".done"))
        (out / "sentencepiece.bpe.model").unlink()

    return _cached("embed-xlmroberta_json", build)


def _bert(vocab: int, tok: Any) -> Any:
    import transformers

    config = transformers.BertConfig(
        vocab_size=vocab, max_position_embeddings=512, type_vocab_size=2, **SMALL
    )
    return transformers.BertModel(config)


def _xlmroberta(vocab: int, tok: Any) -> Any:
    import transformers

    config = transformers.XLMRobertaConfig(
        vocab_size=vocab,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **SMALL,
    )
    return transformers.XLMRobertaModel(config)


def _nomic(vocab: int, tok: Any) -> Any:
    import transformers

    config = transformers.NomicBertConfig(
        vocab_size=vocab, max_position_embeddings=2048, type_vocab_size=2, **SMALL
    )
    return transformers.NomicBertModel(config)


_MODELS = {"bert": _bert, "nomic_bert": _nomic, "xlmroberta": _xlmroberta}

# transformers' NomicBert names -> nomic-ai's (as on the Hub), per layer
NOMIC_NAMES = {
    "self_attn.o_proj": "attn.out_proj",
    "mlp.up_proj": "mlp.fc11",
    "mlp.gate_proj": "mlp.fc12",
    "mlp.down_proj": "mlp.fc2",
    "post_attention_layernorm": "norm1",
    "post_mlp_layernorm": "norm2",
}


def _save_nomic(model: Any, out: Path) -> None:
    """As nomic-ai's checkpoints are: their config names (and transformers' own, with the
    same values, which transformers' NomicBertConfig would otherwise fill with defaults
    when llama.cpp's converter reads it), fused Wqkv, their tensor names."""
    import torch
    from safetensors.torch import save_file

    c = model.config
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors = {
        "embeddings.word_embeddings.weight": state.pop("embeddings.word_embeddings.weight"),
        "embeddings.token_type_embeddings.weight": state.pop(
            "embeddings.token_type_embeddings.weight"
        ),
        "emb_ln.weight": state.pop("embeddings.LayerNorm.weight"),
        "emb_ln.bias": state.pop("embeddings.LayerNorm.bias"),
    }
    for i in range(c.num_hidden_layers):
        ours, theirs = f"layers.{i}.", f"encoder.layers.{i}."
        qkv = [state.pop(f"{ours}self_attn.{p}_proj.weight") for p in "qkv"]
        tensors[f"{theirs}attn.Wqkv.weight"] = torch.cat(qkv, 0).contiguous()
        for name in [k for k in state if k.startswith(ours)]:
            rest = name[len(ours) :]
            for old, new in NOMIC_NAMES.items():
                rest = rest.replace(old, new)
            tensors[theirs + rest] = state.pop(name)
    assert not state, sorted(state)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "activation_function": "swiglu",
        "causal": False,
        "qkv_proj_bias": False,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "prenorm": False,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_emb_base": 1000,
        "n_embd": c.hidden_size,
        "n_head": c.num_attention_heads,
        "n_inner": c.intermediate_size,
        "n_layer": c.num_hidden_layers,
        "n_positions": 8192,
        "max_trained_positions": 2048,
        "layer_norm_epsilon": c.layer_norm_eps,
        "type_vocab_size": c.type_vocab_size,
        "vocab_size": c.vocab_size,
        "pad_token_id": c.pad_token_id,
        "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "max_position_embeddings": 2048,
        "layer_norm_eps": c.layer_norm_eps,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))


def _pooling_files(out: Path, mode: str) -> None:
    """sentence-transformers' modules.json and 1_Pooling/config.json."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=1))
    (out / "1_Pooling").mkdir()
    config = {
        "word_embedding_dimension": SMALL["hidden_size"],
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_lasttoken": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=1))


def _save_reference(model: Any, tok: Any, mode: str, out: Path) -> None:
    import torch

    refs = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            hidden = model(torch.tensor([ids])).last_hidden_state[0].float()
        pooled = hidden[0] if mode == "cls" else hidden.mean(0)
        refs.append({"text": text, "ids": ids, "vector": pooled.tolist()})
    (out / "reference.json").write_text(json.dumps(refs, ensure_ascii=False, indent=1))


def reference(folder: Path) -> list[dict[str, Any]]:
    """[{"text", "ids", "vector"}] of TEXTS, as transformers tokenizes and pools them."""
    return json.loads((folder / "reference.json").read_text(encoding="utf-8"))
