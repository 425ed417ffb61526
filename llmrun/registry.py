"""The model registry: models.toml aliases, loaded, validated strictly, resolved.

The shipped models.toml (inside the package) is read first; a user models.toml
in LLMRUN_HOME then adds aliases, overrides shipped ones field by field (params
merge key by key) and may replace `default`. Every mistake in either file is one
RegistryError naming the file, the key and, when a text search finds it, the line.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from llmrun.errors import BadOption, RegistryError
from llmrun.options import PARAM_TYPES, check_param
from llmrun.repofiles import REPO_ID

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

FILENAME = "models.toml"

# Lower-case so lookups can be case-insensitive; no ':' (tag) or '/' (Hub id).
_ALIAS_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# What a llama.cpp quant name looks like (upper-case). Whether a repo has that file,
# or the quantizer supports it, is checked where it is used.
_QUANT_RE = re.compile(
    r"^(?:F32|F16|BF16|Q[4-8]_[01]|Q[2-6]_K(?:_(?:S|M|L|XL))?"
    r"|IQ[1-4]_(?:XXS|XS|S|M|NL)|TQ[12]_0|MXFP4)$"
)


def looks_like_quant(name: str) -> bool:
    """True when `name` (any case) has the shape of a llama.cpp quant type, e.g. Q4_K_M."""
    return bool(_QUANT_RE.match(name.upper()))


@dataclass(frozen=True)
class ModelEntry:
    """One alias of models.toml, after merging the shipped and user files."""

    name: str
    repo: str | None = None  # safetensors checkpoint, "org/name"
    gguf_repo: str | None = None  # repo of ready GGUF files
    quant: str = "Q4_K_M"  # default quant, upper-case
    revision: str = "main"
    context: int | None = None
    license: str | None = None
    description: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)  # validated generation defaults

    def __post_init__(self) -> None:
        # Frozen means read-only all the way down: callers share one registry.
        object.__setattr__(self, "quant", self.quant.upper())
        if not isinstance(self.params, MappingProxyType):
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


def split_tag(spec: str) -> tuple[str, str | None]:
    """`"name:q4_k_m"` -> `("name", "Q4_K_M")`; no tag -> `(spec, None)`.

    Callers pass model names and Hub ids, never paths.
    """
    name, sep, tag = spec.rpartition(":")
    if not sep or not name or "/" in tag:
        return spec, None
    return name, (tag.upper() or None)


@dataclass(frozen=True)
class Registry:
    default: str | None
    models: Mapping[str, ModelEntry]
    sources: tuple[Path, ...]  # the files it was read from, shipped first

    def get(self, name: str) -> ModelEntry | None:
        """The entry for an alias (case-insensitive), or None."""
        return self.models.get(name) or self.models.get(name.lower())

    def resolve(self, spec: str) -> tuple[ModelEntry, str] | None:
        """`"alias[:QUANT]"` -> (entry, upper-case quant); None when the alias is unknown."""
        name, tag = split_tag(spec)
        entry = self.get(name)
        if entry is None:
            return None
        return entry, tag or entry.quant

    def close_names(self, name: str, n: int = 3) -> list[str]:
        """Aliases that look like `name`, best first, for "did you mean"."""
        base, _ = split_tag(name)
        return difflib.get_close_matches(base.lower(), list(self.models), n=n, cutoff=0.6)


def shipped_path() -> Path:
    """The models.toml inside the package (editable or wheel install alike)."""
    return Path(str(importlib.resources.files("llmrun") / FILENAME))


def user_path(home: Path) -> Path:
    return Path(home) / FILENAME


def load_registry(home: Path | None = None) -> Registry:
    """Shipped registry plus `home`/models.toml (home None: $LLMRUN_HOME, if set)."""
    if home is None:
        env = os.environ.get("LLMRUN_HOME")
        home = Path(env).expanduser() if env else None
    paths = [shipped_path()]
    if home is not None and user_path(home).is_file():
        paths.append(user_path(home))

    fields_by_name: dict[str, dict[str, Any]] = {}  # merged raw fields; file order kept
    origin: dict[str, _Source] = {}  # the file that introduced each alias
    default: str | None = None
    default_src: _Source | None = None
    for path in paths:
        src = _Source.read(path)
        data = src.parse()
        for key in [k for k in data if k not in _TOP_LEVEL]:
            src.fail((key,), f"unknown key {key!r}", f"known: {', '.join(_TOP_LEVEL)}")
        if "default" in data:
            default = _alias(src, ("default",), data["default"])
            default_src = src
        models = data.get("models", {})
        if not isinstance(models, dict):
            src.fail(("models",), f"models must be a table, got {models!r}")
        for name, table in models.items():
            _alias(src, ("models", name), name)
            fields = _check_model(src, name, table)
            merged = fields_by_name.setdefault(name, {})
            params = {**merged.get("params", {}), **fields.pop("params", {})}
            merged.update(fields, params=params)
            origin.setdefault(name, src)

    entries: dict[str, ModelEntry] = {}
    for name, fields in fields_by_name.items():
        if not (fields.get("repo") or fields.get("gguf_repo")):
            origin[name].fail(("models", name), f"models.{_quote(name)} needs repo or gguf_repo")
        entries[name] = ModelEntry(name=name, **fields)
    if default_src is not None and default not in entries:
        near = difflib.get_close_matches(str(default), list(entries), n=1)
        default_src.fail(
            ("default",),
            f"default names no model: {default!r}",
            f"did you mean {near[0]!r}?" if near else f"known: {', '.join(entries)}",
        )
    return Registry(default, MappingProxyType(entries), tuple(paths))


# ---------------------------------------------------------------- validation tables


class _Invalid(ValueError):
    """A value's problem, phrased to follow "KEY ..."."""


def _repo_id(v: Any) -> str:
    if not isinstance(v, str) or not REPO_ID.match(v):
        raise _Invalid(f"must be a Hugging Face repo id 'org/name', got {v!r}")
    return v


def _quant(v: Any) -> str:
    if not isinstance(v, str) or not looks_like_quant(v):
        raise _Invalid(f"must be a quant type such as Q4_K_M or Q8_0, got {v!r}")
    return v.upper()


def _revision(v: Any) -> str:
    if not isinstance(v, str) or not v or any(c.isspace() for c in v):
        raise _Invalid(f"must be a branch, tag or commit, got {v!r}")
    return v


def _positive_int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise _Invalid(f"must be a positive integer, got {v!r}")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise _Invalid(f"must be a string, got {v!r}")
    return v


# key of [models.NAME] -> check returning the normalised value. `params` is a
# table of generation options, checked against llmrun.options instead.
_MODEL_KEYS: dict[str, Callable[[Any], Any]] = {
    "repo": _repo_id,
    "gguf_repo": _repo_id,
    "quant": _quant,
    "revision": _revision,
    "context": _positive_int,
    "license": _text,
    "description": _text,
}
_PARAMS = "params"
_TOP_LEVEL = ("default", "models")


def _alias(src: _Source, path: tuple[str, ...], value: Any) -> str:
    if not isinstance(value, str) or not _ALIAS_RE.match(value):
        src.fail(
            path,
            f"{_dotted(path)}: bad model name {value!r}",
            "use lower-case letters, digits, '.', '-' and '_'",
        )
    return value


def _check_model(src: _Source, name: str, table: Any) -> dict[str, Any]:
    """The validated fields of one [models.NAME] table (a partial entry is fine here)."""
    where = ("models", name)
    if not isinstance(table, dict):
        src.fail(where, f"{_dotted(where)} must be a table, got {table!r}")
    known = ", ".join([*_MODEL_KEYS, _PARAMS])
    fields: dict[str, Any] = {}
    for key, value in table.items():
        path = (*where, key)
        if key == _PARAMS:
            fields[key] = _check_params(src, name, value)
        elif key in _MODEL_KEYS:
            try:
                fields[key] = _MODEL_KEYS[key](value)
            except _Invalid as e:
                src.fail(path, f"{_dotted(path)} {e}")
        else:
            src.fail(path, f"unknown key {_dotted(path)}", f"known: {known}")
    return fields


def _check_params(src: _Source, name: str, table: Any) -> dict[str, Any]:
    where = ("models", name, _PARAMS)
    if not isinstance(table, dict):
        src.fail(where, f"{_dotted(where)} must be a table, got {table!r}")
    params: dict[str, Any] = {}
    for key, value in table.items():
        path = (*where, key)
        if key not in PARAM_TYPES:
            src.fail(path, f"unknown key {_dotted(path)}", f"known: {', '.join(PARAM_TYPES)}")
        try:
            params[key] = check_param(key, value, where=src.label(path))
        except BadOption as e:
            raise RegistryError(e.message, e.remedy) from None
    return params


# ---------------------------------------------------------------- files and messages


@dataclass
class _Source:
    """One models.toml being read: its path and text, for messages with line numbers."""

    path: Path
    text: str

    @classmethod
    def read(cls, path: Path) -> _Source:
        try:
            return cls(path, path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(f"{path}: not found", "reinstall llmrun") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RegistryError(f"{path}: cannot read: {e}") from None

    def parse(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as e:  # its message carries line and column
            raise RegistryError(f"{self.path}: invalid TOML: {e}") from None

    def label(self, path: tuple[str, ...]) -> str:
        """`FILE: line N: models.x.key` (no line when the search finds none)."""
        line = _find_line(self.text, path)
        where = f"{self.path}: line {line}" if line else str(self.path)
        return f"{where}: {_dotted(path)}"

    def fail(self, path: tuple[str, ...], problem: str, remedy: str | None = None) -> NoReturn:
        line = _find_line(self.text, path)
        where = f"{self.path}: line {line}" if line else str(self.path)
        raise RegistryError(f"{where}: {problem}", remedy)


def _quote(part: str) -> str:
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'


def _dotted(path: tuple[str, ...]) -> str:
    """A key path as the user would write it: models."qwen2.5-0.5b".quant."""
    return ".".join(_quote(p) for p in path)


_KEY_PART = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*""")
_HEADER = re.compile(r"^\[\[?(.*?)\]\]?\s*(?:#.*)?$")


def _split_key(text: str) -> tuple[str, ...] | None:
    """Parse a TOML dotted key (bare or quoted parts); None if it is not one."""
    parts: list[str] = []
    pos = 0
    while True:
        m = _KEY_PART.match(text, pos)
        if not m:
            return None
        parts.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
        if pos == len(text):
            return tuple(parts)
        if text[pos] != ".":
            return None
        pos += 1


def _find_line(text: str, path: tuple[str, ...]) -> int | None:
    """The line that defines `path`, by a plain scan of headers and `key =` lines.

    tomllib gives no positions for keys; this finds the usual spellings (tables,
    dotted keys, inline tables) and otherwise the closest enclosing line. Good
    enough for messages; never used for meaning.
    """
    table: tuple[str, ...] = ()
    best, best_len = None, 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER.match(stripped)
        if header:
            full = _split_key(header.group(1))
            if full is None:
                continue
            table = full
        else:
            key = _split_key(stripped.partition("=")[0]) if "=" in stripped else None
            if key is None:
                continue
            full = table + key
        if full == path:
            return number
        if len(full) > best_len and full == path[: len(full)]:
            best, best_len = number, len(full)
    return best
