"""A cursor over a model's answer, shared by the marker-based formats (not a format itself).

Formats read their syntax as a short recursive descent over one `Reader`. Two ways out:
`Incomplete` when a partial answer ends inside a call (what was read so far stands), and
`Malformed` when the text cannot be the format's syntax (then it is content). Keeping
both as exceptions lets each format's reader say only what its syntax is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from llmrun.templates.calls import Parsed, ToolCall, held_prefix, json_prefix


class Incomplete(Exception):
    """A partial answer ended inside a call."""


class Malformed(Exception):
    """The text is not the format's syntax: it is content."""


class Reader:
    def __init__(self, text: str, pos: int, partial: bool) -> None:
        self.text = text
        self.pos = pos
        self.partial = partial

    def rest(self) -> str:
        return self.text[self.pos :]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def maybe(self, literal: str) -> bool:
        """Consume `literal` if it is next; Incomplete if the text ends inside it."""
        rest = self.rest()
        if rest.startswith(literal):
            self.pos += len(literal)
            return True
        if self.partial and literal.startswith(rest):
            raise Incomplete
        return False

    def expect(self, literal: str) -> None:
        if not self.maybe(literal):
            raise Malformed(literal)

    def close(self, literal: str) -> None:
        """A closing marker, which a final answer may lack: generation stopped before it."""
        if not (self.at_end() and not self.partial):
            self.expect(literal)

    def until(self, literal: str) -> str:
        """The text up to `literal`, consumed with it."""
        i = self.text.find(literal, self.pos)
        if i < 0:
            if self.partial:
                raise Incomplete
            raise Malformed(literal)
        value = self.text[self.pos : i]
        self.pos = i + len(literal)
        return value

    def json(self, call: ToolCall | None = None) -> str:
        """One JSON value, as written; a partial one goes into `call.arguments` first."""
        try:
            end, complete = json_prefix(self.text, self.pos)
        except ValueError:
            raise Malformed("JSON") from None
        value = self.text[self.pos : end].strip()
        if not complete:
            if not self.partial:
                raise Malformed("JSON")
            if call is not None:
                call.arguments = value
            raise Incomplete
        try:
            json.loads(value)
        except ValueError:
            raise Malformed("JSON") from None
        self.pos = end
        return value


def hold(text: str, markers: Sequence[str], partial: bool) -> str:
    """Content as it may be shown now: while partial, without a possible marker's start
    nor trailing whitespace."""
    if not partial:
        return text
    return text[: len(text) - held_prefix(text, markers)].rstrip()


def final_arguments(value: str, partial: bool) -> str:
    """Arguments some models write as a JSON string of JSON: decoded, in final mode only."""
    if partial or not value.startswith('"'):
        return value
    try:
        inner = json.loads(value)
    except ValueError:
        return value
    return inner.strip() if isinstance(inner, str) and inner.strip().startswith("{") else value


Section = Callable[[Reader, list[ToolCall]], None]


def sections(text: str, partial: bool, openers: Sequence[str], section: Section) -> Parsed:
    """Content with call sections in it: each section opens with one of `openers` and is
    read by `section` (which consumes the opener too). Whitespace around a section is not
    content; a section that is not the syntax makes the whole answer content."""
    calls: list[ToolCall] = []
    pieces: list[str] = []
    pos = 0
    while True:
        found = [i for i in (text.find(o, pos) for o in openers) if i >= 0]
        if not found:
            pieces.append(hold(text[pos:], openers, partial))
            break
        start = min(found)
        pieces.append(text[pos:start].rstrip())
        reader = Reader(text, start, partial)
        try:
            section(reader, calls)
        except Incomplete:
            break
        except Malformed:
            return Parsed(content=hold(text, openers, partial))
        reader.skip_ws()
        pos = reader.pos
    return Parsed(content="".join(pieces), calls=calls)
