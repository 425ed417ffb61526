"""Functionary v3.2 (`>>>RECIPIENT\\n` segments) and v3.1 (`<function=NAME>{...}</function>`).

v3.2's prompt ends with `>>>`, so its answer starts with a recipient line: `all` for text,
a tool's name for a call, whose JSON arguments follow; more segments follow `>>>`. v3.1
writes text, with calls in `<function=NAME>` tags. Both are MeetKai's, and one module
reads both: an answer that starts with a recipient line is v3.2's, any other v3.1's. The
grammar offers both shapes; each model writes the one its template taught it.
"""

from __future__ import annotations

import re

from llmrun.templates.calls import Parsed, ToolCall, ToolFormat, ToolGrammar, register
from llmrun.templates.formats._scan import (
    Incomplete,
    Malformed,
    Reader,
    final_arguments,
    hold,
    sections,
)

NEXT = ">>>"  # v3.2: opens the next segment
TEXT = "all"  # v3.2: the recipient of text
RECIPIENT = re.compile(r"[A-Za-z0-9_.-]*")
OPEN, CLOSE = "<function=", "</function>"  # v3.1


def detect(template: str) -> bool:
    v32 = ">>>all" in template and ">>>${recipient}" in template
    # v3.1: the Llama 3.1 layout with <function= tags (Qwen3-Coder's tags sit in ChatML)
    v31 = OPEN in template and "<|start_header_id|>" in template
    return v32 or v31


def _v32(text: str, partial: bool, start: int) -> Parsed:
    content: list[str] = []
    calls: list[ToolCall] = []
    r = Reader(text, start, partial)
    try:
        while True:
            recipient = r.until("\n")
            if not recipient or RECIPIENT.fullmatch(recipient) is None:
                raise Malformed("recipient")
            if recipient == TEXT:
                end = text.find(NEXT, r.pos)
                body = text[r.pos :] if end < 0 else text[r.pos : end]
                content.append(hold(body, (NEXT,), partial) if end < 0 else body.rstrip())
                r.pos = len(text) if end < 0 else end
            else:
                if partial and not r.rest().strip():
                    raise Incomplete  # a call only once its arguments start
                call = ToolCall(recipient, "")
                calls.append(call)
                call.arguments = final_arguments(r.json(call), partial)
                r.skip_ws()
            if r.at_end():
                break
            r.expect(NEXT)
    except Incomplete:
        pass
    except Malformed:
        return Parsed(content=hold(text, (), partial))
    return Parsed(content="".join(content), calls=calls)


def _v31_call(r: Reader, calls: list[ToolCall]) -> None:
    r.expect(OPEN)
    name = r.until(">")
    if not name or RECIPIENT.fullmatch(name) is None:
        raise Malformed("name")
    call = ToolCall(name, "")
    calls.append(call)
    call.arguments = final_arguments(r.json(call), r.partial)
    r.skip_ws()
    r.close(CLOSE)


def parse(text: str, partial: bool) -> Parsed:
    start = len(NEXT) if text.startswith(NEXT) else 0  # the grammar may write the prompt's >>>
    head = RECIPIENT.match(text, start)
    assert head is not None  # the pattern matches the empty string
    if text[head.end() : head.end() + 1] == "\n" and head.end() > start:
        return _v32(text, partial, start)
    if partial and (head.end() == len(text) or NEXT.startswith(text)):
        return Parsed()  # may still be a recipient line
    return sections(text, partial, (OPEN,), _v31_call)


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    lit = tools.literal
    v32 = [f"{lit(name + chr(10))} {tools.args(i)}" for i, name in enumerate(tools.names)]
    v31 = [
        f"{lit(OPEN + name + '>')} {tools.args(i)} {lit(CLOSE)}"
        for i, name in enumerate(tools.names)
    ]
    segment = f"( {' | '.join(v32)} )"
    tag = f"( {' | '.join(v31)} )"
    if parallel:
        return tools.build(
            f'{lit(NEXT)}? {segment} ( {lit(NEXT)} {segment} )* | {tag} ( "\\n"? {tag} )*'
        )
    return tools.build(f"{lit(NEXT)}? {segment} | {tag}")


FORMAT = register(
    ToolFormat(
        name="functionary",
        detect=detect,
        parse=parse,
        grammar=grammar,
        triggers=(
            re.escape(NEXT) + r"(?!all\n)[A-Za-z0-9_.-]+\n",  # v3.2, a call after text
            r"^(?!all\n)[A-Za-z0-9_.-]+\n\{",  # v3.2, a call first
            re.escape(OPEN),  # v3.1
        ),
    )
)
