"""`llmrun ps` and `llmrun stop MODEL`: the models a running server holds."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer

from llmrun import remote
from llmrun.cli.common import app, err, print_json
from llmrun.cli.flags import JsonOpt
from llmrun.cli.output import human_size, print_table

HostOpt = Annotated[
    str | None,
    typer.Option(
        "--host",
        envvar="LLMRUN_HOST",
        help="The server, host:port or a URL. [env: LLMRUN_HOST; default 127.0.0.1:8080]",
        show_default=False,
        show_envvar=False,
    ),
]
StopModelArg = Annotated[str, typer.Argument(help="A loaded model, as `llmrun ps` names it.")]


def until(expires_at: str) -> str:
    """When a model unloads, as people say it."""
    try:
        when = dt.datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return expires_at
    if when.year >= 9999:
        return "Forever"
    left = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
    if left < 60:
        return "less than a minute"
    minutes = round(left / 60)
    if minutes < 120:
        return f"{minutes} minutes from now"
    return f"{round(minutes / 60)} hours from now"


def processor(model: dict[str, Any]) -> str:
    size, vram = model.get("size") or 0, model.get("size_vram") or 0
    if not vram:
        return "100% CPU"
    gpu = round(100 * vram / size) if size else 100
    return "100% GPU" if gpu >= 100 else f"{100 - gpu}%/{gpu}% CPU/GPU"


@app.command("ps")
def ps_command(host: HostOpt = None, json: JsonOpt = False) -> None:
    """The models a running `llmrun serve` holds: size, where, context, when they unload.

    Examples: llmrun ps; llmrun ps --json | jq '.[].name'; LLMRUN_HOST=10.0.0.5:8080 llmrun ps
    """
    models = remote.loaded_models(host)
    if json:
        print_json(models)
        return
    rows = [
        [
            m.get("name"),
            (m.get("digest") or "")[:12],
            human_size(m.get("size")),
            processor(m),
            m.get("context_length"),
            until(m.get("expires_at") or ""),
        ]
        for m in models
    ]
    print_table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows)


@app.command("stop")
def stop_command(model: StopModelArg, host: HostOpt = None, json: JsonOpt = False) -> None:
    """Unload MODEL from a running `llmrun serve` once its requests are done.

    Examples: llmrun stop gemma3:Q4_K_M; llmrun stop smollm2-135m --host 127.0.0.1:8000
    """
    remote.stop(model, host)
    if json:
        print_json({"model": model, "stopped": True})
    else:
        err.print(f"stopped {model}", markup=False)
