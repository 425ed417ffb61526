"""`llmrun serve [MODEL]`: an OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

from typing import Annotated

import typer

from llmrun.cli.common import app, err, note_cpu_only
from llmrun.cli.flags import (
    ChatTemplateOpt,
    GenerationOptions,
    ModelArg,
    NoPullOpt,
    SystemOpt,
    generation_options,
)
from llmrun.cli.output import progress_for_stderr
from llmrun.errors import LlmrunError

HostOpt = Annotated[
    str,
    typer.Option("--host", help="Address to listen on; anything but 127.0.0.1 exposes the model."),
]
PortOpt = Annotated[int, typer.Option("--port", help="Port to listen on; 0 picks a free one.")]
ParallelOpt = Annotated[
    int,
    typer.Option(
        "-np", "--parallel", help="Requests decoded together; they share the context equally."
    ),
]
EmbeddingsOpt = Annotated[
    bool,
    typer.Option(
        "--embeddings",
        help="Also answer /v1/embeddings, from a second context on the same weights.",
    ),
]
ReasoningOpt = Annotated[
    str,
    typer.Option(
        "--reasoning",
        help="Thinking models: auto (split <think> off as reasoning_content where the template "
        "thinks), on (always split), off (ask the template not to think).",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LLMRUN_API_KEY",
        help="Require Authorization: Bearer KEY on every request. [env: LLMRUN_API_KEY]",
        show_default=False,
        show_envvar=False,
    ),
]


@app.command("serve")
@generation_options()
def serve_command(
    model: ModelArg = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    parallel: ParallelOpt = 4,
    api_key: ApiKeyOpt = None,
    embeddings: EmbeddingsOpt = False,
    system: SystemOpt = None,
    chat_template: ChatTemplateOpt = None,
    reasoning: ReasoningOpt = "auto",
    options: GenerationOptions = GenerationOptions(),  # filled by @generation_options
    no_pull: NoPullOpt = False,
) -> None:
    """OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models.

    The flags set the defaults; each request's own fields (temperature, max_tokens, ...) win.
    Examples: llmrun serve; llmrun serve smollm2-135m --port 8000 --parallel 8 -c 16384
    """
    from llmrun.server import INSTALL_HINT, missing_extra

    if missing_extra():
        raise LlmrunError("llmrun serve needs the server extra", f"install it: {INSTALL_HINT}")
    from llmrun.server.serve import serve

    note_cpu_only(options.n_gpu_layers, options.rpc)
    serve(
        model,
        host=host,
        port=port,
        parallel=parallel,
        api_key=api_key,
        embeddings=embeddings,
        system=system,
        chat_template=chat_template,
        reasoning=reasoning,
        announce=lambda line: err.print(line, markup=False, highlight=False),
        **options.library(),
        pull=not no_pull,
        progress=progress_for_stderr(),
    )
