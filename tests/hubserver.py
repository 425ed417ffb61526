"""A small stand-in for the Hugging Face Hub on 127.0.0.1, driven through the real client.

It speaks the parts of the Hub's HTTP API that huggingface-hub 2.x uses to download:

    GET  /api/models/{repo}[/revision/{rev}][?blobs=true]   model info with siblings (+ LFS sha256)
    HEAD /{repo}/resolve/{rev}/{path}                       X-Repo-Commit, ETag, X-Linked-*
    GET  /{repo}/resolve/{rev}/{path}                       the bytes, with Range requests

Errors carry the Hub's X-Error-Code headers (RepoNotFound, RevisionNotFound,
EntryNotFound, GatedRepo), which the client turns into its typed exceptions.
Tests inject faults per file (drop the connection, hold it, serve corrupt bytes)
and read back what was served: bytes per file, and each request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 1 << 16
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".onnx", ".pth")


@dataclass
class HubFile:
    """One file of a repo, read from `source` (a path, for big files, or bytes)."""

    name: str
    source: Path | bytes
    size: int = 0
    sha256: str = ""
    git_oid: str = ""  # blobId: the git object id (of the LFS pointer for LFS files)

    @property
    def lfs(self) -> bool:
        return self.name.lower().endswith(LFS_SUFFIXES)

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:end]
        with self.source.open("rb") as f:
            f.seek(start)
            return f.read(end - start)


@dataclass
class HubRepo:
    id: str
    files: dict[str, HubFile]
    commit: str
    token: str | None = None  # gated: file downloads need this bearer token


@dataclass
class Fault:
    """What to do to one file's downloads: drop or hold the connection at `at` bytes, corrupt."""

    drop_at: int | None = None
    drops: int = 0  # how many more responses to drop
    hold_at: int | None = None
    hold: threading.Event | None = None
    corrupt: bool = False


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    auth: str | None


@dataclass
class HubServer:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    faults: dict[tuple[str, str], Fault] = field(default_factory=dict)
    sent: Counter = field(default_factory=Counter)  # (repo, file) -> body bytes served
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _digests: dict[object, tuple[str, int]] = field(default_factory=dict)

    # ---------------------------------------------------------------- set-up

    def add_repo(
        self, repo_id: str, files: dict[str, Path | bytes], token: str | None = None
    ) -> HubRepo:
        hub_files = {name: self._file(name, src) for name, src in files.items()}
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        repo = HubRepo(repo_id, hub_files, commit, token)
        self.repos[repo_id] = repo
        return repo

    def _file(self, name: str, source: Path | bytes) -> HubFile:
        key = source if isinstance(source, bytes) else Path(source).resolve()
        if key not in self._digests:  # big sources are shared by several names: hash once
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            self._digests[key] = (hashlib.sha256(data).hexdigest(), len(data))
        sha256, size = self._digests[key]
        f = HubFile(name, source, size, sha256)
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
        content = pointer.encode() if f.lfs else f.read(0, size)
        f.git_oid = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        return f

    def fault(self, repo: str, name: str) -> Fault:
        return self.faults.setdefault((repo, name), Fault())

    def reset(self) -> None:
        self.faults.clear()
        self.sent.clear()
        self.requests.clear()

    def downloads(self, repo: str | None = None) -> list[Request]:
        """The GET requests for file bytes (of one repo)."""
        prefix = f"/{repo}/resolve/" if repo else None
        return [
            r
            for r in self.requests
            if r.method == "GET"
            and "/resolve/" in r.path
            and (not prefix or r.path.startswith(prefix))
        ]

    def start(self) -> None:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for fault in self.faults.values():
            if fault.hold is not None:
                fault.hold.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.0"  # one request per connection: simple, and drops are clean

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    # ---------------------------------------------------------------- routing

    def _route(self, body: bool) -> None:
        hub = self.server_hub
        url = urlsplit(self.path)
        path = unquote(url.path)
        hub.requests.append(
            Request(
                self.command, path, self.headers.get("Range"), self.headers.get("Authorization")
            )
        )
        if m := _API.match(path):
            self._model_info(m.group(1), m.group(2) or "main", parse_qs(url.query))
        elif m := _RESOLVE.match(path):
            self._resolve(m.group(1), m.group(2), m.group(3), body)
        else:
            self._error(404, "RepoNotFound", "Not found")

    def _repo_at(self, repo_id: str, rev: str) -> HubRepo | None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        elif rev not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        else:
            return repo
        return None

    def _model_info(self, repo_id: str, rev: str, query: dict[str, list[str]]) -> None:
        repo = self._repo_at(repo_id, unquote(rev))
        if repo is None:
            return
        blobs = query.get("blobs", [""])[0].lower() == "true"
        siblings = []
        for f in repo.files.values():
            sib: dict[str, object] = {"rfilename": f.name}
            if blobs:
                sib.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    sib["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(sib)
        info = {
            "_id": repo.commit[:24],
            "id": repo.id,
            "modelId": repo.id,
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.token else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
            "lastModified": "2025-01-01T00:00:00.000Z",
        }
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, rev: str, name: str, body: bool) -> None:
        repo = self._repo_at(repo_id, rev)
        if repo is None:
            return
        if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            given = self.headers.get("Authorization") is not None
            self._error(
                403 if given else 401,
                "GatedRepo",
                f"Access to model {repo.id} is restricted"
                + (" and you are not in the authorized list." if given else ". Please log in."),
            )
            return
        f = repo.files.get(name)
        if f is None:
            self._error(
                404, "EntryNotFound", f"{name} does not exist", {"X-Repo-Commit": repo.commit}
            )
            return
        etag = f'"{f.sha256 if f.lfs else f.git_oid}"'
        headers = {"X-Repo-Commit": repo.commit, "ETag": etag, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(f.size)})
        start, end, status = 0, f.size, 200
        m = _RANGE.match(self.headers.get("Range") or "")
        if m:
            start, end, status = (
                int(m.group(1)),
                min(int(m.group(2) or f.size - 1) + 1, f.size),
                206,
            )
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        headers["Content-Length"] = str(end - start)
        headers["Content-Type"] = "application/octet-stream"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self._stream(repo, f, start, end)

    # ---------------------------------------------------------------- bodies

    def _stream(self, repo: HubRepo, f: HubFile, start: int, end: int) -> None:
        hub = self.server_hub
        fault = hub.faults.get((repo.id, f.name), Fault())
        pos = start
        try:
            while pos < end:
                stop = min(end, pos + CHUNK)
                for at in (fault.drop_at, fault.hold_at):
                    if at is not None and pos < at < stop:
                        stop = at  # arrive exactly at the fault's offset
                if fault.hold_at is not None and pos >= fault.hold_at and fault.hold is not None:
                    self.wfile.flush()
                    fault.hold.wait(60)
                    fault.hold_at = None
                if fault.drop_at is not None and fault.drops > 0 and pos >= fault.drop_at:
                    fault.drops -= 1
                    self._hang_up()
                    return
                data = f.read(pos, stop)
                if fault.corrupt and pos <= f.size // 2 < stop:
                    i = f.size // 2 - pos
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                self.wfile.write(data)
                hub.sent[(repo.id, f.name)] += len(data)
                pos = stop
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True

    def _hang_up(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _error(
        self, status: int, code: str, message: str, extra: dict[str, str] | None = None
    ) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
        headers["Content-Type"] = "application/json"
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
