"""`llmrun eval MODEL... [--ref MODEL_F16]`: perplexity, and KL divergence against a reference."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from llmrun.cli.common import app, err, note_cpu_only, print_json, quiet_stderr
from llmrun.cli.flags import JsonOpt, NglOpt, QuietOpt, ThreadsOpt, complete_model
from llmrun.cli.output import print_fields, print_table

if TYPE_CHECKING:
    from llmrun.evaluate import EvalResult, Progress

RefOpt = Annotated[
    str | None,
    typer.Option(
        "--ref",
        help="Reference model (the F16/BF16 file of the same model): adds KL divergence "
        "and top-1 agreement.",
        show_default=False,
    ),
]
TextOpt = Annotated[
    Path | None,
    typer.Option(
        "--text",
        help="UTF-8 text to score. Default: chapters I-II of Alice's Adventures in Wonderland.",
        show_default=False,
    ),
]
EvalCtxOpt = Annotated[
    int, typer.Option("-c", "--ctx-size", help="Tokens per chunk; the second half is scored.")
]
ChunksOpt = Annotated[
    int | None,
    typer.Option(
        "--chunks", help="Score at most this many chunks. Default: all.", show_default=False
    ),
]


ModelsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="MODEL",
        autocompletion=complete_model,
        help="Models to score: .gguf paths, store names name[:QUANT], aliases, or "
        "org/repo[:QUANT]; several are scored against one --ref in one pass over it. "
        "Default: the registry's default model.",
        show_default=False,
    ),
]


@app.command("eval")
def eval_cmd(
    models: ModelsArg = None,
    ref: RefOpt = None,
    text: TextOpt = None,
    ctx_size: EvalCtxOpt = 512,
    chunks: ChunksOpt = None,
    threads: ThreadsOpt = None,
    n_gpu_layers: NglOpt = "auto",
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Perplexity of MODEL over a text; with --ref, KL divergence and top-1 agreement.

    Lower perplexity is better. KL is in nats per token; 0 means the reference's predictions.

    Several models: one table (--json: an array), the reference evaluated once for all.

    Examples: llmrun eval smollm2-135m:Q4_K_M --ref smollm2-135m:F16
    llmrun eval smollm2-135m:Q4_K_M smollm2-135m:Q3_K_M --ref smollm2-135m:F16
    llmrun eval model.gguf --text book.txt -c 1024 --json -q
    """
    from llmrun.evaluate import evaluate_models  # loads llama.cpp: only when the command runs

    quiet_stderr(quiet)
    note_cpu_only(n_gpu_layers)
    with _bar() as progress:
        results = evaluate_models(
            models or [None],
            ref=ref,
            text=text,
            ctx_size=ctx_size,
            chunks=chunks,
            threads=threads,
            n_gpu_layers=n_gpu_layers,
            progress=progress,
        )
    if json:
        print_json(results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results])
    elif len(results) == 1:
        print_fields(_fields(results[0]))
    else:
        _print_comparison(results)


@contextlib.contextmanager
def _bar() -> Iterator[Progress | None]:
    """A chunk counter on stderr for a person at a terminal; nothing otherwise."""
    if not err.is_terminal or err.quiet:
        yield None
        return
    import rich.progress as bars

    columns = (
        bars.TextColumn("eval"),
        bars.BarColumn(),
        bars.MofNCompleteColumn(),
        bars.TextColumn("chunks"),
        bars.TimeRemainingColumn(),
    )
    with bars.Progress(*columns, console=err.console, transient=True) as bar:
        task = bar.add_task("eval", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _fields(r: EvalResult) -> list[tuple[str, object]]:
    fields: list[tuple[str, object]] = [
        ("model", r.model),
        ("text", f"{r.text}: {r.text_tokens} tokens"),
        ("chunks", f"{r.chunks} of {r.ctx_size} tokens, {r.scored_tokens} tokens scored"),
        ("perplexity", f"{r.perplexity:.4f} ± {r.perplexity_se:.4f}"),
    ]
    if r.ref is not None:
        fields += [
            ("reference", r.ref),
            ("ref perplexity", f"{r.ref_perplexity:.4f} ± {r.ref_perplexity_se:.4f}"),
            ("perplexity ratio", f"{r.ppl_ratio:.4f}"),
            ("KL mean", f"{r.kl_mean:.6f} ± {r.kl_mean_se:.6f}"),
            ("KL median", f"{r.kl_median:.6f}"),
            ("KL p99", f"{r.kl_p99:.6f}"),
            ("KL max", f"{r.kl_max:.6f}"),
            ("top-1 agreement", f"{r.top1_agreement:.2%}"),
        ]
    fields.append(("time", f"{r.seconds:.1f} s"))
    return fields


# The comparison's shared lines and its columns (header: _fields' label), all from _fields.
SHARED = ("text", "chunks", "reference", "ref perplexity")
COLUMNS = {
    "model": "model",
    "perplexity": "perplexity",
    "perplexity ratio": "ratio",
    "KL mean": "KL mean",
    "KL p99": "KL p99",
    "top-1 agreement": "top-1",
}


def _print_comparison(results: list[EvalResult]) -> None:
    """What the models share (text, chunks, reference), then one row per model."""
    fields = [dict(_fields(r)) for r in results]
    print_fields([(label, value) for label, value in fields[0].items() if label in SHARED])
    sys.stdout.write("\n")
    columns = [label for label in COLUMNS if label in fields[0]]
    print_table([COLUMNS[label] for label in columns], [[f[c] for c in columns] for f in fields])
