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
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import llama_cpp

from llmrun.engine import rpc
from llmrun.engine.model import Model, decode_batch, put_token
from llmrun.engine.sampling import build_sampler
from llmrun.engine.text import StopFilter, Utf8Stream
from llmrun.errors import ContextOverflow, EngineStopped, WorkerError
from llmrun.options import Load, Sampling

MIN_SHARED_PREFIX = 8  # below this, copying cells saves less than it costs to think about
_DONE = object()


class Handle:
    """One request: its text as it comes, and how it ended."""

    def __init__(self, tokens: list[int], sampling: Sampling, sampler: llama_cpp.llama_sampler_p):
        self.tokens = tokens
        self.sampling = sampling
        self.prompt_tokens = len(tokens)
        self.completion_tokens = 0
        self.reused_tokens = 0
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
        self._slots = [_Slot(i) for i in range(parallel)]
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
                    h.cancel()
        self._draining = True
        self._wake.set()
        if self._thread:
            self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        self.model.close()

    def submit(self, tokens: list[int], sampling: Sampling, grammar: str | None = None) -> Handle:
        if not tokens:
            tokens = [self.model.bos]
        if len(tokens) >= self.slot_ctx:
            raise ContextOverflow(
                f"the prompt is {len(tokens)} tokens but each of the {self.parallel} sequences "
                f"holds {self.slot_ctx}",
                "raise -c/--ctx-size, lower --parallel, or shorten the prompt",
            )
        if self._draining or not self._running:
            raise EngineStopped("the engine is not running")
        handle = Handle(tokens, sampling, build_sampler(self.model, sampling, grammar))
        with self._lock:  # fail() empties the queue under it: nothing may join after
            if self.failure:
                llama_cpp.llama_sampler_free(handle._sampler)
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
                if handle._cancelled.is_set():
                    handle.finish_reason = "cancelled"
                    llama_cpp.llama_sampler_free(handle._sampler)
                    handle._push(_DONE)
                    continue
                self._assign(free, handle)

    def _assign(self, slot: _Slot, handle: Handle) -> None:
        tokens = handle.tokens
        memory = self.model.memory
        source, shared = slot, _common(slot.cached, tokens)
        for other in self._slots:
            n = _common(other.cached, tokens)
            if n > shared:
                source, shared = other, n
        shared = min(shared, len(tokens) - 1)  # the last prompt token is always evaluated
        if shared < MIN_SHARED_PREFIX or not self.prefix_cache:
            shared = 0
        if source is not slot and shared:
            # Across streams llama.cpp copies whole streams only; then cut it to the prefix.
            llama_cpp.llama_memory_seq_cp(memory, source.seq_id, slot.seq_id, -1, -1)
        elif source is not slot:
            llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, shared, -1)
        slot.handle = handle
        slot.cached = tokens[:shared]
        slot.pending = tokens[shared:]
        slot.next_token = None
        slot.text = Utf8Stream()
        slot.stops = StopFilter(handle.sampling.stop)
        handle.reused_tokens = shared

    def _step(self, active: list[_Slot]) -> None:
        batch, n = self._batch, 0
        for slot in active:
            slot.logits_at = -1
            if slot.handle and slot.handle._cancelled.is_set():
                self._finish(slot, "cancelled")
        active = [s for s in active if s.handle]
        # Generating sequences first: one token each.
        for slot in active:
            if slot.next_token is not None:
                n = put_token(batch, n, slot.next_token, len(slot.cached), slot.seq_id, True)
                slot.logits_at = n - 1
                slot.cached.append(slot.next_token)
                slot.next_token = None
        # Then prompt chunks, as much as the batch holds.
        for slot in active:
            room = self.model.n_batch - n
            if not slot.pending or room <= 0:
                continue
            chunk, slot.pending = slot.pending[:room], slot.pending[room:]
            for i, tok in enumerate(chunk):
                last = not slot.pending and i == len(chunk) - 1
                n = put_token(batch, n, tok, len(slot.cached), slot.seq_id, last)
                slot.cached.append(tok)
            if not slot.pending:
                slot.logits_at = n - 1
        if n == 0:
            return
        with self.model.decode_lock:
            decode_batch(self.model.ctx, batch, n)
        self.steps += 1
        for slot in active:
            if slot.logits_at >= 0 and slot.handle:
                self._sample(slot)

    def _sample(self, slot: _Slot) -> None:
        handle = slot.handle
        assert handle is not None
        token = llama_cpp.llama_sampler_sample(handle._sampler, self.model.ctx, slot.logits_at)
        if self.model.is_eog(token):
            self._finish(slot, "eos")
            return
        handle.completion_tokens += 1
        self.generated += 1
        out, stopped = slot.stops.feed(slot.text.feed(self.model.piece(token)))
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
        llama_cpp.llama_sampler_free(handle._sampler)
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
