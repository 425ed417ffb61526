"""Talk to a running `llmrun serve`: the models it holds, and unloading one.

The server is LLMRUN_HOST (host:port or a URL; default 127.0.0.1:8080), with
LLMRUN_API_KEY as its key when it has one. Plain urllib: `llmrun ps` needs no
server extra on the machine that asks.
"""

from __future__ import annotations

import json
import os
from typing import Any

from llmrun.errors import BadInput, LlmrunError, ModelNotFound

DEFAULT_HOST = "127.0.0.1:8080"
TIMEOUT = 30.0


def server_url(host: str | None = None) -> str:
    """The server's base URL from `host` or LLMRUN_HOST."""
    text = (host or os.environ.get("LLMRUN_HOST") or DEFAULT_HOST).strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


def request(path: str, body: dict[str, Any] | None = None, host: str | None = None) -> Any:
    """One JSON request to the server; its error becomes one line."""
    url = server_url(host) + path
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("LLMRUN_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    import urllib.error  # here: only `ps` and friends talk to a server
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error")
        except ValueError:
            message = None
        if isinstance(message, dict):
            message = message.get("message")
        if e.code == 401:
            raise BadInput(
                f"the server at {server_url(host)} wants an API key", "set LLMRUN_API_KEY"
            ) from None
        if e.code == 404:
            raise ModelNotFound(message or f"{path} not found on {server_url(host)}") from None
        raise LlmrunError(f"the server answered {e.code}: {message or e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LlmrunError(
            f"no llmrun server at {server_url(host)} ({reason})",
            "start one with `llmrun serve`, or point LLMRUN_HOST at it",
        ) from None


def loaded_models(host: str | None = None) -> list[dict[str, Any]]:
    """What the server holds now: Ollama's /api/ps objects."""
    return list(request("/api/ps", host=host).get("models") or [])


def stop(model: str, host: str | None = None) -> None:
    """Unload `model` (once its requests are done); ModelNotFound when it is not loaded."""
    loaded = loaded_models(host)
    names = {m.get("name") for m in loaded} | {m.get("model") for m in loaded}
    if model not in names:
        raise ModelNotFound(
            f"{model} is not loaded on {server_url(host)}", "run `llmrun ps` to see what is"
        )
    request("/api/generate", {"model": model, "keep_alive": 0}, host=host)
