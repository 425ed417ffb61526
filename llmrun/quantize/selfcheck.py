"""After writing: the file loads in llama.cpp, and its tokenizer agrees with the source's.

A converted model whose tokenizer is subtly different (a wrong pre-tokenizer, a
lost BOS) still loads and still talks, only worse; so the ids of a few probe
strings must be equal to the source tokenizer's, or the conversion fails.

llama.cpp may abort on a file we wrote (a GGML_ASSERT; a C++ exception, such as
its SentencePiece tokenizer on a character of a vocabulary without byte tokens),
which would take `llmrun quantize` down with it. So the file is loaded and the
probes tokenized in a child process (`python -m llmrun.quantize.selfcheck FILE`),
which prints the ids as JSON; a child that dies becomes one SelfCheckFailed.

A projector (mmproj file) is loaded the same way, by llama.cpp's mtmd with the text
model it belongs to (`--mmproj FILE MODEL`), which checks its keys, its tensors and
that its output width is the text model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from llmrun.errors import LlmrunError
from llmrun.options import Load
from llmrun.quantize.vocab import Reference

PROBES = (
    "Hello world",
    "The capital of France is Paris.",
    "  two leading spaces,\ttabs\tand\n\nnewlines\n",
    "1234567 + 89 = 1234656; 3.14159",
    "café, naïve, Ångström, 日本語のテキスト, 😀🚀",
    "def f(x):\n    return x ** 2  # square\n",
    "I'm sure you'll see it's THEIR'S",
)
CHECK_CTX = 64
# The child announces each step on stderr, so a parent whose child aborted can say where.
_STEP = "llmrun-selfcheck: "
_SAID_LINES = 3  # of llama.cpp's last words, enough for "terminate called ... what(): ..."


class SelfCheckFailed(LlmrunError):
    """The written file does not load, or tokenizes differently from its source."""


def self_check(path: Path, reference: Reference | None, shown: Path | None = None) -> None:
    """Load `path` with a small context; compare its ids of PROBES with `reference`'s.

    `shown` is the name for messages: `path` is usually a temporary name beside it.
    """
    got_all = _child_ids(path, shown or path)
    if reference is None:
        return
    for text, got in zip(PROBES, got_all, strict=True):
        want = reference.encode(text, True)
        if got != want:
            raise SelfCheckFailed(
                f"self-check: llama.cpp tokenizes {text!r} as {_short(got)} but "
                f"{reference.what} as {_short(want)}",
                "the tokenizer is not supported correctly; please report it",
            )


def projector_check(path: Path, model: Path, shown: Path | None = None) -> None:
    """Load the projector `path` in llama.cpp's mtmd with the text model `model`."""
    _child(["--mmproj", str(path), str(model)], shown or path, "loaded")


def _child_ids(path: Path, shown: Path) -> list[list[int]]:
    """The ids of PROBES as llama.cpp, in a child process, gives them for `path`."""
    return _child([str(path)], shown, "ids")


def _child(args: list[str], shown: Path, key: str) -> Any:
    """The `key` of what a child `python -m llmrun.quantize.selfcheck ARGS` answers."""
    proc = subprocess.run(
        [sys.executable, "-m", "llmrun.quantize.selfcheck", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=_child_env(),
    )
    if os.environ.get("LLMRUN_DEBUG") == "1":
        sys.stderr.write(proc.stderr)  # the backtrace, when the child kept one
    if proc.returncode == 0:
        try:
            answer = json.loads(proc.stdout)
        except ValueError:
            answer = {"error": f"unreadable answer {proc.stdout[-200:]!r}"}
        if key in answer:
            return answer[key]
        said = f": {_last_words(proc.stderr)}" if answer.get("logged") else ""
        raise SelfCheckFailed(
            f"self-check: llama.cpp cannot load {shown}: {answer['error']}{said}",
            "the file was not kept; please report it",
        )
    raise SelfCheckFailed(
        f"self-check: llama.cpp {_death(proc.returncode)} {_step(proc.stderr)}{shown}: "
        f"{_last_words(proc.stderr)}",
        "the file was not kept; please report it",
    )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # As llmrun.cli.quiet_ggml_aborts: one line from an abort, not a gdb backtrace.
    if env.get("LLMRUN_DEBUG") != "1":
        env.setdefault("GGML_NO_BACKTRACE", "1")
    # The child must import this llmrun, wherever it was imported from.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _death(returncode: int) -> str:
    if returncode < 0:
        import signal

        try:
            return f"died of {signal.Signals(-returncode).name}"
        except ValueError:
            return f"died of signal {-returncode}"
    return f"exited with status {returncode}"


def _step(stderr: str) -> str:
    steps = [line[len(_STEP) :] for line in stderr.splitlines() if line.startswith(_STEP)]
    return f"{steps[-1]} " if steps else "loading "


def _last_words(stderr: str) -> str:
    lines = stderr.splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith(_STEP)]
    tail = [" ".join(line.split()) for line in lines[marks[-1] + 1 if marks else 0 :]]
    tail = [line for line in tail if line]
    return " ".join(tail[-_SAID_LINES:]) or "(it said nothing)"


def _short(ids: list[int]) -> str:
    return str(ids) if len(ids) <= 12 else f"{ids[:12]}... ({len(ids)} ids)"


def _tokenize_probes(path: Path) -> dict[str, object]:
    """In the child: load `path`, tokenize PROBES; what went wrong as {"error": ...}."""
    from llmrun.engine import load_model, logs

    _announce("loading")
    start = logs.mark()
    try:
        model = load_model(path, Load(ctx_size=CHECK_CTX, n_gpu_layers=0, threads=1))
    except LlmrunError as e:
        said = [line.strip() for line in logs.since(start) if "error" in line.lower()]
        return {"error": said[-1] if said else e.message}
    try:
        ids = []
        for text in PROBES:
            _announce(f"tokenizing {text!r} in")
            ids.append(model.tokenize(text, add_special=True, parse_special=False))
        return {"ids": ids}
    finally:
        model.close()


def _load_projector(mmproj: Path, model: Path) -> dict[str, object]:
    """In the child: mtmd loads `mmproj` for `model` (its vocabulary and sizes suffice),
    without the warm-up encode (a minute for a large tower on a CPU)."""
    import llama_cpp
    from llama_cpp import mtmd_cpp

    from llmrun.engine import logs

    logs.install(verbose=False)
    _announce("loading the text model of")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    text = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    if not text:
        return {"error": logs.last_error(f"cannot load the text model {model}")}
    try:
        _announce("loading")
        ctx_params = mtmd_cpp.mtmd_context_params_default()
        ctx_params.use_gpu = False
        ctx_params.warmup = False
        ctx_params.n_threads = 1
        ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), text, ctx_params)
        if not ctx:
            return {"error": "mtmd refused it", "logged": True}  # its reason on stderr
        vision = mtmd_cpp.mtmd_support_vision(ctx)
        mtmd_cpp.mtmd_free(ctx)
        return {"loaded": True} if vision else {"error": "it has no vision encoder"}
    finally:
        llama_cpp.llama_model_free(text)


def _announce(step: str) -> None:
    sys.stderr.write(f"{_STEP}{step}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    if sys.argv[1] == "--mmproj":
        print(json.dumps(_load_projector(Path(sys.argv[2]), Path(sys.argv[3]))))
    else:
        print(json.dumps(_tokenize_probes(Path(sys.argv[1]))))
