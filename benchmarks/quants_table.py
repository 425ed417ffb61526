"""The quants table: size, speed and loss of every quant of one checkpoint, side by side.

    python benchmarks/quants_table.py CHECKPOINT_DIR [-t 2] [-c 512] [--chunks 6]

Converts CHECKPOINT_DIR to F16 with `llmrun quantize`, quantizes that F16 file
to each type, then measures each file's prompt/generation speed (`llmrun
bench`) and its perplexity and KL divergence against the F16 (`llmrun eval`).
Prints a Markdown table and saves it under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
from pathlib import Path

from llmrun.bench import bench
from llmrun.evaluate import evaluate
from llmrun.quantize import quantize

TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-c", "--ctx-size", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=6, help="eval chunks (llama-perplexity)")
    parser.add_argument("-p", type=int, default=256)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("-r", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="llmrun-quants-") as tmp:
        work = Path(tmp)
        f16 = quantize(str(args.checkpoint), type="F16", output=work / "F16.gguf").path
        files = {"F16": f16}
        for qtype in TYPES[1:]:
            files[qtype] = quantize(str(f16), type=qtype, output=work / f"{qtype}.gguf").path
        rows = []
        for qtype, path in files.items():
            speed = {
                r.test: r.tps
                for r in bench(
                    [str(path)],
                    n_prompt=args.p,
                    n_gen=args.n,
                    repetitions=args.r,
                    threads=args.threads,
                )
            }
            loss = evaluate(
                path,
                ref=None if qtype == "F16" else f16,
                ctx_size=args.ctx_size,
                chunks=args.chunks,
                threads=args.threads,
            )
            rows.append((qtype, path.stat().st_size, speed, loss))

    f16_ppl = rows[0][3].perplexity
    lines = [
        f"| type | size MiB | pp{args.p} t/s | tg{args.n} t/s "
        "| PPL | PPL ratio | KL vs F16 | top-1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for qtype, size, speed, loss in rows:
        kl = "-" if loss.ref is None else f"{loss.kl_mean:.5f}"
        top1 = "-" if loss.ref is None else f"{loss.top1_agreement:.1%}"
        lines.append(
            f"| {qtype} | {size / 2**20:.1f} | {speed.get(f'pp{args.p}', 0):.1f} | "
            f"{speed.get(f'tg{args.n}', 0):.1f} | {loss.perplexity:.3f} | "
            f"{loss.perplexity / f16_ppl:.4f} | {kl} | {top1} |"
        )
    table = "\n".join(lines)
    header = (
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}\n"
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}\n"
        f"checkpoint: {args.checkpoint.name}; threads {args.threads}; eval ctx {args.ctx_size}, "
        f"{args.chunks} chunks of the shipped text\n"
    )
    print(header + "\n" + table)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M")
    (RESULTS / f"quants-{stamp}-{args.checkpoint.name}.md").write_text(header + "\n" + table + "\n")


if __name__ == "__main__":
    main()
