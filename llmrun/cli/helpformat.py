"""Metavars in --help as people expect them: N, TEXT, FILE; flags with none.

Typer 0.28 (the one pyproject allows) labels each parameter with its Python type: `<int>`,
`<str>`, `<boolean>` on flags that take no value, `<model>` on arguments. Its help is
made through click's metavar methods, wrapped here once.
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
    "boolean": None,
    "filename": "FILE",
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


_installed: list[bool] = []


def install() -> None:
    """Route typer's labels through `metavar`, once, for every command (serve and ps included).

    Options' labels come from click's `Parameter.make_metavar` (typer carries its own copy
    of click); the rich help labels an argument `<type>` unless its type has a metavar.
    """
    if _installed:
        return
    _installed.append(True)
    from typer import _click

    make: Any = _click.core.Parameter.make_metavar

    def make_metavar(self: Any, ctx: Any, **kwargs: Any) -> str:
        label = make(self, ctx, **kwargs)
        if self.metavar is not None or label.endswith("..."):
            return label
        return metavar(label, is_flag=bool(getattr(self, "is_flag", False))) or ""

    _click.core.Parameter.make_metavar = make_metavar
    param_type: Any = _click.types.ParamType
    get_metavar = param_type.get_metavar

    def type_metavar(self: Any, param: Any, ctx: Any) -> str | None:
        if isinstance(param, typer.core.TyperArgument):
            return ""  # the argument's name (MODEL) says it
        return get_metavar(self, param, ctx)

    param_type.get_metavar = type_metavar

    # Arguments by their name in capitals (MODEL, not model), and a required one bare
    # (`llmrun rm MODEL`, not `{model}`), as man pages and click write them: a metavar of
    # its name (what the rich help shows), braces dropped.
    argument: Any = typer.core.TyperArgument
    init, make_argument = argument.__init__, argument.make_metavar

    def argument_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if self.metavar is None and self.name:
            self.metavar = self.name.upper()

    def argument_metavar(self: Any, ctx: Any, **kwargs: Any) -> str:
        label = make_argument(self, ctx, **kwargs)
        if label.startswith("{") and label.endswith("}"):
            label = label[1:-1]
        return label if self.nargs == 1 or label.endswith("...") else label + "..."

    argument.__init__ = argument_init
    argument.make_metavar = argument_metavar
