"""`llmrun run MODEL --batch prompts.jsonl [-o out.jsonl]`: the wiring; see llmrun.batch_run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmrun.cli.common import err, note_cpu_only, print_error
from llmrun.cli.flags import GenerationOptions
from llmrun.errors import BadInput, LlmrunError

BatchOpt = Annotated[
    str | None,
    typer.Option(
        "--batch",
        metavar="FILE",
        help="Answer every line of this JSONL file (- for stdin), decoded together; "
        "JSONL results in input order.",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="With --batch: write the results to this file (atomically) instead of stdout.",
        show_default=False,
    ),
]
BatchParallelOpt = Annotated[
    int | None,
    typer.Option(
        "-np",
        "--parallel",
        help="With --batch: lines decoded together; they share -c equally. [default: 4]",
        show_default=False,
    ),
]


def batch_command(
    args: list[str],
    options: GenerationOptions,
    *,
    batch: str | None,
    output: Path | None,
    parallel: int | None,
    system: str | None,
    raw: bool,
    format: str | None,
    json_schema: Path | None,
    pull: bool,
) -> None:
    """`run --batch` (or its options without it): args may hold MODEL only; the rest is run's."""
    from llmrun.batch_run import DEFAULT_PARALLEL, run_batch
    from llmrun.cli.output import progress_for_stderr

    if batch is None:
        raise BadInput("-o/--output and --parallel go with --batch FILE")
    if len(args) > 1:
        raise BadInput("--batch takes its prompts from the file", "give only MODEL, or none")
    if output is not None and output.is_dir():
        raise BadInput(f"-o {output} is a directory")
    if parallel is not None and parallel < 1:
        raise BadInput(f"--parallel must be >= 1, got {parallel}")
    note_cpu_only(options.n_gpu_layers, options.rpc)
    summary = run_batch(
        args[0] if args else None,
        batch,
        output,
        system=system,
        raw=raw,
        format=format,
        json_schema=json_schema,
        parallel=parallel or DEFAULT_PARALLEL,
        report=print_error,
        bar=err if err.is_terminal else None,
        **options.library(),
        pull=pull,
        progress=progress_for_stderr(),
    )
    if options.verbose and summary.seconds:
        err.print(
            f"{summary.done} answered in {summary.seconds:.1f} s | prompts "
            f"{summary.prompt_tokens} tokens | generated {summary.completion_tokens} tokens, "
            f"{summary.completion_tokens / summary.seconds:.1f} tokens/s",
            style="dim",
        )
    skipped = sorted(summary.bad + summary.failed)
    if not skipped:
        return
    shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
    message = f"{len(skipped)} line(s) skipped ({shown}); {summary.done} answered"
    raise (LlmrunError(message) if summary.failed else BadInput(message))
