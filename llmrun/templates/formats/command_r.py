"""Command R7B: the answer is blocks between <|START_X|> and <|END_X|> markers.

`<|START_THINKING|>` holds the reasoning (this format reads it, reasoning=True),
`<|START_RESPONSE|>` the answer's text and `<|START_ACTION|>` a JSON list of calls,
`[{"tool_call_id": "0", "tool_name": NAME, "parameters": {...}}, ...]`, whose ids the
template gives back with the results.
"""

from __future__ import annotations

import json
import re

from llmrun.templates.calls import Parsed, ToolCall, ToolFormat, ToolGrammar, register
from llmrun.templates.formats._scan import Incomplete, Malformed, Reader, final_arguments, hold

THINKING = ("<|START_THINKING|>", "<|END_THINKING|>")
RESPONSE = ("<|START_RESPONSE|>", "<|END_RESPONSE|>")
ACTION = ("<|START_ACTION|>", "<|END_ACTION|>")
TEXT_BLOCKS = {THINKING[0]: ("reasoning", THINKING[1]), RESPONSE[0]: ("content", RESPONSE[1])}
OPENERS = (THINKING[0], RESPONSE[0], ACTION[0])


def detect(template: str) -> bool:
    return ACTION[0] in template and RESPONSE[0] in template


def _member(r: Reader, fields: dict[str, object], calls: list[ToolCall]) -> None:
    key = json.loads(r.json())
    r.skip_ws()
    r.expect(":")
    r.skip_ws()
    call = calls[-1] if "tool_name" in fields else None
    if key == "parameters" and call is not None:
        call.arguments = final_arguments(r.json(call), r.partial)
        fields[key] = call.arguments
        return
    value = json.loads(r.json())
    fields[key] = value
    if key == "tool_name" and call is None:
        if not isinstance(value, str) or not value:
            raise Malformed("tool_name")
        calls.append(ToolCall(value, "", str(fields.get("tool_call_id", ""))))
    elif key == "tool_call_id" and call is not None:
        call.id = str(value)


def _object(r: Reader, calls: list[ToolCall]) -> None:
    r.expect("{")
    fields: dict[str, object] = {}
    r.skip_ws()
    if not r.maybe("}"):
        while True:
            _member(r, fields, calls)
            r.skip_ws()
            if r.maybe("}"):
                break
            r.expect(",")
            r.skip_ws()
    if "tool_name" not in fields:
        raise Malformed("tool_name")
    if "parameters" not in fields:
        calls[-1].arguments = "{}"


def _action(r: Reader, calls: list[ToolCall]) -> None:
    r.skip_ws()
    r.expect("[")
    r.skip_ws()
    if not r.maybe("]"):
        while True:
            _object(r, calls)
            r.skip_ws()
            if r.maybe("]"):
                break
            r.expect(",")
            r.skip_ws()
    r.skip_ws()
    r.close(ACTION[1])


def _action_or_text(r: Reader, calls: list[ToolCall], content: list[str]) -> None:
    """An action block whose JSON is not calls stays in the content, as written."""
    start, known = r.pos - len(ACTION[0]), len(calls)
    try:
        _action(r, calls)
    except Malformed:
        del calls[known:]
        end = r.text.find(ACTION[1], start)
        r.pos = len(r.text) if end < 0 else end + len(ACTION[1])
        content.append(hold(r.text[start : r.pos], (ACTION[1],), r.partial))


def parse(text: str, partial: bool) -> Parsed:
    out: dict[str, list[str]] = {"content": [], "reasoning": []}
    calls: list[ToolCall] = []
    r = Reader(text, 0, partial)
    try:
        while True:
            r.skip_ws()
            if r.at_end():
                break
            opener = next((o for o in OPENERS if r.maybe(o)), None)
            if opener is None:  # text outside the blocks: content
                found = [i for i in (text.find(o, r.pos) for o in OPENERS) if i >= 0]
                end = min(found) if found else len(text)
                out["content"].append(hold(text[r.pos : end], OPENERS, partial and not found))
                r.pos = end
            elif opener == ACTION[0]:
                _action_or_text(r, calls, out["content"])
            else:
                where, closer = TEXT_BLOCKS[opener]
                end = text.find(closer, r.pos)
                body = text[r.pos :] if end < 0 else text[r.pos : end]
                out[where].append(hold(body, (closer,), partial and end < 0).strip())
                r.pos = len(text) if end < 0 else end + len(closer)
    except Incomplete:
        pass
    return Parsed(
        content="\n".join(p for p in out["content"] if p),
        reasoning="\n".join(p for p in out["reasoning"] if p),
        calls=calls,
    )


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    lit = tools.literal
    ws = "[ \\t\\n]{0,8}"
    objects = []
    for i, name in enumerate(tools.names):
        schema = {
            "type": "object",
            "properties": {
                "tool_call_id": {"type": "string", "pattern": "^[0-9]{1,3}$"},
                "tool_name": {"const": name},
                "parameters": tools.parameters(i),
            },
            "required": ["tool_call_id", "tool_name", "parameters"],
        }
        objects.append(tools.schema_rule(schema, f"action-{i}"))
    obj = f"( {' | '.join(objects)} )"
    more = f' ( "," {ws} {obj} )*' if parallel else ""
    return tools.build(f'{lit(ACTION[0])} "[" {ws} {obj}{more} {ws} "]" {lit(ACTION[1])}')


FORMAT = register(
    ToolFormat(
        name="command_r",
        detect=detect,
        parse=parse,
        grammar=grammar,
        triggers=(re.escape(ACTION[0]),),
        reasoning=True,
    )
)
