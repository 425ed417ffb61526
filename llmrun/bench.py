"""Prompt-processing and generation speed through llmrun's own engine, llama-bench style.

`bench()` loads each model once and runs llama-bench's two tests on it: ppP (a P-token prompt
evaluated from an empty KV cache) and tgN (N tokens generated one at a time from a lone BOS),
each timed over several repetitions after a warm-up. With `vs_llama_bench`, llama.cpp's own
llama-bench runs on the same file with the same settings, and each row carries its t/s too.
`render()` prints the rows as a table, JSON, CSV or Markdown.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import llama_cpp

from llmrun.engine import Model, load_model
from llmrun.engine.model import extra_buffers_safe
from llmrun.engine.system import devices, is_gpu
from llmrun.errors import BadOption, EngineError, LlmrunError
from llmrun.generation import Prepared, prepare
from llmrun.ggufinfo import format_count, read_info
from llmrun.options import Sampling

# Any ordinary text: only its token count matters, the pp test cuts it to exactly P tokens.
FILLER = (
    "The quick brown fox jumps over the lazy dog while the committee reviews its findings on "
    "river pollution, bread prices, and the history of clocks in small mountain towns. "
)
FORMATS = ("table", "json", "csv", "md")
LLAMA_BENCH = "llama-bench"
BUILD_HINT = "build it with: python benchmarks/llama_tools.py llama-bench (in a clone of llmrun)"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Speed:
    """Tokens per second over the repetitions: mean and sample standard deviation."""

    mean: float
    sd: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Speed:
        sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
        return cls(statistics.fmean(samples), sd)


@dataclass(frozen=True)
class Row:
    """One test on one model: what `--json` prints, key for key (plus `ratio`)."""

    model: str  # the name MODEL resolved to
    quant: str | None
    path: str
    size: int  # bytes
    params: int
    backend: str  # where the layers ran: CPU, CUDA, Metal, ...
    n_gpu_layers: int
    threads: int
    test: str  # "pp512" or "tg128", as llama-bench names them
    n_prompt: int  # 0 for a tg test
    n_gen: int  # 0 for a pp test
    repetitions: int
    tps: float  # mean tokens/s
    sd: float  # its sample standard deviation over the repetitions
    llama_bench_tps: float | None = None  # None unless vs_llama_bench
    llama_bench_sd: float | None = None

    @property
    def ratio(self) -> float | None:
        """llmrun / llama-bench: 1.0 is parity, below 1 llmrun is slower."""
        return self.tps / self.llama_bench_tps if self.llama_bench_tps else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


KEYS = (*Row.__dataclass_fields__, "ratio")


# ---------------------------------------------------------------- measuring


def bench(
    models: Sequence[str | Path | None],
    *,
    n_prompt: int = 512,
    n_gen: int = 128,
    repetitions: int = 5,
    threads: int | None = None,
    n_gpu_layers: str | int = "auto",
    flash_attn: str = "auto",
    rpc: str | None = None,
    lora: Sequence[str] | None = None,
    vs_llama_bench: bool = False,
    progress: Progress | None = None,
) -> list[Row]:
    """pp and tg tokens/s of each model (the default model when `models` is empty).

    Every model and option is checked, and llama-bench found, before anything is measured.
    """
    if repetitions < 1:
        raise BadOption(f"-r/--repetitions must be >= 1, got {repetitions}")
    if n_prompt < 0 or n_gen < 0 or n_prompt + n_gen == 0:
        raise BadOption(
            f"-p/--n-prompt and -n/--n-gen must be >= 0 and not both 0, got {n_prompt}, {n_gen}"
        )
    if vs_llama_bench and rpc:
        raise BadOption("--vs-llama-bench does not go with --rpc", "measure the two apart")
    if vs_llama_bench and lora:  # llama-bench takes no adapters
        raise BadOption("--vs-llama-bench does not go with --lora", "measure the two apart")
    tool = find_llama_bench() if vs_llama_bench else None
    if vs_llama_bench and tool is None:
        raise LlmrunError(f"{LLAMA_BENCH} not found on PATH or in {tool_dir()}", BUILD_HINT)
    # Room for either test; llama.cpp attends over the used KV cells (padded to 256), not the
    # whole context, so its size makes no difference to speed.
    prepared = [
        prepare(
            None if m is None else str(m),
            n_gpu_layers=n_gpu_layers,
            ctx_size=n_prompt + n_gen + 1,
            threads=threads,
            flash_attn=flash_attn,
            rpc=rpc,
            lora=lora,
            vision=False,
            pull=False,  # a benchmark never starts a download
        )
        for m in models or [None]
    ]
    say = progress or (lambda _msg: None)
    rows: list[Row] = []
    for p in prepared:
        with load_model(p.resolved.path, p.load) as model:
            speeds = measure(model, n_prompt, n_gen, repetitions, say, p.resolved.name)
            base = _row_base(p, model, repetitions)
        theirs: dict[str, Speed] = {}
        if tool is not None:
            say(f"{p.resolved.name}: running {LLAMA_BENCH}")
            theirs = run_llama_bench(
                tool, p.resolved.path, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                threads=base.threads, n_gpu_layers=base.n_gpu_layers, flash_attn=flash_attn,
            )  # fmt: skip
        for test, speed in speeds.items():
            ref = theirs.get(test)
            rows.append(
                replace(
                    base,
                    test=test,
                    n_prompt=n_prompt if test.startswith("pp") else 0,
                    n_gen=n_gen if test.startswith("tg") else 0,
                    tps=speed.mean,
                    sd=speed.sd,
                    llama_bench_tps=ref.mean if ref else None,
                    llama_bench_sd=ref.sd if ref else None,
                )
            )
    return rows


def measure(
    model: Model,
    n_prompt: int,
    n_gen: int,
    repetitions: int,
    progress: Progress | None = None,
    name: str = "",
) -> dict[str, Speed]:
    """llama-bench's pp and tg tests through Model.generate; {"pp512": Speed, "tg128": ...}.

    pp: a prompt of exactly n_prompt tokens, evaluated by generate(max_tokens=1).
    tg: generate([BOS], max_tokens=n_gen, ignore_eos=True): n_gen single-token decodes at
    positions 0..n_gen-1 (the BOS, then n_gen-1 sampled tokens; the last sampled one is not
    evaluated), exactly what llama-bench's tg decodes. t/s = tokens / wall time of the call.
    """
    say = progress or (lambda _msg: None)
    body = model.tokenize(FILLER, add_special=False)
    prompt = model.tokenize(FILLER, add_special=True)
    while len(prompt) < n_prompt:
        prompt += body
    prompt = prompt[:n_prompt]
    start = [model.bos if model.bos >= 0 else body[0]]  # some vocabularies have no BOS

    def timed(tokens: list[int], max_tokens: int) -> float:
        model.reset()  # outside the clock, as llama-bench clears its KV cache untimed
        sampling = Sampling(temp=0.0, max_tokens=max_tokens)
        started = time.perf_counter()
        for _ in model.generate(tokens, sampling, ignore_eos=True):
            pass
        return time.perf_counter() - started

    tests = {f"pp{n_prompt}": (prompt, 1, n_prompt), f"tg{n_gen}": (start, n_gen, n_gen)}
    speeds: dict[str, Speed] = {}
    for test, (tokens, max_tokens, count) in tests.items():
        if count == 0:  # -p 0 or -n 0: that test is skipped, as in llama-bench
            continue
        say(f"{name} {test}: warm-up")
        timed(tokens, 1)  # llama-bench's warm-up: one prompt pass, or one generated token
        samples = []
        for rep in range(repetitions):
            say(f"{name} {test}: {rep + 1}/{repetitions}")
            samples.append(count / timed(tokens, max_tokens))
        speeds[test] = Speed.of(samples)
    return speeds


def _row_base(p: Prepared, model: Model, repetitions: int) -> Row:
    info = read_info(p.resolved.path)
    ngl = model.plan.n_gpu_layers
    # The backends of the devices layers can go to: CUDA, Metal, RPC (workers), ...
    gpu = sorted({d.get("backend") or "?" for d in devices() if is_gpu(d)})
    return Row(
        model=p.resolved.name,
        quant=p.resolved.quant or info.quant,
        path=str(p.resolved.path),
        size=info.size,
        params=info.parameters,
        backend=",".join(gpu) if ngl and gpu else "CPU",
        n_gpu_layers=ngl,
        threads=model.n_threads,  # what the engine chose
        test="",
        n_prompt=0,
        n_gen=0,
        repetitions=repetitions,
        tps=0.0,
        sd=0.0,
    )


# ---------------------------------------------------------------- llama-bench


def tool_dir(version: str | None = None) -> Path:
    """Where benchmarks/llama_tools.py puts the llama.cpp tools it builds (keep the two in step)."""
    root = Path(os.environ.get("LLMRUN_BENCH_CACHE") or Path.home() / ".cache" / "llmrun-bench")
    return root / f"llama.cpp-{version or llama_cpp.__version__}" / "build" / "bin"


def find_llama_bench() -> Path | None:
    """llama-bench built from this llama-cpp-python's own llama.cpp sources, else one on PATH.

    The first runs exactly the llama.cpp code llmrun runs, so it is preferred.
    """
    built = tool_dir() / LLAMA_BENCH
    if built.is_file() and os.access(built, os.X_OK):
        return built
    found = shutil.which(LLAMA_BENCH)
    return Path(found) if found else None


def run_llama_bench(
    tool: Path,
    model: Path,
    *,
    n_prompt: int,
    n_gen: int,
    repetitions: int,
    threads: int,
    n_gpu_layers: int,
    flash_attn: str = "auto",
) -> dict[str, Speed]:
    """llama-bench's t/s on `model`, {"pp512": Speed, "tg128": ...}, with llmrun's settings."""
    flags = {
        "-m": model, "-p": n_prompt, "-n": n_gen, "-r": repetitions, "-t": threads,
        "-ngl": n_gpu_layers, "-fa": flash_attn, "-o": "json",
        # llmrun turns llama.cpp's extra CPU buffer types off where they crash (AMX); llama-bench
        # must do the same, or the two would run different matmul kernels (and it would crash).
        "--repack": int(extra_buffers_safe()),
    }  # fmt: skip
    cmd = [str(tool)] + [str(x) for pair in flags.items() for x in pair]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise EngineError(f"{LLAMA_BENCH} failed on {model.name} ({how}): {last}")
    try:
        records = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise EngineError(
            f"{LLAMA_BENCH} printed no JSON; run it by hand: {' '.join(cmd)}"
        ) from None
    speeds = {}
    for r in records:  # one record per test; a pp test has n_gen 0
        test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        speeds[test] = Speed(r["avg_ts"], r["stddev_ts"])
    return speeds


# ---------------------------------------------------------------- output


def columns(rows: Sequence[Row]) -> list[tuple[str, Callable[[Row], str]]]:
    """The human columns, llama-bench's plus ours; the llama-bench ones only when it ran."""
    cols: list[tuple[str, Callable[[Row], str]]] = [
        ("model", lambda r: r.model),
        ("quant", lambda r: r.quant or "-"),
        ("size", lambda r: _mib(r.size)),
        ("params", lambda r: format_count(r.params)),
        ("backend", lambda r: r.backend),
        ("ngl", lambda r: str(r.n_gpu_layers)),
        ("threads", lambda r: str(r.threads)),
        ("test", lambda r: r.test),
        ("t/s", lambda r: f"{r.tps:.2f} ± {r.sd:.2f}"),
    ]
    if any(r.llama_bench_tps is not None for r in rows):
        cols += [
            ("llama-bench t/s", lambda r: _speed(r.llama_bench_tps, r.llama_bench_sd)),
            ("ratio", lambda r: "-" if r.ratio is None else f"{r.ratio:.3f}"),
        ]
    return cols


def cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    cols = columns(rows)
    return [name for name, _ in cols], [[get(r) for _, get in cols] for r in rows]


def render(rows: Sequence[Row], fmt: str = "table") -> str:
    """The rows as text: an aligned table, JSON, CSV (header first) or a Markdown table."""
    if fmt not in FORMATS:
        raise BadOption(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return json.dumps([r.to_dict() for r in rows], indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=KEYS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(r.to_dict() for r in rows)
        return out.getvalue()
    headers, body = cells(rows)
    if fmt == "md":
        # Text columns left, numbers right, as llama-bench aligns them.
        align = [":---" if h in ("model", "quant", "backend") else "---:" for h in headers]
        lines = [headers, align, *body]
        return "".join("| " + " | ".join(line) + " |\n" for line in lines)
    widths = [max(len(x) for x in col) for col in zip(headers, *body, strict=True)]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in [headers, *body]
    )


def _mib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _speed(mean: float | None, sd: float | None) -> str:
    return "-" if mean is None else f"{mean:.2f} ± {sd or 0.0:.2f}"
