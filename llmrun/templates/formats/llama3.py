"""Llama 3.1 / 3.2 / 3.3: a bare JSON object `{"name": ..., "parameters": {...}}` ("arguments" also
read), maybe after `<|python_tag|>`; and the built-in tools' `<|python_tag|>name.call(key="v")`.

The templates take one call per message (they raise on more), so parallel is one
call too. A bare object counts only when its first key is "name" (or "type":
"function") and it has arguments; other JSON in an answer stays content.
"""

from __future__ import annotations

import ast
import json
import re

from llmrun.templates.calls import ToolCall, ToolFormat, ToolGrammar, register
from llmrun.templates.formats._marked import Keys, Marked, read_object, skip_ws

TAG = "<|python_tag|>"
KEYS = Keys(first=("name", "type"), need_args=True)
BUILTIN = re.compile(r"([A-Za-z_]\w*)\.call\((.*)\)\s*$", re.DOTALL)
BUILTIN_SO_FAR = re.compile(r"[A-Za-z_]\w*(\.(c(a(l(l(\(.*)?)?)?)?)?)?$", re.DOTALL)


def builtin_call(text: str) -> ToolCall:
    """name.call(k="v", ...): keyword literals only, read with ast (never evaluated)."""
    m = BUILTIN.match(text)
    if not m:
        raise ValueError("not a built-in tool call")
    node = ast.parse(f"f({m.group(2)})", mode="eval").body
    if not isinstance(node, ast.Call) or node.args or any(k.arg is None for k in node.keywords):
        raise ValueError("built-in tool calls take keyword arguments")
    args = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return ToolCall(m.group(1), json.dumps(args, ensure_ascii=False))


def read(text: str, start: int, partial: bool) -> tuple[list[ToolCall], int, bool]:
    i = skip_ws(text, start)
    if i == len(text) or text[i] == "{":
        return read_object(text, i, partial, KEYS)
    rest = text[i:]
    if partial:  # a built-in call is whole only at the end of the answer
        if BUILTIN_SO_FAR.match(rest):
            return [], len(text), False
        raise ValueError("not a call after <|python_tag|>")
    try:
        return [builtin_call(rest)], len(text), True
    except SyntaxError as e:
        raise ValueError(str(e)) from e


SYNTAX = Marked(read=read, openers=(TAG, "{"), inclusive=("{",))


def detect(template: str) -> bool:
    return "<|start_header_id|>" in template and "ipython" in template


def grammar(tools: ToolGrammar, parallel: bool) -> str:
    return tools.build(f"({tools.literal(TAG)})? {tools.call_object('name', 'parameters')}")


FORMAT = register(
    ToolFormat(
        name="llama3",
        detect=detect,
        parse=SYNTAX.parse,
        grammar=grammar,
        triggers=(re.escape(TAG), r'\{\s*"name"'),
    )
)
