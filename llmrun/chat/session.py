"""A conversation with one loaded model, and no terminal I/O: the REPL drives it, or a script.

Every turn renders the whole conversation with the model's own template and hands the tokens to
`Model.generate`, whose prefix reuse evaluates only what the KV cache does not hold yet. For the
prefix to match exactly, the tokens of the previous turn are kept as the engine saw them (the
reply's sampled tokens, which a re-tokenization of the reply's text does not always reproduce),
and only the text after them is tokenized.

When the conversation no longer fits, the oldest turns leave the window (the system prompt
stays); they remain in `messages` and in saved files.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrun import store
from llmrun.engine import Model, Stats
from llmrun.engine.images import MARKER, Image, image_from_base64
from llmrun.errors import BadInput
from llmrun.options import SAMPLING_CHECKS, Sampling, check_param
from llmrun.prompt import message_images, prefix_points, user_message
from llmrun.templates.reasoning import prompt_opens_thinking, template_thinks
from llmrun.templates.render import ChatTemplate, Message
from llmrun.templates.stream import AnswerReader, AnswerStream, Delta

SAVE_FORMAT = 1
DEFAULT_RESERVE = 512  # tokens kept free for a reply when -n sets no limit
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ROLES = ("user", "assistant")

if TYPE_CHECKING:
    from llmrun.promptcache import PromptCache


def chats_dir() -> Path:
    return store.home() / "chats"


def chat_path(name: str) -> Path:
    if not _NAME_RE.match(name) or len(name) > 100:
        raise BadInput(f"bad chat name {name!r}", "use letters, digits, '.', '-' and '_'")
    return chats_dir() / f"{name}.json"


def saved_chats() -> list[str]:
    folder = chats_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


class Reply:
    """One answer as it streams. Iterate it for the text; `message` is its entry in the history.

    The message is in the history from the start, marked `interrupted` until the answer ends,
    so a reply cut short by Ctrl-C (or never read) stays in the conversation, marked.
    """

    def __init__(self, session: ChatSession, tokens: list[int], dropped: int) -> None:
        self.message: Message = {"role": "assistant", "content": "", "interrupted": True}
        self.dropped = dropped  # turns that left the window to make room for this one
        self.stats: Stats | None = None
        self.reasoning = ""  # a thinking model's thinking: shown, never saved as the answer
        self._parts: list[str] = []
        self._events = session._stream(self, tokens)

    def __iter__(self) -> Iterator[str]:
        """The answer's text as it comes (thinking left out)."""
        return (d.content for d in self._events if d.content)

    def events(self) -> Iterator[Delta]:
        """The answer as it comes, thinking (Delta.reasoning) and text (Delta.content)."""
        return self._events

    def close(self) -> None:
        """Stop generating; what came so far stays in the history, marked interrupted."""
        self._events.close()

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def interrupted(self) -> bool:
        return bool(self.message.get("interrupted"))

    @property
    def stop_reason(self) -> str:
        return self.stats.stop_reason if self.stats else ""


class ChatSession:
    """Messages, settings and the KV-cache bookkeeping of one conversation."""

    def __init__(
        self,
        model: Model,
        sampling: Sampling | None = None,
        system: str | None = None,
        *,
        name: str | None = None,
        template: ChatTemplate | None = None,
        think: str = "auto",
        cache: PromptCache | None = None,
    ) -> None:
        """`think`: auto (split a thinking template's <think> off), on, or off (ask the
        template not to think). `cache`: the prompt cache, for the first turn's prefix."""
        self.model = model
        self.name = name or model.path.stem
        self.sampling = sampling or Sampling()
        self.system = system
        self.template = template or ChatTemplate(model)
        self.template_kwargs = {"enable_thinking": False} if think == "off" else {}
        self.thinking = think == "on" or (think == "auto" and template_thinks(self.template.source))
        self.messages: list[Message] = []
        self.cache = cache
        self.start = 0  # messages before this index have left the window to fit the context
        self.last: Reply | None = None
        # What the engine saw last: the prompt's text and tokens, then the reply's tokens.
        self._base: tuple[str, list[int]] = ("", [])
        self._generated: list[int] = []
        # SentencePiece vocabularies put a space before text that starts a tokenize call.
        probe = model.tokenize("a", add_special=False)
        self._space_prefix = model.detokenize(probe).startswith(" ")

    # ------------------------------------------------------------ turns

    def send(self, text: str, images: Sequence[Image] = ()) -> Reply:
        """Add a user message (with `images` before its text) and start the reply;
        ContextOverflow when it cannot fit at all."""
        if images and self.model.images is None:
            raise BadInput(
                f"{self.name} cannot read images: it has no projector",
                "chat with a vision model, or give its projector with --mmproj FILE",
            )
        self.messages.append(user_message(text, images))
        try:
            return self._reply()
        except BaseException:
            self.messages.pop()
            raise

    def retry(self) -> Reply:
        """Generate the last reply again, in its place."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            raise BadInput("there is no reply to retry")
        removed = self.messages.pop()
        try:
            return self._reply()
        except BaseException:
            self.messages.append(removed)
            raise

    def clear(self) -> None:
        """A new conversation: same model, system prompt and settings."""
        self.messages = []
        self.start = 0
        self.last = None

    def set(self, name: str, value: Any) -> None:
        """Change one generation parameter (as in models.toml `[params]`) for the next replies."""
        value = check_param(name, value)
        if name == "system":
            self.system = value
        else:
            self.sampling = self.sampling.merged({name: value})

    def options(self) -> dict[str, Any]:
        return {k: list(v) if k == "stop" else v for k, v in asdict(self.sampling).items()}

    def context_used(self) -> int:
        """Tokens the conversation in the window takes, with the prompt for the next reply."""
        return len(self._render(self.start)[1]) if self.messages else 0

    # ------------------------------------------------------------ saving

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SAVE_FORMAT,
            "model": self.name,
            "saved": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "system": self.system,
            "options": self.options(),
            "start": self.start,
            "messages": [_saved(m) for m in self.messages],
        }

    def save(self, name: str) -> Path:
        path = chat_path(name)
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        store.write_text_atomic(path, text)
        return path

    def load(self, name: str) -> dict[str, Any]:
        """Restore a saved conversation: messages, system prompt and options. Returns the file."""
        path = chat_path(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            known = ", ".join(saved_chats()) or "none yet"
            raise BadInput(f"no saved chat {name!r}", f"saved: {known}") from None
        except (OSError, ValueError) as e:
            raise BadInput(f"cannot read {path}: {e}") from None
        self.restore(data, str(path))
        return data

    def restore(self, data: Any, where: str = "saved chat") -> None:
        """Take the state of `to_dict()`; BadInput naming `where` when it is not one."""
        messages, system, options, start = _check_saved(data, where)
        self.sampling = Sampling().merged(options)
        self.system = system
        self.messages = messages
        self.start = start
        self.last = None

    # ------------------------------------------------------------ internals

    def _reply(self) -> Reply:
        text, tokens, dropped = self._fit()
        self._base, self._generated = (text, tokens), []
        reply = Reply(self, tokens, dropped)
        self.messages.append(reply.message)
        self.last = reply
        return reply

    def _stream(self, reply: Reply, tokens: list[int]) -> Iterator[Delta]:
        prefixes = None
        images = any(t < 0 for t in tokens)  # the prompt cache keeps text prefixes only
        if self.cache is not None and not self.model.n_cached and not images:  # a first turn
            text, user = self._base[0], self.messages[-2]["content"]
            prefixes = self.cache.for_prompt(prefix_points(self.model, tokens, text, user))
        stream = self.model.generate(tokens, self.sampling, store=prefixes)
        reader = AnswerReader(
            thinking=self.thinking,
            opened=self.thinking and prompt_opens_thinking(self._base[0]),
        )
        answer = AnswerStream(reader)

        def take(deltas: list[Delta]) -> Iterator[Delta]:
            for d in deltas:
                reply.reasoning += d.reasoning
                if d.content:
                    reply._parts.append(d.content)
                yield d

        try:
            for piece in stream:
                yield from take(answer.feed(piece))
            yield from take(answer.finish()[0])
            del reply.message["interrupted"]
        finally:
            stream.close()
            reply.message["content"] = reply.text
            reply.stats = self.model.stats
            cached = self.model.cached_tokens
            if cached[: len(tokens)] == tokens:
                self._generated = cached[len(tokens) :]

    def _window(self, start: int) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        keys = ("role", "content", "images")
        return head + [{k: m[k] for k in keys if k in m} for m in self.messages[start:]]

    def _render(self, start: int) -> tuple[str, list[int]]:
        window = self._window(start)
        text = self.template.render(window, **self.template_kwargs)
        return text, self._tokens(text, message_images(window))

    def _tokens(self, text: str, images: Sequence[Image] = ()) -> list[int]:
        """The prompt's tokens: those the engine saw last turn, then the new text tokenized.

        `images`: those of the window, in order; the new text holds the last of them."""
        model = self.model

        def whole() -> list[int]:
            return model.tokenize(text, add_special=True, parse_special=True, images=images)

        base_text, base_tokens = self._base
        if not base_tokens or not text.startswith(base_text):
            return whole()
        rest = text[len(base_text) :].encode("utf-8")
        tokens = list(base_tokens)
        used = 0
        for token in self._generated:
            piece = model.piece(token)
            if not rest.startswith(piece, used):
                break
            tokens.append(token)
            used += len(piece)
        while used < len(rest) and rest[used] & 0xC0 == 0x80:  # inside a character: back off
            used -= len(model.piece(tokens.pop()))
        new = rest[used:].decode("utf-8")
        own = images[len(images) - new.count(MARKER) :] if MARKER in new else ()
        tail = model.tokenize(new, add_special=False, parse_special=True, images=own)
        if self._space_prefix and tail and tail[0] >= 0 and model.piece(tail[0]):
            # The tail starts with text, which such a vocabulary would prefix with a space.
            return whole()
        return tokens + tail

    def _fit(self) -> tuple[str, list[int], int]:
        """The prompt for the next reply, dropping the oldest turns when it would not fit."""
        n_ctx = self.model.n_ctx
        limit = self.sampling.max_tokens
        reserve = min(limit if limit > 0 else DEFAULT_RESERVE, n_ctx // 2)
        start = self.start
        text, tokens = self._render(start)
        if len(tokens) + reserve > n_ctx:
            # A drop changes the prefix, so the window is evaluated again from the start: drop
            # down to half the context, as llama.cpp's context shift does, so that is rare.
            target = min(n_ctx - reserve, n_ctx // 2)
            while len(tokens) > target and (later := self._next_turn(start)) is not None:
                start = later
                text, tokens = self._render(start)
        self.model.check_fits(len(tokens))  # the last message alone is too long
        dropped = sum(m["role"] == "user" for m in self.messages[self.start : start])
        self.start = start
        return text, tokens, dropped

    def _next_turn(self, start: int) -> int | None:
        """Where the turn after the one at `start` begins; None when that is the last one."""
        for i in range(start + 1, len(self.messages)):
            if self.messages[i]["role"] == "user":
                return i
        return None


def _saved(message: Message) -> Message:
    """A message as a saved chat holds it: its images as base64 strings."""
    if not message.get("images"):
        return message
    images = [base64.b64encode(image.data).decode("ascii") for image in message["images"]]
    return {**message, "images": images}


def _check_saved(data: Any, where: str) -> tuple[list[Message], str | None, dict[str, Any], int]:
    def bad(why: str) -> BadInput:
        return BadInput(f"{where} is not a saved chat: {why}")

    if not isinstance(data, dict) or data.get("format") != SAVE_FORMAT:
        raise bad(f"expected a JSON object with format {SAVE_FORMAT}")
    raw = data.get("messages")
    if not isinstance(raw, list):
        raise bad("messages must be a list")
    messages: list[Message] = []
    for i, m in enumerate(raw):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
            or not set(m) <= {"role", "content", "interrupted", "images"}
            or not isinstance(m.get("interrupted", True), bool)
        ):
            raise bad(f"message {i} must have a role (user or assistant) and a content string")
        message = dict(m)
        if "images" in m:
            images = m["images"]
            if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
                raise bad(f"message {i}: images must be a list of base64 strings")
            message["images"] = [image_from_base64(x, f"{where}: message {i}") for x in images]
        messages.append(message)
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise bad("system must be a string or null")
    raw_options = data.get("options", {})
    if not isinstance(raw_options, dict):
        raise bad("options must be an object")
    options = {k: check_param(k, v, f"{where}: options.{k}") for k, v in raw_options.items()}
    if not set(options) <= set(SAMPLING_CHECKS):
        raise bad(f"options may only hold {', '.join(SAMPLING_CHECKS)}")
    start = data.get("start", 0)
    if not isinstance(start, int) or not 0 <= start <= len(messages):
        raise bad("start must be a message index")
    return messages, system, options, start
