"""`llmrun chat [MODEL]`: a chat at a terminal, or one reply per line of piped stdin.

Only the wiring: the conversation is `llmrun.chat.ChatSession`, the REPL and the piped-stdin
loop are `llmrun.chat.repl`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmrun.cli.common import app, err, note_cpu_only, print_error, quiet_stderr
from llmrun.cli.flags import (
    CacheMinOpt,
    CacheSizeOpt,
    ChatTemplateOpt,
    GenerationOptions,
    HideThinkingOpt,
    ModelArg,
    NoCacheOpt,
    NoPullOpt,
    QuietOpt,
    SystemOpt,
    ThinkOpt,
    generation_options,
)
from llmrun.cli.output import print_stats, progress_for_stderr
from llmrun.errors import BadInput
from llmrun.promptcache import DEFAULT_MIN_TOKENS, DEFAULT_SIZE

MarkdownOpt = Annotated[
    bool, typer.Option("--markdown", help="Render each finished reply as Markdown.")
]
BatchOpt = Annotated[
    bool,
    typer.Option("--batch", help="All of piped stdin is one message (default: one a line)."),
]


# ---------------------------------------------------------------- the command


@app.command("chat")
@generation_options()
def chat_command(
    model: ModelArg = None,
    system: SystemOpt = None,
    markdown: MarkdownOpt = False,
    batch: BatchOpt = False,
    chat_template: ChatTemplateOpt = None,
    think: ThinkOpt = "auto",
    hide_thinking: HideThinkingOpt = False,
    options: GenerationOptions = GenerationOptions(),  # filled by @generation_options
    no_cache: NoCacheOpt = False,
    cache_min: CacheMinOpt = DEFAULT_MIN_TOKENS,
    cache_size: CacheSizeOpt = DEFAULT_SIZE,
    no_pull: NoPullOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Chat with a model: slash commands (/help), history, Ctrl-C stops a reply.

    When stdin is not a terminal, each line is a message (all of stdin with --batch) and only
    the replies are printed. The first turn's system prompt is kept in the prompt cache.
    Examples: llmrun chat
    echo "Why is the sky blue?" | llmrun chat smollm2-135m --temp 0
    """
    # llama.cpp, Jinja and rich's Markdown load only when the command runs.
    from llmrun import generation
    from llmrun.chat import ChatSession
    from llmrun.chat.repl import Repl, Terminal, answer_all
    from llmrun.engine import load_model
    from llmrun.templates.render import ChatTemplate, read_template_file

    quiet_stderr(quiet, options.verbose)
    generation.check_choices(think, "auto", [])
    cache = None if no_cache else generation.prompt_cache(cache_min, cache_size)
    source = read_template_file(chat_template) if chat_template else None
    prepared = generation.prepare(
        model,
        system=system,
        **options.library(),
        pull=not no_pull,
        progress=progress_for_stderr(),
    )
    note_cpu_only(options.n_gpu_layers, options.rpc)
    interactive = sys.stdin.isatty() and not batch
    if not interactive:
        text = sys.stdin.read() if batch else None
        if batch and not (text or "").strip():
            raise BadInput(
                "no message on stdin", "pipe the message in: echo Hi | llmrun chat --batch"
            )
    engine = load_model(prepared.resolved.path, prepared.load)
    session = ChatSession(
        engine,
        prepared.sampling,
        prepared.system,
        name=prepared.resolved.name,
        template=ChatTemplate(engine, chat_template, source=source),
        think=think,
        cache=cache,
    )
    term = Terminal(err.console, print_error, print_stats)
    if interactive:
        Repl(
            session, term, markdown=markdown, verbose=options.verbose, hide_thinking=hide_thinking
        ).loop()
    else:
        messages = [text] if batch else sys.stdin
        answer_all(session, messages, term, verbose=options.verbose, hide_thinking=hide_thinking)
