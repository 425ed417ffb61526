"""Reading an answer as it is generated: reasoning, content and tool calls, as deltas.

An AnswerReader knows how this request's answer is written (the template's tool-call
format, whether <think> blocks are to be split off, whether the prompt opened one). An
AnswerStream feeds it the text as it comes and gives out what is new since the last
piece: the differences between two parses of the text so far (see calls.py). A parse
that takes back what an earlier one said (a call that turned out to be malformed) sends
nothing more for it; the whole answer (`finish`) is always the final parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmrun.templates.calls import Parsed, ToolCall, ToolFormat, openai_call_id
from llmrun.templates.reasoning import split_thinking


@dataclass(frozen=True)
class Delta:
    """One new part of an answer: text of one kind, or a tool call's start or arguments."""

    content: str = ""
    reasoning: str = ""
    call_index: int = -1  # >= 0: this delta is about tool call number call_index
    call_id: str = ""  # with the name, on the call's first delta
    call_name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class AnswerReader:
    """How to read one request's answer.

    `format`: the tool-call format, when the request has tools (or, for gpt-oss, always:
    its channels carry the reasoning); `thinking`: split <think> blocks off as reasoning;
    `opened`: the prompt itself opened the block.
    """

    format: ToolFormat | None = None
    thinking: bool = False
    opened: bool = False

    @property
    def active(self) -> bool:
        """False when the answer is plain text: nothing to read, pieces go out as they are."""
        return self.format is not None or self.thinking

    def parse(self, text: str, partial: bool) -> Parsed:
        reasoning = ""
        if self.thinking and not (self.format and self.format.reasoning):
            reasoning, text = split_thinking(text, partial, opened=self.opened)
        if self.format is None:
            return Parsed(content=text, reasoning=reasoning)
        parsed = self.format.parse(text, partial)
        if reasoning:
            parsed.reasoning = reasoning + parsed.reasoning
        return parsed


@dataclass
class AnswerStream:
    """Feed the pieces of an answer; get the deltas to send, then the whole answer."""

    reader: AnswerReader
    sent: Parsed = field(default_factory=Parsed)
    length: int = 0  # characters fed so far
    _parts: list[str] = field(default_factory=list)
    _ids: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """Everything fed so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def feed(self, piece: str) -> list[Delta]:
        # Kept as parts: plain text is never joined piece by piece (that is quadratic).
        self._parts.append(piece)
        self.length += len(piece)
        if not self.reader.active:  # plain text: the piece as it is, no parsing
            return [Delta(content=piece)] if piece else []
        return self._diff(self.reader.parse(self.text, True))

    def finish(self, cut: bool = False) -> tuple[list[Delta], Parsed]:
        """The last deltas, and the answer whole (calls with their ids).

        `cut`: generation stopped at a limit (max_tokens, the context). The answer is then read
        as the prefix it is: a call cut off is a call with its arguments so far (as OpenAI
        returns it), or nothing before its name is complete, never markup in the text.
        """
        if not self.reader.active:
            return [], Parsed(content=self.text)
        final = self.reader.parse(self.text, partial=cut)
        deltas = self._diff(final)
        for i, call in enumerate(final.calls):
            call.id = self._id(i, call)
        return deltas, final

    def _id(self, i: int, call: ToolCall) -> str:
        """Call i's id: the model's own where the format carries one, else a new one, once."""
        while len(self._ids) <= i:
            self._ids.append("")
        if not self._ids[i]:
            fmt = self.reader.format
            self._ids[i] = call.id or (fmt.make_id() if fmt else openai_call_id())
        return self._ids[i]

    def _diff(self, new: Parsed) -> list[Delta]:
        out: list[Delta] = []
        sent = self.sent
        if new.reasoning.startswith(sent.reasoning) and len(new.reasoning) > len(sent.reasoning):
            out.append(Delta(reasoning=new.reasoning[len(sent.reasoning) :]))
            sent.reasoning = new.reasoning
        if new.content.startswith(sent.content) and len(new.content) > len(sent.content):
            out.append(Delta(content=new.content[len(sent.content) :]))
            sent.content = new.content
        for i, call in enumerate(new.calls):
            if i == len(sent.calls):
                if i and not _same(sent.calls[i - 1], new.calls[i - 1]):
                    break  # the earlier call changed under us: keep what was sent
                call_id = self._id(i, call)
                out.append(Delta(call_index=i, call_id=call_id, call_name=call.name))
                sent.calls.append(ToolCall(call.name, "", call_id))
            mine = sent.calls[i]
            if mine.name != call.name or not call.arguments.startswith(mine.arguments):
                break
            if len(call.arguments) > len(mine.arguments):
                out.append(Delta(call_index=i, arguments=call.arguments[len(mine.arguments) :]))
                mine.arguments = call.arguments
        return out


def _same(a: ToolCall, b: ToolCall) -> bool:
    return a.name == b.name and a.arguments == b.arguments
