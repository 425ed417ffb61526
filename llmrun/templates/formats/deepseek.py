# ruff: noqa: RUF001, RUF002 (the markers are full-width bars, as DeepSeek spells them)
"""DeepSeek R1 and V3/V3.1: calls between full-width-bar markers.

R1 (and V3) write `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME` then the arguments in a
```json fence; V3.1 writes `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}`. Both sit in
`<｜tool▁calls▁begin｜>...<｜tool▁calls▁end｜>`. One family, so one parser reads both shapes
(what follows the separator tells them apart) and the grammar offers both: each model
follows the one its template taught it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmrun.templates.calls import Parsed, ToolCall, ToolFormat, ToolGrammar, register
from llmrun.templates.formats._scan import Incomplete, Malformed, Reader, final_arguments, sections

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
FENCE_OPEN = "```json"
FENCE_CLOSE = "```"


def detect(template: str) -> bool:
    return CALLS_BEGIN in template and SEP in template


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


def _section(r: Reader, calls: list[ToolCall]) -> None:
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
    return sections(text, partial, (CALLS_BEGIN, CALL_BEGIN), _section)


def system_prompt(tools: list[dict[str, Any]]) -> str:
    """The tools and the call syntax, for the templates that never show them (the R1
    distills', V3.1's): without it the model does not know what it may call."""
    listing = json.dumps([t["function"] for t in tools], indent=2, ensure_ascii=False)
    example = (
        f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}NAME\n{FENCE_OPEN}\n"
        f'{{"ARGUMENT": "VALUE"}}\n{FENCE_CLOSE}{CALL_END}{CALLS_END}'
    )
    return f"You may call these functions:\n{listing}\n\nTo call one, write:\n{example}"


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    lit = tools.literal
    shapes = []
    for i, name in enumerate(tools.names):
        args = tools.args(i)
        shapes.append(
            f"{lit('function' + SEP + name + chr(10) + FENCE_OPEN + chr(10))} {args} "
            f"{lit(chr(10) + FENCE_CLOSE)}"
        )
        shapes.append(f"{lit(name + SEP)} {args}")
    call = f"{lit(CALL_BEGIN)} ( {' | '.join(shapes)} ) {lit(CALL_END)}"
    calls = f"{call} ( {call} )*" if parallel else call
    return tools.build(f"{lit(CALLS_BEGIN)} {calls} {lit(CALLS_END)}")


FORMAT = register(
    ToolFormat(
        name="deepseek",
        detect=detect,
        parse=parse,
        grammar=grammar,
        triggers=(re.escape(CALLS_BEGIN),),
    )
)
