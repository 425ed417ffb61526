"""After writing: the file loads in llama.cpp, and its tokenizer agrees with the source's.

A converted model whose tokenizer is subtly different (a wrong pre-tokenizer, a
lost BOS) still loads and still talks, only worse; so the ids of a few probe
strings must be equal to the source tokenizer's, or the conversion fails.
"""

from __future__ import annotations

from pathlib import Path

from llmrun.errors import LlmrunError
from llmrun.options import Load
from llmrun.quantize.vocab import Reference

PROBES = (
    "Hello world",
    "The capital of France is Paris.",
    "  two leading spaces,\ttabs\tand\n\nnewlines\n",
    "1234567 + 89 = 1234656; 3.14159",
    "café, naïve, Ångström, 日本語のテキスト, 😀🚀",
    "def f(x):\n    return x ** 2  # square\n",
    "I'm sure you'll see it's THEIR'S",
)
CHECK_CTX = 64


class SelfCheckFailed(LlmrunError):
    """The written file does not load, or tokenizes differently from its source."""


def self_check(path: Path, reference: Reference | None) -> None:
    """Load `path` with a small context; compare its ids of PROBES with `reference`'s."""
    from llmrun.engine import load_model, logs

    start = logs.mark()
    try:
        model = load_model(path, Load(ctx_size=CHECK_CTX, n_gpu_layers=0, threads=1))
    except LlmrunError as e:
        said = [line.strip() for line in logs.since(start) if "error" in line.lower()]
        why = said[-1] if said else e.message
        raise SelfCheckFailed(f"self-check: llama.cpp cannot load the new file: {why}") from None
    try:
        if reference is None:
            return
        for text in PROBES:
            want = reference.encode(text, True)
            got = model.tokenize(text, add_special=True, parse_special=False)
            if got != want:
                raise SelfCheckFailed(
                    f"self-check: llama.cpp tokenizes {text!r} as {_short(got)} but "
                    f"{reference.what} as {_short(want)}",
                    "the tokenizer is not supported correctly; please report it",
                )
    finally:
        model.close()


def _short(ids: list[int]) -> str:
    return str(ids) if len(ids) <= 12 else f"{ids[:12]}... ({len(ids)} ids)"
