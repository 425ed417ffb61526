"""Remote workers through llama.cpp's RPC backend (ggml-rpc): layers on other machines.

A worker is llama.cpp's RPC server run inside `llmrun worker`; a client registers
each worker's devices with `ggml_backend_rpc_add_server`, after which llama.cpp
places layers on them like on local GPUs (RPC devices first, to keep network
transfers down). Both entry points come from the backend registry of the
llama.cpp build llama-cpp-python loaded, so client and worker are one build.

ggml-rpc aborts the process when a worker cannot be reached or drops the
connection, and sets no socket timeouts. So before llama.cpp connects we say
hello ourselves (a clear error for a worker that is down, busy or of another
version), after loading we put TCP keepalive and a user timeout on llama.cpp's
sockets (a worker that vanishes from the network then fails the connection
instead of hanging it), and an abort callback turns a lost worker into one
clear line - or, in a server, into failed requests and a parked thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llmrun.engine import system
from llmrun.errors import BadOption, EngineError, WorkerError

PROBE_TIMEOUT = 5.0  # seconds for a worker to accept and answer hello
DEFAULT_TIMEOUT = 30.0  # seconds a lost connection may go unnoticed mid-generation
TIMEOUT_ENV = "LLMRUN_RPC_TIMEOUT"
MAX_TIMEOUT = 86400  # a day; TCP_USER_TIMEOUT takes milliseconds in a C int
INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir '
    '"llama-cpp-python>=0.3.36,<0.4"'
)

# The wire protocol (ggml-rpc.cpp): request = cmd byte, u64 size, payload;
# response = u64 size, payload. Hello and device count are stable across versions.
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24  # rpc_msg_hello_req
# RPC_PROTO_MAJOR/MINOR_VERSION in the llama.cpp that llama-cpp-python 0.3.36 vendors: llama.cpp
# refuses (by aborting) a worker of another major version or of a newer minor one.
PROTO_MAJOR, PROTO_MINOR = 7, 0

_vp = ctypes.c_void_p
_ADD_SERVER = ctypes.CFUNCTYPE(_vp, ctypes.c_char_p)
_START_SERVER = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(_vp)
)
_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


@dataclass(frozen=True)
class Worker:
    """A worker that answered hello."""

    endpoint: str  # host:port, as llama.cpp is given it
    version: str  # its RPC protocol version
    devices: int  # devices it serves


# ---------------------------------------------------------------- the build


def _registry() -> int | None:
    """The RPC backend's registry entry, or None on a build without it."""
    by_name = system.bind("ggml_backend_reg_by_name")
    reg = by_name(b"RPC") if by_name else None
    return reg or None


def available() -> bool:
    return _registry() is not None


def require() -> int:
    """The RPC backend's registry entry; a clear error on a build without it."""
    reg = _registry()
    if reg is None:
        raise BadOption(
            "this llama-cpp-python build has no RPC backend, so it cannot use or be an RPC worker",
            f"reinstall it with RPC: {INSTALL_HINT}",
        )
    return reg


def _proc(name: str, proto: type) -> Callable[..., object]:
    reg = require()
    address = system.bind("ggml_backend_reg_get_proc_address")(reg, name.encode())
    if not address:
        raise EngineError(f"the RPC backend of this llama.cpp build has no {name}")
    return proto(address)


# ---------------------------------------------------------------- endpoints


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the worker closed the connection")
        data += chunk
    return data


def _call(sock: socket.socket, cmd: int, payload: bytes, answer_size: int) -> bytes:
    sock.sendall(bytes([cmd]) + struct.pack("<Q", len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != answer_size:
        raise ValueError(f"answered {size} bytes where {answer_size} were expected")
    return _recv_exact(sock, size)


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT) -> Worker:
    """Say hello to a worker the way llama.cpp will, and ask how many devices it has."""
    host, port = _split(endpoint)
    remedy = f"start `llmrun worker --host <address> --port {port}` on {host}, or fix --rpc"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise WorkerError(f"RPC worker {endpoint} refused the connection", remedy) from None
    except TimeoutError:
        raise WorkerError(
            f"RPC worker {endpoint} did not answer in {timeout:g} s", remedy
        ) from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise WorkerError(f"cannot reach RPC worker {endpoint}: {reason}", remedy) from None
    with sock:
        try:
            hello = _call(sock, CMD_HELLO, bytes(CONN_CAPS_SIZE), 4 + CONN_CAPS_SIZE)
            major, minor, patch = hello[0], hello[1], hello[2]
            if major != PROTO_MAJOR or minor > PROTO_MINOR:
                raise WorkerError(
                    f"RPC worker {endpoint} speaks RPC protocol {major}.{minor}.{patch}, "
                    f"this llmrun's llama.cpp speaks {PROTO_MAJOR}.{PROTO_MINOR}",
                    "run the same llama-cpp-python version on both machines",
                )
            (count,) = struct.unpack("<I", _call(sock, CMD_DEVICE_COUNT, b"", 4))
        except TimeoutError:
            raise WorkerError(
                f"RPC worker {endpoint} accepted the connection but did not answer "
                f"in {timeout:g} s",
                "a worker serves one client at a time: stop the other llmrun using it, "
                "or start another worker",
            ) from None
        except (OSError, ValueError) as e:
            raise WorkerError(
                f"{endpoint} does not speak this llama.cpp's RPC protocol ({e})",
                "check the port (an `llmrun worker` or llama.cpp rpc-server), and run the same "
                "llama-cpp-python version on both machines",
            ) from None
    if count == 0:
        raise WorkerError(f"RPC worker {endpoint} serves no devices")
    return Worker(endpoint, f"{major}.{minor}.{patch}", count)


# ---------------------------------------------------------------- the client

_attached: dict[str, Worker] = {}
_peers: dict[tuple[str, int], str] = {}  # resolved (ip, port) -> endpoint
_hardened: dict[int, str] = {}  # fd -> endpoint: a reset connection no longer names its peer
_on_lost: list[Callable[[str], None]] = []


def attach(endpoints: tuple[str, ...], timeout: float = PROBE_TIMEOUT) -> list[Worker]:
    """Register each worker's devices with llama.cpp (once per process)."""
    if not endpoints:
        return []
    timeout_seconds()  # a bad LLMRUN_RPC_TIMEOUT is an error now, not after loading
    add_server = _proc("ggml_backend_rpc_add_server", _ADD_SERVER)
    register = system.bind("ggml_backend_register")
    _install_abort_handler()
    for endpoint in endpoints:
        if endpoint in _attached:
            continue
        worker = probe(endpoint, timeout)
        host, port = _split(endpoint)
        for info in socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM):
            _peers[(str(info[4][0]), port)] = endpoint
        reg = add_server(endpoint.encode())
        if not reg:
            raise EngineError(f"llama.cpp could not add RPC worker {endpoint}")
        register(reg)
        _attached[endpoint] = worker
    return [_attached[e] for e in endpoints]


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise BadOption(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not 0 < value <= MAX_TIMEOUT:  # also refuses nan and inf
        raise BadOption(f"{TIMEOUT_ENV} must be between 0 and {MAX_TIMEOUT} seconds, got {text!r}")
    return value


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket | None]:
    """A socket object on one of llama.cpp's descriptors, handed back untouched; None if none."""
    try:
        sock = socket.socket(fileno=fd) if stat.S_ISSOCK(os.fstat(fd).st_mode) else None
    except OSError:
        sock = None
    try:
        yield sock
    finally:
        if sock is not None:
            sock.detach()  # the descriptor stays llama.cpp's


def _worker_sockets() -> dict[int, str]:
    """This process's open TCP connections to attached workers: fd -> endpoint."""
    found: dict[int, str] = {}
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc (macOS): try the low descriptors
        fds = list(range(3, 1024))
    for fd in fds:
        with _borrowed(fd) as sock:
            try:
                peer = sock.getpeername() if sock is not None else None
            except OSError:
                peer = None
        endpoint = _peers.get((peer[0], peer[1])) if isinstance(peer, tuple) else None
        if endpoint:
            found[fd] = endpoint
    return found


def harden(timeout: float | None = None) -> int:
    """Put keepalive and a user timeout on llama.cpp's worker connections.

    A worker that crashes closes its connections and llama.cpp notices at once;
    one whose machine or network goes away would leave llama.cpp waiting for
    ever. With these options the kernel gives up on it after `timeout`
    seconds. Returns the number of connections changed.
    """
    timeout = timeout or timeout_seconds()
    idle = max(1, int(timeout / 3))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPALIVE", None), idle),  # macOS name
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), max(1, int(timeout / 6))),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(timeout * 1000)),
    ]
    fds = _worker_sockets()
    _hardened.update(fds)
    for fd in fds:
        with _borrowed(fd) as sock:
            for level, name, value in options:
                if sock is not None and name is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(level, name, value)
    return len(fds)


def dead_workers() -> dict[str, str]:
    """Attached workers whose connection is closed or failed, and how, as the kernel knows."""
    dead: dict[str, str] = {}
    for fd, endpoint in {**_hardened, **_worker_sockets()}.items():
        with _borrowed(fd) as sock:
            how = _how_dead(sock) if sock is not None else None
        if how:
            dead[endpoint] = how
    return dead


def _how_dead(sock: socket.socket) -> str | None:
    try:
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        try:
            sock.getpeername()
        except OSError:  # reset: no peer any more
            error = error or errno.ECONNRESET
        if error:
            return os.strerror(error).lower()
        if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
            return "it closed the connection"
    except BlockingIOError:
        pass  # alive, nothing to read
    except OSError as e:
        return (e.strerror or str(e)).lower()
    return None


def on_lost(callback: Callable[[str], None]) -> None:
    """Call `callback(message)` instead of exiting when a worker is lost (a server does)."""
    _on_lost.append(callback)


def lost_message(detail: str) -> str:
    """Which workers were lost and how, for the one error line."""
    dead = dead_workers()
    if dead:
        return "lost " + "; ".join(f"RPC worker {e}: {how}" for e, how in sorted(dead.items()))
    return f"lost an RPC worker ({', '.join(_attached)}): {detail}"


LOST_REMEDY = "check that `llmrun worker` still runs there and the network between, then retry"


def _handle_abort(raw: bytes | None) -> None:
    message = (raw or b"").decode("utf-8", errors="replace")
    if "RPC" not in message and "connect" not in message:
        sys.stderr.write(f"llama.cpp: {message}\n")  # not ours: abort as llama.cpp would
        sys.stderr.flush()
        return
    # "ggml-rpc.cpp:566: Remote RPC server crashed ..." -> "remote RPC server crashed ..."
    detail = message.split(": ", 1)[-1].strip().rstrip(".") or "connection failed"
    # Several connections can fail at once: the first reports, the others just wait.
    if _reporting.acquire(blocking=False):
        text = lost_message(detail[:1].lower() + detail[1:])
        if not _on_lost:  # a command, not a server: the one error line, then exit 1
            sys.stdout.flush()
            sys.stderr.write(f"error: {text}; {LOST_REMEDY}\n")
            sys.stderr.flush()
            os._exit(1)
        for callback in _on_lost:
            with contextlib.suppress(Exception):  # raising here would abort the process
                callback(text)
    # Returning would abort the process; the thread that found the loss (llama.cpp's
    # connection thread) waits for ever instead, and whoever waited on it too.
    threading.Event().wait()


_reporting = threading.Lock()  # taken once, by the first lost connection


_abort_handler: list[object] = []  # keeps the ctypes callback alive


def _install_abort_handler() -> None:
    if _abort_handler:
        return
    setter = system.bind("ggml_set_abort_callback")
    if setter is None:
        return
    callback = _ABORT_CALLBACK(_handle_abort)
    _abort_handler.append(callback)
    setter(ctypes.cast(callback, ctypes.c_void_p))


# ---------------------------------------------------------------- the worker


def worker_devices() -> list[dict[str, Any]]:
    """What a worker serves, as llama.cpp's rpc-server chooses: the GPUs, else the CPU."""
    found = system.devices()
    chosen = [d for d in found if system.is_gpu(d)]
    return chosen or [d for d in found if d.get("type") == "cpu"][:1]


def check_listen_address(host: str, port: int) -> str:
    """The IPv4 address llama.cpp's server will bind, or a clear error; checks the port is free."""
    try:
        address = str(ipaddress.IPv4Address(socket.gethostbyname(host)))
    except (OSError, ValueError):
        raise BadOption(f"--host {host!r} is not an IPv4 address of this machine") from None
    if not 0 < port < 65536:
        raise BadOption(f"--port must be 1 to 65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            raise BadOption(
                f"cannot listen on {address}:{port}: {e.strerror or e}",
                "pick another --port, or stop what holds it",
            ) from None
    return address


def serve_worker(
    address: str, port: int, threads: int, cache_dir: str | None, devices: list[dict[str, Any]]
) -> None:
    """Run llama.cpp's RPC server; returns only when it fails to start."""
    start = _proc("ggml_backend_rpc_start_server", _START_SERVER)
    get = system.bind("ggml_backend_dev_get")
    array = (_vp * len(devices))(*(get(d["index"]) for d in devices))
    endpoint = f"{address}:{port}".encode()
    start(endpoint, cache_dir.encode() if cache_dir else None, threads, len(devices), array)
