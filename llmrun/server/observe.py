"""What the server says about itself: one access-log line per request, and /metrics.

`Observe` is an ASGI middleware around the whole app: it times each request to its
last byte (a stream's too), reads the status, and at the end writes the access-log
line (`--log-format text|json|off`) and counts the request in the metrics. A route
says which model answered and which engine handles it made with `note()`; their
token counts and time to first token come from the handles once they are done.

`Metrics` (`--metrics`, through prometheus-client, the `server` extra) holds the
counters and histograms, per model, and reads the gauges (queue depth, busy
sequences, KV cells) from the pool at each scrape. Names follow llama-server's
`llamacpp:*` where it has one, so its dashboards carry over; the rest are `llmrun_*`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from llmrun.engine.batch import Handle
    from llmrun.server.pool import Pool
    from llmrun.server.service import Service

LOG_FORMATS = ("text", "json", "off")
# Routes counted under their own name; anything else (404s, probes) is "other".
ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/pull",
        "/api/delete",
        "/api/copy",
        "/api/version",
        "/health",
        "/metrics",
        "/",
    }
)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)


@dataclass
class Seen:
    """What a route tells about its request, for the log and the metrics."""

    model: str | None = None
    handles: list[Handle] = field(default_factory=list)
    prompt: str | None = None  # with --log-prompts only
    log_prompts: bool = False


def note(request: Request, service: Service, handles: list[Handle] | None = None) -> None:
    """The route's word on which model answered, and the handles it submitted."""
    seen = request.scope.get("llmrun.seen")
    if isinstance(seen, Seen):
        seen.model = service.model_name
        if handles:
            seen.handles = list(handles)
            if seen.log_prompts:
                seen.prompt = service.engine.model.detokenize(handles[0].tokens, special=True)


def route_of(path: str) -> str:
    if path in ROUTES:
        return path
    return "/v1/models/{name}" if path.startswith("/v1/models/") else "other"


def first_token_seconds(h: Handle) -> float | None:
    return None if h.prompt_done_at is None else h.prompt_done_at - h.submitted_at


def token_counts(handles: list[Handle]) -> tuple[int, int]:
    """(prompt, generated) tokens; n > 1 evaluates the prompt once."""
    prompt = sum(h.prompt_tokens for h in handles if h.follows is None)
    return prompt, sum(h.completion_tokens for h in handles)


class Metrics:
    """Prometheus counters and histograms per model, and gauges read from the pool."""

    def __init__(self, pool: Pool) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

        self.pool = pool
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        r = self.registry
        self.requests = Counter(
            "llmrun_requests",
            "Requests by route and status.",
            ["route", "status", "model"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "llamacpp:prompt_tokens", "Prompt tokens evaluated.", ["model"], registry=r
        )
        self.generated = Counter(
            "llamacpp:tokens_predicted", "Tokens generated.", ["model"], registry=r
        )
        self.prompt_seconds = Counter(
            "llamacpp:prompt_seconds", "Time spent on prompts.", ["model"], registry=r
        )
        self.generate_seconds = Counter(
            "llamacpp:tokens_predicted_seconds", "Time spent generating.", ["model"], registry=r
        )
        self.ttft = Histogram(
            "llmrun_time_to_first_token_seconds",
            "From submission to the first token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "llmrun_inter_token_latency_seconds",
            "Mean time between tokens of an answer.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "llmrun_request_duration_seconds",
            "From request to last byte.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.loads = Counter("llmrun_model_loads", "Models loaded.", ["model"], registry=r)
        self.unloads = Counter("llmrun_model_unloads", "Models unloaded.", ["model"], registry=r)
        self.load_seconds = Histogram(
            "llmrun_model_load_seconds",
            "Time to load a model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_PoolGauges(pool))

    def answered(self, model: str, handles: list[Handle]) -> None:
        """A request's handles are done: their tokens and times."""
        prompt, generated = token_counts(handles)
        self.prompt_tokens.labels(model).inc(prompt)
        self.generated.labels(model).inc(generated)
        for h in handles:
            first = first_token_seconds(h)
            if first is None:
                continue
            self.ttft.labels(model).observe(first)
            self.prompt_seconds.labels(model).inc(first)
            if h.finished_at is not None and h.prompt_done_at is not None:
                spent = h.finished_at - h.prompt_done_at
                self.generate_seconds.labels(model).inc(spent)
                if h.completion_tokens > 1:
                    self.itl.labels(model).observe(spent / (h.completion_tokens - 1))

    def loaded(self, model: str, seconds: float) -> None:
        self.loads.labels(model).inc()
        self.load_seconds.labels(model).observe(seconds)

    def unloaded(self, model: str) -> None:
        self.unloads.labels(model).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _PoolGauges:
    """Gauges read at scrape time: what each loaded model's engine holds now."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        gauges = {
            "llamacpp:requests_processing": ("Requests being decoded.", "active"),
            "llamacpp:requests_deferred": ("Requests waiting for a sequence.", "waiting"),
            "llamacpp:kv_cache_tokens": ("KV cache cells in use.", "kv_used"),
            "llmrun_kv_cache_cells": ("KV cache cells in all.", "kv_total"),
            "llmrun_sequences": ("Sequences each model decodes together.", "parallel"),
        }
        families = {
            name: GaugeMetricFamily(name, doc, labels=["model"])
            for name, (doc, _) in gauges.items()
        }
        usage = GaugeMetricFamily(
            "llamacpp:kv_cache_usage_ratio", "KV cache cells in use, of all.", labels=["model"]
        )
        loaded = GaugeMetricFamily("llmrun_models_loaded", "Models loaded now.")
        services = self.pool.services()
        loaded.add_metric([], len(services))
        for service in services:
            stats = service.engine.stats()
            for name, (_, key) in gauges.items():
                families[name].add_metric([service.model_name], stats[key])
            usage.add_metric([service.model_name], stats["kv_used"] / max(stats["kv_total"], 1))
        yield from families.values()
        yield usage
        yield loaded


class AccessLog:
    """One line per request on a stream (stderr): text or JSON; the prompt never."""

    def __init__(self, kind: str = "text", out: TextIO | None = None) -> None:
        self.kind = kind
        self.out = out or sys.stderr

    def write(self, fields: dict[str, Any]) -> None:
        if self.kind == "off":
            return
        if self.kind == "json":
            line = json.dumps(fields, separators=(",", ":"))
        else:
            skip = ("time", "method", "path", "prompt")
            shown = {k: v for k, v in fields.items() if k not in skip}
            rest = " ".join(f"{k}={v}" for k, v in shown.items() if v is not None)
            if fields.get("prompt") is not None:
                rest += f" prompt={json.dumps(fields['prompt'], ensure_ascii=False)}"
            line = f"{fields['time']} {fields['method']} {fields['path']} {rest}"
        self.out.write(line + "\n")
        self.out.flush()


class Observe:
    """The middleware: times each request to its last byte, then logs and counts it."""

    def __init__(
        self,
        app: ASGIApp,
        log: AccessLog,
        metrics: Metrics | None = None,
        log_prompts: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.log = log
        self.metrics = metrics
        self.log_prompts = log_prompts
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        seen = Seen(log_prompts=self.log_prompts)
        scope["llmrun.seen"] = seen
        status = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._record(scope, status["code"], seen, self.clock() - started)

    def _record(self, scope: Scope, status: int, seen: Seen, seconds: float) -> None:
        route = route_of(scope.get("path", ""))
        prompt, generated = token_counts(seen.handles)
        firsts = [t for h in seen.handles if (t := first_token_seconds(h)) is not None]
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        self.log.write(
            {
                "time": now.replace("+00:00", "Z"),
                "method": scope.get("method", ""),
                "path": scope.get("path", ""),
                "model": seen.model,
                "status": status,
                "prompt_tokens": prompt if seen.handles else None,
                "generated_tokens": generated if seen.handles else None,
                "ttft": f"{min(firsts):.3f}s" if firsts else None,
                "total": f"{seconds:.3f}s",
                **({"prompt": seen.prompt} if seen.prompt is not None else {}),
            }
        )
        if self.metrics is not None:
            model = seen.model or ""
            self.metrics.requests.labels(route, str(status), model).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if seen.handles:
                self.metrics.answered(model, seen.handles)
