"""`llmrun list`, `llmrun show MODEL`, `llmrun rm MODEL`: the local model store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmrun import store
from llmrun.cli.common import app, err, print_json
from llmrun.cli.flags import JsonOpt, ModelArg, YesOpt, complete_model
from llmrun.cli.output import human_size, print_fields, print_table
from llmrun.errors import BadInput
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
        autocompletion=complete_model,
        help="A stored model: name[:QUANT], an alias or org/repo; without :QUANT, every quant.",
        show_default=False,
    ),
]

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
    from llmrun.ggufinfo import read_info  # loads gguf and numpy: only when a file is read

    try:
        info = read_info(path)
    except BadInput:  # a damaged file is still listed; `show` says what is wrong
        return None, None
    return info.architecture, info.parameters


@app.command("list")
def list_cmd(json: JsonOpt = False) -> None:
    """List the models on this machine.

    Examples: llmrun list
    llmrun list --json | jq -r '.[].name'
    """
    rows = listing()
    if json:
        print_json(rows)
        return
    if not rows:
        err.print("No models yet. Get one with: llmrun pull smollm2-135m")
        return
    from llmrun.ggufinfo import format_count

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
    """Show what a model is: architecture, size, context, quant, chat template.

    Examples: llmrun show smollm2-135m
    llmrun show model.gguf --template
    """
    from llmrun.ggufinfo import format_count, read_info

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
        "vision": found.mmproj is not None,
        "mmproj": str(found.mmproj) if found.mmproj else None,
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
            ("vision", f"yes ({found.mmproj.name})" if found.mmproj else "no"),
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
    """Delete a model from the store (never files outside it); --purge: its cached download too.

    Examples: llmrun rm smollm2-135m:Q8_0
    llmrun rm qwen3-0.6b -y --purge
    """
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
