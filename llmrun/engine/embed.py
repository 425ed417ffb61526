"""Embeddings: one vector per text, from a second context on an already loaded model.

The context shares the model's weights (llama.cpp allows several contexts per
model) and is made with `embeddings` on, so llama_decode pools the final
hidden states of each sequence into one vector. Models that say how to pool
(embedding models: CLS, mean, last) are pooled their way; a generative model
says nothing, and is mean-pooled over its tokens, as llama-server does with
`--pooling mean`. Vectors are scaled to unit length, as OpenAI's and Ollama's are,
unless asked not to be (`llmrun embed --no-normalize`).
"""

from __future__ import annotations

import ctypes
import threading

import llama_cpp
import numpy as np

from llmrun.cpus import default_threads
from llmrun.engine import logs
from llmrun.engine.model import Model, decode_batch, put_token
from llmrun.errors import ContextOverflow, EngineError

MAX_INPUT_TOKENS = 2048  # tokens per input at most


class Embedder:
    """Embeddings for `model`'s texts; thread-safe (one input at a time)."""

    def __init__(self, model: Model, n_ctx: int = MAX_INPUT_TOKENS, threads: int = 0) -> None:
        self.model = model
        self.n_ctx = min(n_ctx, model.n_ctx_train or n_ctx)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        # Pooling sees a whole input in one ubatch.
        cparams.n_batch = cparams.n_ubatch = self.n_ctx
        cparams.n_seq_max = 1
        cparams.embeddings = True
        cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED  # the model's own
        cparams.n_threads = cparams.n_threads_batch = threads or default_threads()
        ctx = llama_cpp.llama_init_from_model(model.llama_model, cparams)
        if ctx and llama_cpp.llama_pooling_type(ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            llama_cpp.llama_free(ctx)  # a generative model: mean-pool it
            cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            ctx = llama_cpp.llama_init_from_model(model.llama_model, cparams)
        if not ctx:
            raise EngineError(
                f"llama.cpp could not create an embeddings context: {logs.last_error('unknown')}"
            )
        self._ctx = ctx
        self.n_embd = llama_cpp.llama_model_n_embd(model.llama_model)
        self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        # Held for a whole request by its caller (and by close), so the context and
        # the model's vocabulary outlive every request that started.
        self.lock = threading.RLock()

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def close(self) -> None:
        with self.lock:
            if self._ctx:
                llama_cpp.llama_batch_free(self._batch)
                llama_cpp.llama_free(self._ctx)
                self._ctx = None

    def check(self, tokens: list[int]) -> None:
        if not tokens:
            raise ContextOverflow("an input is empty", "give at least one token of text")
        if len(tokens) > self.n_ctx:
            raise ContextOverflow(
                f"an input is {len(tokens)} tokens; embeddings take {self.n_ctx} at most",
                "split the text",
            )

    def embed(self, tokens: list[int], normalize: bool = True) -> np.ndarray:
        """The embedding of one tokenized input: unit length, or as pooled (`normalize=False`)."""
        self.check(tokens)
        with self.lock:
            if self._ctx is None:
                raise EngineError("the embeddings context is closed")
            batch = self._batch
            for i, tok in enumerate(tokens):
                put_token(batch, i, tok, i, 0, True)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
            with self.model.decode_lock:
                decode_batch(self._ctx, batch, len(tokens))
            raw = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
            if not raw:
                raise EngineError("llama.cpp returned no pooled embedding")
            vector = np.ctypeslib.as_array(
                ctypes.cast(raw, ctypes.POINTER(ctypes.c_float)), shape=(self.n_embd,)
            ).astype(np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if normalize and norm > 0 else vector
