"""Metavars in --help as people expect them: N, TEXT, FILE; flags with none.

Typer (0.26 and later) labels each parameter with its Python type: `<int>`, `<str>`,
`<list[str]>`, and `<bool>` on flags that take no value. Its parameters all share one
`display_type`, so it is replaced here, once, for every command (serve and ps included).
"""

from __future__ import annotations

import re
from typing import Any

import typer.core

# Typer's label (inside <>) -> what --help shows; None: nothing (a flag takes no value).
METAVARS: dict[str, str | None] = {
    "int": "N",
    "int range": "N",
    "float": "NUMBER",
    "float range": "NUMBER",
    "str": "TEXT",
    "path": "PATH",
    "file": "FILE",
    "dir": "DIR",
    "datetime": "DATETIME",
    "bool": None,
}
LABEL = re.compile(r"^<(?:list\[)?(.*?)\]?>$")


def metavar(label: str | None, is_flag: bool = True) -> str | None:
    """`<int>` -> `N`, `<list[str]>` -> `TEXT`, `<a|b>` -> `[a|b]`, `<bool>` -> None (a flag)."""
    if label is None:
        return None
    match = LABEL.match(label)
    if match is None:  # not typer's <...> form: leave it
        return label
    inner = match.group(1)
    if inner == "bool":
        return None if is_flag else "BOOL"
    if inner in METAVARS:
        return METAVARS[inner]
    if "|" in inner:  # choices
        return f"[{inner}]"
    return inner.upper()


def install() -> None:
    """Replace typer's `display_type` (when this typer has one) by one that calls `metavar`."""
    base: Any = getattr(typer.core, "_TyperParameter", None)
    original = getattr(base, "display_type", None)
    if original is None or getattr(original, "_llmrun", False):
        return

    def display_type(self: Any, ctx: Any) -> str | None:
        if isinstance(self, typer.core.TyperArgument) and self.metavar is not None:
            return None  # the argument's own metavar already says it ("[MODEL] [PROMPT]...")
        shown = metavar(original(self, ctx), is_flag=bool(getattr(self, "is_flag", True)))
        if isinstance(self, typer.core.TyperArgument) and shown == "TEXT":
            return None  # MODEL says more than MODEL TEXT
        return shown

    display_type._llmrun = True  # type: ignore[attr-defined]
    base.display_type = display_type

    # Arguments by their metavar in capitals (MODEL, not model), and a required one bare
    # (`llmrun rm MODEL`, not `{model}`), as man pages and click write them.
    argument: Any = typer.core.TyperArgument
    name_raw = getattr(argument, "display_name_raw", None)
    if isinstance(name_raw, property) and name_raw.fget is not None:
        get_name = name_raw.fget
        argument.display_name_raw = property(
            lambda self: get_name(self) if self.metavar is not None else self.name.upper()
        )
    usage_name = getattr(argument, "_usage_display_name", None)
    if usage_name is not None:

        def _usage_display_name(self: Any) -> str:
            name = usage_name(self)
            return name[1:-1] if name.startswith("{") and name.endswith("}") else name

        argument._usage_display_name = _usage_display_name
