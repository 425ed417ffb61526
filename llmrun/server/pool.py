"""The models a server holds: loaded on demand, kept warm for a while, evicted when room is short.

A request names a model (store name, `name:QUANT`, alias, path); `Pool.lease` finds
it, loads it when it is not loaded (requests for a model that is loading wait for
that load), and hands out a Lease that the request releases when its answer is
given. A model with a lease is never unloaded. Once idle, a model stays loaded
for its keep-alive (the last request's `keep_alive`, else `--keep-alive`), then
goes; 0 unloads at once, None never.

Room is counted with the `-ngl auto` planner's numbers: each loaded model holds
its plan's bytes on every device and on the host; a new one loads only when its
own fit next to them within the budgets (`--max-memory` for the host, each GPU's
free memory when the pool started) and fewer than `--max-models` are loaded.
Otherwise the least recently used idle model is unloaded first; a model that
could never fit is refused at once, saying how much it needs and how much there
is; one that must wait for busy models waits up to LOAD_WAIT, then gets a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmrun.engine.batch import BatchEngine
from llmrun.engine.model import gpu_devices, plan_for
from llmrun.engine.offload import GIB, MIB, host_available
from llmrun.errors import BadOption, LlmrunError, ModelNotFound
from llmrun.generation import Prepared, prepare
from llmrun.resolve import resolve_model
from llmrun.server.openai_errors import ApiError
from llmrun.server.service import Service

LOAD_WAIT = 300.0  # seconds a request waits for busy models to make room (Ollama's 5m)
HOST = "host"  # the key of host memory in a model's needs
FOREVER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_keep_alive(value: Any, where: str = "keep_alive") -> float | None:
    """Seconds to stay loaded once idle; None: for ever (any negative value).

    Takes Ollama's forms: a number of seconds, or a Go duration string ("5m",
    "1h30m", "300ms", "-1", "0").
    """
    if isinstance(value, bool):
        raise BadOption(f"{where} must be a duration such as 5m, 30s or -1, got {value}")
    if isinstance(value, (int, float)):
        return None if value < 0 else float(value)
    if isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        body = text.lstrip("+-")
        try:
            seconds = float(body)  # "300", "-1": seconds, as Ollama reads a bare number
        except ValueError:
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise BadOption(
                    f"{where} must be a duration such as 5m, 1h30m, 30s or -1, got {value!r}"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
        return None if negative and seconds else seconds
    raise BadOption(f"{where} must be a duration such as 5m, 30s or -1, got {value!r}")


def show_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


@dataclass
class Settings:
    """How the pool loads and keeps models: serve's flags."""

    flags: dict[str, Any] = field(default_factory=dict)  # prepare()'s load and sampling flags
    system: str | None = None
    parallel: int = 4
    max_models: int = 3
    keep_alive: float | None = 300.0
    max_memory: int | None = None  # host bytes; None: what the OS has free when we start
    embeddings: bool = False  # make each model's embedding context when it loads
    chat_template: Path | None = None
    reasoning: str = "auto"
    timeout: float = 600.0  # seconds a request may take in all (--timeout)
    max_queue: int = 512  # per model, requests waiting for a sequence (--max-queue)
    send_timeout: float = 30.0  # seconds a stream's client may stall (--send-timeout)
    allow_image_urls: bool = False  # fetch http(s) image_url parts (--allow-image-urls)

    def deadline(self, started: float, asked: float | None) -> float:
        """When a request that arrived at `started` (perf_counter) must end."""
        return started + min(asked or self.timeout, self.timeout)


@dataclass
class Entry:
    """One model in the pool: loading (no service yet) or loaded."""

    key: Path
    prepared: Prepared
    need: dict[str, int]  # bytes by device name, and HOST
    ready: asyncio.Future[None]
    service: Service | None = None
    active: int = 0  # leases out
    keep_alive: float | None = 300.0
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = 0.0  # time.time()
    load_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.prepared.resolved.name

    @property
    def size(self) -> int:
        return sum(self.need.values())

    @property
    def size_vram(self) -> int:
        return sum(v for k, v in self.need.items() if k != HOST)

    def idle_until(self) -> float | None:
        """When it unloads (monotonic), if it stays idle; None: never."""
        if self.keep_alive is None:
            return None
        return self.last_used + self.keep_alive

    def expires_at(self) -> dt.datetime:
        """When it unloads if no request comes, as a wall-clock time (for /api/ps)."""
        if self.keep_alive is None:
            return FOREVER
        left = self.keep_alive
        if not self.active:
            left = self.last_used + self.keep_alive - time.monotonic()
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=max(left, 0.0))


class Unset:
    """No keep_alive in the request: the server's --keep-alive."""


UNSET = Unset()


class Lease:
    """A request's hold on a loaded model; release it once the answer is given."""

    def __init__(self, pool: Pool, entry: Entry, waited: float = 0.0) -> None:
        self.pool = pool
        self.entry = entry
        self.waited = waited  # seconds this request waited for the model to load
        self.released = False

    @property
    def service(self) -> Service:
        assert self.entry.service is not None
        return self.entry.service

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool.release(self.entry)


class Pool:
    """Every model this server may serve, and the ones it holds now."""

    def __init__(
        self,
        settings: Settings,
        default: str | None = None,
        only: bool = False,
    ) -> None:
        self.settings = settings
        self.only = only
        self.default_spec = default
        self.default: Prepared | None = None  # serve MODEL: what unnamed requests get
        self.entries: dict[Path, Entry] = {}
        # Told of each load (name, seconds) and unload (name): the metrics.
        self.on_load: list[Callable[[str, float], None]] = []
        self.on_unload: list[Callable[[str], None]] = []
        self.shutting_down = False
        self.failure: str | None = None  # a lost RPC worker: no model can run
        self._known: dict[str, Prepared] = {}
        self._cond = asyncio.Condition()
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # loads and wake-ups under way
        self.budgets = self._budgets()

    def _budgets(self) -> dict[str, int]:
        budgets = {d.name: d.budget for d in gpu_devices()}
        host = self.settings.max_memory or host_available()
        if host is not None:
            budgets[HOST] = host
        return budgets

    # ------------------------------------------------------------ names

    def find(self, name: str | None) -> Prepared:
        """What `name` serves (blocking: reads the store); ApiError 404 when nothing."""
        if self.only and self.default is not None:
            return self.default
        if not name or not name.strip():
            if self.default is not None:
                return self.default
            name = ""
        if name.lower().endswith(":latest"):  # Ollama's default tag: the model's default quant
            name = name[: -len(":latest")]
        known = self._known.get(name)
        if known is not None and known.resolved.path.exists():
            return known
        try:
            prepared = prepare(
                name or None, system=self.settings.system, pull=False, **self.settings.flags
            )
        except ModelNotFound as e:
            if self.default is not None:  # serve MODEL answers any name, as llama-server does
                return self.default
            raise ApiError(
                404,
                f"model {name!r} not found: pull it first (llmrun pull {name})"
                if name
                else f"no model named and no default model here: {e.message}",
                param="model",
                code="model_not_found",
            ) from None
        default = self.default
        own = default is not None and (default.load.lora or default.load.mmproj)
        if own and default is not None and _same_file(prepared, default):
            return default  # MODEL by name: with the adapters or projector serve was given
        prepared = listed(prepared)
        self._known[name] = prepared
        return prepared

    def forget(self) -> None:
        """The store changed (pull, delete, copy): look names up again."""
        self._known.clear()

    def servable(self) -> list[Prepared]:
        """Every model a request may name: MODEL, the store, models.toml aliases here."""
        from llmrun import store
        from llmrun.registry import load_registry

        found: list[Prepared] = []
        seen: set[Path] = set()

        def add(spec: str | None, given: Prepared | None = None) -> None:
            try:
                prepared = given or self.find(spec)
            except (ApiError, LlmrunError):
                return
            path = prepared.resolved.path.resolve()
            if path not in seen:
                seen.add(path)
                found.append(
                    prepared if given or prepared.resolved.stored else _named(prepared, spec or "")
                )

        if self.default is not None:
            add(None, self.default)
            if self.only:
                return found
        for model in store.list_models():
            add(model.tag)
        for alias in load_registry(store.home()).models:
            try:
                resolve_model(alias)
            except LlmrunError:
                continue
            add(alias)
        return found

    # ------------------------------------------------------------ leases

    async def lease(
        self,
        name: str | None,
        *,
        keep_alive: float | Unset | None = UNSET,
        ctx: int | None = None,
        gpu_layers: int | None = None,
    ) -> Lease:
        """A hold on the model `name` serves, loading it first when needed.

        `ctx` (tokens per sequence) and `gpu_layers` (Ollama's num_ctx and num_gpu)
        reload a model loaded with other values once it is idle.
        """
        if self.shutting_down:
            raise ApiError(503, "the server is shutting down", code="unavailable")
        if self.failure:
            raise ApiError(503, f"{self.failure}; restart llmrun serve", code="unavailable")
        prepared = await asyncio.to_thread(self.find, name)
        if ctx is not None or gpu_layers is not None:
            load = prepared.load
            if ctx is not None:
                load = replace(load, ctx_size=ctx * self.settings.parallel)
            if gpu_layers is not None:
                load = replace(load, n_gpu_layers=gpu_layers)
            prepared = replace(prepared, load=load)
        key = prepared.resolved.path.resolve()
        wanted_keep = keep_alive
        if isinstance(keep_alive, Unset):  # serve's MODEL stays unless a request says otherwise
            pinned = self.default is not None and self.default.resolved.path.resolve() == key
            wanted_keep = None if pinned else self.settings.keep_alive
        started = time.monotonic()
        deadline = started + LOAD_WAIT
        async with self._cond:
            while True:
                entry = self.entries.get(key)
                if entry is not None and entry.service is None:  # loading: wait for it
                    entry.active += 1
                    break
                if entry is not None:
                    if _same_load(entry.prepared, prepared, ctx, gpu_layers):
                        entry.active += 1
                        entry.keep_alive = wanted_keep
                        return Lease(self, entry)
                    if entry.active == 0:  # loaded with other options: load again
                        await self._unload(entry)
                        continue
                    await self._wait(deadline, f"{entry.name} is busy with other options")
                    continue
                need = await asyncio.to_thread(_needs, prepared)
                self._check_could_fit(prepared, need)
                if self._room_for(need):
                    entry = Entry(key, prepared, need, asyncio.get_running_loop().create_future())
                    entry.active = 1
                    entry.keep_alive = wanted_keep
                    self.entries[key] = entry
                    self._spawn(self._load(entry))
                    break
                victim = self._least_recently_used_idle()
                if victim is not None:
                    await self._unload(victim)
                    continue
                await self._wait(deadline, "every loaded model is busy")
        try:
            await asyncio.shield(entry.ready)
        except BaseException:
            entry.active -= 1
            raise
        entry.keep_alive = wanted_keep
        return Lease(self, entry, time.monotonic() - started)

    def release(self, entry: Entry) -> None:
        """A lease ends (on the event loop): the model idles from now."""
        entry.active -= 1
        entry.last_used = time.monotonic()
        self._spawn(self._poke())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # held, or the loop may drop it half-way
        task.add_done_callback(self._tasks.discard)

    async def _poke(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def _wait(self, deadline: float, why: str) -> None:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            await asyncio.wait_for(self._cond.wait(), left)
        except TimeoutError:
            raise ApiError(
                503,
                f"no room to load the model: {why}; try again later",
                code="unavailable",
                headers={"Retry-After": "5"},
            ) from None

    # ------------------------------------------------------------ room

    def _held(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for entry in self.entries.values():
            for device, n in entry.need.items():
                held[device] = held.get(device, 0) + n
        return held

    def _room_for(self, need: dict[str, int]) -> bool:
        if len(self.entries) >= self.settings.max_models:
            return False
        held = self._held()
        return all(
            held.get(d, 0) + n <= self.budgets[d] for d, n in need.items() if d in self.budgets
        )

    def _check_could_fit(self, prepared: Prepared, need: dict[str, int]) -> None:
        for device, n in need.items():
            budget = self.budgets.get(device)
            if budget is not None and n > budget:
                where = "host memory" if device == HOST else f"memory on {device}"
                limit = " (--max-memory)" if device == HOST and self.settings.max_memory else ""
                raise ApiError(
                    400,
                    f"{prepared.resolved.name} needs {show_bytes(n)} of {where}, but this server "
                    f"has {show_bytes(max(budget, 0))}{limit}: use a smaller quant, num_ctx "
                    "or -c, or fewer --parallel sequences",
                    param="model",
                    code="model_too_large",
                )

    def _least_recently_used_idle(self) -> Entry | None:
        idle = [e for e in self.entries.values() if e.service is not None and e.active == 0]
        return min(idle, key=lambda e: e.last_used, default=None)

    # ------------------------------------------------------------ load and unload

    async def _load(self, entry: Entry) -> None:
        started = time.monotonic()
        try:
            service = await asyncio.to_thread(self._make_service, entry.prepared)
        except BaseException as e:
            async with self._cond:
                self.entries.pop(entry.key, None)
                self._cond.notify_all()
            entry.ready.set_exception(e)
            entry.ready.exception()  # retrieved: a load nobody awaits any more is no warning
            return
        entry.service = service
        entry.load_seconds = time.monotonic() - started
        entry.loaded_at = time.time()
        entry.last_used = time.monotonic()
        entry.ready.set_result(None)
        for tell in self.on_load:
            tell(service.model_name, entry.load_seconds)
        async with self._cond:
            self._cond.notify_all()

    def _make_service(self, prepared: Prepared) -> Service:
        s = self.settings
        engine = BatchEngine(prepared.resolved.path, prepared.load, s.parallel)
        service = Service(
            engine,
            prepared.resolved.name,
            prepared.sampling,
            prepared.system,
            chat_template=s.chat_template,
            reasoning=s.reasoning,
            embed_threads=prepared.load.threads,
            max_queue=s.max_queue,
        )
        if s.embeddings:
            service.embedder()
        engine.start()
        return service

    async def _unload(self, entry: Entry) -> None:
        """Unload an idle model (the caller holds the lock)."""
        self.entries.pop(entry.key, None)
        if entry.service is not None:
            await asyncio.to_thread(entry.service.close)
            for tell in self.on_unload:
                tell(entry.service.model_name)
        self._cond.notify_all()

    async def unload_now(self, prepared: Prepared) -> bool:
        """Unload the model `prepared` names once its requests are done; False when it is
        not loaded."""
        key = prepared.resolved.path.resolve()
        async with self._cond:
            entry = self.entries.get(key)
            if entry is None:
                return False
            entry.keep_alive = 0.0
            while entry.active or entry.service is None:  # answers (or the load) finish first
                await self._cond.wait()
                if self.entries.get(key) is not entry:
                    return True
            await self._unload(entry)
        return True

    async def settle(self, lease: Lease) -> None:
        """Release, and with keep_alive 0 unload before the answer's last line goes out, so
        that the client sees the model gone once it has its answer."""
        lease.release()
        entry = lease.entry
        if entry.keep_alive != 0 or entry.active or entry.service is None:
            return
        async with self._cond:
            if entry.active == 0 and self.entries.get(entry.key) is entry:
                await self._unload(entry)

    async def reap(self) -> None:
        """For ever: unload models whose keep-alive is over."""
        async with self._cond:
            while True:
                now = time.monotonic()
                soonest: float | None = None
                for entry in list(self.entries.values()):
                    if entry.service is None or entry.active:
                        continue
                    until = entry.idle_until()
                    if until is not None and until <= now:
                        await self._unload(entry)
                    elif until is not None:
                        soonest = until if soonest is None else min(soonest, until)
                timeout = None if soonest is None else max(soonest - now, 0.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), timeout)

    def start(self) -> None:
        self._reaper = asyncio.ensure_future(self.reap())

    async def close(self) -> None:
        """At shutdown, once the answers are over: unload everything."""
        if self._reaper is not None:
            self._reaper.cancel()
        for entry in list(self.entries.values()):
            if entry.service is not None:
                await asyncio.to_thread(entry.service.close)
        self.entries.clear()

    def fail(self, message: str) -> None:
        """A lost RPC worker: every engine stops, and so do new loads."""
        self.failure = message
        for entry in list(self.entries.values()):
            if entry.service is not None:
                entry.service.engine.fail(message)

    # ------------------------------------------------------------ what is loaded

    def services(self) -> list[Service]:
        return [e.service for e in self.entries.values() if e.service is not None]

    def loaded(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.service is not None]

    def cancel_all(self) -> None:
        self.shutting_down = True
        for service in self.services():
            service.cancel_all()

    @property
    def live(self) -> int:
        return sum(len(s.live) for s in self.services())

    def loaded_entry(self, prepared: Prepared) -> Entry | None:
        entry = self.entries.get(prepared.resolved.path.resolve())
        return entry if entry is not None and entry.service is not None else None


def listed(prepared: Prepared) -> Prepared:
    """A store entry goes by name:QUANT, as it is listed and asked for."""
    stored = prepared.resolved.stored
    return _named(prepared, stored.tag) if stored is not None else prepared


def _named(prepared: Prepared, spec: str) -> Prepared:
    """The model under the name it is listed by (its store tag or alias)."""
    return replace(prepared, resolved=replace(prepared.resolved, name=spec))


def _same_load(loaded: Prepared, wanted: Prepared, ctx: int | None, gpu_layers: int | None) -> bool:
    """Whether a request's num_ctx and num_gpu (when it gives them) match what is loaded."""
    if ctx is not None and loaded.load.ctx_size != wanted.load.ctx_size:
        return False
    return gpu_layers is None or loaded.load.n_gpu_layers == wanted.load.n_gpu_layers


def _needs(prepared: Prepared) -> dict[str, int]:
    """The planner's bytes for this load, by device and on the host."""
    try:
        plan = plan_for(prepared.resolved.path, prepared.load)
    except BadOption as e:  # the context cannot fit in host memory at all
        raise ApiError(400, str(e), param="model", code="model_too_large") from None
    return {(HOST if p.device == "CPU" else p.device): p.total for p in plan.placements}


def _same_file(a: Prepared, b: Prepared) -> bool:
    return a.resolved.path.resolve() == b.resolved.path.resolve()
