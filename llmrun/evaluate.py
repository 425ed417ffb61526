"""How much a quant loses: perplexity over a text, and KL divergence against a reference model.

The method is llama-perplexity's. The text is tokenized once and cut into chunks of `ctx_size`
tokens; each chunk is evaluated from an empty context (its first token replaced by BOS when the
model adds one), and only the second half of each chunk is scored, so every scored token has
at least ctx_size/2 tokens of context. With a reference model (the F16 or BF16 file), both
models evaluate the same chunk in lockstep and their next-token distributions are compared
position by position: KL(reference || model), and whether their most likely tokens agree.
Several models are scored against one reference in the same lockstep, the reference's logits
computed once per chunk. Nothing is written to disk; only one chunk's logits per model are
held at a time.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from llmrun.engine import Model, load_model
from llmrun.errors import BadInput, BadOption
from llmrun.generation import Prepared, prepare

DEFAULT_TEXT = "alice.txt"  # llmrun/data/: Alice's Adventures in Wonderland, chapters I-II
MIN_CTX = 16
KL_PERCENTILES = (50, 99)

Progress = Callable[[int, int], None]  # (chunks done, chunks in all)


@dataclass(frozen=True)
class EvalResult:
    """Perplexity of `model` over the text, and with a reference, how far it is from it.

    KL divergences are in nats per token, KL(reference || model) as llama-perplexity reports
    them; `*_se` are standard errors of the means (llama-perplexity's ±).
    """

    model: str
    model_path: str
    text: str  # the file, or "alice.txt (shipped)"
    ctx_size: int
    chunks: int
    text_tokens: int
    scored_tokens: int
    perplexity: float
    perplexity_se: float
    ref: str | None = None
    ref_path: str | None = None
    ref_perplexity: float | None = None
    ref_perplexity_se: float | None = None
    ppl_ratio: float | None = None  # perplexity / ref_perplexity: 1.0 is no loss
    kl_mean: float | None = None
    kl_mean_se: float | None = None
    kl_median: float | None = None
    kl_p99: float | None = None
    kl_max: float | None = None
    top1_agreement: float | None = None  # share of positions where both pick the same token
    seconds: float = 0.0  # loading and evaluating it and its reference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line, for `quantize --eval` and logs."""
        line = f"PPL {self.perplexity:.4f} ± {self.perplexity_se:.4f}"
        if self.ref is not None:
            line += (
                f" (x{self.ppl_ratio:.4f} vs reference), KL {self.kl_mean:.6f}, "
                f"KL p99 {self.kl_p99:.6f}, top-1 {self.top1_agreement:.2%}"
            )
        return line


def evaluate(
    model: str | Path | None,
    *,
    ref: str | Path | None = None,
    text: str | Path | None = None,
    ctx_size: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    n_gpu_layers: str | int = "auto",
    progress: Progress | None = None,
) -> EvalResult:
    """Perplexity of `model` on `text` (default: the shipped novel); with `ref`, KL and top-1.

    `chunks` caps the number of chunks scored (llama-perplexity's --chunks). Both models are
    loaded at once, so their memory adds up.
    """
    return evaluate_models(
        [model],
        ref=ref,
        text=text,
        ctx_size=ctx_size,
        chunks=chunks,
        threads=threads,
        n_gpu_layers=n_gpu_layers,
        progress=progress,
    )[0]


def evaluate_models(
    models: Sequence[str | Path | None],
    *,
    ref: str | Path | None = None,
    text: str | Path | None = None,
    ctx_size: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    n_gpu_layers: str | int = "auto",
    progress: Progress | None = None,
) -> list[EvalResult]:
    """Each of `models` scored as `evaluate` scores it, in the order given.

    They are evaluated chunk by chunk in lockstep, so the reference's logits for a chunk are
    computed once for all of them: comparing several quants of a model costs one reference
    pass (what llama-perplexity's saved --kl-divergence-base file is for, without the file).
    All models are loaded at once, so their memory adds up.
    """
    if not models:
        raise BadOption("give at least one model to evaluate")
    if ctx_size < MIN_CTX:
        raise BadOption(f"-c/--ctx-size must be >= {MIN_CTX} for an eval, got {ctx_size}")
    if chunks is not None and chunks < 1:
        raise BadOption(f"--chunks must be >= 1, got {chunks}")
    body, source = read_text(text)

    def prepared(spec: str | Path | None) -> Prepared:
        # One more cell than a chunk: the engine keeps one free for a next token.
        return prepare(
            None if spec is None else str(spec),
            ctx_size=ctx_size + 1,
            threads=threads,
            n_gpu_layers=n_gpu_layers,
            vision=False,
            pull=False,
        )

    targets = [prepared(spec) for spec in models]
    reference = prepared(ref) if ref is not None else None
    with contextlib.ExitStack() as stack:
        r, shared = None, _Clock()
        if reference is not None:
            with shared:
                r = stack.enter_context(load_model(reference.resolved.path, reference.load))
        runs: list[_Run] = []
        for target in targets:
            clock = _Clock()
            with clock:
                m = stack.enter_context(load_model(target.resolved.path, target.load))
                tokens = m.tokenize(body, add_special=True)
                if r is not None:
                    _check_same_vocab(m, r, body, tokens)
                remedy = "use a longer --text or a smaller -c/--ctx-size"
                pieces = document_chunks(m, tokens, ctx_size, chunks, source, remedy)
            runs.append(_Run(target, m, len(tokens), pieces, Scores(), clock))
        # With a reference every model has the reference's tokens, so the same chunks.
        n_chunks = max(len(run.pieces) for run in runs)
        for i in range(n_chunks):
            ref_logits = None
            if r is not None:
                with shared:
                    ref_logits = r.logits(runs[0].pieces[i])
            for run in runs:
                if i < len(run.pieces):
                    with run.clock:
                        run.scores.add(run.pieces[i], run.model.logits(run.pieces[i]), ref_logits)
            if progress:
                progress(i + 1, n_chunks)
    return [_result(run, source, ctx_size, reference, shared.seconds) for run in runs]


class _Clock:
    """Seconds spent inside `with clock:` blocks, added up."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start


@dataclass
class _Run:
    """One model's side of an evaluation."""

    target: Prepared
    model: Model
    text_tokens: int
    pieces: list[list[int]]
    scores: Scores
    clock: _Clock


def _result(
    run: _Run, source: str, ctx_size: int, reference: Prepared | None, ref_seconds: float
) -> EvalResult:
    """`run`'s numbers; its time includes the reference's, as if it had been evaluated alone."""
    scores = run.scores
    ppl, ppl_se = scores.perplexity(scores.nll)
    result: dict[str, Any] = {
        "model": _label(run.target),
        "model_path": str(run.target.resolved.path),
        "text": source,
        "ctx_size": ctx_size,
        "chunks": len(run.pieces),
        "text_tokens": run.text_tokens,
        "scored_tokens": scores.count,
        "perplexity": ppl,
        "perplexity_se": ppl_se,
        "seconds": run.clock.seconds + ref_seconds,
    }
    if reference is not None:
        ref_ppl, ref_se = scores.perplexity(scores.ref_nll)
        result |= {
            "ref": _label(reference),
            "ref_path": str(reference.resolved.path),
            "ref_perplexity": ref_ppl,
            "ref_perplexity_se": ref_se,
            "ppl_ratio": ppl / ref_ppl,
            **scores.kl_stats(),
        }
    return EvalResult(**result)


def document_chunks(
    m: Model, tokens: list[int], ctx_size: int, chunks: int | None, source: str, remedy: str
) -> list[list[int]]:
    """`tokens` cut into at most `chunks` chunks of `ctx_size`, as llama-perplexity and
    llama-imatrix cut a text: each starts with BOS, like a document, when the model adds one.
    BadInput, naming `source` and `remedy`, when not even one chunk fits."""
    n_chunks = len(tokens) // ctx_size
    if n_chunks == 0:
        raise BadInput(
            f"{source} is {len(tokens)} tokens, shorter than one chunk of {ctx_size}", remedy
        )
    n_chunks = min(n_chunks, chunks or n_chunks)
    pieces = [tokens[i * ctx_size : (i + 1) * ctx_size] for i in range(n_chunks)]
    if m.add_bos:
        for chunk in pieces:
            chunk[0] = m.bos
    return pieces


def read_text(text: str | Path | None) -> tuple[str, str]:
    """The text to score and how to name it: a file, or the novel shipped with llmrun."""
    if text is None:
        shipped = resources.files("llmrun") / "data" / DEFAULT_TEXT
        return shipped.read_text(encoding="utf-8"), f"{DEFAULT_TEXT} (shipped)"
    path = Path(text)
    try:
        body = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read --text file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"--text file {path} is not UTF-8 text") from None
    if not body.strip():
        raise BadInput(f"--text file {path} is empty")
    return body, str(path)


def _label(p: Prepared) -> str:
    """`name:QUANT` for a stored model (a model and its reference often share the name)."""
    r = p.resolved
    return f"{r.name}:{r.quant}" if r.quant and r.origin != "file" else r.name


def _check_same_vocab(m: Model, r: Model, body: str, tokens: list[int]) -> None:
    """Distributions can only be compared token for token over one vocabulary."""
    if r.n_vocab != m.n_vocab or r.tokenize(body, add_special=True) != tokens:
        raise BadInput(
            f"{r.path.name} and {m.path.name} do not share a vocabulary "
            f"({r.n_vocab} and {m.n_vocab} tokens, or the text tokenizes differently)",
            "the reference must be the same model at a higher precision (F16, BF16, Q8_0)",
        )


# ---------------------------------------------------------------- the arithmetic


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities, stable for any logit range (the row sum in float64)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float64))
    return shifted - lse.astype(shifted.dtype)


class Scores:
    """Per-token numbers gathered chunk by chunk: NLL of each model, KL, top-1 agreement."""

    def __init__(self) -> None:
        self._nll: list[np.ndarray] = []
        self._ref_nll: list[np.ndarray] = []
        self._kl: list[np.ndarray] = []
        self._same: list[np.ndarray] = []

    def add(self, chunk: list[int], logits: np.ndarray, ref_logits: np.ndarray | None) -> None:
        """Score the second half of one chunk: the logits at position i predict token i+1."""
        first = len(chunk) // 2
        targets = np.asarray(chunk[first + 1 :])
        rows = np.arange(len(targets))
        logp = log_softmax(logits[first:-1])
        self._nll.append(-logp[rows, targets].astype(np.float64))
        if ref_logits is None:
            return
        ref_logp = log_softmax(ref_logits[first:-1])
        self._ref_nll.append(-ref_logp[rows, targets].astype(np.float64))
        kl = (np.exp(ref_logp) * (ref_logp - logp)).sum(axis=-1, dtype=np.float64)
        self._kl.append(kl)
        self._same.append(ref_logp.argmax(axis=-1) == logp.argmax(axis=-1))

    @property
    def count(self) -> int:
        return sum(len(x) for x in self._nll)

    @property
    def nll(self) -> np.ndarray:
        return np.concatenate(self._nll)

    @property
    def ref_nll(self) -> np.ndarray:
        return np.concatenate(self._ref_nll)

    @staticmethod
    def perplexity(nll: np.ndarray) -> tuple[float, float]:
        """exp(mean NLL) and its standard error (the delta method, as llama-perplexity)."""
        ppl = math.exp(float(nll.mean()))
        return ppl, ppl * _sem(nll)

    def kl_stats(self) -> dict[str, float]:
        kl = np.concatenate(self._kl)
        median, p99 = np.percentile(kl, KL_PERCENTILES)
        return {
            "kl_mean": float(kl.mean()),
            "kl_mean_se": _sem(kl),
            "kl_median": float(median),
            "kl_p99": float(p99),
            "kl_max": float(kl.max()),
            "top1_agreement": float(np.concatenate(self._same).mean()),
        }


def _sem(x: np.ndarray) -> float:
    """Standard error of the mean; 0 for a single value."""
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0
