"""`llmrun embed MODEL [TEXT...]`: one embedding per text, one JSON array a line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Annotated

import typer

from llmrun.cli.common import app, note_cpu_only, quiet_stderr
from llmrun.cli.flags import (
    GenerationOptions,
    NoPullOpt,
    QuietOpt,
    complete_model,
    generation_options,
)
from llmrun.cli.output import progress_for_stderr
from llmrun.errors import BadInput

STDIN_MARK = "-"  # as `llmrun run -`: the texts are stdin's lines

EmbedModelArg = Annotated[
    str | None,
    typer.Argument(
        metavar="MODEL",
        autocompletion=complete_model,
        help="The model: a .gguf path, a store name name[:QUANT], an alias from models.toml, "
        "or org/repo[:QUANT].",
        show_default=False,
    ),
]
TextsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[TEXT]...",
        help="Texts to embed, one vector each; `-` or none: each line of stdin.",
        show_default=False,
    ),
]
NormalizeOpt = Annotated[
    bool,
    typer.Option(
        "--normalize/--no-normalize",
        help="Scale each vector to unit length, as Ollama and OpenAI do.",
    ),
]
TruncateOpt = Annotated[
    bool,
    typer.Option("--truncate", help="Cut a text longer than -c tokens to fit, instead of failing."),
]
EmbedCtxOpt = Annotated[
    int | None,
    typer.Option(
        "-c",
        "--ctx-size",
        help="Most tokens per text (default: 2048, at most the model's training context).",
        show_default=False,
    ),
]


@app.command("embed")
@generation_options(("n_gpu_layers", "threads", "verbose"))
def embed_cmd(
    model: EmbedModelArg = None,
    texts: TextsArg = None,
    normalize: NormalizeOpt = True,
    truncate: TruncateOpt = False,
    ctx_size: EmbedCtxOpt = None,
    options: GenerationOptions = GenerationOptions(),  # filled by @generation_options
    no_pull: NoPullOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embedding vectors of texts: one JSON array of floats a line, in the order given.

    Without TEXT, each line of stdin is one text.

    Embedding models (BERT, bge, nomic-embed, bge-m3, e5) pool as they were trained to.

    A generative model is mean-pooled, as Ollama does.

    Examples: llmrun embed bge-small-en-v1.5.gguf "a cat" "a dog"
    cat lines.txt | llmrun embed all-minilm:Q8_0 > vectors.jsonl
    llmrun embed model.gguf --no-normalize -c 512 --truncate < docs.txt
    """
    from llmrun.embedding import embed  # loads llama.cpp: only when the command runs

    quiet_stderr(quiet, options.verbose)
    if model is None:
        raise BadInput("no model given", "name one: llmrun embed MODEL [TEXT...]")
    if texts == [STDIN_MARK]:
        texts = None
    if not texts and sys.stdin.isatty():
        raise BadInput(
            "no text given", 'pass some (llmrun embed MODEL "text") or pipe lines on stdin'
        )
    note_cpu_only(options.n_gpu_layers)
    vectors = embed(
        model,
        texts if texts else _stdin_lines(),
        normalize=normalize,
        truncate=truncate,
        ctx_size=ctx_size,
        threads=options.threads,
        n_gpu_layers=options.n_gpu_layers,
        verbose=options.verbose,
        pull=not no_pull,
        progress=progress_for_stderr(),
    )
    for vector in vectors:
        sys.stdout.write(json.dumps(vector, separators=(",", ":")) + "\n")
        sys.stdout.flush()  # a pipeline sees each vector as soon as it is made


def _stdin_lines() -> Iterator[str]:
    for line in sys.stdin:
        yield line.rstrip("\r\n")
