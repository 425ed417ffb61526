"""Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "..."}]` (Nemo, Small up to 3.1),
and the v11 form `[TOOL_CALLS]name[ARGS]{...}` (Devstral, Ministral 3), with
`[CALL_ID]id` before `[ARGS]` in Mistral Small 3.2. Parallel v11 calls repeat
`[TOOL_CALLS]`. The templates accept only 9-letter alphanumeric ids.
"""

from __future__ import annotations

import json
import re

from llmrun.templates.calls import (
    ToolCall,
    ToolFormat,
    ToolGrammar,
    alnum9_call_id,
    json_prefix,
    register,
)
from llmrun.templates.formats._marked import Keys, Marked, read_array, skip_ws

OPEN = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
KEYS = Keys(id="id")
HEADER = re.compile(r"([\w.\-]+)(?:\[CALL_ID\]([A-Za-z0-9]+))?\[ARGS\]")
# What a header written so far can look like: the name, then perhaps [CALL_ID] and an id.
HEADER_SO_FAR = re.compile(r"[\w.\-]*(\[CALL_ID\][A-Za-z0-9]*)?")


def header_so_far(rest: str) -> bool:
    m = HEADER_SO_FAR.match(rest)
    left = rest[m.end() :] if m else rest
    return ARGS.startswith(left) or (not (m and m.group(1)) and CALL_ID.startswith(left))


def read_v11(text: str, start: int, partial: bool) -> tuple[list[ToolCall], int, bool]:
    """name[CALL_ID]id[ARGS]{...}: listed once the header is whole."""

    m = HEADER.match(text, start)
    if not m:
        if partial and header_so_far(text[start:]):
            return [], len(text), False
        raise ValueError("not a [TOOL_CALLS] header")
    end, complete = json_prefix(text, m.end())
    if not complete and not partial:
        raise ValueError("unfinished arguments")
    args = text[m.end() : end].strip()
    if complete:
        json.loads(args)
    return [ToolCall(m.group(1), args, m.group(2) or "")], end, complete


def read(text: str, start: int, partial: bool) -> tuple[list[ToolCall], int, bool]:
    i = skip_ws(text, start)
    if i == len(text):
        if not partial:
            raise ValueError("nothing after [TOOL_CALLS]")
        return [], i, False
    if text[i] in "[{":
        return read_array(text, i, partial, KEYS)
    return read_v11(text, i, partial)


SYNTAX = Marked(read=read, openers=(OPEN,))


def detect(template: str) -> bool:
    return OPEN in template


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    """Either form: the grammar does not know the template, the model writes its own."""
    objects = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": tools.parameters(i),
                    "id": {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"},
                },
                "required": ["name", "arguments"],
            }
            for i, name in enumerate(tools.names)
        ]
    }
    call = tools.schema_rule(objects, "mistral-call")
    listed = f'"[" {call}' + (f" ({tools.literal(', ')} {call})*" if parallel else "") + ' "]"'
    v11 = (
        "("
        + " | ".join(
            f"{tools.literal(name + ARGS)} {tools.args(i)}" for i, name in enumerate(tools.names)
        )
        + ")"
    )
    repeated = f" ({tools.literal(OPEN)} {v11})*" if parallel else ""
    return tools.build(f"{tools.literal(OPEN)} ({listed} | {v11}{repeated})")


FORMAT = register(
    ToolFormat(
        name="mistral",
        detect=detect,
        parse=SYNTAX.parse,
        grammar=grammar,
        triggers=(re.escape(OPEN),),
        make_id=alnum9_call_id,
    )
)
