"""A chat request made ready for the engine: the prompt, the grammar, how to read the answer.

One place decides, for `llmrun serve` and `llmrun run --tools` alike, what tools,
tool_choice and reasoning settings mean for this template: which tool-call format it
speaks (detected from its source), whether the tools go to the template or (for a
template with no tool syntax) into the system message, which grammar keeps a call well
formed (lazily, from the call's opening, for tool_choice auto; from the first token for
required or a named function), and whether <think> blocks are split off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmrun import grammar
from llmrun.engine.sampling import Grammar
from llmrun.errors import BadInput
from llmrun.prompt import with_system
from llmrun.templates import calls
from llmrun.templates.calls import ToolFormat, ToolGrammar
from llmrun.templates.reasoning import prompt_opens_thinking, template_thinks
from llmrun.templates.render import Message, Template
from llmrun.templates.stream import AnswerReader

REASONING_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Tools:
    """What a request says about tools."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    choice: str = "auto"  # none, auto, required, or the name of the function to call
    parallel: bool = True

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"


@dataclass(frozen=True)
class ChatPlan:
    prompt: str  # the rendered template
    grammar: Grammar | None
    reader: AnswerReader


def check_tools(value: Any) -> list[dict[str, Any]]:
    """OpenAI tool definitions, checked: [{"type": "function", "function": {"name", ...}}].

    BadInput names the first problem; the server and the CLI word it for their input.
    """
    if not isinstance(value, list):
        raise BadInput("tools must be a list of tool definitions")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise BadInput(f"{where} must be {{'type': 'function', 'function': {{...}}}}")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadInput(f"{where}.function must be an object with a name")
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise BadInput(f"{where}.function.parameters must be a JSON Schema object")
            try:
                grammar.schema_grammar(json.dumps(params))
            except grammar.SchemaProblem as e:
                raise BadInput(f"{where}.function.parameters: {e.detail}") from None
        tools.append({"type": "function", "function": fn})
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise BadInput("tools: two functions have the same name")
    return tools


def tool_format(template: Template) -> ToolFormat:
    return calls.detect(template.source)


def plan_chat(
    template: Template,
    messages: list[Message],
    *,
    tools: Tools | None = None,
    reasoning: str = "auto",
    template_kwargs: dict[str, Any] | None = None,
    system: str | None = None,
) -> ChatPlan:
    """The prompt and the rest for `messages`; `reasoning` is auto, on or off (see README)."""
    tools = tools or Tools()
    kwargs = dict(template_kwargs or {})
    fmt = tool_format(template)
    if reasoning == "off":
        kwargs.setdefault("enable_thinking", False)
    thinking = reasoning == "on" or (
        reasoning == "auto"
        and kwargs.get("enable_thinking", True) is not False
        and (template_thinks(template.source) or fmt.reasoning)
    )
    messages = with_system(messages, system)
    offered = tools.tools if tools.active else None
    if fmt.whole:  # no tool syntax in the template: calls and results become plain text
        messages = _as_text(messages)
    prompt = template.render(messages, tools=offered, **kwargs)
    names = [t["function"]["name"] for t in offered or []]
    if fmt.describe is not None and any(name not in prompt for name in names):
        messages = _described(messages, fmt.describe(offered or [], tools.parallel))
        prompt = template.render(messages, tools=offered, **kwargs)
    grammar = _grammar(fmt, tools) if tools.active else None
    reader = AnswerReader(
        format=fmt if (tools.active or fmt.reasoning) else None,
        thinking=thinking,
        opened=thinking and prompt_opens_thinking(prompt),
    )
    return ChatPlan(prompt, grammar, reader)


def _grammar(fmt: ToolFormat, tools: Tools) -> Grammar:
    chosen = [t for t in tools.tools if t["function"]["name"] == tools.choice]
    tg = ToolGrammar(chosen or tools.tools)
    if tools.choice == "auto":
        if fmt.whole and fmt.auto_grammar is not None:
            return Grammar(fmt.auto_grammar(tg, tools.parallel))
        return Grammar(fmt.grammar(tg, tools.parallel), fmt.triggers)
    if chosen:  # a named function: that one call
        return Grammar(fmt.grammar(tg, False))
    return Grammar(fmt.grammar(tg, tools.parallel))  # required


def _as_text(messages: list[Message]) -> list[Message]:
    """Past calls and results as the JSON the generic format has the model write and read."""
    out: list[Message] = []
    for msg in messages:
        if msg.get("tool_calls"):
            body = [
                {"name": c["function"]["name"], "arguments": _json(c["function"]["arguments"])}
                for c in msg["tool_calls"]
            ]
            out.append({"role": "assistant", "content": json.dumps({"tool_calls": body})})
        elif msg["role"] == "tool":
            result = {"tool_response": {"name": msg.get("name", ""), "content": msg["content"]}}
            out.append({"role": "user", "content": json.dumps(result, ensure_ascii=False)})
        else:
            out.append(msg)
    return out


def _described(messages: list[Message], text: str) -> list[Message]:
    """The tools' description in the system message, for templates that never show tools."""
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
