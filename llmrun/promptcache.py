"""The prompt cache: the KV state of prompt prefixes on disk, so the next run skips them.

    $LLMRUN_HOME/cache/prompts/<key>/<n tokens>-<sha256 of the tokens>.kv
    $LLMRUN_HOME/cache/prompts/<key>/model.json     what <key> stands for (for `cache ls`)

<key> hashes the model file's identity (path, size, mtime) and every load option that
changes the KV cache's contents or layout (context size, cache types, flash attention,
layers on the GPU, batch sizes) and llama.cpp's version, so an entry is only ever put back
into the context it came from. An entry is a header, the prefix's tokens and llama.cpp's
sequence state, with a CRC-32 over all of it: a truncated, corrupt or mismatched file is
deleted and the prefix evaluated again, never trusted.

Files are written under a temporary name and renamed, so concurrent runs never see half an
entry; two runs storing the same prefix both succeed and one file is left. The folder is kept
under `max_bytes` by removing the least recently used entries (a hit refreshes its mtime).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrun import store
from llmrun.options import parse_size

if TYPE_CHECKING:
    from llmrun.engine.model import Model

DEFAULT_MIN_TOKENS = 256
DEFAULT_SIZE = "2GiB"  # --cache-size
DEFAULT_MAX_BYTES = parse_size(DEFAULT_SIZE)
MAGIC = b"LLMRUNKV"
VERSION = 1
HEADER = struct.Struct("<8sIIQI")  # magic, version, n tokens, state bytes, crc32
_ENTRY = re.compile(r"^(\d+)-([0-9a-f]{32})\.kv$")
STALE_TMP_SECONDS = 3600  # a temporary file this old was left by a run that died


def cache_dir() -> Path:
    return store.home() / "cache" / "prompts"


def tokens_hash(tokens: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:32]


def model_identity(model: Model) -> dict[str, Any]:
    """What must match for a stored state to be valid in this context."""
    from llmrun.engine.system import build_id

    path = Path(model.path).resolve()
    stat = path.stat()
    load = model.load_options
    identity: dict[str, Any] = {
        "model": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "n_ctx": model.n_ctx,
        "n_batch": model.n_batch,
        "cache_type_k": load.cache_type_k,
        "cache_type_v": load.cache_type_v,
        "flash_attn": load.flash_attn,
        "n_gpu_layers": model.plan.n_gpu_layers,
        "rpc": list(load.rpc),
        "llama_cpp": build_id(),
    }
    if load.lora:  # only then: the keys of runs without adapters stay as they were
        # An adapter changes every K and V: the file's identity and its scale both count.
        identity["lora"] = [_file_identity(a.path) | {"scale": a.scale} for a in load.lora]
    return identity


def _file_identity(path: Path) -> dict[str, Any]:
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass(frozen=True)
class Entry:
    """One stored prefix, for `llmrun cache ls`."""

    path: Path
    model: str
    tokens: int
    size: int
    used: float  # the last time it was written or hit (epoch seconds)


class PromptCache:
    """A PrefixStore (see llmrun.engine.model) on disk, for one prompt.

    `points` are the prefix lengths worth storing for this prompt (where the system prompt
    and earlier turns end, where the user's last part starts); those under `min_tokens`
    are not stored.
    """

    def __init__(
        self,
        *,
        points: Sequence[int] = (),
        min_tokens: int = DEFAULT_MIN_TOKENS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        root: Path | None = None,
    ) -> None:
        self.points = sorted(set(points))
        self.min_tokens = min_tokens
        self.max_bytes = max_bytes
        self.root = root or cache_dir()
        self._folder: Path | None = None
        self._identity: dict[str, Any] = {}

    def for_prompt(self, points: Sequence[int]) -> PromptCache:
        """The same cache, storing the prefixes `points` of the next prompt."""
        return PromptCache(
            points=points, min_tokens=self.min_tokens, max_bytes=self.max_bytes, root=self.root
        )

    def folder(self, model: Model) -> Path:
        if self._folder is None:
            self._identity = model_identity(model)
            key = hashlib.sha256(json.dumps(self._identity, sort_keys=True).encode()).hexdigest()
            self._folder = self.root / key[:24]
        return self._folder

    # ------------------------------------------------------------ PrefixStore

    def checkpoints(self, tokens: list[int]) -> list[int]:
        return [p for p in self.points if self.min_tokens <= p < len(tokens)]

    def restore(self, model: Model, tokens: list[int]) -> int:
        # A failed set_state empties the context; the shorter candidates are still longer
        # than what it held, so they are still worth trying.
        for n, path in self._candidates(model, model.common_prefix(tokens), len(tokens)):
            if path.name != f"{n}-{tokens_hash(tokens[:n])}.kv":
                continue
            data = read_entry(path, tokens[:n])
            if data is not None and model.set_state(tokens[:n], data):
                _touch(path)
                return n
            _unlink(path)  # never trusted again; the save below replaces it
        return 0

    def save(self, model: Model) -> None:
        tokens = model.cached_tokens
        folder = self.folder(model)
        path = folder / f"{len(tokens)}-{tokens_hash(tokens)}.kv"
        if path.exists():
            _touch(path)
            return
        state = model.state()
        if HEADER.size + 4 * len(tokens) + len(state) > self.max_bytes:
            return
        try:
            meta = folder / "model.json"
            if not meta.exists():
                _write(meta, [json.dumps(self._identity, indent=1).encode()])
            packed = struct.pack(f"<{len(tokens)}i", *tokens)
            crc = zlib.crc32(state, zlib.crc32(packed))
            header = HEADER.pack(MAGIC, VERSION, len(tokens), len(state), crc)
            _write(path, [header, packed, state])
        except OSError:
            return  # a full or read-only disk costs the cache, not the answer
        self.evict(keep=path)

    # ------------------------------------------------------------ housekeeping

    def _candidates(self, model: Model, have: int, n_prompt: int) -> list[tuple[int, Path]]:
        """Entries longer than what the context holds and shorter than the prompt, longest first."""
        found = []
        try:
            names = os.listdir(self.folder(model))
        except OSError:
            return []
        for name in names:
            match = _ENTRY.match(name)
            if match and have < int(match.group(1)) < n_prompt:
                found.append((int(match.group(1)), self.folder(model) / name))
        return sorted(found, reverse=True)

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used entries until the cache fits in max_bytes."""
        entries = sorted(list_entries(self.root), key=lambda e: e.used)
        total = sum(e.size for e in entries)
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.path != keep:
                _unlink(entry.path)
                total -= entry.size


def read_entry(path: Path, tokens: list[int]) -> bytearray | None:
    """The state stored at `path`, if it is whole and holds exactly `tokens`."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
            if len(head) != HEADER.size:
                return None
            magic, version, n, size, crc = HEADER.unpack(head)
            if magic != MAGIC or version != VERSION or n != len(tokens):
                return None
            packed = f.read(4 * n)
            data = bytearray(size)
            if f.readinto(data) != size or f.read(1):
                return None
    except OSError:
        return None
    if packed != struct.pack(f"<{n}i", *tokens) or zlib.crc32(data, zlib.crc32(packed)) != crc:
        return None
    return data


def list_entries(root: Path | None = None) -> list[Entry]:
    """Every entry in the cache; stale temporary files are removed on the way."""
    root = root or cache_dir()
    entries = []
    now = time.time()
    for folder in sorted(root.glob("*")) if root.is_dir() else []:
        try:
            model = json.loads((folder / "model.json").read_text()).get("model", "?")
        except (OSError, ValueError, AttributeError):
            model = "?"
        try:
            paths = list(folder.iterdir())
        except OSError:  # cleared by a concurrent `llmrun cache clear`, or not a folder
            continue
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            if store.is_temporary(path) and now - stat.st_mtime > STALE_TMP_SECONDS:
                _unlink(path)
            match = _ENTRY.match(path.name)
            if match:
                entries.append(Entry(path, model, int(match.group(1)), stat.st_size, stat.st_mtime))
    return entries


def clear(root: Path | None = None) -> tuple[int, int]:
    """Remove every entry; (entries, bytes) removed."""
    root = root or cache_dir()
    entries = list_entries(root)
    for entry in entries:
        _unlink(entry.path)
    for folder in root.glob("*") if root.is_dir() else []:
        _unlink(folder / "model.json")
        with contextlib.suppress(OSError):  # a concurrent run is writing there
            folder.rmdir()
    return len(entries), sum(e.size for e in entries)


def _write(path: Path, parts: Sequence[bytes | memoryview]) -> None:
    # Not fsynced: an entry checks itself (CRC) when read, and a lost one is evaluated again.
    with store.atomic_write(path, durable=False) as tmp, open(tmp, "wb") as f:
        for part in parts:
            f.write(part)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # evicted by a concurrent run meanwhile
        os.utime(path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone already (a concurrent run)
        path.unlink()
