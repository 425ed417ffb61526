"""Phi-4-mini: `<|tool_call|>[{"name": ..., "arguments": {...}}, ...]<|/tool_call|>`.

Its template hands the tools over between `<|tool|>` and `<|/tool|>`; the
closing `<|/tool_call|>` is optional in an answer (the model may stop before it).
"""

from __future__ import annotations

import re

from llmrun.templates.calls import ToolFormat, ToolGrammar, register
from llmrun.templates.formats._marked import Keys, Marked, read_array, reader
from llmrun.templates.formats.granite import call_list

OPEN = "<|tool_call|>"
CLOSE = "<|/tool_call|>"
TOOLS_MARKER = "<|tool|>"

SYNTAX = Marked(read=reader(read_array, Keys()), openers=(OPEN,), closer=CLOSE)


def detect(template: str) -> bool:
    return TOOLS_MARKER in template or (OPEN in template and CLOSE in template)


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    return tools.build(f"{tools.literal(OPEN)} {call_list(tools, parallel)} {tools.literal(CLOSE)}")


FORMAT = register(
    ToolFormat(
        name="phi4",
        detect=detect,
        parse=SYNTAX.parse,
        grammar=grammar,
        triggers=(re.escape(OPEN),),
    )
)
