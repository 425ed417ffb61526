"""The command line's conventions: start-up imports, --version, metavars, llama.cpp's aborts."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

# What `llmrun --help` and `llmrun <cmd> --help` must not load: each costs start-up time.
HEAVY = ("llama_cpp", "huggingface_hub", "jinja2", "jsonschema", "numpy", "gguf", "torch")
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+([\w.]+)$", re.MULTILINE)


def imported_by(*args: str) -> set[str]:
    """The modules `python -X importtime -m llmrun ARGS` imports (top-level package names too)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "llmrun", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set(IMPORTED.findall(proc.stderr))
    assert "llmrun.cli" in names, "no -X importtime lines: did the format change?"
    return names | {n.split(".")[0] for n in names}


def test_help_imports_nothing_heavy() -> None:
    heavy = sorted(set(HEAVY) & imported_by("--help"))
    assert heavy == [], f"`llmrun --help` imports {heavy}"


@pytest.mark.parametrize("command", ["run", "chat", "pull", "list", "show", "bench", "serve"])
def test_command_help_imports_nothing_heavy(command: str) -> None:
    heavy = sorted(set(HEAVY) & imported_by(command, "--help"))
    assert heavy == [], f"`llmrun {command} --help` imports {heavy}"


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    from importlib.metadata import version

    proc = subprocess.run(
        [sys.executable, "-m", "llmrun", flag], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == (
        f"llmrun {version('llmrun')} (llama-cpp-python {version('llama-cpp-python')})\n"
    )


def test_version_imports_nothing_heavy() -> None:
    heavy = sorted(set(HEAVY) & imported_by("--version"))
    assert heavy == [], f"`llmrun --version` imports {heavy}"
