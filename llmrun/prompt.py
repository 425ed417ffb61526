"""Prompts to token ids: the one place that applies the system message and the chat template.

`llmrun run`, `llmrun run --batch` and `llmrun serve` all build their prompts here, so the
three give the model the same tokens for the same input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmrun.engine.images import with_markers
from llmrun.templates.render import ChatTemplate, Message

if TYPE_CHECKING:
    from llmrun.engine.images import Image
    from llmrun.engine.model import Model


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """The messages with `system` first, unless they already carry a system message."""
    if system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages


def user_message(text: str, images: Sequence[Image] = ()) -> Message:
    """A user turn: the images (a marker each, in the content) before the text."""
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": with_markers(text, len(images)), "images": list(images)}


def message_images(messages: list[Message]) -> list[Image]:
    """The images the messages carry ("images": their content holds a marker for each), in
    the order their markers appear in the rendered prompt."""
    return [image for m in messages for image in m.get("images") or ()]


def chat_tokens(
    model: Model, template: ChatTemplate, messages: list[Message], *, system: str | None = None
) -> list[int]:
    """The messages (with `system`, see with_system) through the model's chat template."""
    text = template.render(with_system(messages, system))
    return rendered_tokens(model, text, messages)


def rendered_tokens(model: Model, text: str, messages: list[Message]) -> list[int]:
    """A rendered chat prompt as tokens, with the messages' images where their markers are."""
    # The template writes special tokens as text; parse them as the tokens they are.
    return model.tokenize(
        text, add_special=True, parse_special=True, images=message_images(messages)
    )


def raw_text(prompt: str, *, system: str | None = None) -> str:
    """A raw prompt: `system`, a blank line, then the prompt as is."""
    return f"{system}\n\n{prompt}" if system else prompt


def raw_tokens(
    model: Model, prompt: str, *, system: str | None = None, images: Sequence[Image] = ()
) -> list[int]:
    """The prompt as is (after `system` and a blank line); special-token text stays text."""
    text = raw_text(prompt, system=system)
    return model.tokenize(text, add_special=True, parse_special=False, images=images)


def last_part(prompt: str) -> int:
    """Where the prompt's last part starts: after its last blank line, 0 for a single part.

    `llmrun run` joins piped stdin and the prompt words with a blank line, so for
    `cat few-shot.txt | llmrun run "$question"` the last part is the question.
    """
    cut = prompt.rfind("\n\n")
    return cut + 2 if cut >= 0 else 0


def prefix_points(
    model: Model, tokens: list[int], text: str, prompt: str, *, parse_special: bool = True
) -> list[int]:
    """Token counts of the prefixes of a prompt worth keeping in the prompt cache.

    `text` is the whole prompt as the model gets it (`tokens`), `prompt` the user's last
    message within it: the prefixes end where that message starts (the system prompt and
    earlier turns) and where its last part starts. Each is measured in the prompt's own
    tokens, up to where tokenizing the prefix alone would start to differ.
    """
    start = text.rfind(prompt)
    if start < 0:  # the template changed the message's text: no place to cut
        return []
    points = []
    for cut in sorted({start, start + last_part(prompt)} - {0}):
        head = model.tokenize(text[:cut], add_special=True, parse_special=parse_special)
        n, limit = 0, min(len(head), len(tokens))
        while n < limit and head[n] == tokens[n]:
            n += 1
        points.append(n)
    return points
