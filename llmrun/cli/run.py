"""`llmrun run [MODEL] [PROMPT...]`: one-shot generation, good in a pipeline."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from llmrun.cli.batch import BatchOpt, BatchParallelOpt, OutputOpt, batch_command
from llmrun.cli.common import app, err, note_cpu_only, quiet_stderr
from llmrun.cli.flags import (
    CacheMinOpt,
    CacheSizeOpt,
    ChatTemplateOpt,
    DraftModelOpt,
    DraftOpt,
    FormatOpt,
    GenerationOptions,
    GrammarFileOpt,
    HideThinkingOpt,
    ImageOpt,
    JsonSchemaOpt,
    NoCacheOpt,
    NoPullOpt,
    QuietOpt,
    RawOpt,
    SystemOpt,
    ThinkOpt,
    ToolChoiceOpt,
    ToolsOpt,
    VerbosePromptOpt,
    complete_model,
    generation_options,
)
from llmrun.cli.output import print_stats, progress_for_stderr
from llmrun.errors import BadInput, BadModelFile, ModelNotFound
from llmrun.promptcache import DEFAULT_MIN_TOKENS, DEFAULT_SIZE
from llmrun.resolve import resolve_model

if TYPE_CHECKING:
    from llmrun import generation
    from llmrun.engine.images import Image

# What a model name can look like: a path, name[:QUANT], org/repo[:QUANT].
MODEL_SHAPE = re.compile(r"^[\w.\-/:~]+$")
STDIN_MARK = "-"
TYPE_HINT = "type a prompt, or give one as an argument; Ctrl-D to end"


def split_model_and_prompt(args: list[str], pull: bool = False) -> tuple[str | None, list[str]]:
    """The first argument is MODEL when it names one, else everything is the prompt.

    With several arguments, a first one shaped like a model name is taken as the
    model even if it does not resolve, so that a typo gets "unknown model"
    rather than being sent to the default model as text. With `pull`, one
    argument that names an alias or org/repo not here yet is the model, to pull.
    """
    if not args:
        return None, []
    first = args[0]
    if first.lower().endswith(".gguf") and os.path.isfile(first):
        return first, args[1:]  # any path to a GGUF, whatever its characters (a+b/m.gguf)
    if not MODEL_SHAPE.match(first) or first == STDIN_MARK:
        return None, args
    if len(args) > 1:
        return first, args[1:]
    try:
        resolve_model(first)
    except (ModelNotFound, BadModelFile):
        # One word that is not a model: a prompt for the default model. A path
        # that does not exist is reported as such.
        if first.endswith(".gguf") or Path(first).exists():
            raise
        if pull and _pullable(first):
            return first, []
        return None, args
    return first, []


def _pullable(word: str) -> bool:
    from llmrun import hub  # loads huggingface_hub: only for a word that is not a local model

    return not hub.constants.HF_HUB_OFFLINE and hub.pullable(word)


def _complete_first_word(ctx: typer.Context, incomplete: str) -> list[str]:
    """MODEL is the first word: complete model names there, nothing in the prompt."""
    return [] if ctx.params.get("args") else complete_model(incomplete)


def read_prompt(words: list[str]) -> str:
    """Join piped stdin (first) and the prompt words; `-` means stdin only.

    With no prompt at a terminal, the prompt is typed: one line on stderr says so first,
    rather than a silent wait.
    """
    piped = not sys.stdin.isatty()
    use_stdin = piped or not words or words == [STDIN_MARK]
    if use_stdin and not piped:
        err.print(TYPE_HINT, style="dim", markup=False)
    stdin_text = sys.stdin.read() if use_stdin else ""
    text = " ".join(w for w in words if w != STDIN_MARK)
    if stdin_text.strip() and text:
        return f"{stdin_text.rstrip()}\n\n{text}"
    prompt = text or stdin_text.strip()
    if not prompt:
        raise BadInput(
            "no prompt given", 'pass one (llmrun run "Why is the sky blue?") or pipe text on stdin'
        )
    return prompt


def read_images(specs: list[str]) -> list[Image]:
    """The --image files, checked; `-` is the image's bytes on stdin (once)."""
    from llmrun.engine.images import image_from_bytes, read_image_file

    if specs.count(STDIN_MARK) > 1:
        raise BadInput("--image - (stdin) can be given only once")
    return [
        image_from_bytes(sys.stdin.buffer.read(), "on stdin")
        if spec == STDIN_MARK
        else read_image_file(Path(spec).expanduser())
        for spec in specs
    ]


def write_answer(answer: generation.Generation, show_thinking: bool) -> None:
    """The answer on stdout; thinking on stderr (dim); each tool call as a JSON line."""
    out = sys.stdout
    last = ""
    thought = False
    for delta in answer.events():
        if delta.reasoning and show_thinking:
            err.print(delta.reasoning, style="dim", end="", markup=False, highlight=False)
            thought = True
        elif delta.content:
            if thought:  # the thinking ended mid-line on stderr
                err.print()
                thought = False
            out.write(delta.content)
            out.flush()
            last = delta.content
    if thought:
        err.print()
    calls = answer.parsed.calls if answer.parsed else []
    if last and not last.endswith("\n"):
        out.write("\n")
    for call in calls:
        try:
            arguments = json.loads(call.arguments)
        except ValueError:  # a format that lets arguments be text
            arguments = call.arguments
        out.write(json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False))
        out.write("\n")
    if not last and not calls:
        out.write("\n")
    out.flush()


@app.command("run")
@generation_options()
def run_command(
    args: list[str] | None = typer.Argument(
        None,
        metavar="[MODEL] [PROMPT]...",
        autocompletion=_complete_first_word,
        help="Model (optional) and prompt; `-` reads the prompt from stdin.",
        show_default=False,
    ),
    system: SystemOpt = None,
    raw: RawOpt = False,
    format: FormatOpt = None,
    json_schema: JsonSchemaOpt = None,
    grammar_file: GrammarFileOpt = None,
    options: GenerationOptions = GenerationOptions(),  # filled by @generation_options
    draft: DraftOpt = None,
    draft_model: DraftModelOpt = None,
    chat_template: ChatTemplateOpt = None,
    image: ImageOpt = None,
    tools: ToolsOpt = None,
    tool_choice: ToolChoiceOpt = "auto",
    think: ThinkOpt = "auto",
    hide_thinking: HideThinkingOpt = False,
    verbose_prompt: VerbosePromptOpt = False,
    no_cache: NoCacheOpt = False,
    cache_min: CacheMinOpt = DEFAULT_MIN_TOKENS,
    cache_size: CacheSizeOpt = DEFAULT_SIZE,
    no_pull: NoPullOpt = False,
    quiet: QuietOpt = False,
    batch: BatchOpt = None,
    output: OutputOpt = None,
    parallel: BatchParallelOpt = None,
) -> None:
    """One-shot generation; piped stdin is prepended to the prompt; the answer goes to stdout.

    Long prompt prefixes (the system prompt, piped text before the words) are cached on disk.
    The next run with the same prefix evaluates only the rest (see `llmrun cache`).
    Examples: llmrun run "Why is the sky blue?"
    cat notes.txt | llmrun run smollm2-135m "Summarize:"
    for f in *.txt; do llmrun run --system "$(cat rubric.md)" < "$f"; done
    llmrun run gemma3-4b --image photo.jpg "What is in this picture?"
    """
    from llmrun import generation  # loads llama.cpp: only when the command runs

    quiet_stderr(quiet, options.verbose)

    if batch is not None or output is not None or parallel is not None:
        if image:
            raise BadInput("--image does not go with --batch", "run each image on its own")
        return batch_command(
            args or [],
            options,
            batch=batch,
            output=output,
            parallel=parallel,
            system=system,
            raw=raw,
            format=format,
            json_schema=json_schema,
            pull=not no_pull,
        )
    model, words = split_model_and_prompt(args or [], pull=not no_pull)
    images = read_images(image or [])
    if STDIN_MARK in (image or []):  # stdin held the image: the prompt is the words
        prompt = " ".join(w for w in words if w != STDIN_MARK)
        if not prompt:
            raise BadInput("--image - reads the image from stdin", "give the prompt as arguments")
    else:
        prompt = read_prompt(words)
    note_cpu_only(options.n_gpu_layers, options.rpc)
    answer = generation.run(
        model,
        prompt,
        system=system,
        raw=raw,
        format=format,
        json_schema=json_schema,
        grammar_file=grammar_file,
        draft=draft,
        draft_model=draft_model,
        chat_template=chat_template,
        tools=tools,
        tool_choice=tool_choice,
        think=think,
        no_cache=no_cache,
        cache_min=cache_min,
        cache_size=cache_size,
        images=images,
        **options.library(),
        pull=not no_pull,
        progress=progress_for_stderr(),
    )
    if verbose_prompt:
        err.print(answer.prompt, style="dim", markup=False, highlight=False)
    write_answer(answer, show_thinking=not hide_thinking)
    stats = answer.stats
    if stats.stop_reason == "context":
        err.print(
            f"note: stopped because the context ({answer.model.n_ctx} tokens) is full; "
            "raise -c/--ctx-size",
            style="yellow",
        )
    if options.verbose:
        err.print(answer.model.plan.describe(), style="dim", markup=False)
        chosen = "as asked" if options.threads else "the cores free at load"
        err.print(f"threads: {answer.model.n_threads} ({chosen})", style="dim", markup=False)
        print_stats(stats)
