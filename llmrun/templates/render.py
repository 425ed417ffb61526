"""Chat templates rendered as transformers renders them: sandboxed Jinja, with tools.

A template sees what `apply_chat_template` gives it: `messages`, `tools`,
`add_generation_prompt`, `bos_token`/`eos_token`, the helpers `raise_exception`,
`strftime_now` and a `tojson` that writes JSON as Python's json.dumps does (not
Jinja's HTML-safe one), plus any template kwargs (`enable_thinking`, ...).
Assistant messages may carry OpenAI `tool_calls`; their `arguments` are handed
to the template as objects, which is what templates index and `tojson`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from llmrun.errors import BadInput

if TYPE_CHECKING:
    import jinja2

    from llmrun.engine.model import Model

Message = dict[str, Any]


class TemplateError(Exception):
    """A template's own raise_exception()."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    if not isinstance(value, (dict, list, str, int, float, bool, type(None))):
        value = list(value)  # a filter's generator (map, select): Jinja's lists are lazy
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _environment() -> jinja2.Environment:
    # jinja2 is imported here, when a template is compiled: a --raw run never needs it.
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import SandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        """transformers' {% generation %} block (it marks the assistant's tokens): its body."""

        tags: ClassVar[set[str]] = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    # Sandboxed, but mutable: real templates build lists with .append() (Kimi K2's do).
    env = SandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def template_messages(
    messages: list[Message], object_arguments: bool = True, null_content: bool = True
) -> list[Message]:
    """Messages as templates expect them. Templates differ on an assistant message with
    tool calls: most want its arguments as objects, a few (Functionary) as JSON text; some
    test its content for none (DeepSeek R1), others add it to strings: render() tries the
    variants in that order."""
    out = []
    for msg in messages:
        calls = msg.get("tool_calls")
        if not calls:
            out.append(msg)
            continue
        msg = copy.deepcopy(msg)
        if not null_content and msg.get("content") is None:
            msg["content"] = ""
        for call in msg["tool_calls"]:
            fn = call.get("function", {})
            if not object_arguments:
                if not isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.dumps(fn.get("arguments"), ensure_ascii=False)
            elif isinstance(fn.get("arguments"), str):
                with contextlib.suppress(ValueError):  # not JSON: the template gets the text
                    fn["arguments"] = json.loads(fn["arguments"])
        out.append(msg)
    return out


# How to hand tool calls to a template, in the order tried: (object_arguments, null_content).
CALL_VARIANTS = ((True, True), (False, True), (True, False), (False, False))


class Template:
    """One chat template's source, compiled; `name` says whose it is in errors."""

    def __init__(self, source: str, name: str, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        import jinja2

        try:
            self._compiled = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise BadInput(f"{name} is not a valid Jinja template (line {e.lineno}): {e}") from None

    def render(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The prompt text; BadInput naming the template when it refuses."""
        import jinja2

        variables = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **kwargs,
            "add_generation_prompt": add_generation_prompt,
        }
        if tools:
            variables["tools"] = tools
        variants = CALL_VARIANTS if any(m.get("tool_calls") for m in messages) else ((True, True),)
        try:
            for i, (objects, nulls) in enumerate(variants):
                variables["messages"] = template_messages(messages, objects, nulls)
                try:
                    return self._compiled.render(**variables)
                except (TypeError, jinja2.UndefinedError):
                    if i == len(variants) - 1:
                        raise
            raise AssertionError("unreachable")
        except TemplateError as e:
            raise BadInput(f"{self.name} refused the conversation: {e}") from None
        except Exception as e:  # Jinja's own errors, or a template indexing what is not there
            raise BadInput(f"{self.name} failed: {type(e).__name__}: {e}") from None


def _token_text(model: Model, token: int) -> str:
    if token < 0:
        return ""
    return model.piece(token, special=True).decode("utf-8", errors="replace")


def read_template_file(path: Path) -> str:
    """A --chat-template FILE's text: a .jinja file, or a tokenizer_config.json's template."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read --chat-template file {path}: {e.strerror}") from None
    if path.suffix == ".json":
        try:
            value = json.loads(text).get("chat_template")
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
            value = next((v.get("template") for v in value if v.get("name") == "default"), None)
        if not isinstance(value, str):
            raise BadInput(f"--chat-template file {path} has no chat_template string")
        return value
    return text


class ChatTemplate(Template):
    """The template a model is chatted with: `override`'s (--chat-template FILE) or its own."""

    def __init__(
        self, model: Model, override: Path | None = None, source: str | None = None
    ) -> None:
        """`source`: override's text, when it was read already (checked before a load)."""
        if override is not None:
            source = source if source is not None else read_template_file(override)
            name = f"chat template {override}"
        else:
            source = model.metadata("tokenizer.chat_template") or ""
            name = f"the chat template of {model.path.name}"
            if not source:
                raise BadInput(
                    f"{model.path.name} has no chat template",
                    "use --raw for plain completion, or give one with --chat-template FILE",
                )
        super().__init__(source, name, _token_text(model, model.bos), _token_text(model, model.eos))
