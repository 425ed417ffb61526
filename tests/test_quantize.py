"""`llmrun quantize` as a user meets it: types, where the input comes from, where the output
goes, and bad input: one clear line, the right exit code, no file left behind."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmrun import store
from llmrun.quantize.types import TYPES
from tests.conftest import tree
from tests.quantize_fixtures import tiny_checkpoint

TINY = "qwen2"  # the smallest tiny checkpoint: a 1200-token vocabulary


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint that a test may damage."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint(TINY), folder)
    return folder


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# ---------------------------------------------------------------- types


def test_list_types_prints_the_table(llmrun) -> None:
    result = llmrun("quantize", "--list-types")
    assert result.code == 0
    for name in ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M"):
        assert f"\n{name} " in result.stdout
    for name in ("Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS"):
        assert f"\n{name} " in result.stdout
    assert "IQ2_XXS" in result.stdout and "needs an importance matrix" in result.stdout
    assert " 15   4.89" in result.stdout  # Q4_K_M: llama.cpp's ftype 15, bits per weight


def test_help_shows_the_types(llmrun) -> None:
    result = llmrun("quantize", "--help", env={"COLUMNS": "120"})
    assert result.code == 0
    assert "Q4_K_M" in result.stdout and "IQ4_XS" in result.stdout and "--keep-f16" in result.stdout


@pytest.mark.parametrize(
    ("qtype", "says"),
    [("Q9_X", "unknown quantization type 'Q9_X'"), ("IQ2_XXS", "needs an importance matrix")],
)
def test_refused_types(qtype: str, says: str, ckpt: Path, tmp_path: Path, llmrun) -> None:
    out = tmp_path / "out"
    result = llmrun("quantize", str(ckpt), "--type", qtype, "-o", str(out / "m.gguf"))
    assert result.code == 2
    assert says in one_error_line(result.stderr)
    assert not out.exists()


def test_the_imatrix_types_are_the_ones_llama_cpp_refuses_without() -> None:
    assert all(t.direct or t.ftype > 0 for t in TYPES.values())
    assert [t for t in TYPES.values() if t.needs_imatrix] == [
        TYPES[n]
        for n in ("Q2_K_S", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")
    ]


# ---------------------------------------------------------------- bad input


def test_missing_config_json(ckpt: Path, tmp_path: Path, llmrun) -> None:
    (ckpt / "config.json").unlink()
    result = llmrun("quantize", str(ckpt), "--type", "Q8_0", "-o", str(tmp_path / "o" / "m.gguf"))
    assert result.code == 2
    assert "has no config.json" in one_error_line(result.stderr)
    assert not (tmp_path / "o").exists()


def test_unsupported_architecture(ckpt: Path, llmrun, isolated_home: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (ckpt / "config.json").write_text(json.dumps(config))
    result = llmrun("quantize", str(ckpt))
    assert result.code == 2
    line = one_error_line(result.stderr)
    assert "'GPT2LMHeadModel' is not supported" in line
    assert "`llmrun quantize --list-archs` lists them" in line
    assert tree(isolated_home / "models") == []


def test_truncated_safetensors(ckpt: Path, llmrun, isolated_home: Path) -> None:
    weights = ckpt / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    result = llmrun("quantize", str(ckpt), "--type", "F16")
    assert result.code == 2
    assert "model.safetensors is truncated" in one_error_line(result.stderr)
    assert tree(isolated_home / "models") == []


def test_not_a_safetensors_file(ckpt: Path, llmrun) -> None:
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    result = llmrun("quantize", str(ckpt), "--type", "F16")
    assert result.code == 2
    assert "is not a valid safetensors file" in one_error_line(result.stderr)


def test_disk_full(ckpt: Path, tmp_path: Path) -> None:
    """A file size limit (as a full disk would) stops the write: exit 1, nothing left."""
    out = tmp_path / "out"
    out.mkdir()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # 1 MiB

    proc = subprocess.run(
        [sys.executable, "-m", "llmrun", "quantize", str(ckpt), "--type", "F32"],
        cwd=out,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        env={**os.environ, "LLMRUN_HOME": str(out)},
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "file size limit" in one_error_line(proc.stderr)
    assert [p for p in tree(out) if p.endswith(".gguf") or ".tmp-" in p] == []


def test_unknown_model(llmrun) -> None:
    result = llmrun("quantize", "no-such-model")
    assert result.code == 2
    assert "llmrun pull no-such-model" in one_error_line(result.stderr)


def test_requantize_refuses_an_already_quantized_gguf(smollm2: Path, llmrun) -> None:
    result = llmrun("quantize", str(smollm2), "--type", "Q4_K_M")
    assert result.code == 2
    assert "is Q4_1: llmrun requantizes only F32, F16, BF16" in one_error_line(result.stderr)


# ---------------------------------------------------------------- where from, where to


@pytest.mark.slow
def test_checkpoint_into_the_store_then_requantized(
    ckpt: Path, llmrun, isolated_home: Path
) -> None:
    first = llmrun("quantize", str(ckpt), "--type", "F16")
    assert first.code == 0, first.stderr
    f16 = store.model_path("tiny", "F16")
    assert first.stdout == f"{f16}\n"
    manifest = json.loads(store.manifest_path(f16).read_text())
    assert manifest["source"] == str(ckpt) and manifest["architecture"] == "qwen2"
    # Not a terminal: no progress, only the warning about the tokenizer trained for the tests.
    assert [line[:40] for line in first.stderr.splitlines()] == [
        "warning: unknown BPE pre-tokenizer (hash"
    ]
    again = llmrun("quantize", "tiny:F16", "--type", "Q4_K_M")  # a stored GGUF, requantized
    assert again.code == 0, again.stderr
    assert again.stdout == f"{store.model_path('tiny', 'Q4_K_M')}\n"
    assert sorted(m.tag for m in store.list_models()) == ["tiny:F16", "tiny:Q4_K_M"]


@pytest.mark.slow
def test_hub_id_from_the_hugging_face_cache(llmrun, isolated_home: Path) -> None:
    """org/repo whose checkpoint is in the Hugging Face cache (as `llmrun pull` leaves it)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--someone--Tiny-Qwen"
    shutil.copytree(tiny_checkpoint(TINY), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    result = llmrun("quantize", "someone/Tiny-Qwen", "--type", "Q8_0")
    assert result.code == 0, result.stderr
    path = store.model_path("tiny-qwen", "Q8_0")
    assert result.stdout == f"{path}\n"
    manifest = json.loads(store.manifest_path(path).read_text())
    assert manifest["repo"] == "someone/Tiny-Qwen" and manifest["revision"] == commit


@pytest.mark.slow
def test_pulled_checkpoint_by_its_store_name(ckpt: Path, llmrun, isolated_home: Path) -> None:
    """A checkpoint `llmrun pull` recorded: models/<name>/checkpoint.json points at it."""
    record = store.models_dir() / "mytiny" / "checkpoint.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"name": "mytiny", "repo": "org/mytiny", "path": str(ckpt)}))
    result = llmrun("quantize", "mytiny", "--type", "Q8_0")
    assert result.code == 0, result.stderr
    assert result.stdout == f"{store.model_path('mytiny', 'Q8_0')}\n"


def test_existing_output_is_kept_unless_forced(ckpt: Path, tmp_path: Path, llmrun) -> None:
    out = tmp_path / "out" / "tiny.gguf"
    out.parent.mkdir()
    out.write_bytes(b"placeholder")
    kept = llmrun("quantize", str(ckpt), "--type", "Q8_0", "-o", str(out))
    assert kept.code == 0 and kept.stdout == f"{out}\n"
    assert "exists: kept" in kept.stderr and out.read_bytes() == b"placeholder"
    forced = llmrun("quantize", str(ckpt), "--type", "Q8_0", "-o", str(out), "--force")
    assert forced.code == 0, forced.stderr
    assert out.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in out.parent.iterdir()] == ["tiny.gguf"]  # no lock, no scratch


def test_sharded_checkpoint_gives_the_same_file(ckpt: Path, tmp_path: Path) -> None:
    """model.safetensors split in two, with an index: the same tensors, byte for byte."""
    from safetensors.numpy import load_file, save_file

    from llmrun.quantize import quantize

    whole = quantize(str(ckpt), type="F32", output=tmp_path / "whole.gguf", check=False).path
    tensors = load_file(ckpt / "model.safetensors")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, ckpt / file)
    index = {"weight_map": {n: f for f, part in shards.items() for n in part}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    (ckpt / "model.safetensors").unlink()
    split = quantize(str(ckpt), type="F32", output=tmp_path / "split.gguf", check=False).path
    assert split.read_bytes() == whole.read_bytes()


def test_eval_after_quantizing_reports_the_loss(ckpt: Path, tmp_path: Path, llmrun) -> None:
    out = tmp_path / "tiny-q4km.gguf"
    r = llmrun("quantize", str(ckpt), "--type", "Q4_K_M", "-o", str(out), "--eval")
    assert r.code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("Q4_K_M"))
    # Against the F16/BF16 file it was quantized from, before that file was deleted.
    assert "PPL" in line and "vs reference" in line and "KL" in line
    assert not list(tmp_path.glob("*intermediate*"))
