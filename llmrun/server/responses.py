"""OpenAI's response objects: completions, chat completions, models, embeddings, SSE chunks.

A streamed answer is a run of server-sent events sharing one head (id, created,
model); Chunks makes them, each token's event from a ready-made frame around
the piece's own JSON, since there is one event per token.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from llmrun.server.transport import ClosingStream

if TYPE_CHECKING:
    import numpy as np

    from llmrun.engine.batch import Handle

# The engine's reasons -> OpenAI's finish_reason.
FINISH_REASONS = {
    "stop": "stop",
    "eos": "stop",
    "length": "length",
    "context": "length",
    "cancelled": "stop",
    "error": "stop",
    "timeout": "length",  # with "timed_out": true in the choice
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"
PIECE = "\0piece\0"  # stands for the text in a streamed event's ready-made frame
PIECE_JSON = json.dumps(PIECE)


class EventStream(ClosingStream):
    """Server-sent events, closed as ClosingStream's are."""

    def __init__(
        self, events: AsyncIterator[str], on_close: Callable[[], None], stall_seconds: float
    ) -> None:
        super().__init__(
            events, on_close, "text/event-stream", headers=SSE_HEADERS, stall_seconds=stall_seconds
        )


def sse(data: Any) -> str:
    return "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "llmrun"}


def usage(handles: list[Handle]) -> dict[str, int]:
    prompt = sum(h.prompt_tokens for h in handles if h.follows is None)  # n: one prompt
    completion = sum(h.completion_tokens for h in handles)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason(handle: Handle) -> str:
    return FINISH_REASONS[handle.finish_reason or "stop"]


def head(kind: str, chat: bool, model_name: str) -> dict[str, Any]:
    prefix = "chatcmpl-" if chat else "cmpl-"
    return {
        "id": prefix + secrets.token_hex(12),
        "object": kind,
        "created": int(time.time()),
        "model": model_name,
        "system_fingerprint": None,
    }


def choice(i: int, text: str, finish: str | None, chat: bool) -> dict[str, Any]:
    if chat:
        return {
            "index": i,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish,
        }
    return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}


def delta(
    i: int, text: str | None, finish: str | None, chat: bool, role: bool = False
) -> dict[str, Any]:
    if not chat:
        return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
    change: dict[str, Any] = {} if text is None else {"content": text}
    if role:
        change["role"] = "assistant"
    return {"index": i, "delta": change, "logprobs": None, "finish_reason": finish}


def completion(
    handles: list[Handle], choices: list[dict[str, Any]], chat: bool, model_name: str
) -> dict[str, Any]:
    """The whole answers: one choice (see choice()) per handle."""
    kind = "chat.completion" if chat else "text_completion"
    marked(handles, choices)
    return {**head(kind, chat, model_name), "choices": choices, "usage": usage(handles)}


def marked(handles: list[Handle], choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A choice cut by the request's deadline says so beside its finish_reason "length"."""
    for h, choice in zip(handles, choices, strict=True):
        if h.finish_reason == "timeout":
            choice["timed_out"] = True
    return choices


class Chunks:
    """The events of one streamed answer of `n` choices."""

    def __init__(self, n: int, chat: bool, model_name: str) -> None:
        self.n = n
        self.chat = chat
        self.head = head("chat.completion.chunk" if chat else "text_completion", chat, model_name)
        self.frames = [
            self.chunk([delta(i, PIECE, None, chat)]).split(PIECE_JSON) for i in range(n)
        ]

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        return sse({**self.head, "choices": choices, **extra})

    def opening(self) -> str:
        """A chat stream's first event: the role, no text yet."""
        return self.chunk([delta(i, "", None, self.chat, True) for i in range(self.n)])

    def piece(self, i: int, text: str) -> str:
        before, after = self.frames[i]
        return before + json.dumps(text, ensure_ascii=False) + after

    def change(self, i: int, fields: dict[str, Any], logprobs: Any = None) -> str:
        """A chat event with one delta of any kind (reasoning, a tool call) for choice i."""
        return self.chunk(
            [{"index": i, "delta": fields, "logprobs": logprobs, "finish_reason": None}]
        )

    def text(self, i: int, text: str, logprobs: Any) -> str:
        """A completions event with text and its logprobs."""
        return self.chunk([{"index": i, "text": text, "logprobs": logprobs, "finish_reason": None}])

    def finish(self, handles: list[Handle], reasons: list[str] | None = None) -> str:
        finish = reasons or [finish_reason(h) for h in handles]
        choices = [delta(i, None, f, self.chat) for i, f in enumerate(finish)]
        return self.chunk(marked(handles, choices))

    def usage(self, handles: list[Handle]) -> str:
        return self.chunk([], usage=usage(handles))


def embedding_list(
    vectors: list[np.ndarray], encoding_format: str, used: int, model_name: str
) -> dict[str, Any]:
    data = []
    for i, vector in enumerate(vectors):
        if encoding_format == "base64":  # little-endian float32, as OpenAI sends it
            encoded: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            encoded = vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
