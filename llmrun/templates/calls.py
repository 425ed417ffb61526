"""What a model's answer holds once parsed, and the table of tool-call formats.

A format (one module per family under `formats/`) knows three things about its
family's templates: how to recognise one (`detect`, by the markers the template
source contains, as llama.cpp's common/chat.cpp does), how to read an answer
written in it (`parse`), and the grammar that makes the model write a call
correctly (`grammar`). Parsing always reads the whole text so far; streaming
is the difference between two parses (see llmrun.templates.stream), so a format
never keeps state of its own.

`parse(text, partial)`: with `partial=True` the text is a prefix of the answer.
Then a call may be cut anywhere, and the result must be a prefix of what the
whole answer will give: content that might still turn into a call's opening
marker is held back (`held_prefix`), and a call's `arguments` is the JSON text
written so far (`json_prefix`). With `partial=False`, a call that does not
parse (bad JSON between the markers) is left in `content`, as the text it is.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as written (a prefix of it while streaming)
    id: str = ""  # the format's own id where it has one; the server makes one otherwise


@dataclass
class Parsed:
    content: str = ""
    reasoning: str = ""
    calls: list[ToolCall] = field(default_factory=list)


def openai_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def alnum9_call_id() -> str:
    """Mistral's templates refuse any id but 9 letters and digits."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


@dataclass(frozen=True)
class ToolFormat:
    """One family of tool-call syntax."""

    name: str
    detect: Callable[[str], bool]  # template source -> is it this family's
    parse: Callable[[str, bool], Parsed]  # (text, partial) -> the answer
    # (tools, parallel) -> GBNF whose root writes one call (or several, parallel), starting
    # with the trigger; used whole for tool_choice required/named, lazily after a trigger
    # for auto.
    grammar: Callable[[ToolGrammar, bool], str]
    triggers: tuple[str, ...]  # literal text that opens a call; the lazy grammar starts there
    # True: the format also reads the model's reasoning (gpt-oss's channels); otherwise
    # <think> tags are split off before `parse` sees the text.
    reasoning: bool = False
    # True: the format has no trigger; `grammar` is the whole answer's (generic JSON).
    whole: bool = False
    make_id: Callable[[], str] = openai_call_id  # ids for calls that come without one
    # (tools, parallel) -> the text that tells the model about the tools, for templates that
    # never show them; it goes into the system message.
    describe: Callable[[list[dict[str, Any]], bool], str] | None = None
    # For `whole` formats: tool_choice auto's grammar (a call or a plain answer).
    auto_grammar: Callable[[ToolGrammar, bool], str] | None = None


FORMATS: list[ToolFormat] = []  # every registered format; formats.ORDER is the detection order


def register(fmt: ToolFormat) -> ToolFormat:
    FORMATS.append(fmt)
    return fmt


def detect(template: str) -> ToolFormat:
    """The format of a template's tool calls; the generic JSON one if it has no tool syntax."""
    from llmrun.templates import formats  # registers every format

    for name in formats.ORDER:
        fmt = by_name(name)
        if fmt.detect(template):
            return fmt
    return by_name("generic")


def by_name(name: str) -> ToolFormat:
    from llmrun.templates import formats  # noqa: F401

    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(name)


# ---------------------------------------------------------------- helpers for formats


def held_prefix(text: str, markers: tuple[str, ...] | list[str]) -> int:
    """How many characters at the end of `text` could be the start of one of `markers`.

    A streaming parser holds those back: they may yet turn into a call's opening.
    """
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-n:]):
                best = n
                break
    return best


def json_prefix(text: str, start: int = 0) -> tuple[int, bool]:
    """Scan one JSON value from `start` (after whitespace): (end, complete).

    `end` is where the value ends when complete, else len(text). Raises ValueError
    as soon as the text cannot be the start of a JSON value: a streaming parser can
    then tell a call from text that only looked like one.
    """
    i = start
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    if i == n:
        return n, False
    depth = 0
    in_string = False
    escape = False
    scalar = text[i] not in '{["'
    if scalar:
        m = re.match(r"-?\d+(\.\d+)?([eE][+-]?\d+)?|true|false|null", text[i:])
        if not m:
            literal = text[i:]
            if any(w.startswith(literal) for w in ("true", "false", "null")) or re.fullmatch(
                r"-?\d*\.?\d*([eE][+-]?\d*)?", literal
            ):
                return n, False
            raise ValueError("not a JSON value")
        end = i + m.end()
        return (end, True) if end < n else (n, False)
    for j in range(i, n):
        c = text[j]
        if in_string:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == '"':
                in_string = False
                if depth == 0:
                    return j + 1, True
            continue
        if c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced JSON")
            if depth == 0:
                return j + 1, True
        elif c not in " \t\r\n,:-+.eE0123456789truefalsn":
            raise ValueError(f"unexpected {c!r} in JSON")
    return n, False


def loads_object(text: str) -> dict[str, Any] | None:
    """A JSON object, or None when the text is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def arguments_text(value: Any) -> str:
    """Arguments as OpenAI sends them: a JSON object as compact text."""
    if isinstance(value, str):  # some models write the arguments as a JSON string
        parsed = loads_object(value)
        return json.dumps(parsed, ensure_ascii=False) if parsed is not None else value
    return json.dumps(value, ensure_ascii=False)


MAX_REF_DEPTH = 8  # a recursive schema is cut off there, as any JSON value


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` with its "#/$defs/..." and "#/definitions/..." refs replaced by what
    they point at (pydantic writes nested models that way)."""

    def resolve(node: Any, depth: int) -> Any:
        if isinstance(node, list):
            return [resolve(x, depth) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            if depth >= MAX_REF_DEPTH:
                return {}
            target: Any = schema
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return resolve({**target, **rest}, depth + 1)
        return {k: resolve(v, depth) for k, v in node.items() if k not in ("$defs", "definitions")}

    return resolve(schema, 0)


class ToolGrammar:
    """GBNF pieces for a request's tools, for formats to assemble their call syntax from.

    `args(i)` is the rule name of tool i's arguments (its parameters schema);
    `call_object(name_key, args_key)` the rule of a JSON object {name_key: "NAME",
    args_key: {...}} for any of the tools; `build(root)` the whole grammar text with
    `root ::= <root>`. Literals go in with `literal()`.
    """

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.tools = tools
        self.names = [t["function"]["name"] for t in tools]
        self._conv = SchemaConverter(
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )
        self._args: dict[int, str] = {}
        self._objects: dict[tuple[str, str], str] = {}

    @staticmethod
    def literal(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    def parameters(self, i: int) -> dict[str, Any]:
        """Tool i's parameters schema, with its local $refs inlined: the schema is placed
        inside other schemas here, where "#/$defs/..." would point at the wrong root."""
        # No parameters: the function takes none (an empty object), as OpenAI reads it.
        params = self.tools[i]["function"].get("parameters") or {"type": "object", "properties": {}}
        return inline_refs(params)

    def args(self, i: int) -> str:
        if i not in self._args:
            schema = self._conv.resolve_refs(self.parameters(i), f"tool-{i}")
            self._args[i] = self._conv.visit(schema, f"args-{i}")
        return self._args[i]

    def schema_rule(self, schema: dict[str, Any], name: str) -> str:
        """A rule for any JSON Schema (a format's own wrapper object, say)."""
        return self._conv.visit(self._conv.resolve_refs(schema, name), name)

    def call_object(self, name_key: str = "name", args_key: str = "arguments") -> str:
        """A rule for {"name": one of the tools, "arguments": its parameters}."""
        key = (name_key, args_key)
        if key not in self._objects:
            schema = {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {name_key: {"const": name}, args_key: self.parameters(i)},
                        "required": [name_key, args_key],
                    }
                    for i, name in enumerate(self.names)
                ]
            }
            self._objects[key] = self.schema_rule(schema, f"call-{name_key}-{args_key}")
        return self._objects[key]

    def build(self, root: str) -> str:
        return f"root ::= {root}\n" + self._conv.format_grammar()
