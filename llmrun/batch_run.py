"""`llmrun run MODEL --batch prompts.jsonl`: many prompts through the batching engine.

Each input line is JSON: a prompt string, or an object with `prompt` or
`messages` and optional per-line options (LINE_OPTIONS). The answers come out
as JSONL in input order, one object per good line with its usage. A bad line is
reported on stderr by number and skipped; the others complete.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llmrun.errors import BadInput, LlmrunError
from llmrun.generation import grammar_for, prepare
from llmrun.options import Sampling, check_param, spellings
from llmrun.prompt import chat_tokens, raw_tokens
from llmrun.templates.render import ChatTemplate

if TYPE_CHECKING:
    from rich.console import Console

STDIN_MARK = "-"
DEFAULT_PARALLEL = 4
# Per-line key -> llmrun's name for it. OpenAI's spelling of temperature is welcome too.
SAMPLING_KEYS = spellings("batch")
LINE_OPTIONS = frozenset({"prompt", "messages", "system", "raw", "id", *SAMPLING_KEYS})
ROLES = frozenset({"system", "user", "assistant"})


@dataclass
class Job:
    """One good input line, checked: what to ask and how."""

    line: int
    sampling: Sampling
    prompt: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    system: str | None = None
    raw: bool = False
    id: Any = None


@dataclass
class Summary:
    done: int = 0
    bad: list[int] = field(default_factory=list)  # line numbers reported and skipped
    failed: list[int] = field(default_factory=list)  # line numbers the engine failed on
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # from loading the model to the last answer


# ---------------------------------------------------------------- reading lines


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadInput("messages must be a non-empty list")
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadInput(f"each message needs a role ({', '.join(sorted(ROLES))}) and content")
        if not isinstance(m.get("content"), str):
            raise BadInput("each message's content must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def parse_line(text: str, line: int, defaults: Sampling, system: str | None, raw: bool) -> Job:
    """One line of the input as a Job; BadInput says what is wrong with it."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(spec, str):
        spec = {"prompt": spec}
    if not isinstance(spec, dict):
        raise BadInput("must be a JSON string or an object with prompt or messages")
    unknown = sorted(set(spec) - LINE_OPTIONS)
    if unknown:
        raise BadInput(f"unknown key {unknown[0]!r}; known: {', '.join(sorted(LINE_OPTIONS))}")
    if ("prompt" in spec) == ("messages" in spec):
        raise BadInput("needs exactly one of prompt or messages")
    if "prompt" in spec and not isinstance(spec["prompt"], str):
        raise BadInput("prompt must be a string")
    if not isinstance(spec.get("raw", False), bool):
        raise BadInput("raw must be true or false")
    overrides = {
        SAMPLING_KEYS[k]: check_param(SAMPLING_KEYS[k], v, where=k)
        for k, v in spec.items()
        if k in SAMPLING_KEYS and v is not None
    }
    return Job(
        line=line,
        sampling=defaults.merged(overrides),
        prompt=spec.get("prompt"),
        messages=_messages(spec["messages"]) if "messages" in spec else [],
        system=check_param("system", spec["system"], where="system")
        if "system" in spec
        else system,
        raw=spec.get("raw", raw),
        id=spec.get("id"),
    )


def read_lines(source: Path | str) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line; `-` is stdin."""
    if str(source) == STDIN_MARK:
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as e:
            raise BadInput(f"cannot read --batch file {source}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise BadInput(f"--batch file {source} is not UTF-8 text") from None
    return [(i, t) for i, t in enumerate(text.splitlines(), 1) if t.strip()]


# ---------------------------------------------------------------- running


def _tokens(model: Any, template: Callable[[], ChatTemplate], job: Job) -> list[int]:
    if job.prompt is not None and job.raw:
        return raw_tokens(model, job.prompt, system=job.system)
    messages = job.messages or [{"role": "user", "content": job.prompt or ""}]
    return chat_tokens(model, template(), messages, system=job.system)


def _result(job: Job, handle: Any, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"line": job.line}
    if job.id is not None:
        out["id"] = job.id
    out["text"] = text
    out["finish_reason"] = handle.finish_reason
    out["usage"] = {
        "prompt_tokens": handle.prompt_tokens,
        "completion_tokens": handle.completion_tokens,
        "total_tokens": handle.prompt_tokens + handle.completion_tokens,
    }
    return out


def run_batch(
    model: str | None,
    source: Path | str,
    output: Path | None = None,
    *,
    system: str | None = None,
    raw: bool = False,
    format: str | None = None,
    json_schema: Path | None = None,
    parallel: int = DEFAULT_PARALLEL,
    report: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    bar: Console | None = None,
    **options: Any,
) -> Summary:
    """Answer every line of `source`; JSONL to `output` (atomically) or stdout.

    `bar`: a console (stderr at a terminal) to draw a progress bar on; `report`
    gets one line per skipped or failed input line.
    """
    from llmrun.engine.batch import BatchEngine

    grammar = grammar_for(format, json_schema)
    lines = read_lines(source)
    prepared = prepare(model, system=system, vision=False, **options)
    summary = Summary()
    jobs: list[Job] = []
    for line, text in lines:
        try:
            jobs.append(parse_line(text, line, prepared.sampling, prepared.system, raw))
        except LlmrunError as e:
            summary.bad.append(line)
            report(f"line {line}: {e}; skipped")
    if not jobs:
        return summary

    started = time.perf_counter()
    engine = BatchEngine(prepared.resolved.path, prepared.load, max(1, min(parallel, len(jobs))))
    engine.start()
    # Made once, when a line first needs it: a model without a template fails only those lines.
    template = functools.cache(lambda: ChatTemplate(engine.model))
    window = max(32, 4 * engine.parallel)  # submitted ahead of the one being written
    try:
        with _sink(output) as out, _progress(bar, len(jobs)) as advance:
            queue: deque[tuple[Job, Any]] = deque()
            todo = iter(jobs)
            while True:
                while len(queue) < window and (job := next(todo, None)) is not None:
                    try:
                        tokens = _tokens(engine.model, template, job)
                        queue.append((job, engine.submit(tokens, job.sampling, grammar)))
                    except LlmrunError as e:
                        summary.bad.append(job.line)
                        report(f"line {job.line}: {e}; skipped")
                        advance(0)
                if not queue:
                    break
                job, handle = queue.popleft()
                text = "".join(handle)
                if handle.finish_reason == "error":
                    summary.failed.append(job.line)
                    report(f"line {job.line}: generation failed: {handle.error}")
                else:
                    out.write(json.dumps(_result(job, handle, text), ensure_ascii=False) + "\n")
                    out.flush()
                    summary.done += 1
                    summary.prompt_tokens += handle.prompt_tokens
                    summary.completion_tokens += handle.completion_tokens
                advance(handle.completion_tokens)
    finally:
        engine.stop(cancel=True)
    summary.seconds = time.perf_counter() - started
    return summary


@contextmanager
def _sink(output: Path | None) -> Iterator[IO[str]]:
    """stdout as lines come, or a file that appears whole at the end (never half-written)."""
    if output is None:
        yield sys.stdout
        return
    from llmrun.store import atomic_write

    with atomic_write(output) as tmp, tmp.open("w", encoding="utf-8") as f:
        yield f


@contextmanager
def _progress(console: Console | None, total: int) -> Iterator[Callable[[int], None]]:
    """A bar (lines done, tokens) on `console`; nothing without one."""
    if console is None:
        yield lambda _tokens: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tokens]} tokens"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task("batch", total=total, tokens=0)
        count = {"tokens": 0}

        def advance(tokens: int) -> None:
            count["tokens"] += tokens
            bar.update(task, advance=1, tokens=count["tokens"])

        yield advance
