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


def _grammar_sampler(model: Model, grammar: str | Grammar) -> llama_cpp.llama_sampler_p:
    if isinstance(grammar, str):
        grammar = Grammar(grammar)
    if not grammar.triggers:
        return llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.text.encode(), b"root")
    # llama.cpp matches a pattern against the whole output so far and feeds the grammar
    # from the pattern's first group: the trigger.
    patterns = [f"[\\s\\S]*?({t})[\\s\\S]*".encode() for t in grammar.triggers]
    for t in grammar.triggers:
        re.compile(t)  # a bad pattern is our bug; fail here, not inside std::regex
    array = (ctypes.c_char_p * len(patterns))(*patterns)
    no_tokens = (llama_cpp.llama_token * 1)()
    return llama_cpp.llama_sampler_init_grammar_lazy_patterns(
        model.vocab, grammar.text.encode(), b"root", array, len(patterns), no_tokens, 0
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
