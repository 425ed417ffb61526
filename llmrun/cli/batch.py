"""`llmrun run MODEL --batch prompts.jsonl [-o out.jsonl]`: the wiring; see llmrun.batch_run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmrun.cli.common import LOAD_FLAGS, SAMPLING_FLAGS, err, note_cpu_only, pick, print_error
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


def batch_command(args: list[str], flags: dict[str, Any]) -> None:
    """`run --batch` (or its options without it): args may hold MODEL only; flags are run's."""
    from llmrun.batch_run import DEFAULT_PARALLEL, run_batch
    from llmrun.cli.pull import progress_for_stderr

    if flags["batch"] is None:
        raise BadInput("-o/--output and --parallel go with --batch FILE")
    if len(args) > 1:
        raise BadInput("--batch takes its prompts from the file", "give only MODEL, or none")
    if flags.get("output") is not None and flags["output"].is_dir():
        raise BadInput(f"-o {flags['output']} is a directory")
    if flags.get("parallel") is not None and flags["parallel"] < 1:
        raise BadInput(f"--parallel must be >= 1, got {flags['parallel']}")
    note_cpu_only(flags["n_gpu_layers"], flags.get("rpc"))
    summary = run_batch(
        args[0] if args else None,
        flags["batch"],
        flags.get("output"),
        system=flags["system"],
        raw=flags["raw"],
        format=flags["format"],
        json_schema=flags["json_schema"],
        parallel=flags.get("parallel") or DEFAULT_PARALLEL,
        report=print_error,
        bar=err if err.is_terminal else None,
        **pick(flags, SAMPLING_FLAGS),
        **pick(flags, LOAD_FLAGS),
        pull=not flags.get("no_pull", False),
        progress=progress_for_stderr(),
    )
    if flags["verbose"] and summary.seconds:
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
