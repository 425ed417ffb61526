"""Generation t/s of the default threads, -t 1, -t 2 and llama-bench: idle and beside a busy core.

    .venv/bin/python benchmarks/bench_threads.py [--model FILE.gguf] [-n 64] [-r 3] [--rounds 3]

Each cell is `llmrun bench -p 0 -n N` (or llama-bench's tgN) in a fresh process, so that the
default is chosen at load as a user's run chooses it; "busy" runs a `yes > /dev/null` beside
it, at the same priority, for the whole cell. Cells take turns for --rounds rounds and each
keeps its best. Issue 20's goals: with one busy core, the default keeps at least 0.85x of
its idle speed; idle, it costs at most 2% against the best explicit -t.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import Noise, about, align, default_model, save_report
from llama_tools import build_tool


@contextlib.contextmanager
def busy_core(on: bool) -> Iterator[None]:
    """One core kept busy by another process (as a compile or a second job would)."""
    if not on:
        yield
        return
    proc = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def llmrun_tps(model: Path, n: int, reps: int, threads: int | None) -> tuple[float, int]:
    """(tokens/s, threads used) from `llmrun bench --json`."""
    cmd = [sys.executable, "-m", "llmrun", "bench", str(model), "-p", "0", "-n", str(n)]
    cmd += ["-r", str(reps), "--json"] + (["-t", str(threads)] if threads else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    row = next(r for r in json.loads(out) if r["test"].startswith("tg"))
    return float(row["tps"]), int(row["threads"])


def llama_bench_tps(tool: Path, model: Path, n: int, reps: int, threads: int) -> float:
    cmd = [str(tool), "-m", str(model), "-p", "0", "-n", str(n), "-r", str(reps)]
    cmd += ["-t", str(threads), "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("-n", "--n-gen", type=int, default=64)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = args.model or default_model()
    tool = build_tool("llama-bench")
    cores = len(os.sched_getaffinity(0))
    n, reps = args.n_gen, args.repetitions
    cases: dict[str, object] = {
        "llmrun (default)": None,
        "llmrun -t 1": 1,
        f"llmrun -t {cores}": cores,
        "llama-bench -t 1": ("lb", 1),
        f"llama-bench -t {cores}": ("lb", cores),
    }
    best: dict[tuple[str, bool], float] = {}
    chosen: dict[bool, int] = {}
    noise = Noise()
    names = list(cases)
    for round_ in range(args.rounds):
        # Each round starts with another case: the first after a switch runs on a colder machine.
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for busy in (False, True):
            with busy_core(busy):
                for name in order:
                    how = cases[name]
                    if isinstance(how, tuple):
                        tps = llama_bench_tps(tool, model, n, reps, how[1])
                    else:
                        tps, used = llmrun_tps(model, n, reps, how)  # type: ignore[arg-type]
                        if how is None:
                            chosen[busy] = used
                    best[name, busy] = max(best.get((name, busy), 0.0), tps)
    base = best["llmrun (default)", False]
    rows = [["", "idle t/s", "one busy core t/s", "busy / idle default"]]
    for name in cases:
        idle, busy = best[name, False], best[name, True]
        rows.append([name, f"{idle:.1f}", f"{busy:.1f}", f"{busy / base:.2f}"])
    explicit = max(best[f"llmrun -t {t}", False] for t in (1, cores))
    head = about(noise.report(), model)
    head.append(
        f"settings:   tg{n}, {reps} repetitions, best of {args.rounds} rounds; the default "
        f"chose -t {chosen[False]} idle, -t {chosen[True]} beside the busy core"
    )
    foot = [
        "",
        f"idle: the default at {base / explicit:.3f}x the best explicit -t (goal >= 0.98)",
        f"busy: the default at {best['llmrun (default)', True] / base:.2f}x its idle speed "
        "(goal >= 0.85)",
    ]
    report = "\n".join([*head, "", *align(rows), *foot]) + "\n"
    save_report(report, "threads", f"n{n}")


if __name__ == "__main__":
    main()
