"""The prompt cache on disk: `run` and `chat` reuse a long prompt prefix across invocations.

Real runs of the real engine on the demo GGUF; what is checked is what a user sees: the same
answer, the `-v` timings saying how much came from the cache, and the files in the cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmrun import promptcache

# A short prefix and a low --cache-min keep these runs quick; the default (256) has its test.
GREEDY = ("--temp", "0", "-n", "8", "-v", "--cache-min", "64")
SYSTEM = " ".join(  # about 130 tokens
    f"Rule {i}: answer the question in one short sentence, politely, without lists."
    for i in range(8)
)
PROMPT = re.compile(r"prompt (\d+) tokens, [\d.]+ tokens/s(?: \((\d+) from the prompt cache\))?")


@pytest.fixture
def llmrun(llmrun_inprocess):
    return llmrun_inprocess


def prompt_stats(stderr: str) -> tuple[int, int]:
    """(tokens evaluated, tokens restored from the cache) from -v's timings line."""
    match = PROMPT.search(stderr)
    assert match, f"no timings on stderr: {stderr!r}"
    return int(match.group(1)), int(match.group(2) or 0)


def entries(home: Path) -> list[Path]:
    return sorted((home / "cache" / "prompts").glob("*/*.kv"))


def ask(llmrun, model: Path, question: str, *extra: str):
    r = llmrun("run", str(model), "--system", SYSTEM, question, *GREEDY, *extra)
    assert r.code == 0, r.stderr
    return r


def test_second_run_evaluates_only_the_new_tokens_and_answers_the_same(
    llmrun, smollm2: Path, isolated_home: Path
) -> None:
    cold = ask(llmrun, smollm2, "What is the capital of France?")
    evaluated, restored = prompt_stats(cold.stderr)
    assert restored == 0 and evaluated > 100
    [entry] = entries(isolated_home)

    warm = ask(llmrun, smollm2, "What is the capital of France?")
    again, restored = prompt_stats(warm.stderr)
    assert restored > 100 and again + restored == evaluated
    assert again < 20  # the question and the assistant header only
    assert warm.stdout == cold.stdout  # token for token: same batches after the prefix

    # Another question after the same system prompt hits the same entry.
    other = ask(llmrun, smollm2, "Name a colour.")
    assert prompt_stats(other.stderr)[1] == restored
    assert entries(isolated_home) == [entry]


def test_no_cache_neither_reads_nor_writes(llmrun, smollm2: Path, isolated_home: Path) -> None:
    first = ask(llmrun, smollm2, "Hello?", "--no-cache")
    assert entries(isolated_home) == []
    ask(llmrun, smollm2, "Hello?")
    off = ask(llmrun, smollm2, "Hello?", "--no-cache")
    assert prompt_stats(off.stderr)[1] == 0
    assert prompt_stats(off.stderr)[0] == prompt_stats(first.stderr)[0]


def test_cache_min_keeps_short_prefixes_out(llmrun, smollm2: Path, isolated_home: Path) -> None:
    r = llmrun("run", str(smollm2), "--system", SYSTEM, "Hello?", "-n", "1")  # default: 256
    assert r.code == 0, r.stderr
    assert entries(isolated_home) == []


@pytest.mark.parametrize(
    "changed", [("-ctk", "q8_0"), ("-c", "2048"), ("-fa", "on")], ids=["cache-type", "ctx", "fa"]
)
def test_changed_load_options_do_not_reuse_an_entry(
    llmrun, smollm2: Path, isolated_home: Path, changed: tuple[str, str]
) -> None:
    ask(llmrun, smollm2, "Hello?")
    other = ask(llmrun, smollm2, "Hello?", *changed)
    assert prompt_stats(other.stderr)[1] == 0
    assert len(entries(isolated_home)) == 2  # one per context, side by side
    assert prompt_stats(ask(llmrun, smollm2, "Hello?", *changed).stderr)[1] > 0


def test_a_changed_model_file_does_not_reuse_an_entry(
    llmrun, smollm2: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.gguf"
    shutil.copyfile(smollm2, model)
    ask(llmrun, model, "Hello?")
    assert prompt_stats(ask(llmrun, model, "Hello?").stderr)[1] > 0
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    assert prompt_stats(ask(llmrun, model, "Hello?").stderr)[1] == 0


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_entry_is_ignored_and_replaced(
    llmrun, smollm2: Path, isolated_home: Path, damage: str
) -> None:
    cold = ask(llmrun, smollm2, "What is the capital of France?")
    [entry] = entries(isolated_home)
    size = entry.stat().st_size
    if damage == "truncate":
        os.truncate(entry, size // 2)
    else:  # one byte of the KV data changed: only the checksum can tell
        with open(entry, "r+b") as f:
            f.seek(size - 100)
            byte = f.read(1)
            f.seek(size - 100)
            f.write(bytes([byte[0] ^ 0xFF]))
    damaged = ask(llmrun, smollm2, "What is the capital of France?")
    assert prompt_stats(damaged.stderr)[1] == 0
    assert damaged.stdout == cold.stdout
    assert entries(isolated_home) == [entry] and entry.stat().st_size == size  # written again
    assert prompt_stats(ask(llmrun, smollm2, "Hi").stderr)[1] > 0


def test_concurrent_runs_with_one_prefix_both_succeed(smollm2: Path, isolated_home: Path) -> None:
    command = [sys.executable, "-m", "llmrun", "run", str(smollm2), "--system", SYSTEM]
    runs = [
        subprocess.Popen(
            [*command, f"Question {i}?", *GREEDY, "-t", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for i in range(2)
    ]
    for proc in runs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert out.strip()
    [entry] = entries(isolated_home)
    assert not [p for p in entry.parent.iterdir() if ".tmp-" in p.name]
    n = int(entry.name.split("-")[0])
    data = promptcache.read_entry(entry, _tokens_of(entry, n))
    assert data is not None  # whole, and its checksum holds


def _tokens_of(entry: Path, n: int) -> list[int]:
    import struct

    with open(entry, "rb") as f:
        f.seek(promptcache.HEADER.size)
        return list(struct.unpack(f"<{n}i", f.read(4 * n)))


def test_eviction_keeps_the_cache_under_its_size(
    llmrun, smollm2: Path, isolated_home: Path
) -> None:
    ask(llmrun, smollm2, "Hello?")
    [first] = entries(isolated_home)
    limit = str(first.stat().st_size * 3 // 2)  # room for one entry, not two
    r = llmrun(
        "run",
        str(smollm2),
        "--system",
        SYSTEM + " Be kind.",
        "Hello?",
        *GREEDY,
        "--cache-size",
        limit,
    )
    assert r.code == 0, r.stderr
    [kept] = entries(isolated_home)
    assert kept != first  # the least recently used one went
    assert kept.stat().st_size <= int(limit)


def test_piped_text_before_the_words_is_the_cached_prefix(
    llmrun, smollm2: Path, isolated_home: Path
) -> None:
    # cat few-shot.txt | llmrun run "$question": the question is the last part.
    shots = SYSTEM
    for raw in ((), ("--raw",)):
        cold = llmrun("run", str(smollm2), "Q: 2+2?", *raw, *GREEDY, input=shots)
        warm = llmrun("run", str(smollm2), "Q: 3+3?", *raw, *GREEDY, input=shots)
        assert cold.code == warm.code == 0, warm.stderr
        assert prompt_stats(warm.stderr)[1] > 100, raw


def test_chat_first_turn_reuses_the_system_prompt(
    llmrun, smollm2: Path, isolated_home: Path
) -> None:
    args = ("chat", str(smollm2), "--system", SYSTEM, *GREEDY)
    cold = llmrun(*args, input="What is the capital of France?\n")
    warm = llmrun(*args, input="What is the capital of France?\n")
    assert cold.code == warm.code == 0, warm.stderr
    assert prompt_stats(cold.stderr)[1] == 0
    assert prompt_stats(warm.stderr)[1] > 100
    assert warm.stdout == cold.stdout


def test_cache_ls_and_clear(llmrun, smollm2: Path, isolated_home: Path) -> None:
    assert llmrun("cache", "ls", "--json").stdout.strip() == "[]"
    ask(llmrun, smollm2, "Hello?")
    listed = json.loads(llmrun("cache", "ls", "--json").stdout)
    assert [e["model"] for e in listed] == [str(smollm2.resolve())]
    assert listed[0]["tokens"] > 100 and listed[0]["size"] > 0
    table = llmrun("cache", "ls")
    assert table.code == 0 and str(listed[0]["tokens"]) in table.stdout
    cleared = llmrun("cache", "clear")
    assert cleared.code == 0 and cleared.stdout.startswith("deleted 1 cached prefix")
    assert entries(isolated_home) == []
    assert json.loads(llmrun("cache", "ls", "--json").stdout) == []


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--cache-size", "lots", "--cache-size must be a size such as 8G or 512M, got 'lots'"),
        ("--cache-min", "0", "--cache-min must be at least 1, got 0"),
    ],
)
def test_bad_cache_options_are_one_line(
    llmrun, smollm2: Path, flag: str, value: str, message: str
) -> None:
    r = llmrun("run", str(smollm2), "Hi", flag, value)
    assert r.code != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
