"""Granite 3.x: `<|tool_call|>[{"name": ..., "arguments": {...}}, ...]`, with no closing marker.

Granite 4 moved to Hermes' `<tool_call>` blocks (formats.hermes); only the 3.x
templates, with `<|start_of_role|>` roles and the `<|tool_call|>` token, are this.
"""

from __future__ import annotations

import re

from llmrun.templates.calls import ToolFormat, ToolGrammar, register
from llmrun.templates.formats._marked import Keys, Marked, read_array, reader

OPEN = "<|tool_call|>"

SYNTAX = Marked(read=reader(read_array, Keys()), openers=(OPEN,))


def detect(template: str) -> bool:
    return OPEN in template and "<|start_of_role|>" in template


def call_list(tools: ToolGrammar, parallel: bool) -> str:
    """A JSON list of one call, or of one or more."""
    call = tools.call_object()
    more = f" ({tools.literal(', ')} {call})*" if parallel else ""
    return f'"[" {call}{more} "]"'


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    return tools.build(f"{tools.literal(OPEN)} {call_list(tools, parallel)}")


FORMAT = register(
    ToolFormat(
        name="granite",
        detect=detect,
        parse=SYNTAX.parse,
        grammar=grammar,
        triggers=(re.escape(OPEN),),
    )
)
