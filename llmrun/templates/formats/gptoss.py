"""gpt-oss (OpenAI harmony): the answer is a run of messages on channels.

The prompt ends with `<|start|>assistant`, so the answer starts with a message header:
`<|channel|>analysis<|message|>THINKING<|end|>`, then `<|start|>assistant` and the next,
`<|channel|>final<|message|>ANSWER`. A call names its recipient in the header, either
before the channel (`<|start|>assistant to=functions.NAME<|channel|>commentary json`) or
after it (`<|channel|>commentary to=functions.NAME <|constrain|>json`), and its message is
the JSON arguments, ended by `<|call|>`, an end-of-generation token the engine may not
return at all. The channels carry the reasoning, so this format reads it (reasoning=True).
"""

from __future__ import annotations

import re

from llmrun.templates.calls import (
    Parsed,
    ToolCall,
    ToolFormat,
    ToolGrammar,
    held_prefix,
    register,
)
from llmrun.templates.formats._scan import Incomplete, Malformed, Reader, final_arguments

START = "<|start|>assistant"
CHANNEL = "<|channel|>"
MESSAGE = "<|message|>"
ENDS = ("<|end|>", "<|call|>", "<|return|>", "<|start|>")
HEADERS = (CHANNEL, "to=")  # after whitespace: " to=functions.NAME" may come first
FUNCTIONS = "functions."

# Where a message's text goes, by channel; other recipients' messages (builtin tools the
# request did not offer) go nowhere, as in llama.cpp.
DESTINATION = {"analysis": "reasoning", "final": "content", "commentary": "content"}


def detect(template: str) -> bool:
    return CHANNEL in template and MESSAGE in template


def _header(text: str) -> tuple[str, str]:
    """(channel, recipient) of a message header."""
    channel = re.search(r"<\|channel\|>(\w+)", text)
    recipient = re.search(r"to=([^\s<]+)", text)
    return (channel.group(1) if channel else "final"), (recipient.group(1) if recipient else "")


def _body_end(text: str, pos: int) -> int:
    found = [i for i in (text.find(e, pos) for e in ENDS) if i >= 0]
    return min(found) if found else -1


def parse(text: str, partial: bool) -> Parsed:
    out: dict[str, list[str]] = {"content": [], "reasoning": []}
    calls: list[ToolCall] = []
    r = Reader(text, 0, partial)
    try:
        while not r.at_end():
            r.skip_ws()
            r.maybe(START)
            r.skip_ws()
            rest = r.rest()
            if not rest.startswith(HEADERS):
                if partial and any(h.startswith(rest) for h in HEADERS):
                    raise Incomplete
                _text(r, out["content"])  # no header: plain text, the answer
                break
            if not partial and MESSAGE not in rest:  # a header never finished: it is text
                _text(r, out["content"])
                break
            channel, recipient = _header(r.until(MESSAGE))
            if recipient.startswith(FUNCTIONS):
                _call(r, recipient[len(FUNCTIONS) :], calls, out["content"])
            elif recipient:
                _skip(r)
            else:
                _text(r, out[DESTINATION.get(channel, "content")])
            for end in ENDS[:-1]:  # <|start|> opens the next message: leave it
                if r.maybe(end):
                    break
    except Incomplete:
        pass
    joined = {where: "\n".join(p for p in parts if p) for where, parts in out.items()}
    return Parsed(content=joined["content"], reasoning=joined["reasoning"], calls=calls)


def _text(r: Reader, parts: list[str]) -> None:
    end = _body_end(r.text, r.pos)
    if end < 0:
        body = r.rest()
        if r.partial:
            body = body[: len(body) - held_prefix(body, ENDS)].rstrip()
        parts.append(body)
        r.pos = len(r.text)
        if r.partial:
            raise Incomplete
        return
    parts.append(r.text[r.pos : end])
    r.pos = end


def _skip(r: Reader) -> None:
    end = _body_end(r.text, r.pos)
    r.pos = len(r.text) if end < 0 else end


def _call(r: Reader, name: str, calls: list[ToolCall], content: list[str]) -> None:
    start = r.pos
    call = ToolCall(name, "")
    calls.append(call)
    try:
        call.arguments = final_arguments(r.json(call), r.partial)
    except Malformed:  # not JSON: the message is text
        calls.pop()
        r.pos = start
        _text(r, content)
    r.skip_ws()


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    lit = tools.literal
    constraint = f'( " " {lit("<|constrain|>")}? "json" )?'
    channel = f'{lit(CHANNEL)} ( "commentary" | "analysis" )'
    shapes = []
    for i, name in enumerate(tools.names):
        to = lit(" to=" + FUNCTIONS + name)
        tail = f"{constraint} {lit(MESSAGE)} {tools.args(i)}"
        shapes.append(f"{to} {channel} {tail}")
        shapes.append(f"{channel} {to} {tail}")
    call = f"( {' | '.join(shapes)} )"
    more = f" ( {lit('<|call|>' + START)} {call} )*" if parallel else ""
    return tools.build(f"{lit(START)}? {call}{more}")


FORMAT = register(
    ToolFormat(
        name="gptoss",
        detect=detect,
        parse=parse,
        grammar=grammar,
        triggers=(
            re.escape(START + " to="),
            re.escape(CHANNEL) + "(commentary|analysis) to=",
            "^ to=",
        ),
        reasoning=True,
    )
)
