"""Start-up: `llmrun run -n 1` against llama.cpp's `llama-completion -n 1`, whole process.

    .venv/bin/python benchmarks/bench_startup.py [--model FILE.gguf] [-t 2] [-r 5]

Both load the same GGUF with the same threads, read a short raw prompt and write one token;
each cell is the best of -r runs (the least disturbed), runs of the two taking turns. Also
`import llmrun.cli` alone, and `llmrun --help`. llama-completion is built from the
llama-cpp-python sdist by llama_tools.py, as the other benchmarks' tools are. Issue 20's goal:
`run -n 1` within 1.3x of llama-completion.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import Noise, about, align, default_model, save_report
from llama_tools import build_tool

PROMPT = "The capital of France is"


# As an installed llmrun runs: from compiled bytecode. With PYTHONDONTWRITEBYTECODE set (as
# in some sandboxes and CI images) an editable checkout would compile every module each run.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def best(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=ENV
        )
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--runs", type=int, default=5)
    args = parser.parse_args()
    model = args.model or default_model()
    completion = build_tool("llama-completion")
    py = sys.executable
    t = str(args.threads)
    cases = {
        "llama-completion -n 1": [
            str(completion),
            "-m",
            str(model),
            "-p",
            PROMPT,
            "-n",
            "1",
            "-t",
            t,
            "-no-cnv",
            "--no-warmup",
            "--temp",
            "0",
        ],
        "llmrun run -n 1": [
            py,
            "-m",
            "llmrun",
            "run",
            str(model),
            PROMPT,
            "--raw",
            "-n",
            "1",
            "-t",
            t,
            "--temp",
            "0",
        ],
        "import llmrun.cli": [py, "-c", "import llmrun.cli"],
        "llmrun --version": [py, "-m", "llmrun", "--version"],
        "llmrun --help": [py, "-m", "llmrun", "--help"],
    }
    noise = Noise()
    results = {name: float("inf") for name in cases}
    for cmd in cases.values():  # untimed: writes the bytecode, warms the page cache
        best(cmd, 1)
    for _ in range(args.runs):  # the cases take turns, each run keeps its best
        for name, cmd in cases.items():
            results[name] = min(results[name], best(cmd, 1))
    base = results["llama-completion -n 1"]
    rows = [["", "best s", "x llama-completion"]]
    rows += [[name, f"{s:.3f}", f"{s / base:.2f}"] for name, s in results.items()]
    head = about(noise.report(), model)
    head.append(f"settings:   -t {args.threads}, best of {args.runs}, prompt {PROMPT!r}, raw")
    report = "\n".join([*head, "", *align(rows)]) + "\n"
    save_report(report, "startup", f"t{args.threads}")


if __name__ == "__main__":
    main()
