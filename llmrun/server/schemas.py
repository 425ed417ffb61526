"""Request bodies of the OpenAI endpoints, checked field by field from tables.

Every top-level field is in exactly one table: sampling fields map onto llmrun's
Sampling names and are checked by llmrun.options; a few OpenAI fields are
accepted and ignored; some are accepted only at their default value (what we
cannot do, said plainly); anything else is an unknown parameter. All failures
are ApiError 400s that name the field.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF

from llmrun import grammar
from llmrun.engine.images import MARKER, Image, RemoteImage, image_from_data_url
from llmrun.errors import BadInput, BadOption
from llmrun.grammar import SchemaProblem
from llmrun.options import check_param, spellings
from llmrun.server.openai_errors import ApiError
from llmrun.templates.plan import check_tools

# OpenAI field -> llmrun Sampling name. top_k, min_p and repeat_penalty are not
# OpenAI's, but llama.cpp's server takes them under these names too.
SAMPLING_FIELDS = spellings("api")
# Accepted and ignored: bookkeeping that does not change the answer.
IGNORED_FIELDS = frozenset(
    {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
)
# Accepted only at their default (or null): what this server cannot do.
DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "best_of": (1,),
    "suffix": ("",),
    "dimensions": (),
}
CONTROL_FIELDS = frozenset({"stream", "stream_options", "response_format", "n", "logprobs"})
CONTROL_FIELDS |= {"grammar", "model", "timeout"}  # grammar: llama-server's, a GBNF grammar as text
CONTROL_FIELDS |= {"lora"}  # llama-server's: [{"id": i, "scale": s}] over serve's --lora list
CHAT_ONLY = frozenset({"messages", "max_completion_tokens", "tools", "tool_choice", "functions"})
CHAT_ONLY |= {"parallel_tool_calls", "function_call", "top_logprobs", "chat_template_kwargs"}
CHAT_ONLY |= {"reasoning_effort", "reasoning_format"}
COMPLETION_ONLY = frozenset({"prompt", "echo", "best_of", "suffix"})

ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
MESSAGE_KEYS |= {"reasoning_content"}
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; llama-server's too
TOOL_CHOICES = ("none", "auto", "required")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
REASONING_FORMATS = ("none", "auto", "deepseek")  # llama-server's names


@dataclass
class Generate:
    """What a chat or completion request asks for, checked."""

    sampling: dict[str, Any] = field(default_factory=dict)  # overrides, llmrun names
    stream: bool = False
    include_usage: bool = False
    grammar: str | None = None
    n: int = 1
    logprobs: int | None = None  # None: none; k: each token's, with the k most likely
    top_logprobs: int | None = None  # chat's count of alternatives, folded into logprobs
    echo: bool = False  # completions: the prompt comes back first, with its logprobs
    prompt_only: bool = False  # max_tokens 0 (with echo): nothing generated
    messages: list[dict[str, Any]] = field(default_factory=list)  # chat
    prompts: list[str | list[int]] = field(default_factory=list)  # completions
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "auto"  # none, auto, required, or the name of the one function to call
    parallel_tool_calls: bool = True
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    reasoning: bool | None = None  # None: the server's --reasoning default
    model: str | None = None  # which model answers; None: the server's default
    timeout: float | None = None  # seconds this request may take in all (capped by --timeout)
    lora: dict[int, float] | None = None  # adapter index -> scale; None: serve's --lora scales


@dataclass
class Embed:
    inputs: list[str | list[int]]
    encoding_format: str = "float"
    model: str | None = None


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _check_field(name: str, value: Any, allowed: frozenset[str], endpoint: str) -> None:
    """Refuse fields that do not belong to this endpoint, or that we cannot honour."""
    if name not in allowed:
        raise bad(f"unknown parameter {name!r} for {endpoint}", name, "unknown_parameter")
    if name in DEFAULT_ONLY and value is not None and value not in DEFAULT_ONLY[name]:
        raise bad(
            f"{name}={json.dumps(value)} is not supported by this server", name, "unsupported_value"
        )


def int_field(name: str, value: Any, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        limit = f"{low}..{high}" if high is not None else f">= {low}"
        raise bad(f"{name} must be an integer {limit}, got {json.dumps(value)}", name)
    return value


def _sampling(name: str, value: Any) -> tuple[str, Any]:
    key = SAMPLING_FIELDS[name]
    if key == "max_tokens" and int_field(name, value, 0) == 0:
        return key, 0  # nothing generated: the caller decides whether that is allowed
    try:
        return key, check_param(key, value, where=name)
    except BadOption as e:
        raise bad(str(e), name) from None


def _stream_options(value: Any) -> bool:
    if not isinstance(value, dict) or not set(value) <= {"include_usage", "include_obfuscation"}:
        raise bad("stream_options must be an object with include_usage", "stream_options")
    return bool(value.get("include_usage"))


def bool_field(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false, got {json.dumps(value)}", name)
    return value


# How a SchemaProblem reads for response_format.
API_SCHEMA_PROBLEMS = {
    "not_object": "response_format.json_schema.schema must be a JSON object",
    "invalid": "not a valid JSON Schema {detail}",
    "unconvertible": "this JSON Schema cannot be turned into a grammar: {detail}",
}


@functools.lru_cache(maxsize=64)
def schema_grammar(schema_text: str) -> str:
    """A GBNF grammar for a JSON Schema (as canonical JSON text), checked first."""
    try:
        return grammar.schema_grammar(schema_text)
    except SchemaProblem as e:
        message = API_SCHEMA_PROBLEMS[e.kind].format(detail=e.detail)
        raise bad(message, "response_format") from None


def _response_format(value: Any) -> str | None:
    """text: no grammar; json_object: any JSON; json_schema: JSON that fits the schema."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":  # llama.cpp's servers also take a schema here
        schema = value.get("schema")
    elif kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise bad("response_format.json_schema must be an object", "response_format")
        schema = spec.get("schema")
    else:
        raise bad(
            "response_format must be {'type': 'text'}, {'type': 'json_object'} or "
            "{'type': 'json_schema', 'json_schema': {...}}",
            "response_format",
        )
    if schema is None:
        return JSON_GBNF
    return schema_grammar(json.dumps(schema, sort_keys=True))


Setter = Callable[[Generate, Any], None]


def _generate(
    body: Any, allowed: frozenset[str], endpoint: str, setters: dict[str, Setter]
) -> Generate:
    req = Generate()
    for name, value in json_object(body).items():
        _check_field(name, value, allowed, endpoint)
        if value is None:  # OpenAI's null means "the default"
            continue
        if name in SAMPLING_FIELDS:
            key, checked = _sampling(name, value)
            if key == "max_tokens" and checked == 0:
                req.prompt_only = True  # only meaningful with echo; checked by the endpoint
            else:
                req.sampling[key] = checked
        elif name in setters:
            setters[name](req, value)
    return req


def seconds(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok:
        raise bad(f"{name} must be a number of seconds > 0, got {json.dumps(value)}", name)
    return float(value)


def model_name(value: Any, param: str = "model") -> str:
    if not isinstance(value, str):
        raise bad(f"{param} must be a string, got {json.dumps(value)}", param)
    return value.strip()


def lora_field(value: Any) -> dict[int, float]:
    """llama-server's per-request `lora`: [{"id": 0, "scale": 0.5}, ...]; the ids are checked
    against the adapters the model has when the request reaches it."""
    if not isinstance(value, list):
        raise bad('lora must be a list of {"id": N, "scale": S}', "lora")
    scales: dict[int, float] = {}
    for item in value:
        if not isinstance(item, dict) or set(item) != {"id", "scale"}:
            raise bad('each lora entry must be {"id": N, "scale": S}', "lora")
        index = int_field("lora id", item["id"], 0)
        scale = item["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise bad(f"lora scale must be a number, got {scale!r}", "lora")
        if not math.isfinite(scale):
            raise bad("lora scale must be finite", "lora")
        scales[index] = float(scale)
    return scales


def _gbnf(value: Any) -> str:
    if not isinstance(value, str) or "root" not in value:
        raise bad("grammar must be GBNF text with a root rule", "grammar")
    return value


# ---------------------------------------------------------------- tools


def tools_field(value: Any) -> list[dict[str, Any]]:
    try:
        return check_tools(value)
    except BadInput as e:
        raise bad(e.message, "tools") from None


def _tool_choice(value: Any) -> str:
    if value in TOOL_CHOICES:
        return value
    fn = value.get("function") if isinstance(value, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return fn["name"]
    raise bad(
        "tool_choice must be none, auto, required or "
        "{'type': 'function', 'function': {'name': ...}}",
        "tool_choice",
    )


def _kwargs(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad("chat_template_kwargs must be an object", "chat_template_kwargs")
    return value


def _choice_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise bad(f"{name} must be one of {', '.join(choices)}, got {json.dumps(value)}", name)
    return value


def _reasoning_effort(req: Generate, value: Any) -> None:
    effort = _choice_of("reasoning_effort", value, REASONING_EFFORTS)
    req.template_kwargs.setdefault("reasoning_effort", effort)
    if effort == "none":
        req.template_kwargs.setdefault("enable_thinking", False)


def _reasoning_format(req: Generate, value: Any) -> None:
    fmt = _choice_of("reasoning_format", value, REASONING_FORMATS)
    req.reasoning = fmt != "none"


COMMON_SETTERS: dict[str, Setter] = {
    "stream": lambda r, v: setattr(r, "stream", bool_field("stream", v)),
    "stream_options": lambda r, v: setattr(r, "include_usage", _stream_options(v)),
    "response_format": lambda r, v: setattr(r, "grammar", _response_format(v)),
    "n": lambda r, v: setattr(r, "n", int_field("n", v, 1)),
    "grammar": lambda r, v: setattr(r, "grammar", _gbnf(v)),
    "model": lambda r, v: setattr(r, "model", model_name(v)),
    "timeout": lambda r, v: setattr(r, "timeout", seconds("timeout", v)),
    "lora": lambda r, v: setattr(r, "lora", lora_field(v)),
}
CHAT_SETTERS: dict[str, Setter] = {
    **COMMON_SETTERS,
    # logprobs is a switch here; how many alternatives is top_logprobs.
    "logprobs": lambda r, v: setattr(r, "logprobs", 0 if bool_field("logprobs", v) else None),
    "top_logprobs": lambda r, v: setattr(
        r, "top_logprobs", int_field("top_logprobs", v, 0, MAX_TOP_LOGPROBS)
    ),
    "tools": lambda r, v: setattr(r, "tools", tools_field(v)),
    "tool_choice": lambda r, v: setattr(r, "tool_choice", _tool_choice(v)),
    "parallel_tool_calls": lambda r, v: setattr(
        r, "parallel_tool_calls", bool_field("parallel_tool_calls", v)
    ),
    "chat_template_kwargs": lambda r, v: r.template_kwargs.update(_kwargs(v)),
    "reasoning_effort": _reasoning_effort,
    "reasoning_format": _reasoning_format,
}
COMPLETION_SETTERS: dict[str, Setter] = {
    **COMMON_SETTERS,
    # The legacy API's logprobs is the number of alternatives itself.
    "logprobs": lambda r, v: setattr(r, "logprobs", int_field("logprobs", v, 0, MAX_TOP_LOGPROBS)),
    "echo": lambda r, v: setattr(r, "echo", bool_field("echo", v)),
}

COMMON = frozenset(SAMPLING_FIELDS) | IGNORED_FIELDS | frozenset(DEFAULT_ONLY) | CONTROL_FIELDS
CHAT_FIELDS = (COMMON - COMPLETION_ONLY - {"dimensions"}) | CHAT_ONLY
COMPLETION_FIELDS = (COMMON - CHAT_ONLY - {"dimensions"}) | COMPLETION_ONLY


# ---------------------------------------------------------------- chat


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    text, images = _content(content, where)
    if images:
        raise bad(f"{where}: only user messages may carry images", "messages")
    return text


def _content(content: Any, where: str) -> tuple[str, list[Image | RemoteImage]]:
    """A message's content as text, with images.MARKER where each image part was, and the
    images: read from their data: URLs, or http(s) URLs for the server to fetch (or refuse)."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad(f"{where}.content must be a string or a list of content parts", "messages")
    parts: list[str] = []
    images: list[Image | RemoteImage] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad(f"{where}: a text part needs a string 'text'", "messages")
            parts.append(part["text"])
        elif kind == "image_url":
            images.append(_image_part(part.get("image_url"), f"{where}.content[{j}]"))
            parts.append(MARKER)
        else:
            raise bad(f"{where}: only text and image_url content parts are supported", "messages")
    return "".join(parts), images


def _image_part(value: Any, where: str) -> Image | RemoteImage:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise bad(f"{where}: an image_url part needs a string url", "messages")
    if url.startswith(("http://", "https://")):
        return RemoteImage(url, where)
    try:
        return image_from_data_url(url, where)
    except BadInput as e:
        raise bad(str(e), "messages", "invalid_image") from None


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's tool_calls, as templates get them (arguments as JSON text)."""
    if not isinstance(value, list):
        raise bad(f"{where}.tool_calls must be a list", "messages")
    calls = []
    for j, call in enumerate(value):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad(f"{where}.tool_calls[{j}] needs a function with a name", "messages")
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, str):  # some clients send the object itself
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {"name": fn["name"], "arguments": arguments},
            }
        )
    return calls


def parse_message(i: int, msg: Any) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise bad(f"{where} must be an object with role and content", "messages")
    # Messages echoed back from a response carry empty fields (refusal, audio): those are fine.
    extra = [k for k, v in msg.items() if k not in MESSAGE_KEYS and v not in (None, [], "")]
    if extra:
        raise bad(f"{where}: {extra[0]!r} is not supported by this server", "messages")
    role = msg.get("role")
    if role not in ROLES:
        raise bad(
            f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)}", "messages"
        )
    for key, owner in (("tool_calls", "assistant"), ("tool_call_id", "tool")):
        if msg.get(key) not in (None, [], "") and role != owner:
            raise bad(f"{where}: only {owner} messages carry {key}", "messages")
    out: dict[str, Any] = {"role": ROLES[role]}
    calls = msg.get("tool_calls")
    if role == "assistant" and calls:
        out["tool_calls"] = _tool_calls(calls, where)
        content = msg.get("content")
        out["content"] = None if content in (None, "") else _text(content, where)
    elif role == "user":
        out["content"], images = _content(msg.get("content"), where)
        if images:
            out["images"] = images
    else:
        out["content"] = _text(msg.get("content"), where)
    if role == "tool":
        if not isinstance(msg.get("tool_call_id", ""), str):
            raise bad(f"{where}.tool_call_id must be a string", "messages")
        out["tool_call_id"] = msg.get("tool_call_id") or ""
    for key in ("name", "reasoning_content"):
        if isinstance(msg.get(key), str) and msg[key]:
            out[key] = msg[key]
    return out


def parse_chat(body: Any) -> Generate:
    req = _generate(body, CHAT_FIELDS, "/v1/chat/completions", CHAT_SETTERS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages", "missing_required_parameter")
    req.messages = [parse_message(i, m) for i, m in enumerate(messages)]
    if req.prompt_only:
        raise bad("max_tokens must be a positive integer, got 0", "max_tokens")
    if req.top_logprobs:
        if req.logprobs is None:
            raise bad("top_logprobs needs logprobs: true", "top_logprobs")
        req.logprobs = req.top_logprobs
    names = [t["function"]["name"] for t in req.tools]
    if req.tool_choice not in TOOL_CHOICES and req.tool_choice not in names:
        raise bad(f"tool_choice names {req.tool_choice!r}, which is not in tools", "tool_choice")
    if req.tool_choice == "required" and not req.tools:
        raise bad("tool_choice required needs tools", "tool_choice")
    return req


# ---------------------------------------------------------------- completions


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _inputs(value: Any, name: str) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(value, str) or _is_tokens(value):
        return [value]
    strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if value and (strings or (isinstance(value, list) and all(_is_tokens(v) for v in value))):
        return list(value)
    raise bad(f"{name} must be a string, a list of strings, or token ids", name, "invalid_type")


def parse_completion(body: Any) -> Generate:
    req = _generate(body, COMPLETION_FIELDS, "/v1/completions", COMPLETION_SETTERS)
    if "prompt" not in body:
        raise bad("prompt is required", "prompt", "missing_required_parameter")
    req.prompts = _inputs(body["prompt"], "prompt")
    if req.prompt_only and not req.echo:
        raise bad("max_tokens 0 generates nothing; it needs echo: true", "max_tokens")
    return req


# ---------------------------------------------------------------- embeddings

EMBED_FIELDS = frozenset({"input", "model", "encoding_format", "user", "dimensions"})
ENCODINGS = ("float", "base64")


def parse_embeddings(body: Any) -> Embed:
    for name, value in json_object(body).items():
        _check_field(name, value, EMBED_FIELDS, "/v1/embeddings")
    if "input" not in body:
        raise bad("input is required", "input", "missing_required_parameter")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise bad(f"encoding_format must be float or base64, got {encoding!r}", "encoding_format")
    model = model_name(body["model"]) if body.get("model") is not None else None
    return Embed(_inputs(body["input"], "input"), encoding, model)
