"""What every API the server speaks shares: the served model and its answers in flight.

A Service holds the engine, the name the model is served as, the default sampling
and system prompt, the chat template (read once), the embedder with
`serve --embeddings`, and the handles submitted and not yet answered, which
shutdown cancels once its grace period is over. Its refusals are ApiErrors
(openai_errors.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrun.errors import EngineStopped
from llmrun.options import Sampling
from llmrun.server.openai_errors import ApiError
from llmrun.templates.render import ChatTemplate

if TYPE_CHECKING:
    from llmrun.engine.batch import BatchEngine, Extras, Handle
    from llmrun.engine.embed import Embedder
    from llmrun.engine.sampling import Grammar


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", code="unavailable")


@dataclass
class Service:
    """The engine serving one model, and the answers it owes."""

    engine: BatchEngine
    model_name: str
    sampling: Sampling = field(default_factory=Sampling)
    system: str | None = None
    embedder_made: Embedder | None = None  # the embedding context, made on first use
    chat_template: Path | None = None  # --chat-template FILE, over the model's own
    reasoning: str = "auto"  # --reasoning: auto, on, off
    created: int = field(default_factory=lambda: int(time.time()))
    shutting_down: bool = False
    live: set[Handle] = field(default_factory=set)  # submitted and not yet answered
    embed_threads: int = 0
    max_queue: int = 512  # requests waiting for a sequence, past which a 503
    _template: ChatTemplate | None = None
    _embed_lock: threading.Lock = field(default_factory=threading.Lock)

    def embedder(self) -> Embedder:
        """The embedding context on the model's weights, made the first time it is asked for."""
        with self._embed_lock:
            if self.embedder_made is None:
                from llmrun.engine.embed import Embedder

                self.embedder_made = Embedder(self.engine.model, threads=self.embed_threads)
            return self.embedder_made

    def close(self) -> None:
        """Unload: the embedding context (after the request using it), then the engine.

        After a lost RPC worker llama.cpp would wait for ever, so then nothing is freed.
        """
        if self.engine.failure:
            return
        if self.embedder_made is not None:
            self.embedder_made.close()
        self.engine.stop(cancel=True)

    def template(self) -> ChatTemplate:
        """The model's chat template; BadInput if it has none (asked again next time)."""
        if self._template is None:
            self._template = ChatTemplate(self.engine.model, self.chat_template)
        return self._template

    def check_engine(self) -> None:
        """A 503 once the engine has failed for good (a lost RPC worker)."""
        if self.engine.failure:
            raise ApiError(503, f"{self.engine.failure}; restart llmrun serve", code="unavailable")

    def tokens(self, prompt: str | list[int], param: str) -> list[int]:
        """A prompt's token ids: text tokenized as it is, ids checked against the vocabulary."""
        model = self.engine.model
        if isinstance(prompt, str):
            return model.tokenize(prompt, add_special=True, parse_special=False)
        if all(0 <= t < model.n_vocab for t in prompt):
            return prompt
        raise ApiError(400, f"token ids must be in 0..{model.n_vocab - 1}", param=param)

    def submit(
        self,
        prompts: list[list[int]],
        overrides: dict[str, Any],
        grammar: str | Grammar | None,
        extras: Extras | None = None,
        n: int = 1,
        deadline: float | None = None,
    ) -> list[Handle]:
        """`n` handles per prompt, in order, sampled with the defaults under `overrides`;
        all or none. Past `deadline` (perf_counter) they end as "timeout"."""
        self.check_engine()
        sampling = self.sampling.merged(overrides)
        waiting = self.engine.stats()["waiting"]
        if waiting + len(prompts) * n > self.max_queue:
            raise ApiError(
                503,
                f"the server is busy: {waiting} requests are waiting for {self.model_name} "
                f"(--max-queue {self.max_queue}); try again shortly",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        if n > self.engine.parallel:
            raise ApiError(
                400,
                f"n={n} is more than this server's {self.engine.parallel} sequences "
                "(llmrun serve --parallel)",
                param="n",
            )
        handles: list[Handle] = []
        try:
            for tokens in prompts:
                handle = self.engine.submit(tokens, sampling, grammar, extras, n, deadline)
                handles += [handle, *handle.followers]
        except EngineStopped:  # the engine is draining: we are shutting down
            raise shutting_down() from None
        except BaseException:
            for h in handles:  # the prompts before the one refused
                h.cancel()
            raise
        return handles

    def track(self, handles: list[Handle]) -> None:
        """Count handles as in flight; on the event loop, where they are released."""
        self.live.update(handles)

    def release(self, handles: list[Handle]) -> None:
        """The answers are given, or nobody waits for them any more."""
        for h in handles:
            h.cancel()  # a no-op for the finished ones
            self.live.discard(h)

    def failure(self, handles: list[Handle]) -> ApiError | None:
        """Why the answers cannot be given whole, if they cannot."""
        failed = next((h for h in handles if h.finish_reason == "error"), None)
        if failed is not None:
            return ApiError(500, f"generation failed: {failed.error}", code="engine_error")
        if self.shutting_down and any(h.finish_reason == "cancelled" for h in handles):
            return shutting_down()
        return None

    def cancel_all(self) -> None:
        """At shutdown, after the grace period: end every answer still in flight."""
        self.shutting_down = True
        for h in list(self.live):
            h.cancel()
