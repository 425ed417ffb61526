"""The sampler chain, built in llama.cpp so no logits cross into Python.

Order follows llama.cpp's common sampler: grammar, penalties, top-k, top-p,
min-p, temperature, then a seeded draw; temperature 0 is greedy.
"""

from __future__ import annotations

import ctypes
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llama_cpp

from llmrun.errors import BadOption
from llmrun.options import Sampling

if TYPE_CHECKING:
    import numpy as np

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


def _chain(model: Model, sampling: Sampling) -> llama_cpp.llama_sampler_p:
    """The sampler chain without the grammar."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731

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


# llama_token_data, as numpy fields (numpy is imported only when a grammar refuses a draw).
TOKEN_DATA_FIELDS = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]


class Sampler:
    """The sampler chain, and the grammar apart from it, checked after the draw.

    As llama.cpp's common sampler does: the chain draws a token from the whole vocabulary
    (in C, no logits cross into Python), and the grammar checks only that one. Only when the
    grammar refuses it are all the candidates masked by the grammar and drawn again; a grammar
    at the head of the chain would check the whole vocabulary at every token instead (a
    forced tool call ran at 0.71 of plain speed that way). Free it with `free()`.
    """

    def __init__(self, model: Model, sampling: Sampling, grammar: str | Grammar | None) -> None:
        self.n_vocab = model.n_vocab
        self.grammar: llama_cpp.llama_sampler_p | None = None
        if grammar is not None:
            self.grammar = _grammar_sampler(model, grammar)
            if not self.grammar:
                raise BadOption("the output grammar could not be parsed by llama.cpp")
        self.chain = _chain(model, sampling)
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        self._all: np.ndarray | None = None  # the candidates, for a refused draw

    def sample(self, ctx: llama_cpp.llama_context_p, i: int) -> int:
        """Draw the next token from the logits of batch index i (-1: the last)."""
        token = llama_cpp.llama_sampler_sample(self.chain, ctx, i)
        if self.grammar is None:
            return token
        one = self._one[0]
        one.id, one.logit, one.p = token, 0.0, 0.0
        self._one_array.size, self._one_array.selected = 1, -1
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(self._one_array))
        if one.logit == -math.inf:
            token = self._constrained(ctx, i)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def _constrained(self, ctx: llama_cpp.llama_context_p, i: int) -> int:
        """Every candidate through the grammar, then the chain's draw among those left."""
        import numpy as np

        if self._all is None:
            self._all = np.zeros(self.n_vocab, dtype=np.dtype(TOKEN_DATA_FIELDS))
        cand = self._all
        cand["id"] = np.arange(self.n_vocab, dtype=np.int32)
        raw = llama_cpp.llama_get_logits_ith(ctx, i)
        cand["logit"] = np.ctypeslib.as_array(raw, shape=(self.n_vocab,))
        cand["p"] = 0.0
        data = cand.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        array = llama_cpp.llama_token_data_array(data, self.n_vocab, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(cand["id"][array.selected])

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)
        self.grammar = None


def build_sampler(
    model: Model, sampling: Sampling, grammar: str | Grammar | None = None
) -> Sampler:
    """A new Sampler; the caller frees it with its free()."""
    return Sampler(model, sampling, grammar)
