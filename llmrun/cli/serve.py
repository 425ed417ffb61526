"""`llmrun serve [MODEL]`: the OpenAI and Ollama APIs on 127.0.0.1, models loaded on demand."""

from __future__ import annotations

from typing import Annotated

import typer

from llmrun.cli.common import app, err, note_cpu_only, print_error, quiet_stderr
from llmrun.cli.flags import (
    ChatTemplateOpt,
    GenerationOptions,
    NoPullOpt,
    QuietOpt,
    SystemOpt,
    complete_model,
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
        help="Make each model's embedding context (a second one on the same weights) as it "
        "loads, rather than on its first embedding request.",
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
ServeModelArg = Annotated[
    str | None,
    typer.Argument(
        metavar="MODEL",
        autocompletion=complete_model,
        help="A model to load at once (a .gguf path, name[:QUANT], an alias, org/repo[:QUANT]); "
        "it answers requests that name no model. Default: none loaded until asked for.",
        show_default=False,
    ),
]
OnlyOpt = Annotated[
    bool,
    typer.Option("--only", help="Serve MODEL alone: requests naming other models get it too."),
]
MaxModelsOpt = Annotated[
    int,
    typer.Option(
        "--max-models", help="Models loaded at once; the least recently used idle one goes first."
    ),
]
KeepAliveOpt = Annotated[
    str,
    typer.Option(
        "--keep-alive",
        help="How long an idle model stays loaded: 5m, 1h, 30s; 0 unloads at once, -1 never. "
        "A request's keep_alive wins.",
    ),
]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Host memory the loaded models may take together, e.g. 8G "
        "[default: what is free at start].",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds a request may take in all; past it the answer ends as if cut by "
        "max_tokens, marked timed_out. A request's own timeout may be shorter.",
    ),
]
MaxQueueOpt = Annotated[
    int,
    typer.Option(
        "--max-queue",
        help="Requests that may wait for a sequence, per model; more get 503 with Retry-After.",
    ),
]
SendTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--send-timeout",
        help="Seconds a streaming client may stop reading before its answer is cancelled.",
    ),
]
ShutdownGraceOpt = Annotated[
    float,
    typer.Option(
        "--shutdown-grace",
        help="Seconds that answers in flight may take to finish once Ctrl-C or SIGTERM "
        "stops the server; then they end (a stream with an error event).",
    ),
]
MetricsOpt = Annotated[
    bool,
    typer.Option("--metrics", help="Serve Prometheus metrics on /metrics (the API key applies)."),
]
LogFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="The access log on stderr, a line per request: text, json or off. "
        "[default: text; off with -q]",
        show_default=False,
    ),
]
LogPromptsOpt = Annotated[
    bool, typer.Option("--log-prompts", help="Put each prompt's text in the access log too.")
]
AllowImageUrlsOpt = Annotated[
    bool,
    typer.Option(
        "--allow-image-urls",
        help="Fetch http(s) image URLs in requests (20 MiB, 10 s each); off: data: URLs only.",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LLMRUN_API_KEY",
        help="Require Authorization: Bearer KEY on every request but /health's status. "
        "[env: LLMRUN_API_KEY]",
        show_default=False,
        show_envvar=False,
    ),
]


@app.command("serve")
@generation_options()
def serve_command(
    model: ServeModelArg = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    parallel: ParallelOpt = 4,
    api_key: ApiKeyOpt = None,
    embeddings: EmbeddingsOpt = False,
    system: SystemOpt = None,
    chat_template: ChatTemplateOpt = None,
    reasoning: ReasoningOpt = "auto",
    only: OnlyOpt = False,
    max_models: MaxModelsOpt = 3,
    keep_alive: KeepAliveOpt = "5m",
    max_memory: MaxMemoryOpt = None,
    timeout: TimeoutOpt = 600.0,
    max_queue: MaxQueueOpt = 512,
    send_timeout: SendTimeoutOpt = 30.0,
    shutdown_grace: ShutdownGraceOpt = 10.0,
    metrics: MetricsOpt = False,
    log_format: LogFormatOpt = None,
    log_prompts: LogPromptsOpt = False,
    allow_image_urls: AllowImageUrlsOpt = False,
    options: GenerationOptions = GenerationOptions(),  # filled by @generation_options
    no_pull: NoPullOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """HTTP server: the OpenAI API (/v1/...) and Ollama's (/api/...) on one port.

    Every local model is served, each loaded when a request names it.
    MODEL is loaded at once and answers requests naming no model (--only: all).
    The flags set the defaults; each request's own fields win.
    Examples: llmrun serve; llmrun serve smollm2-135m --port 8000 -np 8 -c 16384
    llmrun serve -q --log-format json 2>> access.log
    llmrun serve gemma3-4b --allow-image-urls
    """
    from llmrun.server import INSTALL_HINT, missing_extra

    quiet_stderr(quiet, options.verbose)
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
        only=only,
        max_models=max_models,
        keep_alive=keep_alive,
        max_memory=max_memory,
        timeout=timeout,
        max_queue=max_queue,
        send_timeout=send_timeout,
        shutdown_grace=shutdown_grace,
        metrics=metrics,
        log_format=log_format or ("off" if quiet else "text"),
        log_prompts=log_prompts,
        allow_image_urls=allow_image_urls,
        announce=_announce,
        quiet=quiet,
        **options.library(),
        pull=not no_pull,
        progress=progress_for_stderr(),
    )


def _announce(line: str) -> None:
    # The server's news; -q drops it, but one that says something failed is an error.
    if line.startswith("error: "):
        print_error(line.removeprefix("error: "))
    else:
        err.print(line, markup=False, highlight=False)
