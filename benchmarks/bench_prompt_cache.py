"""The prompt cache: `llmrun run` with a long shared prefix, first invocation against later ones.

    .venv/bin/python benchmarks/bench_prompt_cache.py [--model FILE.gguf] [--prefix 2000] [-r 4]

Each invocation is a fresh process (as in a shell loop) with the same --system prompt of about
--prefix tokens and a different question, in a temporary LLMRUN_HOME: the first fills the cache,
the later ones restore it. Two measures per invocation: whole-process wall time, and time to
first token (from the start of generation, after the model loads: what the cache can change),
read from a child that reports the engine's stats. Also `--no-cache` runs, the same prompts
without the cache. Issue 20's goals: later invocations' first token at least 10x sooner than
the first's, their whole process at least 3x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import Noise, about, align, default_model, save_report

RULE = "Rule {i}: read the text below closely and answer in one sentence, without a list."
CHILD = """
import json, sys
from llmrun import generation
args = json.loads(sys.argv[1])
answer = generation.run(args.pop("model"), args.pop("prompt"), **args)
for _ in answer:
    pass
s = answer.stats
print(json.dumps({"ttft": s.first_token_seconds, "evaluated": s.prompt_tokens,
                  "restored": s.restored_tokens}))
"""


def system_prompt(tokens: int) -> str:
    # A rule is about 20 tokens in SmolLM2's vocabulary.
    return " ".join(RULE.format(i=i) for i in range(tokens // 20))


def whole(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - started


def first_token(kwargs: dict[str, object], env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--prefix", type=int, default=2000, help="tokens in the shared prefix")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--runs", type=int, default=4, help="later invocations")
    args = parser.parse_args()
    model = args.model or default_model()
    system = system_prompt(args.prefix)
    noise = Noise()
    rows = [["invocation", "cache", "prompt evaluated", "restored", "first token s", "whole s"]]
    results: dict[str, list[tuple[float, float]]] = {"first": [], "later": [], "off": []}
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "LLMRUN_HOME": home}
        for i in range(args.runs + 1):
            for cache in ("on", "off"):
                if cache == "off" and i == 0:
                    continue
                question = f"Question {i}: what does rule {i} ask for?"
                extra = ["--no-cache"] if cache == "off" else []
                kwargs = {
                    "model": str(model),
                    "prompt": question,
                    "system": system,
                    "temp": 0.0,
                    "max_tokens": 1,
                    "threads": args.threads,
                    "no_cache": cache == "off",
                }
                if cache == "on":  # the stats child runs second: it must not fill the cache
                    cmd = [sys.executable, "-m", "llmrun", "run", str(model), "--system", system]
                    wall = whole(
                        [*cmd, question, "-n", "1", "--temp", "0", "-t", str(args.threads), *extra],
                        env,
                    )
                    stats = first_token(kwargs, env)
                else:
                    stats = first_token(kwargs, env)
                    cmd = [sys.executable, "-m", "llmrun", "run", str(model), "--system", system]
                    wall = whole(
                        [*cmd, question, "-n", "1", "--temp", "0", "-t", str(args.threads), *extra],
                        env,
                    )
                kind = "off" if cache == "off" else ("first" if i == 0 else "later")
                results[kind].append((stats["ttft"], wall))
                rows.append(
                    [
                        str(i + 1),
                        cache,
                        str(stats["evaluated"]),
                        str(stats["restored"]),
                        f"{stats['ttft']:.3f}",
                        f"{wall:.3f}",
                    ]
                )

    def mean(kind: str, col: int) -> float:
        values = [r[col] for r in results[kind]]
        return sum(values) / len(values)

    # The first invocation's whole-process time is the one without the cache filled yet; its
    # stats child ran after it, so that child already hit: use a --no-cache run for its TTFT.
    cold_ttft, cold_wall = mean("off", 0), results["first"][0][1]
    summary = [
        ["", "first token s", "whole s"],
        ["first (cold)", f"{cold_ttft:.3f}", f"{cold_wall:.3f}"],
        ["later (hit), mean", f"{mean('later', 0):.3f}", f"{mean('later', 1):.3f}"],
        [
            "speed-up",
            f"{cold_ttft / mean('later', 0):.1f}x",
            f"{cold_wall / mean('later', 1):.1f}x",
        ],
    ]
    head = about(noise.report(), model)
    head.append(
        f"settings:   -t {args.threads}, prefix ~{args.prefix} tokens, -n 1, "
        f"{args.runs} later invocations"
    )
    report = "\n".join([*head, "", *align(rows), "", *align(summary)]) + "\n"
    save_report(report, "prompt-cache", f"p{args.prefix}")


if __name__ == "__main__":
    main()
