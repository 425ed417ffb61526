"""Importance matrices on the real SmolLM2-135M: computed in-process, against llama.cpp's own
llama-imatrix (same text, same chunks) and llama-quantize --imatrix (same tensors), and what
they are for: a lower KL divergence against F16, on a text other than the calibration text."""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from importlib import resources
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from llmrun.cpus import usable_cores
from llmrun.engine.model import extra_buffers_safe
from llmrun.evaluate import evaluate_models
from llmrun.quantize import quantize
from llmrun.quantize.imatrix import SHIPPED_TEXT, Entry, Imatrix, compute_imatrix
from tests.quantize_checks import OUT, GgufFile, llama_tool_output
from tests.quantize_fixtures import cached, smollm2_checkpoint
from tests.test_models_cli import one_error_line

THREADS = str(usable_cores())  # as llmrun: the cores this worker is pinned to


def _llama_tools() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "llama_tools", Path(__file__).parent.parent / "benchmarks" / "llama_tools.py"
    )
    assert spec and spec.loader
    tools = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tools)
    return tools


def llama_tool(target: str) -> Path:
    """llama.cpp's own tool, built from the vendored sources (CI: .ci/build-llama-tools)."""
    return _llama_tools().build_tool(target)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imatrix")


@pytest.fixture(scope="module")
def f16(work: Path) -> Path:
    """SmolLM2-135M as F16 GGUF: the file the matrices are computed on and quantized from."""
    return quantize(str(smollm2_checkpoint()), type="F16", output=work / "smollm2-F16.gguf").path


@pytest.fixture(scope="module")
def calibration() -> Path:
    """The shipped calibration text, at a path that stays the same from run to run: the matrix
    records it, so our matrix's bytes, and llama-quantize's file made with them, stay the same
    too, and llama_tool_output can cache that file."""
    text = (resources.files("llmrun") / "data" / SHIPPED_TEXT).read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]

    def build(folder: Path) -> None:
        (folder / SHIPPED_TEXT).write_text(text, encoding="utf-8")

    return cached(f"calibration-{digest}", build) / SHIPPED_TEXT


@pytest.fixture(scope="module")
def ours(f16: Path, calibration: Path, work: Path) -> Path:
    """Our matrix over the shipped calibration text, in chunks of 512 (llama-imatrix's)."""
    path = work / "ours.imatrix.gguf"
    compute_imatrix(f16, calibration, ctx_size=512).save(path)
    return path


@pytest.fixture(scope="module")
def q3_with(f16: Path, ours: Path, work: Path) -> Path:
    """Our Q3_K_M, guided by our matrix."""
    out = work / "Q3_K_M-with.gguf"
    return quantize(str(f16), type="Q3_K_M", imatrix=ours, output=out, check=False).path


@pytest.mark.slow
def test_equals_llama_imatrix(f16: Path, calibration: Path, ours: Path) -> None:
    args = ["-m", f16, "-f", calibration, "-o", OUT, "-c", "512", "-t", THREADS, "--no-ppl"]
    # As our engine: without extra CPU buffer types on an AMX CPU, which change F16 products
    # by some 1e-4 (their sums then differ by that much: the text is the same).
    args += [] if extra_buffers_safe() else ["--no-repack"]
    theirs = llama_tool_output(llama_tool("llama-imatrix"), *args)  # cached: see its doc
    a, b = Imatrix.load(ours), Imatrix.load(theirs)
    assert (a.chunk_count, a.chunk_size) == (b.chunk_count, b.chunk_size)
    assert a.chunk_count >= 3
    assert sorted(a.entries) == sorted(b.entries)
    assert len(a.entries) == 7 * 30  # q, k, v, o, gate, up, down in each of 30 blocks
    for name, mine in a.entries.items():
        ref = b.entries[name]
        assert mine.sums.shape == ref.sums.shape, name
        np.testing.assert_array_equal(mine.counts, ref.counts, err_msg=name)
        np.testing.assert_allclose(mine.sums, ref.sums, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_file_is_llama_imatrix_format(ours: Path, calibration: Path) -> None:
    file = GgufFile(ours)
    assert file.value("general.type") == "imatrix"
    assert "general.architecture" not in file.fields
    assert file.value("imatrix.datasets") == [str(calibration)]
    sums = file.tensors["blk.0.ffn_down.weight.in_sum2"]
    counts = file.tensors["blk.0.ffn_down.weight.counts"]
    assert list(sums.shape) == [1536, 1] and list(counts.shape) == [1, 1]  # ggml's ne order


@pytest.mark.slow
def test_llama_quantize_makes_the_same_tensors(f16: Path, ours: Path, q3_with: Path) -> None:
    tool = llama_tool("llama-quantize")
    theirs = llama_tool_output(tool, "--imatrix", ours, f16, OUT, "Q3_K_M", THREADS)  # cached
    a, b = GgufFile(q3_with), GgufFile(theirs)
    assert list(a.tensors) == list(b.tensors)
    for name, x in a.tensors.items():
        assert x.type == b.tensors[name].type, name
        assert x.data == b.tensors[name].data, name
    for key in ("quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"):
        assert a.value(key) == b.value(key), key
    assert a.value("quantize.imatrix.entries_count") == 210


@pytest.mark.slow
def test_lower_kl_on_another_text(f16: Path, ours: Path, q3_with: Path, work: Path) -> None:
    """Calibrated on calibration.txt, scored on alice.txt (evaluate's default text)."""
    flat = work / "flat.imatrix.gguf"  # IQ3_XXS is not made without a matrix: all ones instead
    _flat(Imatrix.load(ours)).save(flat)
    files = {("Q3_K_M", "with"): q3_with}
    for qtype, label, matrix in (
        ("Q3_K_M", "without", None),
        ("IQ3_XXS", "without", flat),
        ("IQ3_XXS", "with", ours),
    ):
        out = work / f"{qtype}-{label}.gguf"
        files[qtype, label] = quantize(
            str(f16), type=qtype, imatrix=matrix, output=out, check=False
        ).path
    # In one pass over the F16 reference (computing it is half of each model's cost).
    results = evaluate_models(list(files.values()), ref=f16, ctx_size=256, chunks=4)
    kl = {key: r.kl_mean for key, r in zip(files, results, strict=True)}
    for qtype in ("Q3_K_M", "IQ3_XXS"):
        assert kl[qtype, "with"] < kl[qtype, "without"], kl


def _flat(m: Imatrix) -> Imatrix:
    entries = {
        name: Entry(np.ones_like(e.sums), np.ones_like(e.counts)) for name, e in m.entries.items()
    }
    return Imatrix(entries, ["flat"], m.chunk_count, m.chunk_size)


@pytest.mark.slow
def test_cli_shipped_text_and_saved_matrix(f16: Path, ours: Path, work: Path, llmrun) -> None:
    out, saved = work / "Q2_K_S.gguf", work / "saved.imatrix.gguf"  # Q2_K_S: needs one, and fast
    args = ["quantize", str(f16), "--type", "Q2_K_S", "--imatrix", "--imatrix-out", str(saved)]
    result = llmrun(*args, "-o", str(out))
    assert result.code == 0, result.stderr
    assert result.stdout == f"{out}\n"
    a, b = Imatrix.load(saved), Imatrix.load(ours)
    assert a.datasets == [SHIPPED_TEXT]
    for name, e in a.entries.items():
        np.testing.assert_allclose(e.sums, b.entries[name].sums, rtol=1e-5, err_msg=name)
    assert "Q2_K" in {t.type.name for t in GgufFile(out).tensors.values()}


@pytest.mark.slow
def test_legacy_dat_loads_as_llama_quantize_reads_it(ours: Path, work: Path) -> None:
    m = Imatrix.load(ours)
    dat = work / "ours.dat"
    dat.write_bytes(_legacy_bytes(m))
    legacy = Imatrix.load(dat)
    assert legacy.datasets == m.datasets and legacy.chunk_count == m.chunk_count
    want, got = m.importance(), legacy.importance()
    assert sorted(want) == sorted(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, err_msg=name)


def _legacy_bytes(m: Imatrix) -> bytes:
    """llama-imatrix's save_imatrix_legacy: per entry the mean times ncall (chunks seen)."""
    out = [struct.pack("<i", len(m.entries))]
    for name, e in sorted(m.entries.items()):
        ncall = -(-int(e.counts.max()) // m.chunk_size)
        values = (e.sums / e.counts[:, None] * ncall).astype(np.float32).ravel()
        out += [struct.pack("<i", len(name)), name.encode(), struct.pack("<ii", ncall, values.size)]
        out.append(values.tobytes())
    dataset = m.datasets[0].encode()
    out += [struct.pack("<ii", m.chunk_count, len(dataset)), dataset]
    return b"".join(out)


# ---------------------------------------------------------------- refused before any work


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--imatrix-out", "m.imatrix.gguf"], "--imatrix-out saves a computed importance matrix"),
        (["--imatrix", "--type", "Q8_0"], "Q8_0 is written directly"),
        (["--imatrix", "missing.txt"], "missing.txt: no such file"),
        (["--imatrix", "a.txt", "--imatrix-text", "a.txt"], "not both"),
    ],
)
def test_refused(args: list[str], says: str, smollm2: Path, tmp_path: Path, llmrun) -> None:
    (tmp_path / "a.txt").write_text("some text", encoding="utf-8")
    args = [str(tmp_path / a) if a.endswith((".txt", ".gguf")) else a for a in args]
    result = llmrun("quantize", str(smollm2), *args, "-o", str(tmp_path / "out.gguf"))
    assert says in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_model_is_not_a_matrix(smollm2: Path, tmp_path: Path, llmrun) -> None:
    out = tmp_path / "o.gguf"
    result = llmrun("quantize", str(smollm2), "--imatrix", str(smollm2), "-o", str(out))
    assert "is a GGUF file but not an importance matrix" in one_error_line(result)
    assert not out.exists()


def test_a_damaged_matrix_is_one_error(smollm2: Path, tmp_path: Path, llmrun) -> None:
    damaged, out = tmp_path / "m.imatrix.gguf", tmp_path / "o.gguf"
    damaged.write_bytes(b"GGUF\x03\x00\x00\x00")  # a GGUF magic and version, then nothing
    result = llmrun("quantize", str(smollm2), "--imatrix", str(damaged), "-o", str(out))
    assert f"--imatrix {damaged} is not a readable GGUF file" in one_error_line(result)
    assert not out.exists()
