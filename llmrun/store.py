"""llmrun's own files under LLMRUN_HOME: the model store, manifests, locks, atomic writes.

    $LLMRUN_HOME/models/<name>/<name>-<QUANT>.gguf    the model (a pull: a link to the HF cache)
    $LLMRUN_HOME/models/<name>/<name>-<QUANT>.json    its manifest (where it came from)
    $LLMRUN_HOME/models/<name>/checkpoint.json        a pulled safetensors checkpoint's manifest

This module alone knows that layout and writes there: store names, paths,
manifests (`record_gguf` and `record_checkpoint` for what `llmrun pull` fetched,
`write_manifest` for what `llmrun quantize` made), listing and removing.

Every write goes to a temporary name in the same folder and is renamed into
place, so a reader never sees half a file; writers of one model take its lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrun.errors import BadInput, StoreError
from llmrun.registry import looks_like_quant

MANIFEST_FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TMP_MARK = ".tmp-"  # temporary files: ".<final name>.tmp-<random>"
# Parts 2..N of a split GGUF: the model is its part 1, which llama.cpp opens.
_LATER_PART = re.compile(r"-(?!0*1-)\d{5}-of-\d{5}\.gguf$")
PROJECTOR_PREFIX = "mmproj-"  # an image projector GGUF, stored beside its model


def home() -> Path:
    """$LLMRUN_HOME, else the platform's user data directory. Not created here."""
    env = os.environ.get("LLMRUN_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llmrun"


def models_dir() -> Path:
    return home() / "models"


def check_name(name: str) -> str:
    """A store name is one path component: letters, digits, '.', '-', '_'."""
    if not _NAME_RE.match(name) or name.endswith((".gguf", ".json")):
        raise BadInput(
            f"bad model name {name!r}",
            "use letters, digits, '.', '-' and '_' (no '/', ':' or spaces)",
        )
    return name


def model_path(name: str, quant: str) -> Path:
    """Where the store keeps `name` at `quant`: models/<name>/<name>-<QUANT>.gguf."""
    quant = check_name(quant.upper())
    return models_dir() / check_name(name) / f"{name}-{quant}.gguf"


def manifest_path(gguf_path: Path) -> Path:
    return gguf_path.with_suffix(".json")


def checkpoint_manifest(name: str) -> Path:
    """Where the manifest of a pulled safetensors checkpoint lives (not a GGUF: `list` skips it)."""
    return models_dir() / check_name(name) / "checkpoint.json"


def store_name(text: str) -> str:
    """A folder or repo name as a valid store name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._").lower()
    return name or "model"


def repo_store_name(repo: str) -> str:
    """`bartowski/SmolLM2-135M-Instruct-GGUF` -> `smollm2-135m-instruct`."""
    name = repo.split("/", 1)[1]
    name = re.sub(r"[-_.]gguf$", "", name, flags=re.IGNORECASE) or name
    return name.lower()


# ---------------------------------------------------------------- writing safely


@contextlib.contextmanager
def atomic_write(path: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it becomes `path` at once.

    The caller writes the temporary file however it likes. On leaving the block
    the file is flushed to disk (unless not `durable`: for files that check
    themselves, such as the prompt cache's) and renamed over `path`; on an error
    it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{secrets.token_hex(4)}")
    try:
        yield tmp
        if not tmp.is_file():
            raise StoreError(f"nothing was written to {path}")
        if durable:
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_temporary(path: Path) -> bool:
    """Whether `path` is an atomic write's temporary file (finished, or left by a dead process)."""
    return _TMP_MARK in path.name


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (blocking) while writing `path`.

    The lock file stays behind: deleting it would let two writers lock two
    different files of the same name.
    """
    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+b") as f:
        _lock(f.fileno())
        try:
            yield
        finally:
            _unlock(f.fileno())


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- manifests


def write_manifest(
    gguf_path: Path,
    *,
    name: str,
    quant: str,
    repo: str | None = None,
    revision: str | None = None,
    sha256: str | None = None,
    architecture: str | None = None,
    parameters: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write the JSON manifest beside a stored GGUF file; returns what was written.

    sha256, architecture and parameters are computed from the file when not
    given (pass the Hub's sha256 to skip hashing a large download).
    """
    gguf_path = Path(gguf_path)
    if architecture is None or parameters is None:
        from llmrun.ggufinfo import read_info  # here: store listing must not need gguf

        info = read_info(gguf_path)
        architecture = architecture or info.architecture
        parameters = parameters if parameters is not None else info.parameters
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "quant": quant.upper(),
        "file": gguf_path.name,
        "repo": repo,
        "revision": revision,
        "size": gguf_path.stat().st_size,
        "sha256": sha256 or sha256_file(gguf_path),
        "architecture": architecture,
        "parameters": parameters,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    write_text_atomic(manifest_path(gguf_path), json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(gguf_path: Path) -> dict[str, Any]:
    """The manifest beside a GGUF file; {} when missing or unreadable (never raises)."""
    try:
        data = json.loads(manifest_path(gguf_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_checkpoint(name: str) -> dict[str, Any] | None:
    """The manifest of the checkpoint pulled as `name`; None when missing or unreadable."""
    try:
        data = json.loads(checkpoint_manifest(name).read_text(encoding="utf-8"))
    except (OSError, ValueError, BadInput):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- recording pulls


def record_gguf(
    name: str,
    quant: str,
    cached: list[Path],
    *,
    repo: str,
    commit: str,
    ref: str,
    files: list[dict[str, Any]],
    force: bool,
    projector: tuple[Path, dict[str, Any]] | None = None,
) -> Path:
    """Store pulled GGUF files (a model, or the parts of a split one) as links to the
    Hugging Face cache, with a manifest beside part 1; returns part 1's store path.

    `projector`: a vision model's mmproj GGUF (its cached path and what the Hub says of it),
    linked beside the model as mmproj-<name>-<QUANT>.gguf and named in the manifest."""
    first = model_path(name, quant)
    n = len(cached)
    # Split parts keep llama.cpp's naming, which is how it finds parts 2..n from part 1.
    dests = (
        [first]
        if n == 1
        else [first.with_name(f"{first.stem}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    )
    try:
        with file_lock(dests[0]):  # the lock `rm` takes too
            _check_replaceable(dests[0], repo, f"{name}:{quant}", force)
            for src, dest in zip(cached, dests, strict=True):
                _link(src.resolve(), dest)
            extra: dict[str, Any] = {}
            if projector is not None:
                src, remote = projector
                link = first.with_name(f"{PROJECTOR_PREFIX}{first.name}")
                _link(src.resolve(), link)
                extra["mmproj"] = {**remote, "file": link.name}
            write_manifest(
                dests[0],
                name=name,
                quant=quant,
                repo=repo,
                revision=commit,
                sha256=files[0]["sha256"],
                ref=ref,
                files=files,
                parts=[d.name for d in dests[1:]],
                total_size=sum(f["size"] or 0 for f in files),
                **extra,
            )
    except OSError as e:
        raise StoreError(f"cannot write to the llmrun store: {e.strerror or e}") from None
    return dests[0]


def record_checkpoint(
    name: str, folder: Path, *, repo: str, commit: str, ref: str, files: list[dict[str, Any]]
) -> Path:
    """A checkpoint stays in the cache; a manifest says where, for `llmrun quantize`."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "safetensors",
        "name": name,
        "repo": repo,
        "revision": commit,
        "ref": ref,
        "path": str(folder),
        "files": files,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = checkpoint_manifest(name)
    try:
        with file_lock(path):
            write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    except OSError as e:
        raise StoreError(f"cannot write to the llmrun store: {e.strerror or e}") from None
    return folder


_OWN_KEYS = ("format", "name", "quant", "file", "size", "created")


def copy(source: Path, name: str, quant: str, *, manifest: dict[str, Any], tag: str) -> Path:
    """A second name for a model file (Ollama's copy): a link to the same file, and a
    manifest of its own. Refuses to replace a model stored under that name."""
    check_name(name)
    quant = quant.upper()
    dest = model_path(name, quant)
    manifest = {k: v for k, v in manifest.items() if k not in _OWN_KEYS}
    try:
        with file_lock(dest):
            if dest.exists():
                raise StoreError(
                    f"{name}:{quant} is already in the store", f"remove it first: llmrun rm {name}"
                )
            _link(source.resolve(), dest)
            write_manifest(
                dest,
                name=name,
                quant=quant,
                **{"architecture": None, "parameters": None, **manifest, "copied_from": tag},
            )
    except OSError as e:
        raise StoreError(f"cannot write to the llmrun store: {e.strerror or e}") from None
    return dest


def _check_replaceable(dest: Path, repo: str, tag: str, force: bool) -> None:
    """A stored model from elsewhere (another repo, `llmrun quantize`) stays unless --force."""
    if force or not dest.exists():
        return
    source = read_manifest(dest).get("repo")
    if not isinstance(source, str) or source.lower() != repo.lower():
        raise BadInput(
            f"{tag} is already in the store, from {source or 'elsewhere'}",
            "pass --force to replace it, or delete it first with `llmrun rm`",
        )


def _link(src: Path, dest: Path) -> None:
    """`dest` becomes the cached file without a second copy: a hard link, else a symlink."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}{_TMP_MARK}{secrets.token_hex(4)}")
    try:
        for make in (os.link, os.symlink, shutil.copyfile):
            try:
                make(src, tmp)
                break
            except OSError:
                if make is shutil.copyfile:
                    raise
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


# ---------------------------------------------------------------- listing and removing


@dataclass(frozen=True)
class StoredModel:
    """One GGUF file in the store."""

    name: str
    quant: str | None
    path: Path
    manifest: dict[str, Any] = field(hash=False, compare=False)
    size: int
    modified: dt.datetime  # the file's mtime, UTC

    @property
    def tag(self) -> str:
        """`name:QUANT`, as the user types it."""
        return f"{self.name}:{self.quant}" if self.quant else self.name

    @property
    def repo(self) -> str | None:
        repo = self.manifest.get("repo")
        return repo if isinstance(repo, str) else None

    @property
    def mmproj(self) -> Path | None:
        """The image projector stored beside it (manifest "mmproj"), when it has one."""
        name = self.manifest.get("mmproj")
        if not isinstance(name, dict) or not isinstance(name.get("file"), str):
            return None
        path = self.path.parent / Path(name["file"]).name
        return path if path.is_file() else None


def is_projector(path: Path) -> bool:
    """An image projector stored beside its model (mmproj-*.gguf), not a model of its own."""
    return path.name.lower().startswith(PROJECTOR_PREFIX)


def list_models() -> list[StoredModel]:
    """Every GGUF in the store, by name then quant; skips temporary and unreadable files."""
    root = models_dir()
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    found: list[StoredModel] = []
    for folder in folders:
        for path in sorted(folder.glob("*.gguf")):
            if path.name.startswith(".") or is_temporary(path):
                continue  # a write in progress, or one that died
            if _LATER_PART.search(path.name) or is_projector(path):
                continue
            model = _stored(folder.name, path)
            if model is not None:
                found.append(model)
    return sorted(found, key=lambda m: (m.name.lower(), m.quant or ""))


def _stored(folder: str, path: Path) -> StoredModel | None:
    try:
        st = path.stat()  # follows links; a dangling one is skipped
    except OSError:
        return None
    if not path.is_file():
        return None
    manifest = read_manifest(path)
    name, quant = _names_from_file(folder, path.stem)
    if isinstance(manifest.get("name"), str):
        name = manifest["name"]
    if isinstance(manifest.get("quant"), str):
        quant = manifest["quant"]
    modified = dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc)
    return StoredModel(name, quant, path, manifest, st.st_size, modified)


def _names_from_file(folder: str, stem: str) -> tuple[str, str | None]:
    """(name, quant) from `<name>-<QUANT>`, for a GGUF without a manifest."""
    if stem.startswith(folder + "-") and len(stem) > len(folder) + 1:
        return folder, stem[len(folder) + 1 :].upper()
    base, sep, tail = stem.rpartition("-")
    if sep and base and looks_like_quant(tail):
        return base, tail.upper()
    return stem, None


def find(name: str, quant: str | None = None) -> list[StoredModel]:
    """Stored models called `name` (case-insensitive), at `quant` if given."""
    return [
        m
        for m in list_models()
        if m.name.lower() == name.lower()
        and (quant is None or (m.quant or "").upper() == quant.upper())
    ]


def inside_store(path: Path) -> bool:
    """True when `path` lies under LLMRUN_HOME/models (links not followed)."""
    root = os.path.abspath(models_dir())
    target = os.path.abspath(path)
    try:
        return os.path.commonpath([root, target]) == root and target != root
    except ValueError:  # different drives on Windows
        return False


def remove(model: StoredModel) -> None:
    """Delete a stored model: its GGUF, its manifest, and the folder once empty.

    Refuses anything outside LLMRUN_HOME/models. A GGUF that is a link (to the
    Hugging Face cache) loses the link only, never the file it points to.
    """
    if not inside_store(model.path):
        raise StoreError(f"refusing to delete {model.path}: it is not in the llmrun store")
    try:
        with file_lock(model.path):
            model.path.unlink(missing_ok=True)
            for part in model.manifest.get("parts") or []:  # a split GGUF's other files
                if isinstance(part, str) and _LATER_PART.search(part) and "/" not in part:
                    model.path.with_name(part).unlink(missing_ok=True)
            if model.mmproj is not None:  # its image projector
                model.mmproj.unlink(missing_ok=True)
            manifest_path(model.path).unlink(missing_ok=True)
        # Small race: a writer that takes the lock now recreates the lock file.
        Path(str(model.path) + ".lock").unlink(missing_ok=True)
    except OSError as e:
        raise StoreError(f"cannot delete {model.path}: {e.strerror or e}") from None
    with contextlib.suppress(OSError):
        model.path.parent.rmdir()  # only succeeds when empty
