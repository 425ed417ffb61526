"""`llmrun info`: versions, backend, devices and free memory, paths."""

from __future__ import annotations

from dataclasses import asdict

from llmrun.cli.common import app, print_json
from llmrun.cli.flags import JsonOpt, RpcOpt
from llmrun.cli.output import human_size, print_fields, print_table


@app.command("info")
def info_cmd(json: JsonOpt = False, rpc: RpcOpt = None) -> None:
    """Show llama.cpp's version, backends, devices and llmrun's paths.

    With --rpc, each worker's devices are listed too (RPC0, RPC1, ...), as -ngl will see them.

    Examples: llmrun info
    llmrun info --rpc 192.168.1.20:50052 --json
    """
    from llmrun.engine import rpc as rpc_backend  # loads llama.cpp: only when asked
    from llmrun.engine.system import system_info
    from llmrun.options import parse_rpc

    workers = rpc_backend.attach(parse_rpc(rpc))
    info = system_info()
    info["rpc"] = rpc_backend.available()
    info["rpc_workers"] = [asdict(w) for w in workers]
    if json:
        print_json(info)
        return
    cpu = info["features"].get("CPU", {})
    flags = " ".join(k for k, v in cpu.items() if v == "1")
    ggml = info["ggml_version"] or "?"
    if info["ggml_commit"]:
        ggml += f" ({info['ggml_commit']})"
    print_fields(
        [
            ("llmrun", info["llmrun"]),
            ("llama-cpp-python", info["llama_cpp_python"]),
            ("ggml", ggml),
            ("backends", ", ".join(info["backends"]) or None),
            ("gpu offload", "yes" if info["supports_gpu_offload"] else "no"),
            ("rpc", "yes" if info["rpc"] else "no (see README: RPC workers)"),
            ("cpu features", flags or None),
            ("threads", f"{info['default_threads']} (of {info['cpu_count']} cores)"),
            ("LLMRUN_HOME", info["llmrun_home"]),
            ("HF cache", info["hf_cache"]),
        ]
    )
    if info["devices"]:
        print()
        print_table(
            ("DEVICE", "TYPE", "BACKEND", "FREE", "TOTAL", "DESCRIPTION"),
            [
                (
                    d.get("name"),
                    d.get("type"),
                    d.get("backend"),
                    human_size(d.get("memory_free")),
                    human_size(d.get("memory_total")),
                    d.get("description"),
                )
                for d in info["devices"]
            ],
        )
