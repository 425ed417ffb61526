"""`llmrun pull`: the real command and the real huggingface-hub client against a local Hub.

tests/hubserver.py serves fixture repos on 127.0.0.1 (GGUF files made from the real
SmolLM2 GGUF, a tiny safetensors checkpoint); HF_ENDPOINT points the client at it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmrun import hub as hubmod
from llmrun import repofiles, store
from llmrun.errors import BadInput, HubError
from tests.conftest import rewrite_gguf, wait_for
from tests.hubserver import HubServer
from tests.quantize_checks import GgufFile

GGUF = "hubtest/SmolLM2-135M-Instruct-GGUF"
CKPT = "hubtest/Tiny-Checkpoint"
GATED = "hubtest/Gated-GGUF"
EVIL = "hubtest/Evil-GGUF"
BINS = "hubtest/Bins-Only"
TOKEN = "hf_let_me_in"
Q4 = "SmolLM2-135M-Instruct-Q4_K_M.gguf"
Q8 = "SmolLM2-135M-Instruct-Q8_0.gguf"
PARIS = ("The capital of France is", "--raw", "-n", "8", "--temp", "0")
ALIAS_TOML = f"""
[models.hubsmol]
repo = "{CKPT}"
gguf_repo = "{GGUF}"
quant = "Q4_K_M"
"""
CHECKPOINT_WANTED = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def tiny_safetensors() -> bytes:
    """A valid safetensors file: one 2x4 float32 tensor."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}})
    header += " " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header.encode() + struct.pack("<8f", *range(8))


@pytest.fixture(scope="session")
def hub_server(smollm2: Path) -> Iterator[HubServer]:
    server = HubServer()
    server.add_repo(
        GGUF,
        {
            Q4: smollm2,
            Q8: smollm2,
            "SmolLM2-135M-Instruct-Q4_0.gguf": smollm2,
            "SmolLM2-135M-Instruct-Q4_0_4_4.gguf": smollm2,
            "README.md": b"# SmolLM2 GGUF, for tests\n",
        },
    )
    server.add_repo(
        CKPT,
        {
            "config.json": b'{"architectures": ["LlamaForCausalLM"]}\n',
            "model.safetensors": tiny_safetensors(),
            "tokenizer.json": b'{"model": {"type": "BPE"}}\n',
            "tokenizer_config.json": b'{"add_bos_token": false}\n',
            "generation_config.json": b'{"temperature": 0.2}\n',
            "pytorch_model.bin": b"\x80\x02not really a pickle",
            "onnx/model.onnx": b"onnx",
            "README.md": b"# tiny\n",
        },
    )
    server.add_repo(GATED, {"Gated-Q4_K_M.gguf": smollm2}, token=TOKEN)
    server.add_repo(EVIL, {"../evil-Q4_K_M.gguf": b"GGUF evil", "good-Q8_0.gguf": b"GGUF"})
    server.add_repo(
        BINS, {"pytorch_model.bin": b"\x80\x02", "config.json": b"{}", "README.md": b""}
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """The local Hub, fresh counters, and the environment pointing the client at it."""
    hub_server.reset()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    return hub_server


def cache_repo(repo: str) -> Path:
    return Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))


def one_error(r, code: int = 1) -> str:
    """A failure: the exit code, one line on stderr, no traceback, nothing on stdout."""
    assert r.code == code, r
    assert r.stdout == "" and "Traceback" not in r.stderr, r
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), r.stderr
    return lines[-1]


def popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmrun", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- what gets fetched


def test_pull_by_id_fetches_one_quant_and_links_it(llmrun, hub: HubServer, smollm2: Path) -> None:
    r = llmrun("pull", f"{GGUF}:q8_0")
    assert r.code == 0, r.stderr
    stored = Path(r.stdout.strip())
    assert stored == store.model_path("smollm2-135m-instruct", "Q8_0")
    assert "pulled smollm2-135m-instruct:Q8_0" in r.stderr and "98.4 MB downloaded" in r.stderr
    assert dict(hub.sent) == {(GGUF, Q8): smollm2.stat().st_size}  # no other quant, no README

    # Stored as a hard link to the Hugging Face cache's blob: no second copy.
    sha = hub.repos[GGUF].files[Q8].sha256
    blob = cache_repo(GGUF) / "blobs" / sha
    assert stored.stat().st_ino == blob.stat().st_ino
    commit = hub.repos[GGUF].commit
    assert (cache_repo(GGUF) / "refs" / "main").read_text() == commit
    assert (cache_repo(GGUF) / "snapshots" / commit / Q8).resolve() == blob

    manifest = store.read_manifest(stored)
    assert (manifest["repo"], manifest["revision"], manifest["sha256"]) == (GGUF, commit, sha)
    assert manifest["files"] == [{"name": Q8, "size": smollm2.stat().st_size, "sha256": sha}]
    rows = json.loads(llmrun("list", "--json").stdout)
    assert [(x["name"], x["quant"], x["source"]) for x in rows if x["path"] == str(stored)] == [
        ("smollm2-135m-instruct", "Q8_0", GGUF)
    ]

    again = llmrun("pull", GGUF, "--quant", "Q8_0")
    assert again.code == 0 and "is up to date" in again.stderr
    assert hub.sent[(GGUF, Q8)] == smollm2.stat().st_size  # nothing fetched twice
    forced = llmrun("pull", f"{GGUF}:Q8_0", "--force")
    assert forced.code == 0, forced.stderr
    assert hub.sent[(GGUF, Q8)] == 2 * smollm2.stat().st_size


def test_pull_by_alias_then_run_answers(llmrun, hub: HubServer, isolated_home: Path) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "models.toml").write_text(ALIAS_TOML)
    r = llmrun("pull", "hubsmol")
    assert r.code == 0, r.stderr
    assert Path(r.stdout.strip()) == store.model_path("hubsmol", "Q4_K_M")
    assert set(hub.sent) == {(GGUF, Q4)}  # the GGUF repo first, at the alias's quant
    r = llmrun("run", "hubsmol", *PARIS)
    assert r.code == 0, r.stderr
    assert "Paris" in r.stdout


def test_quant_is_matched_as_a_whole_token(llmrun, hub: HubServer, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"  # HF_HUB_CACHE wins over HF_HOME, as for the client
    r = llmrun("pull", f"{GGUF}:Q4_0", env={"HF_HUB_CACHE": str(elsewhere)})
    assert r.code == 0, r.stderr
    assert set(hub.sent) == {(GGUF, "SmolLM2-135M-Instruct-Q4_0.gguf")}  # not Q4_0_4_4
    snapshot = elsewhere / f"models--{GGUF.replace('/', '--')}" / "snapshots"
    assert [p.name for p in snapshot.glob("*/*")] == ["SmolLM2-135M-Instruct-Q4_0.gguf"]
    assert not cache_repo(GGUF).exists()


def test_a_missing_quant_lists_the_available_ones(llmrun, hub: HubServer) -> None:
    line = one_error(llmrun("pull", f"{GGUF}:Q5_K_M"), code=2)
    assert line == f"error: {GGUF} has no Q5_K_M GGUF; available: Q4_0, Q4_0_4_4, Q4_K_M, Q8_0"
    assert hub.downloads() == []


def test_alias_falls_back_to_the_checkpoint(llmrun, hub: HubServer, isolated_home: Path) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "models.toml").write_text(ALIAS_TOML)
    r = llmrun("pull", "hubsmol:Q5_K_M")
    assert r.code == 0, r.stderr
    assert f"{GGUF} has no Q5_K_M GGUF; pulling the checkpoint {CKPT}" in r.stderr
    assert {name for repo, name in hub.sent} == CHECKPOINT_WANTED  # never .bin, .onnx, README
    folder = Path(r.stdout.strip())
    assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_WANTED)
    manifest = json.loads(store.checkpoint_manifest("hubsmol").read_text())
    assert (manifest["kind"], manifest["repo"], manifest["path"]) == (
        "safetensors",
        CKPT,
        str(folder),
    )
    assert {f["name"] for f in manifest["files"]} == CHECKPOINT_WANTED
    listed = llmrun("list", "--json")  # a checkpoint is not a runnable model: not listed
    assert listed.code == 0 and "hubsmol" not in listed.stdout
    # `run` of it says what is missing rather than pretending.
    line = one_error(llmrun("run", "hubsmol:Q5_K_M", "hi", "--no-pull"), code=2)
    assert "not downloaded yet" in line


def test_a_repo_without_gguf_or_safetensors_says_what_it_holds(llmrun, hub: HubServer) -> None:
    line = one_error(llmrun("pull", BINS), code=2)
    assert line == f"error: {BINS} holds no GGUF or safetensors files; it has .bin, .json, .md"


def test_dry_run_downloads_nothing(llmrun, hub: HubServer, isolated_home: Path) -> None:
    r = llmrun("pull", GGUF, "--dry-run")
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{GGUF}@") and lines[0].endswith("-> smollm2-135m-instruct:Q4_K_M")
    assert lines[1].split() == ["download", "98.4", "MB", Q4]
    assert lines[-1] == "would download 98.4 MB"
    assert hub.downloads() == [] and not (cache_repo(GGUF) / "blobs").exists()
    assert not store.models_dir().exists()


# ---------------------------------------------------------------- resume, verify, locks


def test_resume_after_the_connection_drops(llmrun, hub: HubServer, smollm2: Path) -> None:
    size = smollm2.stat().st_size
    fault = hub.fault(GGUF, Q4)
    fault.drop_at, fault.drops = size // 2, 100  # every try breaks off halfway
    r = llmrun("pull", GGUF)
    line = one_error(r)
    assert "lost the connection to" in line and "it resumes" in line
    assert "Traceback" not in r.stderr and "Error while downloading" not in r.stderr
    partial = cache_repo(GGUF) / "blobs" / f"{hub.repos[GGUF].files[Q4].sha256}.incomplete"
    kept = partial.stat().st_size
    assert 0 < kept <= size // 2
    assert not store.models_dir().exists()

    hub.reset()
    r = llmrun("pull", GGUF)
    assert r.code == 0, r.stderr
    assert hub.sent[(GGUF, Q4)] == size - kept  # only the rest
    assert [d.range for d in hub.downloads()] == [f"bytes={kept}-"]
    assert store.sha256_file(Path(r.stdout.strip())) == hub.repos[GGUF].files[Q4].sha256


def test_a_single_drop_is_resumed_within_the_run(llmrun, hub: HubServer, smollm2: Path) -> None:
    fault = hub.fault(GGUF, Q4)
    fault.drop_at, fault.drops = smollm2.stat().st_size // 3, 1
    r = llmrun("pull", GGUF)
    assert r.code == 0, r.stderr
    assert r.stderr.splitlines()[0] == "the connection dropped; resuming the download"
    first, second = hub.downloads()
    assert first.range is None and second.range.startswith("bytes=")
    assert store.sha256_file(Path(r.stdout.strip())) == hub.repos[GGUF].files[Q4].sha256


def test_ctrl_c_then_pull_again_resumes(hub: HubServer, smollm2: Path) -> None:
    size = smollm2.stat().st_size
    fault = hub.fault(GGUF, Q4)
    fault.hold_at, fault.hold = size // 2, threading.Event()
    partial = cache_repo(GGUF) / "blobs" / f"{hub.repos[GGUF].files[Q4].sha256}.incomplete"
    proc = popen("pull", GGUF)
    try:
        wait_for(lambda: partial.is_file() and partial.stat().st_size > 0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        fault.hold.set()
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "resumes" in stderr and "Traceback" not in stderr
    kept = partial.stat().st_size
    hub.reset()
    r = subprocess.run(
        [sys.executable, "-m", "llmrun", "pull", GGUF], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert hub.sent[(GGUF, Q4)] == size - kept


def test_a_sha256_mismatch_deletes_the_download(llmrun, hub: HubServer) -> None:
    hub.fault(GGUF, Q4).corrupt = True  # right size, wrong bytes
    line = one_error(llmrun("pull", GGUF))
    assert f"{GGUF}: {Q4} arrived damaged (sha256" in line
    assert "the download was deleted; run the pull again" in line
    assert list((cache_repo(GGUF) / "blobs").iterdir()) == []
    assert not store.models_dir().exists()


def test_concurrent_pulls_share_one_download(hub: HubServer, smollm2: Path) -> None:
    fault = hub.fault(GGUF, Q4)
    fault.hold_at, fault.hold = 1 << 20, threading.Event()
    first = popen("pull", GGUF)
    try:
        wait_for(lambda: hub.sent[(GGUF, Q4)] >= 1 << 20)  # the first is downloading
        second = popen("pull", GGUF)
        said: list[str] = []  # the second's stderr, read as it comes
        reader = threading.Thread(target=lambda: said.extend(second.stderr), daemon=True)
        reader.start()
        wait_for(lambda: any("waiting for another download" in line for line in said))
    finally:
        fault.hold.set()
    out1, err1 = first.communicate(timeout=120)
    out2 = second.stdout.read()  # stderr is the reader's
    second.wait(timeout=120)
    reader.join(timeout=10)
    assert (first.returncode, second.returncode) == (0, 0), (err1, said)
    assert out1 == out2
    assert hub.sent[(GGUF, Q4)] == smollm2.stat().st_size  # downloaded once
    assert [p.name for p in (cache_repo(GGUF) / "blobs").iterdir()] == [
        hub.repos[GGUF].files[Q4].sha256
    ]
    assert store.sha256_file(Path(out1.strip())) == hub.repos[GGUF].files[Q4].sha256


# ---------------------------------------------------------------- safety and errors


def test_a_file_name_that_escapes_is_refused(llmrun, hub: HubServer, tmp_path: Path) -> None:
    line = one_error(llmrun("pull", f"{EVIL}:Q4_K_M"))
    assert line == (
        f"error: refusing {EVIL}: its file name '../evil-Q4_K_M.gguf' "
        "would land outside the download folder"
    )
    assert hub.downloads() == []
    assert list(tmp_path.rglob("evil*")) == []


def test_gated_repo_needs_a_token(llmrun, hub: HubServer) -> None:
    line = one_error(llmrun("pull", GATED))
    assert line == (
        f"error: {GATED} is gated: it needs a token; accept its terms at {hub.url}/{GATED}, "
        "then pass --token, set HF_TOKEN, or run `hf auth login`"
    )
    line = one_error(llmrun("pull", GATED, "--token", "hf_wrong"))
    assert "the token given has no access to it" in line
    r = llmrun("pull", GATED, "--token", TOKEN)
    assert r.code == 0, r.stderr
    assert all(d.auth == f"Bearer {TOKEN}" for d in hub.downloads())
    r = llmrun("pull", GATED, "--force", env={"HF_TOKEN": TOKEN})
    assert r.code == 0, r.stderr


def test_offline_uses_the_cache_or_says_it_is_not_there(llmrun, hub: HubServer) -> None:
    offline = {"HF_HUB_OFFLINE": "1"}
    line = one_error(llmrun("pull", f"{GGUF}:Q8_0", env=offline))
    assert line == (
        f"error: HF_HUB_OFFLINE is set and {GGUF} (main) is not in the Hugging Face cache "
        f"({os.environ['HF_HOME']}/hub); unset HF_HUB_OFFLINE to download it"
    )
    assert hub.requests == []

    assert llmrun("pull", f"{GGUF}:Q8_0").code == 0
    assert llmrun("rm", "smollm2-135m-instruct", "-y").code == 0
    hub.reset()
    r = llmrun("pull", f"{GGUF}:Q8_0", env=offline)
    assert r.code == 0, r.stderr
    assert hub.requests == []  # all from the cache
    assert Path(r.stdout.strip()) == store.model_path("smollm2-135m-instruct", "Q8_0")
    line = one_error(llmrun("pull", f"{GGUF}:Q4_K_M", env=offline), code=2)
    assert line == f"error: the cached copy of {GGUF} has no Q4_K_M GGUF; available: Q8_0"


def test_unknown_repo_and_revision(llmrun, hub: HubServer) -> None:
    line = one_error(llmrun("pull", "hubtest/Nope"), code=2)
    assert line.startswith(f"error: no repo hubtest/Nope on {hub.url}; check the name")
    assert "--token" in line
    line = one_error(llmrun("pull", GGUF, "--revision", "v9"), code=2)
    assert (
        line == f"error: {GGUF} has no revision 'v9'; check the branch, tag or commit (--revision)"
    )
    line = one_error(llmrun("pull", "./model.gguf"), code=2)
    assert "neither an alias of models.toml nor a Hugging Face id" in line


@pytest.mark.slow
def test_network_down_retries_then_uses_the_cache_or_fails(llmrun, hub: HubServer) -> None:
    down = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    r = llmrun("pull", GGUF, env=down)
    line = one_error(r)
    assert line.startswith("error: cannot reach http://127.0.0.1:9 (")
    assert r.stderr.count("trying again in") == len(hubmod.RETRY_DELAYS)

    assert llmrun("pull", GGUF).code == 0
    r = llmrun("pull", GGUF, env=down)
    assert r.code == 0, r.stderr
    assert f"cannot reach http://127.0.0.1:9: using the cached copy of {GGUF}" in r.stderr


def test_a_write_error_leaves_no_file_under_a_final_name(hub: HubServer) -> None:
    def small_files() -> None:  # as if the disk filled up after 20 MB
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 20, 20 << 20))

    r = subprocess.run(
        [sys.executable, "-m", "llmrun", "pull", GGUF],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert r.returncode == 1 and r.stdout == "", r.stderr
    [line] = r.stderr.strip().splitlines()
    sha = hub.repos[GGUF].files[Q4].sha256
    assert line.startswith(f"error: cannot write {cache_repo(GGUF)}/blobs/{sha}.incomplete: ")
    assert "File too large" in line
    names = [p.name for p in (cache_repo(GGUF) / "blobs").iterdir()]
    assert all(n.endswith(".incomplete") for n in names), names
    assert not store.models_dir().exists()


# ---------------------------------------------------------------- run, rm


def test_run_pulls_a_missing_model_first(llmrun, hub: HubServer) -> None:
    r = llmrun("run", f"{GGUF}:Q4_K_M", *PARIS, "--no-pull")
    assert "not downloaded yet" in one_error(r, code=2)
    r = llmrun("run", f"{GGUF}:Q4_K_M", *PARIS)
    assert r.code == 0, r.stderr
    assert "Paris" in r.stdout
    assert r.stderr.splitlines() == [
        f"{GGUF}:Q4_K_M is not here yet: pulling it (--no-pull to only use local models)"
    ]


def test_chat_pulls_a_missing_model_first_unless_no_pull(llmrun, hub: HubServer) -> None:
    question = "What is the capital of France? One word.\n"
    r = llmrun("chat", f"{GGUF}:Q4_K_M", "--no-pull", "--temp", "0", input=question)
    assert "not downloaded yet" in one_error(r, code=2)
    r = llmrun("chat", f"{GGUF}:Q4_K_M", "--temp", "0", "-n", "16", input=question)
    assert r.code == 0, r.stderr
    assert "Paris" in r.stdout
    assert f"{GGUF}:Q4_K_M is not here yet: pulling it" in r.stderr


def test_rm_keeps_the_cache_unless_purge(llmrun, hub: HubServer) -> None:
    stored = Path(llmrun("pull", f"{GGUF}:Q8_0").stdout.strip())
    blob = cache_repo(GGUF) / "blobs" / hub.repos[GGUF].files[Q8].sha256
    assert llmrun("rm", f"{GGUF}:Q8_0", "-y").code == 0
    assert not stored.exists() and blob.is_file()
    r = llmrun("pull", f"{GGUF}:Q8_0")
    assert r.code == 0 and "up to date" in r.stderr
    r = llmrun("rm", "smollm2-135m-instruct:Q8_0", "-y", "--purge")
    assert r.code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "deleted smollm2-135m-instruct:Q8_0"
    assert not stored.exists() and not blob.exists()
    snapshot = cache_repo(GGUF) / "snapshots" / hub.repos[GGUF].commit
    assert not (snapshot / Q8).exists() and not (snapshot / Q8).is_symlink()


# ---------------------------------------------------------------- choosing files


def listing(*names: str) -> repofiles.Listing:
    return repofiles.Listing(
        "org/repo", "main", "0" * 40, tuple(repofiles.RemoteFile(n, 1) for n in names)
    )


@pytest.mark.parametrize(
    ("quant", "expected"),
    [
        ("Q4_0", ["m-Q4_0.gguf"]),
        ("q4_k", ["m-Q4_K.gguf"]),
        ("Q4_K_M", ["m-Q4_K_M.gguf"]),
        ("Q8_0", ["Q8_0/m-Q8_0-00001-of-00002.gguf", "Q8_0/m-Q8_0-00002-of-00002.gguf"]),
        ("UD-Q4_K_XL", ["m-UD-Q4_K_XL.gguf"]),
        (None, ["m-Q4_K_M.gguf"]),  # several quants: the default one
    ],
)
def test_select_picks_the_quant_as_a_whole_token(quant: str | None, expected: list[str]) -> None:
    found = listing(
        "m-Q4_0.gguf",
        "m-Q4_0_4_4.gguf",
        "m-Q4_K.gguf",
        "m-Q4_K_M.gguf",
        "m-IQ4_XS.gguf",
        "m-UD-Q4_K_XL.gguf",
        "Q8_0/m-Q8_0-00002-of-00002.gguf",
        "Q8_0/m-Q8_0-00001-of-00002.gguf",
        "mmproj-Q4_0.gguf",
        "README.md",
    )
    sel = repofiles.select(found, quant)
    assert (sel.kind, [f.name for f in sel.files]) == ("gguf", expected)


def test_select_a_lone_gguf_and_an_incomplete_split() -> None:
    sel = repofiles.select(listing("model.gguf", "config.json"), None)
    assert [f.name for f in sel.files] == ["model.gguf"] and sel.quant is None
    with pytest.raises(HubError, match="split in 3 parts but 2 are listed"):
        repofiles.select(
            listing("m-Q8_0-00001-of-00003.gguf", "m-Q8_0-00002-of-00003.gguf"), "Q8_0"
        )
    with pytest.raises(BadInput, match=r"several GGUF files; choose one with org/repo:QUANT"):
        repofiles.select(listing("m-Q8_0.gguf", "m-F16.gguf"), None)


def test_select_a_checkpoint_takes_only_what_conversion_needs() -> None:
    sel = repofiles.select(
        listing(
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.model",
            "chat_template.jinja",
            "pytorch_model.bin",
            "consolidated.pth",
            "onnx/model.onnx",
            "original/params.json",
            "README.md",
        ),
        None,
    )
    assert sel.kind == "safetensors"
    assert [f.name for f in sel.files] == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.model",
        "chat_template.jinja",
    ]


@pytest.mark.parametrize(
    "name",
    ["../x.gguf", "a/../../x.gguf", "/etc/passwd", "a//b.gguf", "./x.gguf", "C:x.gguf", "a\\b"],
)
def test_unsafe_names(name: str) -> None:
    with pytest.raises(HubError, match="would land outside"):
        repofiles.check_safe("org/repo", name)


def test_safe_names_and_store_names() -> None:
    repofiles.check_safe("org/repo", "Q4_K_M/model-Q4_K_M-00001-of-00002.gguf")
    assert repofiles.quant_in("Qwen3-0.6B-UD-Q4_K_XL.gguf") == "Q4_K_XL"
    assert repofiles.quant_in("llama-2-7b.Q4_K_M.gguf") == "Q4_K_M"
    assert repofiles.quant_in("model.gguf") is None
    assert store.repo_store_name("bartowski/SmolLM2-135M-Instruct-GGUF") == "smollm2-135m-instruct"


# ---------------------------------------------------------------- split GGUF


def split_gguf(src: Path, out: Path) -> list[Path]:
    """Rewrite a GGUF as two parts, the way llama.cpp's gguf-split names them."""
    tensors = len(GgufFile(src).tensors)
    rewrite_gguf(src, out, split_max_tensors=(tensors + 1) // 2)
    return sorted(out.parent.glob(f"{out.stem}-*.gguf"))


@pytest.fixture(scope="session")
def split_repo(hub_server: HubServer, smollm2: Path, tmp_path_factory) -> str:
    parts = split_gguf(smollm2, tmp_path_factory.mktemp("split") / "SmolLM2-Q6_K.gguf")
    assert [p.name for p in parts] == [
        "SmolLM2-Q6_K-00001-of-00002.gguf",
        "SmolLM2-Q6_K-00002-of-00002.gguf",
    ]
    repo = "hubtest/Split-GGUF"
    hub_server.add_repo(repo, {f"Q6_K/{p.name}": p for p in parts} | {"m-Q8_0.gguf": smollm2})
    return repo


@pytest.mark.slow
def test_a_split_gguf_is_fetched_whole_and_runs(llmrun, hub: HubServer, split_repo: str) -> None:
    r = llmrun("pull", f"{split_repo}:Q6_K")
    assert r.code == 0, r.stderr
    first = Path(r.stdout.strip())
    assert first.name == "split-Q6_K-00001-of-00002.gguf"
    assert sorted(p.name for p in first.parent.glob("*.gguf")) == [
        "split-Q6_K-00001-of-00002.gguf",
        "split-Q6_K-00002-of-00002.gguf",
    ]
    assert {name for _, name in hub.sent} == {
        "Q6_K/SmolLM2-Q6_K-00001-of-00002.gguf",
        "Q6_K/SmolLM2-Q6_K-00002-of-00002.gguf",
    }
    rows = [x for x in json.loads(llmrun("list", "--json").stdout) if x["name"] == "split"]
    assert [(x["quant"], x["path"]) for x in rows] == [("Q6_K", str(first))]
    r = llmrun("run", f"{split_repo}:Q6_K", *PARIS)  # llama.cpp finds part 2 beside part 1
    assert r.code == 0, r.stderr
    assert "Paris" in r.stdout
    assert llmrun("rm", "split", "-y").code == 0
    assert not first.parent.exists()


def test_a_stored_model_from_elsewhere_needs_force(llmrun, hub: HubServer, smollm2: Path) -> None:
    from tests.conftest import add_stored

    mine = add_stored(smollm2, "smollm2-135m-instruct", "Q8_0")  # say, made by llmrun quantize
    line = one_error(llmrun("pull", f"{GGUF}:Q8_0"), code=2)
    assert line == (
        "error: smollm2-135m-instruct:Q8_0 is already in the store, from elsewhere; "
        "pass --force to replace it, or delete it first with `llmrun rm`"
    )
    assert store.read_manifest(mine)["repo"] is None
    r = llmrun("pull", f"{GGUF}:Q8_0", "--force")
    assert r.code == 0, r.stderr
    assert store.read_manifest(mine)["repo"] == GGUF
