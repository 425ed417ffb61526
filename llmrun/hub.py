"""The Hugging Face Hub: pull a model into its cache (Hub I/O only).

`pull(MODEL)` lists the repo (one model_info call), picks the files
(llmrun.repofiles: the GGUF of one quant, or what converting a checkpoint needs),
downloads each into the Hugging Face cache with progress and resume, checks its
size and sha256 against the listing, and hands the cached files to llmrun.store,
which records them (where, and in what manifest, is the store's business).
Offline (HF_HUB_OFFLINE) the listing comes from the cache; `purge` deletes a
cached download that a store manifest names.

Why not hf_hub_download alone: huggingface-hub 2.x downloads into a temporary
file unique to the process and deletes it on failure, so an interrupted pull
would start over. We keep `blobs/<etag>.incomplete` (the name older clients
used), continue it with the client's own `http_get`, verify it, and rename it
into place under the client's own lock file; hf_hub_download then finds the blob
and makes the snapshot link. The cache layout stays the Hub's own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx2  # huggingface-hub 2.x's HTTP client: its exceptions are the network errors
from filelock import FileLock, Timeout
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    get_token,
    hf_hub_download,
    hf_hub_url,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.utils import build_hf_headers, silent_tqdm

from llmrun import store
from llmrun.errors import BadInput, BadOption, HubError, LlmrunError, ModelNotFound
from llmrun.ggufinfo import read_info
from llmrun.registry import ModelEntry, load_registry, split_tag
from llmrun.repofiles import (
    REPO_ID,
    Listing,
    NoSuchQuant,
    RemoteFile,
    Selection,
    check_safe,
    select,
)
from llmrun.resolve import ResolvedModel, resolve_model

RETRY_DELAYS = (0.5, 1.0, 2.0)  # seconds before each new try when the Hub cannot be reached
RETRY_STATUS = (429, 500, 502, 503, 504)
TOKEN_HOW = "pass --token, set HF_TOKEN, or run `hf auth login`"

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------- what a pull does


@dataclass(frozen=True)
class Target:
    """What MODEL names: the store name, the repos to try in order, quant and revision."""

    name: str
    repos: tuple[str, ...]
    quant: str | None  # None: the repo's only quant, else DEFAULT_QUANT
    revision: str


@dataclass
class PullResult:
    name: str
    quant: str | None
    kind: str
    repo: str
    revision: str
    commit: str
    files: list[tuple[RemoteFile, str]]  # each file and what happened: cached, resumed, ...
    path: Path | None  # the stored GGUF, or the checkpoint's snapshot folder; None on a dry run
    downloaded: int = 0  # bytes fetched this time

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.quant}" if self.kind == "gguf" and self.quant else self.name


class PullProgress:
    """What a pull reports as it goes; this one ignores it all. The CLI draws bars."""

    def note(self, text: str) -> None:
        """One line for the user: a fallback, a retry, a wait."""

    def begin(self, files: Sequence[RemoteFile], on_disk: Mapping[str, int]) -> None:
        """Downloads start: the files and the bytes of each already here."""

    def advance(self, name: str, nbytes: int) -> None:
        """`nbytes` more of `name` arrived (negative when a download starts over)."""

    def end(self) -> None:
        """Downloads are over, successfully or not."""


class StderrNotes(PullProgress):
    """The notes as plain lines on stderr, no bars: what `ensure_local` says by default."""

    def note(self, text: str) -> None:
        sys.stderr.write(f"{text}\n")


# ---------------------------------------------------------------- pull


def pull(
    model: str,
    *,
    revision: str | None = None,
    quant: str | None = None,
    token: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: PullProgress | None = None,
    mmproj_quant: str | None = None,
) -> PullResult:
    """Download MODEL (an alias or org/repo[:QUANT]) into the Hugging Face cache and store it.

    A GGUF repo with an image projector (mmproj-*.gguf) beside the model gives that too, of
    `mmproj_quant` (default F16); it is stored with the model, which run, chat and serve find.
    """
    progress = progress or PullProgress()
    tgt = target(model, quant=quant, revision=revision)
    listing, selection = _choose(tgt, token, progress, mmproj_quant)
    every = [*selection.files, *([selection.projector] if selection.projector else [])]
    for f in every:
        check_safe(listing.repo, f.name)
    on_disk = {f.name: _bytes_here(listing, f) for f in every}
    status = {f.name: _status(f, on_disk[f.name], force, listing.cached) for f in every}
    result = PullResult(
        name=tgt.name,
        quant=selection.quant,
        kind=selection.kind,
        repo=listing.repo,
        revision=listing.revision,
        commit=listing.commit,
        files=[(f, status[f.name]) for f in every],
        path=None,
    )
    if dry_run:
        return result
    paths = _fetch_all(listing, every, token, force, on_disk, progress)
    result.downloaded = sum(
        (f.size or 0) - (0 if force else on_disk[f.name])
        for f in every
        if status[f.name] != "cached"
    )
    result.path = _register(result, listing, selection, paths, force)
    if result.kind == "gguf" and result.quant is None:
        result.quant = store.read_manifest(result.path).get("quant")
    return result


def target(model: str, *, quant: str | None = None, revision: str | None = None) -> Target:
    """MODEL as an alias of models.toml or a Hugging Face id, with its defaults."""
    name, tag = split_tag(model.strip())
    if tag and quant and tag != quant.upper():
        raise BadOption(f"{model} asks for {tag} but --quant says {quant.upper()}", "give one")
    wanted = tag or (quant.upper() if quant else None)
    registry = load_registry(store.home())
    entry = registry.get(name)
    if entry is not None:
        repos = tuple(r for r in (entry.gguf_repo, entry.repo) if r)
        return Target(entry.name, repos, wanted or entry.quant, revision or entry.revision)
    if not REPO_ID.match(name):
        raise ModelNotFound(
            f"cannot pull {model!r}: it is neither an alias of models.toml nor a Hugging Face id",
            "name an alias, or org/repo[:QUANT]",
        )
    # A repo that an alias lists is stored under the alias, with its defaults.
    owner = _alias_of_repo(registry.models.values(), name)
    if owner is not None:
        return Target(owner.name, (name,), wanted or owner.quant, revision or owner.revision)
    return Target(store.repo_store_name(name), (name,), wanted, revision or "main")


def pullable(spec: str) -> bool:
    """True when MODEL names something `pull` could fetch: an alias or org/repo[:QUANT]."""
    name, _ = split_tag(spec.strip())
    return bool(REPO_ID.match(name)) or load_registry(store.home()).get(name) is not None


def ensure_local(
    spec: str | None, *, pull_missing: bool = True, progress: PullProgress | None = None
) -> ResolvedModel:
    """resolve_model, but a model that is not here yet is pulled first (unless offline).

    The error of resolve_model stands when pulling is off, offline, or MODEL
    names nothing on the Hub.
    """
    try:
        return resolve_model(spec)
    except ModelNotFound:
        if not pull_missing or spec is None or constants.HF_HUB_OFFLINE or not pullable(spec):
            raise
    progress = progress or StderrNotes()
    progress.note(f"{spec} is not here yet: pulling it (--no-pull to only use local models)")
    result = pull(spec, progress=progress)
    if result.kind != "gguf":
        raise ModelNotFound(
            f"{spec}: only a safetensors checkpoint was found ({result.path})",
            "convert it to GGUF with `llmrun quantize`",
        )
    return resolve_model(spec)


# ---------------------------------------------------------------- listing and choosing


def _choose(
    tgt: Target, token: str | None, progress: PullProgress, mmproj_quant: str | None = None
) -> tuple[Listing, Selection]:
    """The first repo of the target that has what it asks for; the GGUF repo comes first."""
    for i, repo in enumerate(tgt.repos):
        listing = list_repo(repo, tgt.revision, token=token, progress=progress)
        try:
            return listing, select(listing, tgt.quant, mmproj_quant)
        except NoSuchQuant:
            if i == len(tgt.repos) - 1:
                raise
            progress.note(
                f"{repo} has no {tgt.quant} GGUF; pulling the checkpoint {tgt.repos[i + 1]} "
                "instead (`llmrun quantize` converts it)"
            )
    raise AssertionError("a target has at least one repo")  # pragma: no cover


def list_repo(
    repo: str, revision: str, *, token: str | None = None, progress: PullProgress | None = None
) -> Listing:
    """The repo's files at `revision`, from the Hub; from the cache when offline."""
    progress = progress or PullProgress()
    cached = cached_listing(repo, revision)
    if constants.HF_HUB_OFFLINE:
        if cached is None:
            raise HubError(
                f"HF_HUB_OFFLINE is set and {repo} ({revision}) is not in the Hugging Face "
                f"cache ({constants.HF_HUB_CACHE})",
                "unset HF_HUB_OFFLINE to download it",
            )
        return cached
    api = HfApi()
    try:
        info = _retrying(
            lambda: api.model_info(repo, revision=revision, files_metadata=True, token=token),
            progress,
        )
    except (httpx2.TransportError, HfHubHTTPError) as e:
        if cached is not None and _network_trouble(e):
            progress.note(f"cannot reach {constants.ENDPOINT}: using the cached copy of {repo}")
            return cached
        raise hub_error(e, repo, revision, token) from None
    files = tuple(
        RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
        for s in info.siblings or ()
    )
    return Listing(repo, revision, info.sha or revision, files)


def cached_listing(repo: str, revision: str) -> Listing | None:
    """What the Hugging Face cache holds of `repo` at `revision` (a ref or a commit)."""
    folder = _repo_cache(repo)
    commit = revision if _COMMIT_RE.match(revision) else _read_text(folder / "refs" / revision)
    snapshot = folder / "snapshots" / (commit or "-")
    if not commit or not snapshot.is_dir():
        return None
    files = []
    for path in sorted(snapshot.rglob("*")):
        if path.is_file():  # follows the link to its blob; a dangling one is skipped
            blob = path.resolve().name
            sha256 = blob if _SHA256_RE.match(blob) else None
            name = path.relative_to(snapshot).as_posix()
            files.append(RemoteFile(name, path.stat().st_size, sha256, None if sha256 else blob))
    return Listing(repo, revision, commit, tuple(files), cached=True)


# ---------------------------------------------------------------- fetching


def _fetch_all(
    listing: Listing,
    files: Sequence[RemoteFile],
    token: str | None,
    force: bool,
    on_disk: Mapping[str, int],
    progress: PullProgress,
) -> list[Path]:
    """Every file into the cache (or found there); their snapshot paths, in order."""
    snapshot = _repo_cache(listing.repo) / "snapshots" / listing.commit
    if listing.cached:
        return [snapshot / f.name for f in files]
    todo = [f for f in files if force or on_disk[f.name] != f.size]
    if todo:
        progress.begin(todo, {f.name: 0 if force else on_disk[f.name] for f in todo})
    try:
        with _client_log_as_notes(progress):
            paths = [_fetch(listing, f, token, force, progress) for f in files]
    finally:
        if todo:
            progress.end()
    _write_ref(listing)
    return paths


def _fetch(
    listing: Listing, f: RemoteFile, token: str | None, force: bool, progress: PullProgress
) -> Path:
    folder = _repo_cache(listing.repo)
    try:
        if f.etag is not None:
            blob = folder / "blobs" / f.etag
            if force or not _complete(blob, f):
                lock = Path(constants.HF_HUB_CACHE) / ".locks" / folder.name / f"{f.etag}.lock"
                with _locked(lock, f.name, progress):
                    if force or not _complete(blob, f):  # another pull may have done it meanwhile
                        _download(listing, f, blob, token, force, progress)
        # The snapshot link, pinned to the listed commit: the client makes it, finding the blob.
        path = hf_hub_download(
            listing.repo, f.name, revision=listing.commit, token=token, tqdm_class=silent_tqdm
        )
        return Path(path)
    except (httpx2.TransportError, HfHubHTTPError, LocalEntryNotFoundError) as e:
        raise hub_error(e, listing.repo, listing.revision, token) from None
    except OSError as e:
        partial = folder / "blobs" / f"{f.etag}.incomplete"
        raise _disk_error(e, f, e.filename or (partial if f.etag else folder)) from None


@contextlib.contextmanager
def _client_log_as_notes(progress: PullProgress) -> Iterator[None]:
    """The client logs each dropped connection it resumes: one note of ours instead."""
    log = logging.getLogger("huggingface_hub.file_download")

    def to_note(record: logging.LogRecord) -> bool:
        if "Trying to resume" in record.getMessage():
            progress.note("the connection dropped; resuming the download")
        return False  # failures end up as one error of ours

    log.addFilter(to_note)
    try:
        yield
    finally:
        log.removeFilter(to_note)


def _complete(blob: Path, f: RemoteFile) -> bool:
    """The cache holds the whole file (a blob of another size is downloaded again)."""
    return blob.is_file() and (f.size is None or blob.stat().st_size == f.size)


def _write_ref(listing: Listing) -> None:
    """refs/<branch or tag> -> commit, as the client keeps it, for offline use later."""
    if listing.revision == listing.commit or any(
        p in ("", ".", "..") for p in listing.revision.split("/")
    ):
        return
    ref = _repo_cache(listing.repo) / "refs" / listing.revision
    if _read_text(ref) != listing.commit:
        with contextlib.suppress(OSError):  # only offline use needs it; the pull itself worked
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(listing.commit, encoding="utf-8")


def _download(
    listing: Listing,
    f: RemoteFile,
    blob: Path,
    token: str | None,
    force: bool,
    progress: PullProgress,
) -> None:
    """Fetch one file into `<blob>.incomplete`, continuing what is there; verify; rename."""
    partial = blob.with_name(blob.name + ".incomplete")
    url = hf_hub_url(listing.repo, f.name, revision=listing.commit)
    headers = build_hf_headers(token=token)
    location = get_hf_file_metadata(url, token=token).location  # the Hub may redirect to a CDN
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed URL elsewhere: never send it the token
    blob.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.is_file() else 0
    if force or (f.size is not None and have > f.size):
        have = 0
    with partial.open("ab" if have else "wb") as out:
        http_get(
            location,
            _Counted(out, lambda n: progress.advance(f.name, n)),
            resume_size=have,
            headers=headers,
            expected_size=f.size,
            tqdm_class=silent_tqdm,  # our progress comes from _Counted
        )
    _verify(listing.repo, f, partial)
    os.chmod(partial, 0o644)
    os.replace(partial, blob)


def _verify(repo: str, f: RemoteFile, path: Path) -> None:
    """Size and hash as the Hub lists them; a mismatch deletes the download."""
    size = path.stat().st_size
    problem = None
    if f.size is not None and size != f.size:
        problem = f"{size} bytes where the Hub lists {f.size}"
    elif f.sha256 and (got := store.sha256_file(path)) != f.sha256:
        problem = f"sha256 {got[:12]}… where the Hub lists {f.sha256[:12]}…"
    elif not f.sha256 and f.git_oid and (got := _git_oid(path)) != f.git_oid:
        problem = f"git id {got[:12]}… where the Hub lists {f.git_oid[:12]}…"
    if problem:
        path.unlink(missing_ok=True)
        raise HubError(
            f"{repo}: {f.name} arrived damaged ({problem}); the download was deleted",
            "run the pull again",
        )


def _git_oid(path: Path) -> str:
    data = path.read_bytes()  # only files outside LFS get here: small text files
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@contextlib.contextmanager
def _locked(lock: Path, name: str, progress: PullProgress) -> Iterator[None]:
    """The client's own lock on one blob, so a parallel download of it waits for this one."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fl = FileLock(str(lock), mode=0o664)
    try:
        fl.acquire(timeout=0.5)
    except Timeout:
        progress.note(f"waiting for another download of {name} to finish")
        fl.acquire()
    try:
        yield
    finally:
        fl.release()


class _Counted:
    """A file that reports each write: progress without the client's tqdm bars."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._f = f
        self._on_bytes = on_bytes

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        self._on_bytes(len(data))
        return n

    def truncate(self, size: int | None = None) -> int:
        before = os.fstat(self._f.fileno()).st_size
        n = self._f.truncate(size)
        self._on_bytes(n - before)  # the server ignored our Range: it starts over
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


# ---------------------------------------------------------------- recording in the store


def _register(
    result: PullResult, listing: Listing, sel: Selection, paths: list[Path], force: bool
) -> Path:
    """Hand what was fetched to the store, which owns where and how it is recorded."""
    files = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in sel.files]
    where = {"repo": listing.repo, "commit": listing.commit, "ref": listing.revision}
    if sel.kind == "safetensors":
        return store.record_checkpoint(result.name, paths[0].parent, files=files, **where)
    quant = sel.quant or _file_quant(paths[0])
    projector = None
    if sel.projector is not None:
        f = sel.projector
        projector = (paths[len(sel.files)], {"name": f.name, "size": f.size, "sha256": f.sha256})
    return store.record_gguf(
        result.name, quant, paths[: len(sel.files)], files=files, force=force,
        projector=projector, **where,
    )  # fmt: skip


def _file_quant(path: Path) -> str:
    return read_info(path).quant or "GGUF"


def purge(manifest: Mapping[str, Any]) -> list[Path]:
    """Delete the cached download a store manifest names: snapshot links, and blobs no
    other snapshot uses. Returns what was deleted."""
    repo, commit = manifest.get("repo"), manifest.get("revision")
    files = list(manifest.get("files") or [])
    if isinstance(manifest.get("mmproj"), dict):  # a vision model's projector, pulled with it
        files.append(manifest["mmproj"])
    if not (isinstance(repo, str) and REPO_ID.match(repo) and _COMMIT_RE.match(str(commit))):
        return []
    folder = _repo_cache(repo)
    snapshot = folder / "snapshots" / commit
    deleted = []
    for entry in files:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        with contextlib.suppress(HubError):
            check_safe(repo, name)
            link = snapshot / name
            blob = link.resolve() if link.is_symlink() else None
            if link.is_symlink() or link.is_file():
                link.unlink()
                deleted.append(link)
            if blob is not None and blob.is_file() and not _linked_elsewhere(folder, blob):
                blob.unlink()
                deleted.append(blob)
    return deleted


def _linked_elsewhere(folder: Path, blob: Path) -> bool:
    return any(p.is_symlink() and p.resolve() == blob for p in (folder / "snapshots").rglob("*"))


# ---------------------------------------------------------------- errors


def hub_error(e: Exception, repo: str, revision: str, token: str | None) -> LlmrunError:
    """A client exception as one of ours, with what to do about it; most specific first."""
    for kind, make in _ERRORS:
        if isinstance(e, kind):
            return make(e, repo, revision, token)
    return HubError(f"{repo}: {e}")  # pragma: no cover - every client error is listed


def _gated(e: Exception, repo: str, revision: str, token: str | None) -> LlmrunError:
    why = "the token given has no access to it" if _has_token(token) else "it needs a token"
    return HubError(
        f"{repo} is gated: {why}",
        f"accept its terms at {constants.ENDPOINT}/{repo}, then {TOKEN_HOW}",
    )


def _http(e: Exception, repo: str, revision: str, token: str | None) -> LlmrunError:
    response = e.response if isinstance(e, HfHubHTTPError) else None
    status = response.status_code if response is not None else None
    if status in (401, 403):
        return HubError(f"{constants.ENDPOINT} refused access to {repo} ({status})", TOKEN_HOW)
    return HubError(f"{constants.ENDPOINT} answered {status} for {repo}", "try again later")


def _network(e: Exception, repo: str, revision: str, token: str | None) -> LlmrunError:
    # The client wraps the network error it met in LocalEntryNotFoundError.
    cause = e.__cause__ if isinstance(e, LocalEntryNotFoundError) and e.__cause__ else e
    broke = isinstance(cause, httpx2.TransportError) and not isinstance(
        cause, (httpx2.ConnectError, httpx2.TimeoutException)
    )
    reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return HubError(
        f"{'lost the connection to' if broke else 'cannot reach'} {constants.ENDPOINT} ({reason})",
        "check your connection and pull again (it resumes); HF_HUB_OFFLINE=1 uses cached files",
    )


_ERRORS: tuple[
    tuple[type[Exception] | tuple[type[Exception], ...], Callable[..., LlmrunError]], ...
] = (
    (GatedRepoError, _gated),  # a subclass of RepositoryNotFoundError: first
    (
        RepositoryNotFoundError,
        lambda e, repo, rev, tok: ModelNotFound(
            f"no repo {repo} on {constants.ENDPOINT}",
            f"check the name; a private repo needs a token: {TOKEN_HOW}",
        ),
    ),
    (
        RevisionNotFoundError,
        lambda e, repo, rev, tok: BadInput(
            f"{repo} has no revision {rev!r}", "check the branch, tag or commit (--revision)"
        ),
    ),
    (
        RemoteEntryNotFoundError,
        lambda e, repo, rev, tok: HubError(
            f"{repo} changed while pulling: a listed file is gone", "run the pull again"
        ),
    ),
    ((httpx2.TransportError, LocalEntryNotFoundError, OfflineModeIsEnabled), _network),
    (HfHubHTTPError, _http),
)

_DISK_REMEDY: dict[int, str] = {
    errno.ENOSPC: "free some space, or set HF_HUB_CACHE to a bigger disk; the next pull resumes",
    errno.EDQUOT: "free some space, or set HF_HUB_CACHE to a bigger disk; the next pull resumes",
    errno.EFBIG: "the file is too big for this file system or limit; set HF_HUB_CACHE elsewhere",
    errno.EACCES: "make it writable, or set HF_HOME or HF_HUB_CACHE to a folder you can write",
    errno.EPERM: "make it writable, or set HF_HOME or HF_HUB_CACHE to a folder you can write",
    errno.EROFS: "set HF_HOME or HF_HUB_CACHE to a writable disk",
}


def _disk_error(e: OSError, f: RemoteFile, where: object) -> LlmrunError:
    if e.errno is None:  # the client's own OSError: a download that came out the wrong size
        return HubError(f"{f.name}: {str(e).splitlines()[0]}", "run the pull again")
    return HubError(
        f"cannot write {where}: {e.strerror}",
        _DISK_REMEDY.get(e.errno, "check the disk and the permissions of HF_HUB_CACHE"),
    )


def _network_trouble(e: Exception) -> bool:
    return isinstance(e, httpx2.TransportError) or (
        isinstance(e, HfHubHTTPError)
        and e.response is not None
        and e.response.status_code in RETRY_STATUS
    )


def _retrying(call: Callable[[], Any], progress: PullProgress) -> Any:
    """`call()`, tried again after a pause while the Hub cannot be reached."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return call()
        except (httpx2.TransportError, HfHubHTTPError) as e:
            if delay is None or not _network_trouble(e):
                raise
            progress.note(f"cannot reach {constants.ENDPOINT}; trying again in {delay:g} s")
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------- small helpers


def _repo_cache(repo: str) -> Path:
    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def _bytes_here(listing: Listing, f: RemoteFile) -> int:
    """How much of `f` the cache holds: all of it, a partial download, or nothing."""
    if listing.cached:
        return f.size or 0
    if f.etag is None:
        return 0
    blob = _repo_cache(listing.repo) / "blobs" / f.etag
    if blob.is_file():
        return blob.stat().st_size
    partial = blob.with_name(blob.name + ".incomplete")
    return partial.stat().st_size if partial.is_file() else 0


def _status(f: RemoteFile, here: int, force: bool, cached: bool) -> str:
    if cached or (not force and f.size is not None and here == f.size):
        return "cached"
    if force or here == 0:
        return "download"
    return "resume"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _has_token(token: str | None) -> bool:
    return bool(token) or get_token() is not None


def _alias_of_repo(entries: Any, repo: str) -> ModelEntry | None:
    return next(
        (e for e in entries if repo.lower() in {r.lower() for r in (e.repo, e.gguf_repo) if r}),
        None,
    )
