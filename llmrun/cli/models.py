"""`llmrun list`, `llmrun show MODEL`, `llmrun rm MODEL`: the local model store."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from llmrun import store
from llmrun.cli.common import JsonOpt, ModelArg, YesOpt, app, err, print_json
from llmrun.errors import BadInput
from llmrun.ggufinfo import format_count, read_info
from llmrun.resolve import (
    DEMO_ALIAS,
    DEMO_PACKAGE,
    DEMO_QUANT,
    ResolvedModel,
    demo_gguf,
    find_stored,
    resolve_model,
)

TemplateOpt = Annotated[bool, typer.Option("--template", help="Print only the chat template.")]
RmModelArg = Annotated[
    str,
    typer.Argument(
        help="A stored model: name[:QUANT], an alias or org/repo; without :QUANT, every quant.",
        show_default=False,
    ),
]

# ---------------------------------------------------------------- output helpers


def human_size(n: int | None) -> str:
    """Bytes the way disks are sold: 98.4 MB, 4.7 GB."""
    if n is None:
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on stdout: rich at a terminal, plain aligned columns when piped."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    if sys.stdout.isatty():
        table = Table(box=box.SIMPLE_HEAD, header_style="bold")
        for i, header in enumerate(headers):  # only the last column may wrap
            table.add_column(header, no_wrap=i < len(headers) - 1)
        for row in cells:
            table.add_row(*row)
        Console(highlight=False, emoji=False).print(table)
        return
    widths = [max(len(x) for x in col) for col in zip(headers, *cells, strict=True)]
    for row in [list(headers), *cells]:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")


def print_fields(fields: Sequence[tuple[str, Any]]) -> None:
    """`key  value` lines on stdout, keys aligned."""
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        sys.stdout.write(f"{key.ljust(width)}  {'-' if value is None else value}\n")


# ---------------------------------------------------------------- list


def listing() -> list[dict[str, Any]]:
    """The store's models, and the demo model when its package is installed."""
    rows = []
    for m in store.list_models():
        arch, params = m.manifest.get("architecture"), m.manifest.get("parameters")
        if arch is None or params is None:  # no manifest: ask the file (milliseconds)
            arch, params = _arch_and_params(m.path)
        rows.append(
            {
                "name": m.name,
                "quant": m.quant,
                "size": m.size,
                "architecture": arch,
                "parameters": params,
                "modified": m.modified.isoformat(timespec="seconds"),
                "source": m.repo,
                "path": str(m.path),
            }
        )
    demo = demo_gguf()
    if demo is not None:
        arch, params = _arch_and_params(demo)
        rows.append(
            {
                "name": DEMO_ALIAS,
                "quant": DEMO_QUANT,
                "size": demo.stat().st_size,
                "architecture": arch,
                "parameters": params,
                "modified": None,
                "source": f"{DEMO_PACKAGE} package",
                "path": str(demo),
            }
        )
    return rows


def _arch_and_params(path: Path) -> tuple[str | None, int | None]:
    try:
        info = read_info(path)
    except BadInput:  # a damaged file is still listed; `show` says what is wrong
        return None, None
    return info.architecture, info.parameters


@app.command("list")
def list_cmd(json: JsonOpt = False) -> None:
    """List the models on this machine."""
    rows = listing()
    if json:
        print_json(rows)
        return
    if not rows:
        err.print("No models yet. Get one with: llmrun pull smollm2-135m")
        return
    print_table(
        ("NAME", "QUANT", "SIZE", "ARCH", "PARAMS", "MODIFIED", "SOURCE"),
        [
            (
                r["name"],
                r["quant"],
                human_size(r["size"]),
                r["architecture"],
                format_count(r["parameters"]) if isinstance(r["parameters"], int) else None,
                (r["modified"] or "").replace("T", " ")[:16] or None,
                r["source"],
            )
            for r in rows
        ],
    )


# ---------------------------------------------------------------- show


@app.command("show")
def show_cmd(
    model: ModelArg = None,
    json: JsonOpt = False,
    template: TemplateOpt = False,
) -> None:
    """Show what a model is: architecture, size, context, quant, chat template."""
    found = resolve_model(model)
    info = read_info(found.path)
    if template:
        if info.chat_template is None:
            raise BadInput(f"{found.name} has no chat template")
        sys.stdout.write(info.chat_template.rstrip("\n") + "\n")
        return
    data = {
        "name": found.name,
        "origin": found.origin,
        "alias": found.entry.name if found.entry else None,
        "path": str(found.path),
        "size": info.size,
        "architecture": info.architecture,
        "model_name": info.name,
        "parameters": info.parameters,
        "context_length": info.context_length,
        "block_count": info.block_count,
        "quant": info.quant,
        "vocab_size": info.vocab_size,
        "license": info.license,
        "source": _source(found),
        "bos_token_id": info.bos_token_id,
        "eos_token_id": info.eos_token_id,
        "chat_template": info.chat_template,
        "metadata": info.metadata,
    }
    if json:
        print_json(data)
        return
    tmpl = info.chat_template
    print_fields(
        [
            ("name", found.name),
            ("architecture", info.architecture),
            ("parameters", format_count(info.parameters)),
            ("context length", info.context_length),
            ("layers", info.block_count),
            ("quant", info.quant),
            ("vocabulary", info.vocab_size),
            ("chat template", f"yes ({len(tmpl)} chars; --template prints it)" if tmpl else "no"),
            ("license", info.license),
            ("source", data["source"]),
            ("size", human_size(info.size)),
            ("file", found.path),
        ]
    )


def _source(found: ResolvedModel) -> str | None:
    if found.origin == "demo":
        return f"{DEMO_PACKAGE} package"
    return found.stored.repo if found.stored else None


# ---------------------------------------------------------------- rm


PurgeOpt = Annotated[
    bool, typer.Option("--purge", help="Also delete the download from the Hugging Face cache.")
]


@app.command("rm")
def rm_cmd(
    model: RmModelArg,
    yes: YesOpt = False,
    purge: PurgeOpt = False,
) -> None:
    """Delete a model from the store (never files outside it); --purge: its cached download too."""
    doomed = find_stored(model)
    if not yes:
        if not sys.stdin.isatty():
            raise BadInput("not deleting without confirmation", "pass -y to delete without asking")
        listing_ = ", ".join(f"{m.tag} ({human_size(m.size)})" for m in doomed)
        if not typer.confirm(f"Delete {listing_}?", default=False, err=True):
            err.print("Nothing deleted.")
            raise typer.Exit(1)
    for m in doomed:
        store.remove(m)
        sys.stdout.write(f"deleted {m.tag}\n")
        if purge:
            from llmrun.hub import purge as purge_cache  # loads huggingface_hub

            for path in purge_cache(m.manifest):
                sys.stdout.write(f"deleted {path}\n")
