"""<think> blocks: the reasoning some models write before their answer, split off from it.

Every format but gpt-oss's (whose channels carry the reasoning) gets the answer with its
think block removed. Some templates open the block themselves (DeepSeek-R1's distills end
the prompt with `<think>\\n`): then the answer starts inside it, and `opened` says so.

A block the answer never closes is reasoning, to the end: a model cut off by max_tokens
while thinking has not answered yet. llama.cpp's older parser did the same (its
try_parse_reasoning "allows unclosed thinking tags"); its newer PEG parser makes such text
content instead, which would contradict what streaming had already sent as reasoning.
"""

from __future__ import annotations

from llmrun.templates.calls import held_prefix

START = "<think>"
END = "</think>"


def split_thinking(
    text: str, partial: bool, *, opened: bool = False, start: str = START, end: str = END
) -> tuple[str, str]:
    """(reasoning, rest) of an answer, or of its prefix while `partial`."""
    if opened:
        body = text
    else:
        stripped = text.lstrip()
        if stripped.startswith(start):
            body = stripped[len(start) :]
        elif partial and start.startswith(stripped):
            return "", ""  # may still become the tag
        else:
            return "", text
    i = body.find(end)
    if i >= 0:
        return body[:i].strip(), body[i + len(end) :].lstrip()
    if partial:
        body = body[: len(body) - held_prefix(body, (end,))]
    return body.strip(), ""


def prompt_opens_thinking(prompt_text: str, start: str = START) -> bool:
    """Whether the rendered prompt ends inside an open think block."""
    return prompt_text.rstrip().endswith(start)


def template_thinks(source: str) -> bool:
    """Whether a template knows about thinking at all (for deciding defaults)."""
    return START in source or "enable_thinking" in source
