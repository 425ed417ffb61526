# ruff: noqa: RUF001, RUF002 (the markers are full-width bars, as DeepSeek spells them)
"""DeepSeek R1, V3/V3.1 and V3.2/V4: calls between full-width-bar markers.

R1 (and V3) write `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME` then the arguments in a
```json fence; V3.1 writes `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}`. Both sit in
`<｜tool▁calls▁begin｜>...<｜tool▁calls▁end｜>`. V3.2 and V4 write DSML markup instead:
`<｜DSML｜invoke name="NAME">` holding one `<｜DSML｜parameter name="P" string="true">` per
argument (string="false": the value is JSON), in a `<｜DSML｜function_calls>` block (V4:
`tool_calls`); their arguments are made into JSON text as they stream. One family, so one
parser reads every shape and the grammar offers them all: each model follows the one its
template taught it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmrun.templates.calls import (
    Parsed,
    ToolCall,
    ToolFormat,
    ToolGrammar,
    held_prefix,
    json_prefix,
    register,
)
from llmrun.templates.formats._scan import Incomplete, Malformed, Reader, final_arguments, sections

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
FENCE_OPEN = "```json"
FENCE_CLOSE = "```"
DSML = "｜DSML｜"
DSML_BLOCKS = tuple(f"<{DSML}{block}>" for block in ("function_calls", "tool_calls"))  # V3.2, V4
INVOKE, INVOKE_END = f'<{DSML}invoke name="', f"</{DSML}invoke>"
PARAM, PARAM_END = f'<{DSML}parameter name="', f"</{DSML}parameter>"


def detect(template: str) -> bool:
    r1 = CALLS_BEGIN in template and SEP in template
    return r1 or ("dsml_token" in template and "DSML" in template)


def _name(text: str) -> str:
    name = text.strip()
    if not name or any(c.isspace() for c in name) or "<" in name:
        raise Malformed("name")
    return name


def _call(r: Reader, calls: list[ToolCall]) -> None:
    head = r.until(SEP)
    if r.partial and not r.rest().strip():
        raise Incomplete  # which shape, not known yet
    fenced = not r.rest().lstrip().startswith("{")
    name = _name(r.until("\n") if fenced else head)  # R1: head is the type, "function"
    call = ToolCall(name, "")
    calls.append(call)
    r.skip_ws()
    if fenced:
        r.maybe(FENCE_OPEN)
    call.arguments = final_arguments(r.json(call), r.partial)
    r.skip_ws()
    if fenced:
        r.maybe(FENCE_CLOSE)
        r.skip_ws()
    r.close(CALL_END)


def _dsml_value(r: Reader, call: ToolCall, done: str, string: bool) -> str:
    """One parameter's value as JSON text; while it streams, the arguments so far first."""
    end = r.text.find(PARAM_END, r.pos)
    raw = r.rest() if end < 0 else r.text[r.pos : end]
    if end < 0 and not r.partial:
        raise Malformed(PARAM_END)
    if end < 0:
        raw = raw[: len(raw) - held_prefix(raw, (PARAM_END,))]
    if string:
        if end < 0:
            call.arguments = done + json.dumps(raw, ensure_ascii=False)[:-1]
            raise Incomplete
        value = json.dumps(raw, ensure_ascii=False)
    else:
        value = raw.strip()
        try:
            json_prefix(value) if end < 0 else json.loads(value)
        except ValueError:
            raise Malformed("JSON") from None
        if end < 0:
            call.arguments = done + value
            raise Incomplete
    r.pos = end + len(PARAM_END)
    return value


def _dsml_invoke(r: Reader, calls: list[ToolCall]) -> None:
    call = ToolCall(_name(r.until('">')), "{")
    calls.append(call)
    members: list[str] = []
    while True:
        r.skip_ws()
        if r.maybe(INVOKE_END):
            break
        r.expect(PARAM)
        name = r.until('" string="')
        string = r.until('">') == "true"
        done = call.arguments + (", " if members else "") + json.dumps(name) + ": "
        members.append(f"{json.dumps(name)}: {_dsml_value(r, call, done, string)}")
        call.arguments = "{" + ", ".join(members)
    call.arguments = "{" + ", ".join(members) + "}"


def _dsml_section(r: Reader, calls: list[ToolCall]) -> None:
    block = next(b for b in DSML_BLOCKS if r.rest().startswith(b))
    r.expect(block)
    while True:
        r.skip_ws()
        if r.at_end() and not r.partial:
            return
        if r.maybe("</" + block[1:]):
            return
        r.expect(INVOKE)
        _dsml_invoke(r, calls)


def _section(r: Reader, calls: list[ToolCall]) -> None:
    if r.rest().startswith(DSML_BLOCKS):
        _dsml_section(r, calls)
        return
    r.maybe(CALLS_BEGIN)  # some answers start right at a call's marker
    while True:
        r.skip_ws()
        if r.at_end() and not r.partial:
            return  # generation stopped before the closing marker
        if r.maybe(CALLS_END):
            return
        r.expect(CALL_BEGIN)
        _call(r, calls)


def parse(text: str, partial: bool) -> Parsed:
    return sections(text, partial, (CALLS_BEGIN, CALL_BEGIN, *DSML_BLOCKS), _section)


def system_prompt(tools: list[dict[str, Any]], parallel: bool = False) -> str:
    """The tools and the call syntax, for the templates that never show them (the R1
    distills', V3.1's): without it the model does not know what it may call."""
    listing = json.dumps([t["function"] for t in tools], indent=2, ensure_ascii=False)
    example = (
        f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}NAME\n{FENCE_OPEN}\n"
        f'{{"ARGUMENT": "VALUE"}}\n{FENCE_CLOSE}{CALL_END}{CALLS_END}'
    )
    return f"You may call these functions:\n{listing}\n\nTo call one, write:\n{example}"


def _dsml_param(tools: ToolGrammar, i: int, name: str, schema: dict[str, Any]) -> str:
    string = schema.get("type") == "string"
    head = tools.literal(f'{PARAM}{name}" string="{"true" if string else "false"}">')
    value = "[^<]*" if string else tools.schema_rule(schema, f"dsml-{i}-{name}")
    return f"{head} {value} {tools.literal(PARAM_END)}"


def _dsml_invoke_rule(tools: ToolGrammar, i: int) -> str:
    """One tool's invoke: its parameters in the schema's order, the optional ones optional."""
    params = tools.parameters(i)
    required = params.get("required", [])
    body = []
    for name, schema in params.get("properties", {}).items():
        rule = f"{_dsml_param(tools, i, name, schema)} {tools.literal(chr(10))}"
        body.append(rule if name in required else f"( {rule} )?")
    head = tools.literal(f'{INVOKE}{tools.names[i]}">\n')
    return f"{head} {' '.join(body)} {tools.literal(INVOKE_END)}"


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    lit = tools.literal
    shapes = []
    for i, name in enumerate(tools.names):
        args = tools.args(i)
        fence = f"{lit('function' + SEP + name + chr(10) + FENCE_OPEN + chr(10))} {args}"
        shapes.append(f"{fence} {lit(chr(10) + FENCE_CLOSE)}")
        shapes.append(f"{lit(name + SEP)} {args}")
    call = f"{lit(CALL_BEGIN)} ( {' | '.join(shapes)} ) {lit(CALL_END)}"
    invoke = f"( {' | '.join(_dsml_invoke_rule(tools, i) for i in range(len(tools.names)))} )"
    if parallel:
        call, invoke = f"{call} ( {call} )*", f'{invoke} ( "\\n" {invoke} )*'
    roots = [f"{lit(CALLS_BEGIN)} {call} {lit(CALLS_END)}"] + [
        f"{lit(block + chr(10))} {invoke} {lit(chr(10) + '</' + block[1:])}"
        for block in DSML_BLOCKS
    ]
    return tools.build(" | ".join(f"( {r} )" for r in roots))


FORMAT = register(
    ToolFormat(
        name="deepseek",
        detect=detect,
        parse=parse,
        grammar=grammar,
        triggers=(re.escape(CALLS_BEGIN), *map(re.escape, DSML_BLOCKS)),
        describe=system_prompt,
    )
)
