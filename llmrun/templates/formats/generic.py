"""Templates with no tool syntax: the whole answer is JSON the grammar holds the model to,
`{"tool_call": {"name": ..., "arguments": {...}}}` (parallel: `{"tool_calls": [...]}`)
or `{"response": "text"}`, as llama.cpp's generic format does.

The template does not show the model its tools, so `system_prompt` describes them
and the JSON expected; the integrator adds it as (or to) the system message.
`grammar` is the call-only answer (tool_choice required/named), `auto_grammar`
the call-or-reply one.
"""

from __future__ import annotations

import json
from typing import Any

from llmrun.templates.calls import Parsed, ToolCall, ToolFormat, ToolGrammar, register
from llmrun.templates.formats._marked import (
    Keys,
    Member,
    object_members,
    read_array,
    read_object,
)

KEYS = Keys()


def detect(template: str) -> bool:
    return True  # the fallback: detect() tries it last


def string_so_far(raw: str, complete: bool) -> str:
    """The text a JSON string written so far says (an unfinished escape is left out)."""
    if complete:
        value = json.loads(raw)
        return value if isinstance(value, str) else raw
    body = raw[1:]
    for cut in range(min(len(body), 6) + 1):
        try:
            return json.loads('"' + body[: len(body) - cut] + '"')
        except ValueError:
            continue
    return ""


def calls_in(text: str, member: Member, partial: bool) -> list[ToolCall]:
    read = read_array if member.key == "tool_calls" else read_object
    calls, _, _ = read(text, member.start, partial, KEYS)
    return calls


def parse(text: str, partial: bool) -> Parsed:
    try:
        members, _, complete = object_members(text, 0)
        if complete and not partial:
            json.loads(text)  # the whole answer is the object, nothing after it
        elif not complete and not partial:
            raise ValueError("unfinished")
        found = {m.key: m for m in members}
        for key in ("tool_calls", "tool_call"):
            if key in found:
                return Parsed(calls=calls_in(text, found[key], partial))
        if "response" in found:
            m = found["response"]
            if text[m.start : m.start + 1] == '"':
                reply = string_so_far(text[m.start : m.end], m.complete)
                return Parsed(content=reply.rstrip() if partial else reply)
        if partial and not complete:
            return Parsed()  # too early to tell
    except ValueError:
        pass
    return Parsed(content=text.rstrip() if partial else text)


def call_schema(tools: ToolGrammar, parallel: bool) -> dict[str, Any]:
    call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": tools.parameters(i)},
                "required": ["name", "arguments"],
            }
            for i, name in enumerate(tools.names)
        ]
    }
    if parallel:
        listed = {"type": "array", "items": call, "minItems": 1}
        return {"type": "object", "properties": {"tool_calls": listed}, "required": ["tool_calls"]}
    return {"type": "object", "properties": {"tool_call": call}, "required": ["tool_call"]}


RESPONSE = {
    "type": "object",
    "properties": {"response": {"type": "string"}},
    "required": ["response"],
}


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    return tools.build(tools.schema_rule(call_schema(tools, parallel), "answer"))


def auto_grammar(tools: ToolGrammar, parallel: bool) -> str:
    """A call or a reply: tool_choice auto, where the grammar is the whole answer's."""
    schema = {"anyOf": [call_schema(tools, parallel), RESPONSE]}
    return tools.build(tools.schema_rule(schema, "answer"))


def system_prompt(tools: list[dict[str, Any]], parallel: bool = False) -> str:
    """Tells the model its tools and the JSON to answer in (its template says neither)."""
    listed = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description", ""),
            "parameters": t["function"].get("parameters") or {"type": "object"},
        }
        for t in tools
    ]
    call = '{"name": "<tool name>", "arguments": {<its parameters>}}'
    shape = f'{{"tool_calls": [{call}, ...]}}' if parallel else f'{{"tool_call": {call}}}'
    return (
        "You can call these tools:\n"
        + json.dumps(listed, indent=2, ensure_ascii=False)
        + "\n\nRespond in JSON format, either with `tool_call"
        + ("s" if parallel else "")
        + "` (a request to call tools) or with `response` (your reply to the user's request):\n"
        + f'{shape}\nor\n{{"response": "<your reply>"}}'
    )


FORMAT = register(
    ToolFormat(
        name="generic",
        detect=detect,
        parse=parse,
        grammar=grammar,
        triggers=(),
        whole=True,
        describe=system_prompt,
        auto_grammar=auto_grammar,
    )
)
