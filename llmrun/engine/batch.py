"""Continuous batching: many requests decoded together in one llama.cpp context.

Each step makes one `llama_decode` call carrying the next token of every
generating sequence plus chunks of newly admitted prompts (chunked prefill, so
a long prompt does not stall the others). Each sequence has its own sampler
chain and stop rules. Requests join between steps; a finished or cancelled
sequence frees its generated cells at once.

Each sequence has its own KV stream (see Model), which keeps greedy output
identical to a single-sequence run. Prefix sharing: a new prompt that starts
like one already in the cache (the same system prompt, say) gets those cells
by `llama_memory_seq_cp` - llama.cpp copies the source stream's buffer, and we
trim the copy to the shared prefix: a memory copy instead of recomputing it.
A finished sequence keeps its prompt's cells until its slot is reused, as a
cache for exactly that case. llama.cpp's prompt evaluation is not bit-exact
across different splits of a prompt, so an answer built on a shared prefix can
differ in low-order bits (and, greedy, eventually in text) from a cold run;
`prefix_cache=False` trades the speed for exact reproducibility.

All llama.cpp calls on the context happen on the engine's own thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import llama_cpp
import numpy as np

from llmrun.engine import rpc
from llmrun.engine.images import image_start
from llmrun.engine.model import N_UBATCH, Model, decode_batch, put_token
from llmrun.engine.sampling import Grammar, Sampler, build_sampler
from llmrun.engine.text import StopFilter, Utf8Stream
from llmrun.errors import BadInput, ContextOverflow, EngineStopped, WorkerError
from llmrun.options import Load, Sampling

MIN_SHARED_PREFIX = 8  # below this, copying cells saves less than it costs to think about
# Prompt tokens per step when each needs its logits (n_vocab floats each): one ubatch, which
# also splits the prompt as `llmrun eval` does, so the numbers agree to the last bits
# (llama.cpp's attention is not bit-exact across different splits).
ECHO_CHUNK = N_UBATCH
_DONE = object()


@dataclass(frozen=True)
class TokenLogprob:
    """A token and its log-probability under the model (log-softmax of its logits, before
    grammar, penalties and the sampler's truncation), with the `top` alternatives."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability in one row of logits, and the `top` most likely tokens."""
    shifted = logits - logits.max()
    lse = float(np.log(np.exp(shifted, dtype=np.float64).sum()))
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        ids = np.argpartition(-shifted, top)[:top] if top < len(shifted) else np.arange(top)
        ids = ids[np.argsort(-shifted[ids], kind="stable")]
        best = tuple((int(t), float(shifted[t]) - lse) for t in ids)
    return TokenLogprob(token, float(shifted[token]) - lse, best)


@dataclass(frozen=True)
class Extras:
    """What a request wants besides text: log-probabilities, special tokens, its prompt's."""

    logprobs: int | None = None  # record each generated token's logprob and this many top ones
    special: bool = False  # write special tokens as their text (tool-call and channel markers)
    echo: bool = False  # record the prompt tokens' logprobs too (prompt_logprobs)
    generate: bool = True  # False: evaluate the prompt only (echo with max_tokens 0)
    lora: tuple[float, ...] | None = None  # a scale per adapter of the model; None: as loaded


class Handle:
    """One request: its text as it comes, and how it ended."""

    def __init__(
        self,
        tokens: list[int],
        sampling: Sampling,
        sampler: Sampler,
        extras: Extras | None = None,
    ):
        self.tokens = tokens
        self.sampling = sampling
        self.extras = extras or Extras()
        # Filled by the engine thread as it goes; a reader takes what is there so far.
        self.logprobs: list[TokenLogprob] = []  # one per generated token, with extras.logprobs
        self.prompt_logprobs: list[TokenLogprob | None] = []  # with extras.echo; [0] is None
        self.followers: list[Handle] = []  # n > 1: they take a copy of this one's prompt
        self.follows: Handle | None = None  # set on a follower: whose prompt it copies
        self.prompt_tokens = len(tokens)
        self.completion_tokens = 0
        self.reused_tokens = 0
        self.generated: list[int] = []  # the sampled token ids, in order
        # perf_counter marks: queued, prompt evaluated (first token sampled), ended.
        self.submitted_at = time.perf_counter()
        self.prompt_done_at: float | None = None
        self.finished_at: float | None = None
        self.deadline: float | None = None  # perf_counter time by which it ends, "timeout"
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._sampler = sampler
        self._items: deque[object] = deque()
        self._cond = threading.Condition()
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._cancelled = threading.Event()

    # The engine thread pushes; a thread or an event loop reads.
    def _push(self, item: object) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
            waker = self._waker
        if waker is not None:
            loop, event = waker
            loop.call_soon_threadsafe(event.set)

    def __iter__(self) -> Iterator[str]:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.popleft()
            if item is _DONE:
                return
            yield item  # type: ignore[misc]

    async def aiter(self) -> AsyncIterator[str]:
        event = asyncio.Event()
        with self._cond:
            self._waker = (asyncio.get_running_loop(), event)
        while True:
            with self._cond:
                batch = list(self._items)
                self._items.clear()
                if not batch:
                    event.clear()
            if not batch:
                await event.wait()
                continue
            for item in batch:
                if item is _DONE:
                    return
                yield item  # type: ignore[misc]

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def text(self) -> str:
        """Wait for the whole answer."""
        return "".join(self)


@dataclass
class _Slot:
    """A sequence id in the context and the request it serves."""

    seq_id: int
    handle: Handle | None = None
    cached: list[int] = field(default_factory=list)  # tokens whose cells this sequence holds
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    next_token: int | None = None  # sampled, to be decoded next step
    logits_at: int = -1  # batch index whose logits to sample after this step
    text: Utf8Stream = field(default_factory=Utf8Stream)
    stops: StopFilter = field(default_factory=lambda: StopFilter(()))
    scales: tuple[float, ...] = ()  # the adapter scales its cells were computed under


class BatchEngine:
    """A model with `parallel` sequences and a thread that decodes them together."""

    def __init__(
        self, path: Path, load: Load, parallel: int = 4, prefix_cache: bool = True
    ) -> None:
        self.parallel = parallel
        self.prefix_cache = prefix_cache
        self.model = Model(path, replace(load, parallel=parallel))
        # Each sequence gets an equal share, as llama-server's slots do; a
        # sequence can then never run the shared pool dry.
        self.slot_ctx = self.model.n_ctx // parallel
        self._slots = [_Slot(i, scales=self.model.adapter_scales) for i in range(parallel)]
        self._waiting: deque[Handle] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running = False
        self._draining = False
        self._thread: threading.Thread | None = None
        self._batch = llama_cpp.llama_batch_init(self.model.n_batch, 0, 1)
        self.steps = 0
        self.generated = 0
        self.failure: str | None = None  # why the engine thread can no longer run

    # ------------------------------------------------------------ public API

    def start(self) -> BatchEngine:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="llmrun-batch", daemon=True)
        self._thread.start()
        return self

    def stop(self, cancel: bool = False) -> None:
        """Finish (or cancel) what is in flight, then stop the thread."""
        if self.failure:
            return  # the thread is stuck inside llama.cpp, which still holds the context
        if cancel:
            with self._lock:
                for h in [*self._waiting, *(s.handle for s in self._slots if s.handle)]:
                    for each in [h, *h.followers]:
                        each.cancel()
        self._draining = True
        self._wake.set()
        if self._thread:
            self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        self.model.close()

    def submit(
        self,
        tokens: list[int],
        sampling: Sampling,
        grammar: str | Grammar | None = None,
        extras: Extras | None = None,
        n: int = 1,
        deadline: float | None = None,
    ) -> Handle:
        """Queue a request; with n > 1 it is the first of n answers to the same prompt, the
        others in `handle.followers`: the prompt is evaluated once and its cells copied.
        Past `deadline` (a perf_counter time) it ends, waiting or not, as "timeout"."""
        if not 1 <= n <= self.parallel:
            raise ContextOverflow(
                f"n={n} answers at once, but there are {self.parallel} sequences",
                "raise --parallel, or ask for fewer",
            )
        if not tokens:
            tokens = [self.model.bos]
        if len(tokens) >= self.slot_ctx:
            raise ContextOverflow(
                f"the prompt is {len(tokens)} tokens but each of the {self.parallel} sequences "
                f"holds {self.slot_ctx}",
                "raise -c/--ctx-size, lower --parallel, or shorten the prompt",
            )
        if tokens[-1] < 0:
            raise BadInput("the prompt ends with an image", "put text after the image")
        if self._draining or not self._running:
            raise EngineStopped("the engine is not running")
        handle = Handle(tokens, sampling, build_sampler(self.model, sampling, grammar), extras)
        for i in range(1, n):
            # A fixed seed still gives n different answers, each reproducible.
            own = replace(sampling, seed=sampling.seed + i) if sampling.seed >= 0 else sampling
            sampler = build_sampler(self.model, own, grammar)
            follower = Handle(tokens, own, sampler, extras)
            follower.follows = handle
            handle.followers.append(follower)
        for h in [handle, *handle.followers]:
            h.deadline = deadline
        with self._lock:  # fail() empties the queue under it: nothing may join after
            if self.failure:
                for h in [handle, *handle.followers]:
                    h._sampler.free()
                raise WorkerError(self.failure, rpc.LOST_REMEDY)
            self._waiting.append(handle)
        self._wake.set()
        return handle

    def fail(self, message: str) -> None:
        """The engine thread is stuck for good (a lost RPC worker): end every request now.

        Called from llama.cpp's RPC thread. Nothing here touches llama.cpp: the
        stuck decode still holds the context.
        """
        with self._lock:
            self.failure = message
            handles = [*self._waiting, *(s.handle for s in self._slots if s.handle)]
            handles += [f for h in handles for f in h.followers]
            self._waiting.clear()
        for handle in handles:
            handle.error = message
            handle.finish_reason = "error"
            handle._push(_DONE)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "active": sum(1 for s in self._slots if s.handle),
                "waiting": len(self._waiting),
                "parallel": self.parallel,
                "kv_used": sum(len(s.cached) for s in self._slots),
                "kv_total": self.slot_ctx * self.parallel,
                "steps": self.steps,
                "generated_tokens": self.generated,
            }

    # ------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        while True:
            self._admit()
            active = [s for s in self._slots if s.handle]
            if not active:
                if self._draining and not self._waiting:
                    return
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                self._step(active)
            except Exception as e:  # never leave a client waiting forever
                for slot in active:
                    if slot.handle:
                        slot.handle.error = str(e)
                        self._finish(slot, "error")

    def _admit(self) -> None:
        with self._lock:
            while self._waiting:
                free = next((s for s in self._slots if s.handle is None), None)
                if free is None:
                    return
                handle = self._waiting.popleft()
                late = handle.deadline is not None and time.perf_counter() >= handle.deadline
                if handle._cancelled.is_set() or late:
                    self._waiting.extendleft(reversed(handle.followers))
                    handle.followers = []
                    handle.finish_reason = "timeout" if late else "cancelled"
                    handle.finished_at = time.perf_counter()
                    handle._sampler.free()
                    handle._push(_DONE)
                    continue
                self._assign(free, handle)

    def _assign(self, slot: _Slot, handle: Handle) -> None:
        tokens = handle.tokens
        memory = self.model.memory
        # Cells computed under other adapter scales hold other K and V: never shared.
        scales = self._scales(handle)
        source, shared = slot, _common(slot.cached, tokens) if slot.scales == scales else 0
        for other in self._slots:
            n = _common(other.cached, tokens) if other.scales == scales else 0
            if n > shared:
                source, shared = other, n
        shared = min(shared, len(tokens) - 1)  # the last prompt token is always evaluated
        shared = image_start(tokens, shared)  # and an image is evaluated whole or not at all
        if shared < MIN_SHARED_PREFIX or not self.prefix_cache or handle.extras.echo:
            shared = 0  # echo: every prompt token's logits are wanted
        if source is not slot and shared:
            # Across streams llama.cpp copies whole streams only; then cut it to the prefix.
            llama_cpp.llama_memory_seq_cp(memory, source.seq_id, slot.seq_id, -1, -1)
        elif source is not slot:
            llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, shared, -1)
        slot.handle = handle
        slot.scales = scales
        slot.cached = tokens[:shared]
        slot.pending = tokens[shared:]
        slot.next_token = None
        slot.text = Utf8Stream()
        slot.stops = StopFilter(handle.sampling.stop)
        handle.reused_tokens = shared
        if handle.extras.echo:
            handle.prompt_logprobs.append(None)  # the first token has no context to predict it

    def _scales(self, handle: Handle) -> tuple[float, ...]:
        asked = handle.extras.lora
        return asked if asked is not None else self.model.adapter_scales

    def _step(self, active: list[_Slot]) -> None:
        """One decode for the sequences of each set of adapter scales (one set: one decode):
        the scales are the context's, so sequences under other scales cannot share a batch."""
        groups: dict[tuple[float, ...], list[_Slot]] = {}
        for slot in active:
            groups.setdefault(slot.scales, []).append(slot)
        for scales, group in groups.items():
            self.model.use_adapter_scales(scales)
            self._step_group(group)

    def _step_group(self, active: list[_Slot]) -> None:
        batch, n = self._batch, 0
        now = time.perf_counter()
        for slot in active:
            slot.logits_at = -1
            if slot.handle and slot.handle._cancelled.is_set():
                self._finish(slot, "cancelled")
            elif slot.handle and slot.handle.deadline is not None and now >= slot.handle.deadline:
                self._finish(slot, "timeout")
        active = [s for s in active if s.handle]
        # Generating sequences first: one token each.
        for slot in active:
            if slot.next_token is not None:
                n = put_token(batch, n, slot.next_token, len(slot.cached), slot.seq_id, True)
                slot.logits_at = n - 1
                slot.cached.append(slot.next_token)
                slot.next_token = None
        # Then prompt chunks, as much as the batch holds.
        echoes: list[tuple[_Slot, int, int]] = []  # (slot, first batch index, first position)
        for slot in active:
            room = self.model.n_batch - n
            assert slot.handle is not None
            echo = slot.handle.extras.echo
            if echo:
                room = min(room, ECHO_CHUNK)
            if not slot.pending or room <= 0:
                continue
            self._images_first(slot)
            text = next((i for i, t in enumerate(slot.pending) if t < 0), len(slot.pending))
            chunk, slot.pending = slot.pending[: min(room, text)], slot.pending[min(room, text) :]
            if echo:
                echoes.append((slot, n, len(slot.cached)))
            for i, tok in enumerate(chunk):
                last = not slot.pending and i == len(chunk) - 1
                n = put_token(batch, n, tok, len(slot.cached), slot.seq_id, last or echo)
                slot.cached.append(tok)
            if not slot.pending:
                slot.logits_at = n - 1
        if n == 0:
            return
        with self.model.decode_lock:
            decode_batch(self.model.ctx, batch, n)
        self.steps += 1
        for slot, first, pos in echoes:
            self._echo(slot, first, pos)
        for slot in list(active):
            if slot.logits_at >= 0 and slot.handle and slot.handle.followers:
                active += self._fork(slot)
        for slot in active:
            if slot.logits_at >= 0 and slot.handle:
                if slot.handle.extras.generate:
                    self._sample(slot)
                else:
                    self._finish(slot, "length")

    def _images_first(self, slot: _Slot) -> None:
        """Evaluate the images the slot's pending prompt starts with, each on its own (the
        projector decodes an image's embeddings in batches of its own)."""
        images = self.model.images
        while slot.pending and slot.pending[0] < 0 and images is not None:
            token = slot.pending[0]
            end = next((i for i, t in enumerate(slot.pending) if t != token), len(slot.pending))
            with self.model.decode_lock:
                images.decode_run(
                    self.model.ctx,
                    slot.pending[:end],
                    len(slot.cached),
                    slot.seq_id,
                    self.model.n_batch,
                )
            slot.cached += slot.pending[:end]
            slot.pending = slot.pending[end:]

    def _row(self, i: int) -> np.ndarray:
        """The logits of batch index i, as a view (no copy)."""
        raw = llama_cpp.llama_get_logits_ith(self.model.ctx, i)
        return np.ctypeslib.as_array(raw, shape=(self.model.n_vocab,))

    def _echo(self, slot: _Slot, first: int, pos: int) -> None:
        """Record the logprobs of the prompt tokens this step's logits predict."""
        handle = slot.handle
        assert handle is not None
        k = handle.extras.logprobs or 0
        tokens = handle.tokens
        for j in range(pos, min(len(slot.cached), len(tokens) - 1)):
            row = self._row(first + j - pos)
            handle.prompt_logprobs.append(token_logprob(row, tokens[j + 1], k))

    def _fork(self, leader: _Slot) -> list[_Slot]:
        """n > 1: give each follower a copy of the leader's prompt cells and its logits.

        Followers sample from the very same logits, so greedy answers are identical. One that
        finds no free sequence waits at the front of the queue and shares the prefix later.
        """
        handle = leader.handle
        assert handle is not None
        followers, handle.followers = handle.followers, []
        forked = []
        for follower in followers:
            free = next((s for s in self._slots if s.handle is None), None)
            if free is None:
                with self._lock:
                    self._waiting.appendleft(follower)
                continue
            memory = self.model.memory
            llama_cpp.llama_memory_seq_rm(memory, free.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(memory, leader.seq_id, free.seq_id, -1, -1)
            free.handle = follower
            free.scales = leader.scales
            free.cached = list(leader.cached)
            free.pending = []
            free.next_token = None
            free.logits_at = leader.logits_at
            free.text = Utf8Stream()
            free.stops = StopFilter(follower.sampling.stop)
            follower.reused_tokens = len(leader.cached)
            follower.prompt_logprobs = list(handle.prompt_logprobs)
            forked.append(free)
        return forked

    def _sample(self, slot: _Slot) -> None:
        handle = slot.handle
        assert handle is not None
        token = handle._sampler.sample(self.model.ctx, slot.logits_at)
        if handle.prompt_done_at is None:
            handle.prompt_done_at = time.perf_counter()
        if self.model.is_eog(token):
            self._finish(slot, "eos")
            return
        handle.completion_tokens += 1
        handle.generated.append(token)
        self.generated += 1
        if handle.extras.logprobs is not None:
            row = self._row(slot.logits_at)
            handle.logprobs.append(token_logprob(row, token, handle.extras.logprobs))
        piece = self.model.piece(token, handle.extras.special)
        out, stopped = slot.stops.feed(slot.text.feed(piece))
        if out:
            handle._push(out)
        limit = handle.sampling.max_tokens
        if stopped:
            self._finish(slot, "stop")
        elif 0 < limit <= handle.completion_tokens:
            self._finish(slot, "length")
        elif len(slot.cached) + 1 >= self.slot_ctx:
            self._finish(slot, "context")
        else:
            slot.next_token = token

    def _finish(self, slot: _Slot, reason: str) -> None:
        handle = slot.handle
        assert handle is not None
        if reason not in ("stop", "cancelled", "error"):
            tail = slot.stops.flush(slot.text.flush())
            if tail:
                handle._push(tail)
        handle.finish_reason = reason
        handle.finished_at = time.perf_counter()
        if handle.followers:  # it ended before its prompt was evaluated: they queue on their own
            with self._lock:
                self._waiting.extendleft(reversed(handle.followers))
            handle.followers = []
        handle._sampler.free()
        # Keep the prompt's cells as a prefix cache; the generated ones go now.
        keep = min(handle.prompt_tokens, len(slot.cached))
        if reason == "error" or not self.prefix_cache:
            keep = 0
        llama_cpp.llama_memory_seq_rm(self.model.memory, slot.seq_id, keep, -1)
        del slot.cached[keep:]
        slot.pending = []
        slot.next_token = None
        slot.handle = None
        handle._push(_DONE)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
