"""`llmrun cache ls|clear`: the prompt cache that `run` and `chat` keep on disk."""

from __future__ import annotations

import datetime as dt
import sys

import typer

from llmrun.cli.common import app, print_json
from llmrun.cli.flags import JsonOpt
from llmrun.cli.output import human_size, print_table

cache_app = typer.Typer(
    help="The prompt cache: KV states of long prompt prefixes, reused by the next run.\n\n"
    "Examples: llmrun cache ls; llmrun cache clear",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
def ls_command(json: JsonOpt = False) -> None:
    """The cached prompt prefixes, most recently used first: model, tokens, size, last use.

    Examples: llmrun cache ls; llmrun cache ls --json | jq 'map(.size) | add'
    """
    from llmrun import promptcache

    entries = sorted(promptcache.list_entries(), key=lambda e: e.used, reverse=True)
    if json:
        print_json(
            [
                {
                    "model": e.model,
                    "tokens": e.tokens,
                    "size": e.size,
                    "used_at": dt.datetime.fromtimestamp(e.used, dt.timezone.utc).isoformat(),
                    "path": str(e.path),
                }
                for e in entries
            ]
        )
        return
    rows = [
        [
            e.model,
            e.tokens,
            human_size(e.size),
            dt.datetime.fromtimestamp(e.used).strftime("%Y-%m-%d %H:%M"),
        ]
        for e in entries
    ]
    print_table(["MODEL", "TOKENS", "SIZE", "USED"], rows)


@cache_app.command("clear")
def clear_command() -> None:
    """Delete every cached prompt prefix (runs then evaluate their prompts in full once).

    Examples: llmrun cache clear
    """
    from llmrun import promptcache

    count, size = promptcache.clear()
    sys.stdout.write(f"deleted {count} cached prefixes ({human_size(size)})\n")
