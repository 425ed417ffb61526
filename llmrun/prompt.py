"""Prompts to token ids: the one place that applies the system message and the chat template.

`llmrun run`, `llmrun run --batch` and `llmrun serve` all build their prompts here, so the
three give the model the same tokens for the same input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmrun.templates.render import ChatTemplate, Message

if TYPE_CHECKING:
    from llmrun.engine.model import Model


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """The messages with `system` first, unless they already carry a system message."""
    if system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages


def chat_tokens(
    model: Model, template: ChatTemplate, messages: list[Message], *, system: str | None = None
) -> list[int]:
    """The messages (with `system`, see with_system) through the model's chat template."""
    text = template.render(with_system(messages, system))
    # The template writes special tokens as text; parse them as the tokens they are.
    return model.tokenize(text, add_special=True, parse_special=True)


def raw_tokens(model: Model, prompt: str, *, system: str | None = None) -> list[int]:
    """The prompt as is (after `system` and a blank line); special-token text stays text."""
    text = f"{system}\n\n{prompt}" if system else prompt
    return model.tokenize(text, add_special=True, parse_special=False)
