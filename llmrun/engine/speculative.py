"""Draft tokens for speculative decoding; the target model verifies them.

A drafter guesses the next few tokens cheaply. The target evaluates the last
token and the guesses in one decode, then samples each position in order with
its own sampler chain and keeps a guess only if it samples exactly that token.
So the output is what plain decoding would sample, token for token (greedy:
identical), only with fewer, larger decodes. `verify` is that step of the
target's decode loop.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Protocol

import llama_cpp

from llmrun.errors import BadInput

if TYPE_CHECKING:
    from llmrun.engine.model import Model
    from llmrun.engine.sampling import Sampler

DRAFT_KINDS = ("ngram",)


class Drafter(Protocol):
    def propose(self, history: list[int], n: int) -> list[int]:
        """Up to n tokens likely to follow `history` (may be none)."""
        ...

    def close(self) -> None:
        """Free what the drafter holds; the target calls it when a run ends."""
        ...


class NgramDrafter:
    """Prompt lookup: find the last few tokens earlier in the text and copy what followed.

    Strong wherever the answer repeats its input: summaries, edits, code, extraction.
    """

    def __init__(self, max_ngram: int = 4, min_ngram: int = 2) -> None:
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, history: list[int], n: int) -> list[int]:
        size = len(history)
        for k in range(min(self.max_ngram, size - 1), self.min_ngram - 1, -1):
            tail = history[size - k :]
            # The most recent earlier occurrence predicts best.
            for start in range(size - k - 1, -1, -1):
                if history[start : start + k] == tail:
                    follow = history[start + k : start + k + n]
                    if follow:
                        return follow
        return []

    def close(self) -> None:
        pass  # holds nothing of llama.cpp's


class ModelDrafter:
    """A small model with the same vocabulary guesses greedily.

    Its own context keeps what it has seen; each call evaluates only the
    tokens that are new since the last one (the engine's prefix reuse). The
    drafter owns the draft model: closing it closes the model.
    """

    def __init__(self, draft: Model, target: Model) -> None:
        check_same_vocab(draft, target)
        self.model = draft
        self._greedy = llama_cpp.llama_sampler_init_greedy()

    def propose(self, history: list[int], n: int) -> list[int]:
        draft = self.model
        if len(history) + n >= draft.n_ctx:
            return []
        draft.prefill(history)
        out: list[int] = []
        for _ in range(n):
            token = llama_cpp.llama_sampler_sample(self._greedy, draft.ctx, -1)
            if draft.is_eog(token):
                break
            out.append(token)
            if len(out) < n:
                draft.decode([token])
        return out

    def close(self) -> None:
        if self._greedy:
            llama_cpp.llama_sampler_free(self._greedy)
            self._greedy = None
        self.model.close()


def verify(
    target: Model,
    sampler: Sampler,
    token: int,
    draft: list[int],
    take: Callable[[int], tuple[str, str | None]],
) -> Generator[str, None, tuple[int, str | None]]:
    """Evaluate `token` and the guesses in one decode; keep guesses while the target agrees.

    Yields the text of each kept guess (`take` accounts for a token and says
    whether to stop); returns the next token to evaluate and the stop reason, if any.
    """
    start = target.n_cached
    target.decode([token, *draft], all_logits=True)
    target.stats.drafted += len(draft)
    kept = 0
    reason: str | None = None
    for i, guess in enumerate(draft):
        token = sampler.sample(target.ctx, i)
        if token != guess:
            break
        kept += 1
        target.stats.accepted += 1
        out, reason = take(token)
        if out:
            yield out
        if reason:
            break
    else:
        token = sampler.sample(target.ctx, len(draft))
    # Cells past the last kept guess hold rejected tokens.
    target.truncate(start + 1 + kept)
    return token, reason


def check_same_vocab(draft: Model, target: Model) -> None:
    """A draft model must tokenize like the target, or its guesses mean nothing."""
    probes = ("Hello, world!", " The quick brown fox", "1234 + 5678 = ?", "naïve café 😀")
    same = draft.n_vocab == target.n_vocab and all(
        draft.tokenize(p, add_special=False) == target.tokenize(p, add_special=False)
        for p in probes
    )
    if not same:
        raise BadInput(
            f"the draft model {draft.path.name} does not share the vocabulary of "
            f"{target.path.name}",
            "pick a smaller model of the same family, or use --draft ngram",
        )
