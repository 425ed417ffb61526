"""What the JSON-bodied formats share: call objects read as written, calls between markers.

Not a format itself (formats/__init__.py does not list it). A format built on it
says which marker opens a call, which (if any) closes it, and how to read the
body in between (`read_object`, `read_array`, or its own reader); `Marked.parse`
then does the content/call split, partial and final, the same way for all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial as bind

from llmrun.templates.calls import Parsed, ToolCall, arguments_text, held_prefix, json_prefix

# (text, start, partial) -> (calls, end, complete); ValueError when the body is no call.
Reader = Callable[[str, int, bool], tuple[list[ToolCall], int, bool]]

WS = " \t\r\n"


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in WS:
        i += 1
    return i


@dataclass(frozen=True)
class Member:
    key: str
    start: int  # the value's span in the text
    end: int
    complete: bool


def object_members(text: str, start: int) -> tuple[list[Member], int, bool]:
    """The members of the JSON object at `start` as spans: (members, end, complete).

    Spans, not values, so that a call's arguments keep the model's own text.
    Raises ValueError as soon as the text cannot be an object.
    """
    n = len(text)
    i = skip_ws(text, start)
    if i == n:
        return [], n, False
    if text[i] != "{":
        raise ValueError("not an object")
    members: list[Member] = []
    i += 1
    while True:
        i = skip_ws(text, i)
        if i == n:
            return members, n, False
        if text[i] == "}" and not members:
            return members, i + 1, True
        if text[i] != '"':
            raise ValueError("not a key")
        key_end, done = json_prefix(text, i)
        if not done:
            return members, n, False
        key = json.loads(text[i:key_end])
        i = skip_ws(text, key_end)
        if i == n:
            return members, n, False
        if text[i] != ":":
            raise ValueError("no colon after a key")
        value = skip_ws(text, i + 1)
        end, done = json_prefix(text, value)
        members.append(Member(key, value, end, done))
        if not done:
            return members, n, False
        i = skip_ws(text, end)
        if i == n:
            return members, n, False
        if text[i] == "}":
            return members, i + 1, True
        if text[i] != ",":
            raise ValueError("no comma between members")
        i += 1


@dataclass(frozen=True)
class Keys:
    """Which members of a call object hold what."""

    name: tuple[str, ...] = ("name",)
    args: tuple[str, ...] = ("arguments", "parameters")
    id: str = ""
    first: tuple[str, ...] = ()  # if set, the first key must be one of these (bare JSON calls)
    need_args: bool = False  # an object without arguments is no call (bare JSON calls)


def arguments_of(text: str, member: Member, partial: bool) -> str:
    """The arguments as written; a JSON string holding JSON is decoded, in final mode only."""
    raw = text[member.start : member.end].strip()
    if partial or not raw.startswith('"'):
        return raw
    return arguments_text(json.loads(raw))


def call_from(
    text: str, members: list[Member], complete: bool, partial: bool, keys: Keys
) -> ToolCall | None:
    """The call an object's members make; None while too little is written to tell."""
    if keys.first and members and members[0].key not in keys.first:
        raise ValueError("not a call object")
    found = {m.key: m for m in members}
    name = next((found[k] for k in keys.name if k in found), None)
    args = next((found[k] for k in keys.args if k in found), None)
    if name is None or not name.complete or (keys.need_args and args is None):
        if complete:
            raise ValueError("a call object without a name or arguments")
        return None
    value = json.loads(text[name.start : name.end])
    if not isinstance(value, str):
        raise ValueError("a call's name is not a string")
    arguments = arguments_of(text, args, partial) if args else ("" if not complete else "{}")
    ident = found.get(keys.id) if keys.id else None
    call_id = ""
    if ident is not None and ident.complete:
        call_id = str(json.loads(text[ident.start : ident.end]))
    return ToolCall(value, arguments, call_id)


def read_object(
    text: str, start: int, partial: bool, keys: Keys = Keys()
) -> tuple[list[ToolCall], int, bool]:
    """One call object: {"name": ..., "arguments": ...}."""
    members, end, complete = object_members(text, start)
    if not complete and not partial:
        raise ValueError("an unfinished call")
    if complete:
        json.loads(text[skip_ws(text, start) : end])  # the spans' scan is lenient; this is not
    call = call_from(text, members, complete, partial, keys)
    return ([call] if call else []), end, complete


def read_array(
    text: str, start: int, partial: bool, keys: Keys = Keys()
) -> tuple[list[ToolCall], int, bool]:
    """A JSON list of call objects (a lone object is read as a list of one)."""
    n = len(text)
    i = skip_ws(text, start)
    if i < n and text[i] == "{":
        return read_object(text, i, partial, keys)
    if i == n:
        return [], n, False
    if text[i] != "[":
        raise ValueError("not a list of calls")
    calls: list[ToolCall] = []
    i += 1
    while True:
        i = skip_ws(text, i)
        if i == n:
            break
        if text[i] == "]" and not calls:
            return calls, i + 1, True
        got, end, complete = read_object(text, i, partial, keys)
        calls += got
        i = skip_ws(text, end)
        if not complete or i == n:
            break
        if text[i] == "]":
            return calls, i + 1, True
        if text[i] != ",":
            raise ValueError("no comma between calls")
        i += 1
    if not partial:
        raise ValueError("an unfinished list of calls")
    return calls, n, False


def reader(read: Callable[..., tuple[list[ToolCall], int, bool]], keys: Keys) -> Reader:
    return bind(read, keys=keys)


@dataclass(frozen=True)
class Marked:
    """Calls that open with a marker, optionally close with one, content around them."""

    read: Reader
    openers: tuple[str, ...]
    closer: str = ""
    # openers that are the body's own first text (a bare JSON object's "{"), not a marker
    inclusive: tuple[str, ...] = ()

    def _next(self, text: str, pos: int) -> tuple[int, int]:
        """The next opener at or after pos: (where it starts, where its body starts)."""
        hits = [(i, m) for m in self.openers if (i := text.find(m, pos)) >= 0]
        if not hits:
            return -1, -1
        i, marker = min(hits)
        return i, i if marker in self.inclusive else i + len(marker)

    def parse(self, text: str, partial: bool) -> Parsed:
        """Calls in order; content is the rest, less the whitespace next to a call.

        An opener whose body does not read as a call stays content; so does, once the
        answer is whole, a call whose JSON never finished.
        """
        pieces: list[str] = []
        calls: list[ToolCall] = []
        seg = pos = 0  # the current content segment starts at seg; openers are sought from pos
        after_call = False

        def take(end: int) -> None:
            piece = text[seg:end].rstrip()
            pieces.append(piece.lstrip() if after_call else piece)

        while True:
            i, body = self._next(text, pos)
            if i < 0:
                break
            try:
                got, end, complete = self.read(text, body, partial)
            except ValueError:  # no call after all: the marker is content
                pos = i + 1
                continue
            j = skip_ws(text, end)
            if complete and self.closer and text.startswith(self.closer, j):
                end = j + len(self.closer)
            elif complete and self.closer and partial and self.closer.startswith(text[j:]):
                complete = False  # the closer may still be coming
            take(i)
            calls += got
            if not complete:  # partial: the rest is this call's
                return Parsed(content="".join(pieces), calls=calls)
            seg = pos = end
            after_call = True
        tail = text[seg:]
        tail = tail.lstrip() if after_call else tail
        if partial:
            tail = tail[: len(tail) - held_prefix(tail, self.openers)].rstrip()
        pieces.append(tail)
        return Parsed(content="".join(pieces), calls=calls)
