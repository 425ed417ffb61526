"""A loaded model and its context: tokenize, evaluate, generate.

We talk to llama.h through llama-cpp-python's ctypes bindings directly rather
than through its `Llama` class: the loop below is the whole per-token cost
(sample in llama.cpp's sampler chain, one piece lookup, one decode), which
keeps decoding within a few percent of llama.cpp's own tools.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import llama_cpp

from llmrun.adapters import describe as describe_adapters
from llmrun.cpus import default_threads
from llmrun.engine import logs, rpc, system
from llmrun.engine.images import MARKER, Image, Projector, image_start, runs
from llmrun.engine.offload import (
    CONTEXT_STEP,
    Device,
    ModelShape,
    Plan,
    check_host_context,
    experts_pattern,
    host_available,
    plan_offload,
    reserve,
)
from llmrun.engine.sampling import Grammar, Sampler, build_sampler
from llmrun.engine.speculative import Drafter, verify
from llmrun.engine.text import StopFilter, Utf8Stream
from llmrun.errors import BadInput, BadModelFile, ContextOverflow, EngineError
from llmrun.ggufinfo import read_info
from llmrun.options import DEFAULT_CTX, Adapter, Load, Sampling

if TYPE_CHECKING:
    import numpy as np

CACHE_TYPE_IDS = {
    "f32": llama_cpp.GGML_TYPE_F32,
    "f16": llama_cpp.GGML_TYPE_F16,
    "bf16": 30,  # GGML_TYPE_BF16; not exported by the bindings
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
    "q4_1": llama_cpp.GGML_TYPE_Q4_1,
    "iq4_nl": llama_cpp.GGML_TYPE_IQ4_NL,
    "q5_0": llama_cpp.GGML_TYPE_Q5_0,
    "q5_1": llama_cpp.GGML_TYPE_Q5_1,
}
FLASH_ATTN_IDS = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
N_BATCH = 2048  # tokens per llama_decode call while evaluating a prompt (llama.cpp's default)
N_UBATCH = 512

# Called by llama.cpp's scheduler for every graph node: (struct ggml_tensor *, ask) -> bool.
# With ask, whether it wants the node's result; then, once computed, whether to go on.
EvalCallback = Callable[[int, bool], bool]

_backend = {"ready": False}


@dataclass
class Stats:
    """Timings of the last generate call, for -v and benchmarks."""

    load_seconds: float = 0.0
    prompt_tokens: int = 0  # tokens evaluated for the prompt (after KV reuse)
    reused_tokens: int = 0  # prompt tokens found already in the KV cache (disk cache included)
    restored_tokens: int = 0  # of those, how many the prompt cache on disk gave back
    prompt_seconds: float = 0.0
    gen_tokens: int = 0
    gen_seconds: float = 0.0
    first_token_seconds: float = 0.0  # from the start of generate to the first piece
    stop_reason: str = ""  # "eos", "length", "stop", "context"
    drafted: int = 0  # speculative decoding: tokens guessed
    accepted: int = 0  # and kept
    images_encoded: int = 0  # images run through the vision encoder for this prompt
    image_seconds: float = 0.0  # the time that took (part of prompt_seconds)

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def gen_tps(self) -> float:
        return self.gen_tokens / self.gen_seconds if self.gen_seconds else 0.0


class PrefixStore(Protocol):
    """Somewhere to keep the KV state of prompt prefixes between runs (llmrun.promptcache)."""

    def restore(self, model: Model, tokens: list[int]) -> int:
        """Put the longest stored prefix of `tokens` into the context, when it is longer than
        what the context holds already; the tokens restored (0: none)."""
        ...

    def checkpoints(self, tokens: list[int]) -> Sequence[int]:
        """The prefix lengths of `tokens` worth storing, ascending."""
        ...

    def save(self, model: Model) -> None:
        """Store what the model's context holds now (one of the checkpoints)."""
        ...


class _BuftOverride(ctypes.Structure):
    """struct llama_model_tensor_buft_override (llama.h); llama-cpp-python has no binding."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def experts_on_host(layers: int) -> ctypes.Array[_BuftOverride] | None:
    """A NULL-terminated override list: the experts of blocks 0..layers-1 in host memory,
    as llama.cpp's --n-cpu-moe builds it; None when there is nothing to override."""
    if layers <= 0:
        return None
    buft = system.cpu_buffer_type()
    if buft is None:
        raise EngineError("--n-cpu-moe: this llama.cpp build has no CPU buffer type to name")
    overrides = (_BuftOverride * (layers + 1))()
    for i in range(layers):
        overrides[i].pattern = experts_pattern(i).encode()
        overrides[i].buft = buft
    return overrides  # the last entry stays zeroed: the terminator


def extra_buffers_safe() -> bool:
    """Whether llama.cpp may use its extra CPU buffer types (AMX, weight repacking).

    In llama.cpp as vendored by llama-cpp-python 0.3.36, a build compiled with
    AMX (any -march=native build on an AMX CPU, such as our CI machines) crashes
    in the AMX matrix kernel on the first decode. Turning the extra buffer types
    off avoids that kernel; the cost is the repacked-weight speed-up.
    """
    return b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info()


def gpu_devices() -> list[Device]:
    """The GPU devices llama.cpp sees, with their free memory now."""
    return [
        Device(
            d.get("name") or f"GPU{d['index']}", d.get("memory_free", 0), d.get("memory_total", 0)
        )
        for d in system.devices()
        if system.is_gpu(d)
    ]


def plan_for(path: Path, load: Load) -> Plan:
    """The offload plan for loading `path` with `load`; raises when the context cannot fit."""
    shape = ModelShape.from_gguf(read_info(path))
    ctx = load.ctx_size or min(DEFAULT_CTX, shape.n_ctx_train or DEFAULT_CTX)
    ctx = -(-ctx // CONTEXT_STEP) * CONTEXT_STEP  # llama.cpp pads it
    devices = gpu_devices() if llama_cpp.llama_supports_gpu_offload() else []
    if load.mmproj is not None and devices:  # mtmd puts the projector on the first GPU
        devices = reserve(devices, projector_bytes(load.mmproj))
    plan = plan_offload(
        shape,
        devices,
        ctx=ctx,
        request=load.n_gpu_layers,
        cache_type_k=load.cache_type_k,
        cache_type_v=load.cache_type_v,
        n_cpu_moe=load.n_cpu_moe,
    )
    check_host_context(plan, shape, host_available(), load.cache_type_k, load.cache_type_v)
    return plan


def projector_bytes(path: Path) -> int:
    """What a projector takes on the GPU: its weights, and as much again to encode with."""
    try:
        return 2 * path.stat().st_size
    except OSError:
        return 0


class Model:
    """One llama.cpp model and its context.

    `generate`, `prefill` and `logits` use sequence 0 and keep `cached_tokens`
    in step with it; the batch engine uses the context's `parallel` sequences
    itself, through `ctx`, `memory` and `decode_batch`.
    """

    def __init__(
        self, path: Path, load: Load, *, eval_callback: EvalCallback | None = None
    ) -> None:
        """`eval_callback`: see EvalCallback; read the nodes with llmrun.engine.ggml."""
        self.path = path
        self.load_options = load
        self.stats = Stats()
        self._model = None
        self._ctx = None
        self._batch = None
        self._adapters: list[llama_cpp.llama_adapter_lora_p] = []
        self._scales: tuple[float, ...] = ()  # the adapters' scales on the context now
        self._cached: list[int] = []  # tokens whose K/V are in the context, in order
        self.images: Projector | None = None  # with load.mmproj: prompts may hold images
        started = time.perf_counter()
        logs.install(load.verbose)
        if not _backend["ready"]:
            llama_cpp.llama_backend_init()
            _backend["ready"] = True

        if load.rpc:  # before planning: their devices take layers too
            rpc.attach(load.rpc)
        self.plan = plan_for(path, load)
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = self.plan.n_gpu_layers
        mparams.use_extra_bufts = extra_buffers_safe()
        # Kept on self: llama.cpp reads the patterns while loading.
        self._overrides = experts_on_host(self.plan.cpu_moe)
        if self._overrides is not None:
            mparams.tensor_buft_overrides = ctypes.cast(self._overrides, ctypes.c_void_p)
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise EngineError(
                f"llama.cpp could not load {path}: {logs.last_error('unknown reason')}",
                "rerun with -v to see llama.cpp's log",
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_layers = llama_cpp.llama_model_n_layer(self._model)

        n_ctx = load.ctx_size or min(DEFAULT_CTX, self.n_ctx_train or DEFAULT_CTX)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(N_BATCH, n_ctx)
        cparams.n_ubatch = min(N_UBATCH, n_ctx)
        cparams.n_seq_max = load.parallel
        # One KV stream per sequence: attention then sums over a sequence's own
        # cells in order, so a batched answer equals the same prompt run alone
        # (in a shared pool, interleaved cells change the summation order).
        cparams.kv_unified = False
        # Chosen once, at load: later our own workers would count as the busy ones.
        self.n_threads = load.threads or default_threads()
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        cparams.flash_attn_type = FLASH_ATTN_IDS[load.flash_attn]
        cparams.type_k = CACHE_TYPE_IDS[load.cache_type_k]
        cparams.type_v = CACHE_TYPE_IDS[load.cache_type_v]
        if eval_callback is not None:
            # Kept on self: llama.cpp calls it for as long as the context lives.
            self._eval_callback = llama_cpp.ggml_backend_sched_eval_callback(
                lambda node, ask, _user: bool(eval_callback(node, ask))
            )
            cparams.cb_eval = self._eval_callback
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise EngineError(
                f"llama.cpp could not create a context of {n_ctx} tokens: "
                f"{logs.last_error('unknown reason')}",
                "try a smaller -c/--ctx-size or other cache types",
            )
        if load.lora:
            self._apply_adapters(load.lora)
        if load.mmproj is not None:
            self._load_projector(load.mmproj)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = cparams.n_batch
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._piece_buf = ctypes.create_string_buffer(256)
        # Taken around llama_decode where a second context shares this model (serve's
        # embeddings): RPC devices keep one graph each, so two contexts must take turns.
        self.decode_lock = threading.Lock()
        if load.rpc:
            rpc.harden()  # the connections the loaded model holds now exist
        self.stats.load_seconds = time.perf_counter() - started

    def _load_projector(self, path: Path) -> None:
        n_embd_inp = getattr(llama_cpp, "llama_model_n_embd_inp", llama_cpp.llama_model_n_embd)
        try:
            self.images = Projector(
                path,
                self._model,
                n_embd=n_embd_inp(self._model),
                n_threads=self.n_threads,
                use_gpu=self.plan.n_gpu_layers > 0,
                verbose=self.load_options.verbose,
            )
        except Exception:
            self.close()
            raise

    def _apply_adapters(self, adapters: Sequence[Adapter]) -> None:
        """Load each LoRA adapter for this model and set them, scaled, on the context."""
        for adapter in adapters:
            handle = llama_cpp.llama_adapter_lora_init(self._model, str(adapter.path).encode())
            if not handle:
                reason = logs.last_error("unknown reason")
                self.close()
                raise BadModelFile(
                    f"llama.cpp cannot apply --lora {adapter.path} to {self.path.name}: {reason}",
                    "the adapter must be made for this base model",
                )
            self._adapters.append(handle)
        self._scales = ()
        self.use_adapter_scales(tuple(a.scale for a in adapters))
        if self.load_options.verbose:
            sys.stderr.write(describe_adapters(adapters) + "\n")

    @property
    def adapter_scales(self) -> tuple[float, ...]:
        """The scales the adapters were loaded with (--lora FILE:SCALE), one per adapter."""
        return tuple(a.scale for a in self.load_options.lora)

    def use_adapter_scales(self, scales: tuple[float, ...]) -> None:
        """Set the adapters' scales on the context (serve's per-request `lora`)."""
        if scales == self._scales or not self._adapters:
            return
        n = len(self._adapters)
        assert len(scales) == n, f"{len(scales)} scales for {n} adapters"
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*self._adapters)
        values = (ctypes.c_float * n)(*scales)
        llama_cpp.llama_set_adapters_lora(self._ctx, handles, n, values)
        self._scales = scales

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self.images is not None:
            self.images.close()
            self.images = None
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        # After the context, which refers to them; before the model, which lists them.
        for handle in self._adapters:
            llama_cpp.llama_adapter_lora_free(handle)
        self._adapters = []
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # ------------------------------------------------------------ llama.cpp handles

    @property
    def llama_model(self) -> llama_cpp.llama_model_p:
        """The llama.cpp model, for another context on the same weights (embeddings)."""
        return self._model

    @property
    def vocab(self) -> llama_cpp.llama_vocab_p:
        return self._vocab

    @property
    def ctx(self) -> llama_cpp.llama_context_p:
        """The context, for sampling at a batch position."""
        return self._ctx

    @property
    def memory(self) -> llama_cpp.llama_memory_t:
        """The context's KV cache, for callers that manage sequences themselves."""
        return self._memory

    # ------------------------------------------------------------ vocabulary

    def tokenize(
        self,
        text: str,
        *,
        add_special: bool = True,
        parse_special: bool = False,
        images: Sequence[Image] = (),
    ) -> list[int]:
        """Token ids of `text`; with `images` (one marker each in the text, see images.py),
        each image as its run of image tokens."""
        if images:
            if self.images is None:
                raise BadInput(
                    f"{self.path.name} cannot read images: it has no projector",
                    "use a vision model, or give its projector with --mmproj FILE",
                )
            tokens = self.images.tokenize(
                text, images, add_special=add_special, parse_special=parse_special
            )
            return self._single_bos(tokens)
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self._vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:  # the buffer was too small; -n is the size needed
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        return self._single_bos(list(buf[:n]))

    def _single_bos(self, tokens: list[int]) -> list[int]:
        bos = self.bos
        # A chat template that writes the BOS text itself, tokenized with add_special, gives two.
        if len(tokens) > 1 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]
        return tokens

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character)."""
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        """The text of `tokens`; an image (images.py) reads as its marker."""
        if any(t < 0 for t in tokens):
            return "".join(
                MARKER if tokens[a] < 0 else self.detokenize(tokens[a:b], special)
                for a, b in runs(tokens)
            )
        return b"".join(self.piece(t, special) for t in tokens).decode("utf-8", errors="replace")

    @property
    def bos(self) -> int:
        return llama_cpp.llama_vocab_bos(self._vocab)

    @property
    def eos(self) -> int:
        return llama_cpp.llama_vocab_eos(self._vocab)

    @property
    def add_bos(self) -> bool:
        """Whether the vocabulary starts a prompt with BOS."""
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle tokens (prefix, suffix, middle), None when it has none."""
        ids = (
            llama_cpp.llama_vocab_fim_pre(self._vocab),
            llama_cpp.llama_vocab_fim_suf(self._vocab),
            llama_cpp.llama_vocab_fim_mid(self._vocab),
        )
        return None if any(t < 0 for t in ids) else ids

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text (llama.cpp's view of it)."""
        size = 4096 if "chat_template" not in key else 1 << 20
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, size)
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    # ------------------------------------------------------------ evaluation

    def reset(self) -> None:
        """Forget the KV cache."""
        llama_cpp.llama_memory_clear(self._memory, True)
        self._cached = []

    @property
    def cached_tokens(self) -> list[int]:
        return list(self._cached)

    @property
    def n_cached(self) -> int:
        return len(self._cached)

    def decode(self, tokens: list[int], all_logits: bool = False) -> None:
        """Evaluate tokens after the cached ones, logits for the last one (or all).

        An image's run of tokens (images.py) is evaluated by the projector, in one piece.
        """
        if self.images is None:
            self._decode_text(tokens, all_logits)
            return
        for start, end in runs(tokens):
            if tokens[start] >= 0:
                self._decode_text(tokens[start:end], all_logits)
                continue
            before = (self.images.encoded, self.images.encode_seconds)
            run = tokens[start:end]
            self.images.decode_run(self._ctx, run, len(self._cached), 0, self.n_batch)
            self.stats.images_encoded += self.images.encoded - before[0]
            self.stats.image_seconds += self.images.encode_seconds - before[1]
            self._cached.extend(tokens[start:end])

    def _decode_text(self, tokens: list[int], all_logits: bool = False) -> None:
        batch = self._batch
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            n, start = len(chunk), len(self._cached)
            for i, tok in enumerate(chunk):
                put_token(batch, i, tok, start + i, 0, all_logits or i == n - 1)
            decode_batch(self._ctx, batch, n)
            self._cached.extend(chunk)

    def truncate(self, keep: int) -> None:
        """Forget every cached token from position `keep` on."""
        llama_cpp.llama_memory_seq_rm(self._memory, 0, keep, -1)
        del self._cached[keep:]

    def common_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens` the context holds already, leaving at least the last one out."""
        common = 0
        limit = min(len(self._cached), len(tokens) - 1)
        while common < limit and self._cached[common] == tokens[common]:
            common += 1
        return image_start(tokens, common)

    def prefill(self, tokens: list[int], store: PrefixStore | None = None) -> int:
        """Make the context hold exactly `tokens`, evaluating only what is not cached yet.

        Returns how many tokens were reused. At least the last token is always
        evaluated, since sampling needs its logits. With a `store`, evaluation stops
        at each of its checkpoints for it to save the prefix, so that a later run
        restoring one evaluates the rest in the same batches as this one.
        """
        common = self.common_prefix(tokens)
        if common < len(self._cached):
            self.truncate(common)
        for point in store.checkpoints(tokens) if store is not None else ():
            if common < point < len(tokens):
                self.decode(tokens[len(self._cached) : point])
                store.save(self)
        self.decode(tokens[len(self._cached) :])
        return common

    def state(self) -> memoryview:
        """The KV state of sequence 0 (what `cached_tokens` stands for), as bytes."""
        size = llama_cpp.llama_state_seq_get_size(self._ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(self._ctx, buf, size, 0)
        return memoryview(buf).cast("B")[:n]

    def set_state(self, tokens: list[int], data: bytearray) -> bool:
        """Put back a `state()` that held `tokens`; False (and an empty context) if it fails."""
        self.reset()
        if not data:
            return False
        src = (ctypes.c_uint8 * len(data)).from_buffer(data)
        read = llama_cpp.llama_state_seq_set_data(self._ctx, src, len(data), 0)
        held = llama_cpp.llama_memory_seq_pos_max(self._memory, 0) + 1
        if read != len(data) or held != len(tokens):
            self.reset()
            return False
        self._cached = list(tokens)
        return True

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Next-token logits after every position of `tokens`, as a (len, n_vocab) array.

        For evaluation (perplexity, KL divergence): the context is cleared first
        and the tokens must fit in it.
        """
        import numpy as np  # here: a one-shot run never needs it

        self.check_fits(len(tokens))
        self.reset()
        out = np.empty((len(tokens), self.n_vocab), dtype=np.float32)
        batch = self._batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            for i, tok in enumerate(chunk):
                put_token(batch, i, tok, start + i, 0, True)
            decode_batch(self._ctx, batch, len(chunk))
            self._cached.extend(chunk)
            # Outputs are stored contiguously in batch order: one copy per chunk.
            raw = llama_cpp.llama_get_logits(self._ctx)
            out[start : start + len(chunk)] = np.ctypeslib.as_array(
                raw, shape=(len(chunk), self.n_vocab)
            )
        return out

    def check_fits(self, n_prompt: int) -> None:
        if n_prompt >= self.n_ctx:
            raise ContextOverflow(
                f"the prompt is {n_prompt} tokens but the context holds {self.n_ctx}",
                "raise -c/--ctx-size or shorten the prompt",
            )

    def generate(
        self,
        tokens: list[int],
        sampling: Sampling,
        *,
        grammar: str | Grammar | None = None,
        ignore_eos: bool = False,
        drafter: Drafter | None = None,
        n_draft: int = 8,
        special: bool = False,
        store: PrefixStore | None = None,
    ) -> Iterator[str]:
        """Evaluate the prompt tokens, then yield text as it is generated.

        `special`: special tokens are written as their text (a tool call's markers).
        `store`: a prompt cache that gives back a stored prefix of the prompt and keeps
        the prefixes it wants (see PrefixStore).

        With a drafter, guessed tokens are verified in batches (speculative
        decoding); what is yielded is the same as without one. The drafter is
        closed when the run ends.

        Stops at an end-of-generation token, after `sampling.max_tokens` tokens
        (counted exactly, whatever they decode to), at a stop string (not
        yielded), or when the context is full. `self.stats` has the timings.
        """
        if not tokens:
            tokens = [self.bos]
        self.check_fits(len(tokens))
        if tokens[-1] < 0:
            raise BadInput("the prompt ends with an image", "put text after the image")
        stats = self.stats = Stats(load_seconds=self.stats.load_seconds)
        started = time.perf_counter()
        sampler = build_sampler(self, sampling, grammar)
        try:
            if store is not None:
                stats.restored_tokens = store.restore(self, tokens)
            stats.reused_tokens = self.prefill(tokens, store)
            stats.prompt_tokens = len(tokens) - stats.reused_tokens
            stats.prompt_seconds = time.perf_counter() - started
            yield from self._decode_loop(
                sampler, sampling, ignore_eos, started, drafter, n_draft, special
            )
        finally:
            sampler.free()
            self._sync_cache()
            if drafter is not None:
                drafter.close()

    def _sync_cache(self) -> None:
        """Make our token list agree with the KV cache after an interrupted decode.

        Ctrl-C lands between C calls: a decode may have finished without its
        token being recorded, or a failed decode may have left cells behind.
        """
        held = llama_cpp.llama_memory_seq_pos_max(self._memory, 0) + 1
        if held < len(self._cached):
            del self._cached[held:]
        elif held > len(self._cached):
            llama_cpp.llama_memory_seq_rm(self._memory, 0, len(self._cached), -1)

    def _decode_loop(
        self,
        sampler: Sampler,
        sampling: Sampling,
        ignore_eos: bool,
        started: float,
        drafter: Drafter | None = None,
        n_draft: int = 8,
        special: bool = False,
    ) -> Iterator[str]:
        stats = self.stats
        text = Utf8Stream()
        stops = StopFilter(sampling.stop)
        limit = sampling.max_tokens if sampling.max_tokens > 0 else None
        one = (llama_cpp.llama_token * 1)()
        gen_start = time.perf_counter()

        def take(token: int) -> tuple[str, str | None]:
            """Account for one sampled token: its text, and why to stop, if so."""
            if not ignore_eos and self.is_eog(token):
                return "", "eos"
            stats.gen_tokens += 1
            out, stopped = stops.feed(text.feed(self.piece(token, special)))
            if stopped:
                return out, "stop"
            if limit is not None and stats.gen_tokens >= limit:
                return out, "length"
            if len(self._cached) + 1 >= self.n_ctx:
                return out, "context"
            return out, None

        reason: str | None = None
        try:
            token = sampler.sample(self._ctx, -1)
            while True:
                out, reason = take(token)
                if out:
                    if not stats.first_token_seconds:
                        stats.first_token_seconds = time.perf_counter() - started
                    yield out
                if reason:
                    break
                room = min(n_draft, self.n_ctx - len(self._cached) - 2)
                if limit is not None:
                    room = min(room, limit - stats.gen_tokens)
                draft = (
                    drafter.propose([*self._cached, token], room) if drafter and room > 0 else []
                )
                if not draft:  # the plain path: one token, one decode
                    one[0] = token
                    decode_batch(self._ctx, llama_cpp.llama_batch_get_one(one, 1), 1)
                    self._cached.append(token)
                    token = sampler.sample(self._ctx, -1)
                    continue
                token, reason = yield from verify(self, sampler, token, draft, take)
                if reason:
                    break
            if reason != "stop":
                tail = stops.flush(text.flush())
                if tail:
                    yield tail
        finally:
            stats.stop_reason = reason or "length"
            stats.gen_seconds = time.perf_counter() - gen_start


def put_token(
    batch: llama_cpp.llama_batch, i: int, token: int, pos: int, seq: int, logits: bool
) -> int:
    """Write token i of a batch (one sequence); returns i + 1."""
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = logits
    return i + 1


def decode_batch(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch, n: int) -> None:
    """llama_decode the first n entries of `batch`; raises EngineError when llama.cpp fails."""
    batch.n_tokens = n
    rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        raise EngineError(
            f"llama_decode failed with code {rc}: {logs.last_error('no reason given')}"
        )


def load_model(path: Path, load: Load, *, eval_callback: EvalCallback | None = None) -> Model:
    return Model(path, load, eval_callback=eval_callback)
