"""`llmrun bench MODEL...`: prompt and generation tokens/s, llama-bench style."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer

from llmrun.cli.common import app, err, note_cpu_only, quiet_stderr
from llmrun.cli.flags import GenerationOptions, QuietOpt, complete_model, generation_options
from llmrun.errors import BadOption

ModelsArg = Annotated[
    list[str] | None,
    typer.Argument(
        autocompletion=complete_model,
        help="One or more models (paths, store names, aliases); default: the default model.",
        metavar="MODEL",
        show_default=False,
    ),
]
PromptOpt = Annotated[int, typer.Option("-p", "--n-prompt", help="Prompt tokens (pp test).")]
GenOpt = Annotated[int, typer.Option("-n", "--n-gen", help="Generated tokens (tg test).")]
RepsOpt = Annotated[int, typer.Option("-r", "--repetitions", help="Timed runs of each test.")]
VsOpt = Annotated[
    bool,
    typer.Option(
        "--vs-llama-bench", help="Also run llama.cpp's llama-bench; add its t/s and the ratio."
    ),
]
JsonFmt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
CsvFmt = Annotated[bool, typer.Option("--csv", help="Print CSV on stdout.")]
MdFmt = Annotated[bool, typer.Option("--md", help="Print a Markdown table on stdout.")]


@app.command("bench")
# The load flags a benchmark honours; sampling does not change tokens/s.
@generation_options(("threads", "n_gpu_layers", "flash_attn", "rpc", "lora"))
def bench_cmd(
    models: ModelsArg = None,
    n_prompt: PromptOpt = 512,
    n_gen: GenOpt = 128,
    repetitions: RepsOpt = 5,
    options: GenerationOptions = GenerationOptions(),  # filled by @generation_options
    vs_llama_bench: VsOpt = False,
    json: JsonFmt = False,
    csv: CsvFmt = False,
    md: MdFmt = False,
    quiet: QuietOpt = False,
) -> None:
    """Prompt-processing (ppP) and generation (tgN) tokens/s of each model, in one table.

    Mean ± standard deviation over the repetitions after a warm-up, through llmrun's engine.

    Examples: llmrun bench smollm2-135m:Q4_K_M smollm2-135m:Q8_0
    llmrun bench model.gguf -p 256 -n 64 -r 3 --md
    llmrun bench model.gguf --json -q | jq '.[] | .tps'
    """
    from llmrun import bench  # loads llama.cpp: only when the command runs

    quiet_stderr(quiet)
    chosen = [name for name, on in (("json", json), ("csv", csv), ("md", md)) if on]
    if len(chosen) > 1:
        raise BadOption(f"choose one output format, got --{' and --'.join(chosen)}")
    note_cpu_only(options.n_gpu_layers, options.rpc)
    # A spinner that says which model and test is running, only for a person at a terminal.
    shown_status = err.is_terminal and not err.quiet
    status = err.status("bench") if shown_status else contextlib.nullcontext()
    with status as shown:
        rows = bench.bench(
            models or [],
            n_prompt=n_prompt,
            n_gen=n_gen,
            repetitions=repetitions,
            threads=options.threads,
            n_gpu_layers=options.n_gpu_layers,
            flash_attn=options.flash_attn,
            rpc=options.rpc,
            lora=options.lora,
            vs_llama_bench=vs_llama_bench,
            progress=shown.update if shown is not None else None,
        )
    # The table is plain aligned text at a terminal too: it is wider than most terminals,
    # and rich would squeeze its cells into ellipses.
    sys.stdout.write(bench.render(rows, chosen[0] if chosen else "table"))
