"""One choice of an OpenAI answer: its message (content, reasoning, tool calls) and logprobs.

A Choice follows one engine handle. The pieces go through its AnswerStream when the
answer has to be read (tools, reasoning), and come out as the deltas OpenAI streams:
reasoning_content and content as text, a tool call's id and name first, its arguments
as they are written. Log-probabilities are taken from the handle as its tokens come,
each sent once, with the delta its token belongs to (or the next one, while text is
held back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmrun.templates.calls import Parsed
from llmrun.templates.stream import AnswerReader, AnswerStream, Delta

if TYPE_CHECKING:
    from llmrun.engine.batch import Handle, TokenLogprob
    from llmrun.engine.model import Model


CUT = ("length", "context", "timeout")  # the engine's reasons for stopping at a limit


class Tokens:
    """Token text and bytes for logprobs, as the answer writes them."""

    def __init__(self, model: Model, special: bool) -> None:
        self.model = model
        self.special = special

    def bytes(self, token: int) -> bytes:
        return self.model.piece(token, self.special)

    def text(self, token: int) -> str:
        return self.bytes(token).decode("utf-8", errors="replace")

    def entry(self, lp: TokenLogprob) -> dict[str, Any]:
        """One token in chat's logprobs.content shape."""
        return {
            "token": self.text(lp.token),
            "logprob": lp.logprob,
            "bytes": list(self.bytes(lp.token)),
            "top_logprobs": [
                {"token": self.text(t), "logprob": v, "bytes": list(self.bytes(t))}
                for t, v in lp.top
            ],
        }

    def legacy(self, lps: list[TokenLogprob | None], tokens: list[int], offset: int) -> dict:
        """Tokens in the completions API's shape: parallel lists, None for a first token."""
        out: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for token, lp in zip(tokens, lps, strict=True):
            text = self.text(token)
            out["tokens"].append(text)
            out["token_logprobs"].append(None if lp is None else lp.logprob)
            out["top_logprobs"].append(None if lp is None else {self.text(t): v for t, v in lp.top})
            out["text_offset"].append(offset)
            offset += len(text)
        return out


@dataclass
class Choice:
    """The state of one choice while its answer comes."""

    index: int
    handle: Handle
    reader: AnswerReader
    stream: AnswerStream = field(init=False)
    logprobs_sent: int = 0

    def __post_init__(self) -> None:
        self.stream = AnswerStream(self.reader)

    def feed(self, piece: str) -> list[Delta]:
        return self.stream.feed(piece)

    def finish(self) -> tuple[list[Delta], Parsed]:
        return self.stream.finish(cut=self.handle.finish_reason in CUT)

    def new_logprobs(self) -> list[TokenLogprob]:
        """The token logprobs not sent yet (the engine thread appends as it goes)."""
        lps = self.handle.logprobs[self.logprobs_sent :]
        self.logprobs_sent += len(lps)
        return lps


def finish_reason(handle: Handle, parsed: Parsed, reasons: dict[str, str]) -> str:
    reason = reasons[handle.finish_reason or "stop"]
    if parsed.calls and reason == "stop":
        return "tool_calls"
    return reason


def tool_calls(parsed: Parsed) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in parsed.calls
    ]


def message(parsed: Parsed) -> dict[str, Any]:
    """A whole answer as an assistant message."""
    msg: dict[str, Any] = {
        "role": "assistant",
        "content": parsed.content if parsed.content or not parsed.calls else None,
        "refusal": None,
    }
    if parsed.reasoning:
        msg["reasoning_content"] = parsed.reasoning
    if parsed.calls:
        msg["tool_calls"] = tool_calls(parsed)
    return msg


def delta_fields(d: Delta) -> dict[str, Any]:
    """A Delta as the `delta` object of a chat.completion.chunk."""
    if d.call_index < 0:
        return {"reasoning_content": d.reasoning} if d.reasoning else {"content": d.content}
    call: dict[str, Any] = {"index": d.call_index}
    if d.call_id:
        call.update(id=d.call_id, type="function", function={"name": d.call_name, "arguments": ""})
    else:
        call["function"] = {"arguments": d.arguments}
    return {"tool_calls": [call]}
