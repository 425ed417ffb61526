"""`llmrun pull MODEL`: download from the Hugging Face Hub into its cache, and store it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmrun.cli.common import app, err, quiet_stderr
from llmrun.cli.flags import QuietOpt
from llmrun.cli.output import human_size, progress_for_stderr

if TYPE_CHECKING:
    from llmrun.hub import PullResult

PullModelArg = Annotated[
    str,
    typer.Argument(
        help="An alias from models.toml, alias[:QUANT], or a Hugging Face id org/repo[:QUANT].",
        show_default=False,
    ),
]
RevisionOpt = Annotated[
    str | None,
    typer.Option(
        "--revision",
        help="Branch, tag or commit. [default: the alias's, else main]",
        show_default=False,
    ),
]
QuantOpt = Annotated[
    str | None,
    typer.Option(
        "--quant", help="Which GGUF quant, e.g. Q4_K_M (same as MODEL:QUANT).", show_default=False
    ),
]
MmprojQuantOpt = Annotated[
    str | None,
    typer.Option(
        "--mmproj-quant",
        help="A vision model's image projector (mmproj) quant. [default: F16]",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Token for gated or private repos. [default: HF_TOKEN, else `hf auth login`]",
        show_default=False,
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Download again even if cached.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Say what would be downloaded; download nothing.")
]


@app.command("pull")
def pull_cmd(
    model: PullModelArg,
    revision: RevisionOpt = None,
    quant: QuantOpt = None,
    mmproj_quant: MmprojQuantOpt = None,
    token: TokenOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download a model from the Hugging Face Hub into its cache and add it to the store.

    A GGUF repo gets only the chosen quant (and a vision model's image projector, mmproj-*.gguf,
    beside it); a checkpoint, what conversion needs.
    An interrupted pull resumes. The stored path goes to stdout.

    Examples: llmrun pull smollm2-135m
    llmrun pull bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0
    llmrun pull ggml-org/gemma-3-4b-it-GGUF --mmproj-quant Q8_0
    """
    from llmrun import hub  # loads huggingface_hub: only for the commands that use it

    quiet_stderr(quiet)

    try:
        result = hub.pull(
            model,
            revision=revision,
            quant=quant,
            mmproj_quant=mmproj_quant,
            token=token,
            force=force,
            dry_run=dry_run,
            progress=progress_for_stderr(),
        )
    except KeyboardInterrupt:
        err.print("interrupted: the same `llmrun pull` resumes where this one stopped")
        raise
    if dry_run:
        _print_plan(result)
        return
    what = "checkpoint " if result.kind == "safetensors" else ""
    if result.downloaded:
        err.print(
            f"pulled {what}{result.tag} from {result.repo}@{result.commit[:7]} "
            f"({human_size(result.downloaded)} downloaded)",
            markup=False,
        )
    else:
        err.print(f"{what}{result.tag} is up to date ({result.repo}@{result.commit[:7]})")
    sys.stdout.write(f"{result.path}\n")


def _print_plan(result: PullResult) -> None:
    """What a pull would do, on stdout: one line per file, then the total."""
    out: list[Any] = [f"{result.repo}@{result.commit[:7]} ({result.revision}) -> {result.tag}"]
    todo = 0
    for f, status in result.files:
        out.append(f"  {status:<9} {human_size(f.size):>9}  {f.name}")
        todo += 0 if status == "cached" else (f.size or 0)
    out.append(f"would download {human_size(todo)}" if todo else "nothing to download")
    sys.stdout.write("\n".join(out) + "\n")
