"""The command line's conventions: start-up imports, --version, metavars, llama.cpp's aborts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_raw_run_imports_only_the_engine(smollm2: Path) -> None:
    """A one-shot `run --raw` (a pipeline's loop) loads llama.cpp's bindings and nothing else.

    Not llama-cpp-python's high-level package, gguf-py's reader, numpy, Jinja, rich, pydantic
    or the Hub client: each is start-up time for code this command never calls.
    """
    names = imported_by("run", str(smollm2), "Hi", "--raw", "-n", "1", "--no-cache")
    assert "llmrun.engine.model" in names  # the engine did load
    unwanted = ("llama_cpp.llama", "gguf.gguf_reader", "numpy", "jinja2", "rich", "pydantic")
    unwanted += ("huggingface_hub", "jsonschema", "click")
    assert sorted(set(unwanted) & names) == []


def command_helps() -> dict[str, str]:
    """Every registered command's --help (and the app's), as a person sees it."""
    import typer.main
    from typer.testing import CliRunner

    from llmrun.cli import app

    runner = CliRunner()
    helps = {"": runner.invoke(app, ["--help"], terminal_width=100).output}
    for name in typer.main.get_command(app).commands:  # type: ignore[attr-defined]
        result = runner.invoke(app, [name, "--help"], terminal_width=100)
        assert result.exit_code == 0, (name, result.output)
        helps[name] = result.output
    return helps


def test_help_shows_metavars_not_python_types() -> None:
    helps = command_helps()
    assert {"run", "chat", "serve", "ps", "quantize"} <= set(helps)
    for name, text in helps.items():
        for label in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list"):
            assert label not in text, f"`llmrun {name} --help` shows {label}:\n{text}"
    run = helps["run"]
    assert re.search(r"--max-tokens\s+-n\s+N\s", run)
    assert re.search(r"--system\s+TEXT\s", run)
    assert re.search(r"--json-schema\s+PATH\s", run)
    assert re.search(r"--raw\s+Plain completion", run), "a flag shows no metavar"
    assert "Usage: llmrun rm [OPTIONS] MODEL" in " ".join(helps["rm"].split())


def test_metavar() -> None:
    from llmrun.cli.helpformat import metavar

    assert metavar("<int>") == "N"
    assert metavar("<list[str]>") == "TEXT"
    assert metavar("<file>") == "FILE"
    assert metavar("<bool>") is None
    assert metavar("<bool>", is_flag=False) == "BOOL"
    assert metavar("<a|b>") == "[a|b]"
    assert metavar("FILE") == "FILE"


def test_ggml_backtrace_off_unless_debugging() -> None:
    from llmrun.cli import quiet_ggml_aborts

    env: dict[str, str] = {}
    quiet_ggml_aborts(env)
    assert env == {"GGML_NO_BACKTRACE": "1"}
    env = {"LLMRUN_DEBUG": "1"}
    quiet_ggml_aborts(env)
    assert "GGML_NO_BACKTRACE" not in env
    env = {"GGML_NO_BACKTRACE": "0"}
    quiet_ggml_aborts(env)
    assert env == {"GGML_NO_BACKTRACE": "0"}  # the user's choice stands


@pytest.mark.parametrize(("debug", "expected"), [("0", "1"), ("1", "None")])
def test_main_sets_ggml_no_backtrace(debug: str, expected: str) -> None:
    # What llama.cpp would see once main has started: printed as the process exits.
    code = (
        "import atexit, os\n"
        "atexit.register(lambda: print(os.environ.get('GGML_NO_BACKTRACE')))\n"
        "from llmrun.cli import main\n"
        "main(['--version'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GGML_NO_BACKTRACE"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "LLMRUN_DEBUG": debug},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == expected


def test_run_at_a_terminal_without_a_prompt_says_what_it_expects(smollm2: Path) -> None:
    import pexpect

    child = pexpect.spawn(
        sys.executable,
        ["-m", "llmrun", "run", str(smollm2), "--raw", "--temp", "0", "-n", "8"],
        env=dict(os.environ),
        encoding="utf-8",
        timeout=120,
    )
    child.expect_exact("type a prompt, or give one as an argument; Ctrl-D to end")
    child.sendline("The capital of France is")
    child.sendeof()
    child.expect("Paris")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def complete(words: str) -> list[str]:
    """What bash completion offers for the last of `words` (typer's completion protocol)."""
    parts = words.split(" ")
    proc = subprocess.run(
        [sys.executable, "-m", "llmrun"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "_LLMRUN_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1),
        },
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_model_names_complete_from_the_store_and_aliases(smollm2: Path) -> None:
    from tests.conftest import add_stored

    add_stored(smollm2, "mymodel", "Q8_0")
    assert complete("llmrun run my") == ["mymodel:Q8_0", "mymodel"]
    assert complete("llmrun rm mymodel:") == ["mymodel:Q8_0"]
    assert "qwen3-0.6b" in complete("llmrun show qwen")
    assert complete("llmrun run mymodel wh") == []  # the prompt is not a model


@pytest.mark.parametrize(
    ("shell", "says"),
    [
        ("bash", "_llmrun_completion()"),
        ("zsh", "#compdef llmrun"),
        ("fish", "complete --command llmrun"),
    ],
)
def test_completion_script_for_each_shell(shell: str, says: str) -> None:
    # What --show-completion prints, asked for one shell by name: --show-completion itself
    # takes the shell from the parent processes (shellingham), which a detached test run lacks.
    proc = subprocess.run(
        [sys.executable, "-m", "llmrun"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "_LLMRUN_COMPLETE": f"source_{shell}"},
    )
    assert proc.returncode == 0, proc.stderr
    assert says in proc.stdout and "_LLMRUN_COMPLETE" in proc.stdout


def test_every_command_help_has_examples() -> None:
    missing = [name for name, text in command_helps().items() if name and "Examples:" not in text]
    assert missing == []


def test_quiet_leaves_only_the_answer_and_errors(llmrun_inprocess, smollm2: Path) -> None:
    r = llmrun_inprocess("run", str(smollm2), "Hi", "-n", "2", "--temp", "0", "-q", "-ngl", "9")
    assert r.code == 0, r.stderr
    assert r.stdout.strip() and r.stderr == ""  # not even -ngl's CPU-only note
    r = llmrun_inprocess("run", "no-such-model-here", "Hi", "-q", "--no-pull")
    assert r.code == 2 and r.stderr.startswith("error: unknown model")
    r = llmrun_inprocess("run", str(smollm2), "Hi", "-q", "-v")
    assert r.code == 2 and "contradict" in r.stderr
    r = llmrun_inprocess("run", "no-such-model-here", "Hi", "--no-pull")  # -q does not stick
    assert r.stderr.startswith("error:")


@pytest.mark.parametrize(
    "args",
    [
        ("bench", "-p", "8", "-n", "2", "-r", "1", "--json"),
        ("eval", "-c", "64", "--chunks", "1", "--json"),
    ],
)
def test_quiet_bench_and_eval(llmrun_inprocess, smollm2: Path, args: tuple[str, ...]) -> None:
    # -ngl 9 on a machine without a GPU: a note on stderr, which -q must drop.
    loud = llmrun_inprocess(args[0], str(smollm2), *args[1:], "-ngl", "9")
    assert loud.code == 0, loud.stderr
    assert "note: llama.cpp sees no GPU" in loud.stderr
    r = llmrun_inprocess(args[0], str(smollm2), *args[1:], "-ngl", "9", "-q")
    assert r.code == 0, r.stderr
    assert r.stdout.strip().startswith(("[", "{")) and r.stderr == ""
