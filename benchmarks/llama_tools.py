"""Build llama.cpp's own tools (llama-bench, llama-quantize, ...) for comparison runs.

The sources are the llama.cpp tree vendored in the llama-cpp-python sdist of the installed
version, so the tool and llmrun run exactly the same ggml/llama code. Everything lives under
``~/.cache/llmrun-bench/llama.cpp-<version>/`` (root overridable with LLMRUN_BENCH_CACHE):

    llama_cpp_python-<version>.tar.gz   the sdist, as pip downloaded it
    src/                                its vendor/llama.cpp
    build/bin/<target>                  the built tools (reused when present)

Usage: ``python benchmarks/llama_tools.py llama-bench [--version 0.3.36]`` prints the path.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Mirrors how llama-cpp-python builds its libraries (its CMakeLists.txt and the CMakeCache of a
# pip source build): Release (-O3), shared libs, GGML_NATIVE=ON (-march=native), OpenMP on by
# default, no curl. Tools on, but nothing that needs the network at configure time (server UI).
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
]
JOBS = 2  # this project's machines have 2 cores


def log(msg: str) -> None:
    print(f"[llama_tools] {msg}", file=sys.stderr, flush=True)


def installed_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        sys.exit("llama-cpp-python is not installed here; pass its version with --version")


def cache_dir(version: str) -> Path:
    root = Path(os.environ.get("LLMRUN_BENCH_CACHE") or Path.home() / ".cache" / "llmrun-bench")
    return root / f"llama.cpp-{version}"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialize concurrent builds of the same version (two benchmarks started at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def fetch_sources(version: str, home: Path) -> Path:
    """Download the sdist (once) and extract its vendor/llama.cpp into ``home/src``."""
    src = home / "src"
    if (src / "CMakeLists.txt").is_file():
        return src
    sdists = sorted(home.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not sdists:
        log(f"downloading the llama-cpp-python {version} sdist from PyPI")
        pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        spec = f"llama-cpp-python=={version}"
        subprocess.run([*pip, spec, "-d", str(home)], check=True, stdout=sys.stderr)
        sdists = sorted(home.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not sdists:
        sys.exit(f"pip download left no llama_cpp_python-{version}.tar.gz in {home}")

    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    log(f"extracting {prefix} from {sdists[0].name}")
    tmp = Path(tempfile.mkdtemp(prefix="src.", dir=home))
    with tarfile.open(sdists[0]) as tar:
        members = []
        for m in tar.getmembers():
            name = m.name.removeprefix(prefix)
            # .git is a submodule link to a repository the sdist lacks; git calls choke on it
            if m.name.startswith(prefix) and name != ".git":
                m.name = name
                members.append(m)
        if not members:
            sys.exit(f"{sdists[0]} has no {prefix}")
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(src)  # atomic: a half-extracted tree is never taken for a finished one
    return src


def build_tool(target: str = "llama-bench", version: str | None = None) -> Path:
    """Return the path of llama.cpp's ``target`` executable, building it first if needed."""
    version = version or installed_version()
    home = cache_dir(version)
    binary = home / "build" / "bin" / target
    if binary.is_file():
        return binary
    with locked(home / ".lock"):
        if binary.is_file():  # another process built it while we waited
            return binary
        src = fetch_sources(version, home)
        build = home / "build"
        started = time.monotonic()
        if not (build / "CMakeCache.txt").is_file():
            log(f"configuring llama.cpp {version} in {build}")
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            subprocess.run(
                ["cmake", "-S", str(src), "-B", str(build), *generator, *CMAKE_OPTIONS],
                check=True,
                stdout=sys.stderr,
            )
        log(f"building {target} with -j{JOBS} (several minutes on 2 cores)")
        subprocess.run(
            ["cmake", "--build", str(build), "--target", target, f"-j{JOBS}"],
            check=True,
            stdout=sys.stderr,
        )
        log(f"built {target} in {time.monotonic() - started:.0f} s")
    if not binary.is_file():
        sys.exit(f"the build finished but {binary} is missing")
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "target",
        nargs="?",
        default="llama-bench",
        help="a llama.cpp CMake target: llama-bench, llama-quantize, ...",
    )
    parser.add_argument("--version", help="llama-cpp-python version (default: the installed one)")
    args = parser.parse_args()
    print(build_tool(args.target, args.version))


if __name__ == "__main__":
    main()
