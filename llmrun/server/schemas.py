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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF

from llmrun import grammar
from llmrun.errors import BadOption
from llmrun.grammar import SchemaProblem
from llmrun.options import check_param, spellings
from llmrun.server.openai_errors import ApiError

# OpenAI field -> llmrun Sampling name. top_k, min_p and repeat_penalty are not
# OpenAI's, but llama.cpp's server takes them under these names too.
SAMPLING_FIELDS = spellings("api")
# Accepted and ignored: bookkeeping that does not change the answer.
IGNORED_FIELDS = frozenset(
    {"model", "user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
)
# Accepted only at their default (or null): what this server cannot do.
DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "parallel_tool_calls": (True, False),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "dimensions": (),
}
CONTROL_FIELDS = frozenset({"stream", "stream_options", "response_format"})
CHAT_ONLY = frozenset({"messages", "max_completion_tokens", "tools", "tool_choice", "functions"})
CHAT_ONLY |= {"parallel_tool_calls", "function_call", "top_logprobs"}
COMPLETION_ONLY = frozenset({"prompt", "echo", "best_of", "suffix"})

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MESSAGE_KEYS = frozenset({"role", "content", "name"})


@dataclass
class Generate:
    """What a chat or completion request asks for, checked."""

    sampling: dict[str, Any] = field(default_factory=dict)  # overrides, llmrun names
    stream: bool = False
    include_usage: bool = False
    grammar: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)  # chat
    prompts: list[str | list[int]] = field(default_factory=list)  # completions


@dataclass
class Embed:
    inputs: list[str | list[int]]
    encoding_format: str = "float"


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _object(body: Any) -> dict[str, Any]:
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


def _sampling(name: str, value: Any) -> tuple[str, Any]:
    key = SAMPLING_FIELDS[name]
    if key == "max_tokens" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise bad(f"{name} must be a positive integer, got {json.dumps(value)}", name)
    try:
        return key, check_param(key, value, where=name)
    except BadOption as e:
        raise bad(str(e), name) from None


def _stream_options(value: Any) -> bool:
    if not isinstance(value, dict) or not set(value) <= {"include_usage", "include_obfuscation"}:
        raise bad("stream_options must be an object with include_usage", "stream_options")
    return bool(value.get("include_usage"))


def _bool(name: str, value: Any) -> bool:
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


def _generate(body: Any, allowed: frozenset[str], endpoint: str) -> Generate:
    req = Generate()
    for name, value in _object(body).items():
        _check_field(name, value, allowed, endpoint)
        if value is None:  # OpenAI's null means "the default"
            continue
        if name in SAMPLING_FIELDS:
            key, checked = _sampling(name, value)
            req.sampling[key] = checked
        elif name in CONTROL_SETTERS:
            CONTROL_SETTERS[name](req, value)
    return req


CONTROL_SETTERS: dict[str, Callable[[Generate, Any], None]] = {
    "stream": lambda r, v: setattr(r, "stream", _bool("stream", v)),
    "stream_options": lambda r, v: setattr(r, "include_usage", _stream_options(v)),
    "response_format": lambda r, v: setattr(r, "grammar", _response_format(v)),
}

COMMON = frozenset(SAMPLING_FIELDS) | IGNORED_FIELDS | frozenset(DEFAULT_ONLY) | CONTROL_FIELDS
CHAT_FIELDS = (COMMON - COMPLETION_ONLY - {"dimensions"}) | CHAT_ONLY
COMPLETION_FIELDS = (COMMON - CHAT_ONLY - {"dimensions"}) | COMPLETION_ONLY


# ---------------------------------------------------------------- chat


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad(f"{where}: only text content parts are supported", "messages")
            if not isinstance(part.get("text"), str):
                raise bad(f"{where}: a text part needs a string 'text'", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"{where}.content must be a string or a list of text parts", "messages")


def _message(i: int, msg: Any) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise bad(f"{where} must be an object with role and content", "messages")
    # Messages echoed back from a response carry empty tool fields: those are fine.
    extra = [k for k, v in msg.items() if k not in MESSAGE_KEYS and v not in (None, [], "")]
    if extra:
        raise bad(f"{where}: {extra[0]!r} is not supported by this server", "messages")
    role = msg.get("role")
    if role not in ROLES:
        raise bad(
            f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)}", "messages"
        )
    return {"role": ROLES[role], "content": _text(msg.get("content"), where)}


def parse_chat(body: Any) -> Generate:
    req = _generate(body, CHAT_FIELDS, "/v1/chat/completions")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages", "missing_required_parameter")
    req.messages = [_message(i, m) for i, m in enumerate(messages)]
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
    req = _generate(body, COMPLETION_FIELDS, "/v1/completions")
    if "prompt" not in body:
        raise bad("prompt is required", "prompt", "missing_required_parameter")
    req.prompts = _inputs(body["prompt"], "prompt")
    return req


# ---------------------------------------------------------------- embeddings

EMBED_FIELDS = frozenset({"input", "model", "encoding_format", "user", "dimensions"})
ENCODINGS = ("float", "base64")


def parse_embeddings(body: Any) -> Embed:
    for name, value in _object(body).items():
        _check_field(name, value, EMBED_FIELDS, "/v1/embeddings")
    if "input" not in body:
        raise bad("input is required", "input", "missing_required_parameter")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise bad(f"encoding_format must be float or base64, got {encoding!r}", "encoding_format")
    return Embed(_inputs(body["input"], "input"), encoding)
