"""The sampler chain, built in llama.cpp so no logits cross into Python.

Order follows llama.cpp's common sampler: grammar, penalties, top-k, top-p,
min-p, temperature, then a seeded draw; temperature 0 is greedy.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llama_cpp

from llmrun.errors import BadOption
from llmrun.options import Sampling

if TYPE_CHECKING:
    from llmrun.engine.model import Model

PENALTY_LAST_N = 64  # llama.cpp's default window for --repeat-penalty


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar, applied from the first token, or lazily: only once the output matches
    one of `triggers` (regexes), from the start of that match on (llama.cpp's lazy grammar).
    A tool call is free text until the model opens a call, then it must be well formed."""

    text: str
    triggers: tuple[str, ...] = ()


def _literal(pattern: str) -> str | None:
    """The text a pattern matches when it is a plain escaped literal, else None."""
    text = re.sub(r"\\(.)", r"\1", pattern, flags=re.S)
    return text if re.escape(text) == pattern else None


def _trigger_token(model: Model, pattern: str) -> int | None:
    """The token a trigger is, when it is one token of the vocabulary (`<tool_call>` in
    Qwen's, `[TOOL_CALLS]` in Mistral's): llama.cpp then waits for that token, which costs
    nothing, instead of matching a pattern against the whole output at every token."""
    text = _literal(pattern)
    if not text:
        return None
    tokens = model.tokenize(text, add_special=False, parse_special=True)
    return tokens[0] if len(tokens) == 1 else None


def _grammar_sampler(model: Model, grammar: str | Grammar) -> llama_cpp.llama_sampler_p:
    if isinstance(grammar, str):
        grammar = Grammar(grammar)
    if not grammar.triggers:
        return llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.text.encode(), b"root")
    tokens: list[int] = []
    patterns: list[bytes] = []
    for t in grammar.triggers:
        re.compile(t)  # a bad pattern is our bug; fail here, not inside std::regex
        token = _trigger_token(model, t)
        if token is not None:
            tokens.append(token)
        else:
            # llama.cpp searches the output so far for the pattern at each token, and feeds
            # the grammar from where it matched. Bare, so the search is cheap: wrapped in
            # [\s\S]*?( )[\s\S]*, std::regex's backtracking made it grow with the output.
            patterns.append(t.encode())
    pattern_array = (ctypes.c_char_p * max(1, len(patterns)))(*patterns)
    token_array = (llama_cpp.llama_token * max(1, len(tokens)))(*tokens)
    return llama_cpp.llama_sampler_init_grammar_lazy_patterns(
        model.vocab,
        grammar.text.encode(),
        b"root",
        pattern_array,
        len(patterns),
        token_array,
        len(tokens),
    )


def build_sampler(
    model: Model, sampling: Sampling, grammar: str | Grammar | None = None
) -> llama_cpp.llama_sampler_p:
    """A new sampler chain; the caller frees it with llama_sampler_free."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731

    if grammar is not None:
        g = _grammar_sampler(model, grammar)
        if not g:
            llama_cpp.llama_sampler_free(chain)
            raise BadOption("the output grammar could not be parsed by llama.cpp")
        add(g)
    if sampling.repeat_penalty != 1.0:
        add(
            llama_cpp.llama_sampler_init_penalties(
                model.n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0
            )
        )
    if sampling.temp <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if sampling.top_k > 0:
        add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
    if sampling.top_p < 1.0:
        add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    if sampling.min_p > 0.0:
        add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
    add(llama_cpp.llama_sampler_init_temp(sampling.temp))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed < 0 else sampling.seed
    add(llama_cpp.llama_sampler_init_dist(seed))
    return chain
