"""Hermes 2 Pro / Qwen 2.5 / Qwen 3 / Granite 4: a JSON call object in `<tool_call>` blocks.

`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

Parallel calls are several blocks in a row. The `<function=...>` XML variant is
Qwen3-Coder's own family (tagged parameters, not JSON), so it is not read here.
"""

from __future__ import annotations

import re

from llmrun.templates.calls import ToolFormat, ToolGrammar, register
from llmrun.templates.formats._marked import Keys, Marked, read_object, reader

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
# Templates with <tool_call> whose body is not JSON: XML parameters, key/value tags, invoke.
OTHER_BODIES = ("<parameter=", "<arg_key>", "<invoke", "<tool_calls>")

SYNTAX = Marked(read=reader(read_object, Keys()), openers=(OPEN,), closer=CLOSE)


def detect(template: str) -> bool:
    return OPEN in template and not any(m in template for m in OTHER_BODIES)


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    block = (
        f"{tools.literal(OPEN + chr(10))} {tools.call_object()} {tools.literal(chr(10) + CLOSE)}"
    )
    more = f" ({tools.literal(chr(10))} {block})*" if parallel else ""
    return tools.build(block + more)


FORMAT = register(
    ToolFormat(
        name="hermes",
        detect=detect,
        parse=SYNTAX.parse,
        grammar=grammar,
        triggers=(re.escape(OPEN),),
    )
)
