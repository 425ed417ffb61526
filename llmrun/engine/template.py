"""The model's own chat template, from the GGUF, rendered as llama-cpp-python renders it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llmrun.errors import BadInput

if TYPE_CHECKING:
    from llmrun.engine.model import Model

Message = dict[str, Any]


def _token_text(model: Model, token: int) -> str:
    if token < 0:
        return ""
    return llama_cpp.llama_vocab_get_text(model.vocab, token).decode("utf-8", errors="replace")


class ChatTemplate:
    """Renders a list of {"role", "content"} messages into the prompt text."""

    def __init__(self, model: Model) -> None:
        template = model.metadata("tokenizer.chat_template")
        if not template:
            raise BadInput(
                f"{model.path.name} has no chat template",
                "use --raw for plain completion",
            )
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(model, model.eos),
            bos_token=_token_text(model, model.bos),
        )

    def render(self, messages: list[Message]) -> str:
        try:
            return self._formatter(messages=messages).prompt
        except Exception as e:  # a template's own raise_exception, or a Jinja error
            raise BadInput(f"the model's chat template refused the conversation: {e}") from None
