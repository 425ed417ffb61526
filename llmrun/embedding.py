"""`embed()`: texts in, one embedding vector each out, in order, for `llmrun embed`.

The model is resolved and loaded as for generation (generation.prepare checks every
option first), then llama.cpp pools each text's hidden states in an embeddings context
(engine/embed.py): the way the model says (an embedding model's mean, CLS or last
token), else mean pooling, which is how Ollama and `llama-server --pooling mean` embed
with a generative model. Vectors are unit length unless `normalize=False`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from llmrun.engine.embed import MAX_INPUT_TOKENS, Embedder
from llmrun.errors import BadOption, ContextOverflow
from llmrun.ggufinfo import read_info


def embed(
    model: str | None,
    texts: Iterable[str],
    *,
    normalize: bool = True,
    truncate: bool = False,
    ctx_size: int | None = None,
    threads: int | None = None,
    n_gpu_layers: str | int = "auto",
    verbose: bool = False,
    pull: bool = True,
    progress: Any = None,
) -> Iterator[list[float]]:
    """One vector per text of `texts` (read lazily, so a pipe streams), as lists of floats.

    `ctx_size`: most tokens per text (default 2048, at most the model's trained context);
    a longer text is an error, or is cut to fit with `truncate`.
    """
    from llmrun.engine import load_model
    from llmrun.generation import prepare

    if ctx_size is not None and ctx_size <= 0:
        raise BadOption(f"-c/--ctx-size must be > 0, got {ctx_size}")
    prepared = prepare(
        model,
        n_gpu_layers=n_gpu_layers,
        threads=threads,
        verbose=verbose,
        pull=pull,
        progress=progress,
    )
    trained = read_info(prepared.resolved.path).context_length
    n_ctx = min(ctx_size or MAX_INPUT_TOKENS, trained or MAX_INPUT_TOKENS)
    # The model's own context is not used for embeddings: the smallest that holds a text.
    loaded = load_model(prepared.resolved.path, replace(prepared.load, ctx_size=n_ctx))
    try:
        embedder = Embedder(loaded, n_ctx=n_ctx, threads=loaded.n_threads)
        try:
            for i, text in enumerate(texts, 1):
                tokens = loaded.tokenize(text, add_special=True, parse_special=False)
                if truncate:
                    tokens = tokens[: embedder.n_ctx]
                try:
                    vector = embedder.embed(tokens, normalize=normalize)
                except ContextOverflow as e:
                    remedy = "split it, or give --truncate to cut it to fit" if tokens else e.remedy
                    raise ContextOverflow(f"input {i}: {e.message}", remedy) from None
                yield vector.tolist()
        finally:
            embedder.close()
    finally:
        loaded.close()
