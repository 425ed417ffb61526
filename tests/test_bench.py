"""`llmrun bench`: the real engine on the real SmolLM2 GGUF, tiny sizes to stay fast.

-t 1 everywhere: on a busy 2-core machine one thread is quicker than two fighting.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from llmrun import bench
from llmrun.bench import KEYS, Row, render

TINY = ("-p", "32", "-n", "8", "-r", "2", "-t", "1")


@pytest.fixture
def llmrun(llmrun_inprocess):
    """In-process: these tests check output and exit codes only, not signals or terminals."""
    return llmrun_inprocess


def _parse_json(text: str) -> list[dict]:
    return json.loads(text)


def _parse_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _parse_md(text: str) -> list[dict]:
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]
    header, align, *body = lines
    assert all(set(a) <= set(":-") and "---" in a for a in align), align
    assert all(len(row) == len(header) for row in body)
    return [dict(zip(header, row, strict=True)) for row in body]


def _parse_table(text: str) -> list[dict]:
    header, *body = text.splitlines()
    assert header.split()[:3] == ["model", "quant", "size"]
    return [{"test": line.split()[-4]} for line in body]  # ... test, mean, ±, sd


PARSERS = {"json": _parse_json, "csv": _parse_csv, "md": _parse_md, "table": _parse_table}


@pytest.mark.parametrize("fmt", ["json", "csv", "md", "table"])
def test_every_format_parses(llmrun, smollm2: Path, fmt: str) -> None:
    flag = () if fmt == "table" else (f"--{fmt}",)
    r = llmrun("bench", str(smollm2), *TINY, *flag)
    assert r.code == 0, r.stderr
    assert r.stderr == ""  # no progress when stderr is not a terminal
    rows = PARSERS[fmt](r.stdout)
    assert [row["test"] for row in rows] == ["pp32", "tg8"]
    if fmt == "csv":
        assert r.stdout.splitlines()[0].split(",") == list(KEYS)
        assert float(rows[0]["tps"]) > 0 and rows[0]["llama_bench_tps"] == ""
    if fmt == "md":
        assert rows[1]["model"] == smollm2.stem and rows[1]["quant"] == "Q4_1"
        assert " ± " in rows[1]["t/s"]


def test_json_rows_for_several_models(llmrun, smollm2: Path) -> None:
    """Two models in one table; every documented key, with llama-bench's left empty."""
    r = llmrun("bench", str(smollm2), "smollm2-135m", *TINY, "--json")
    assert r.code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(row["model"], row["test"]) for row in rows] == [
        (smollm2.stem, "pp32"),
        (smollm2.stem, "tg8"),
        ("smollm2-135m", "pp32"),
        ("smollm2-135m", "tg8"),
    ]
    for row in rows:
        assert set(row) == set(KEYS)
        assert row["tps"] > 0 and row["sd"] >= 0
        assert row["size"] == smollm2.stat().st_size and row["params"] > 100_000_000
        assert row["threads"] == 1 and row["repetitions"] == 2 and row["backend"] == "CPU"
        assert row["llama_bench_tps"] is None and row["ratio"] is None
    assert (rows[0]["n_prompt"], rows[0]["n_gen"]) == (32, 0)
    assert (rows[1]["n_prompt"], rows[1]["n_gen"]) == (0, 8)


def test_skipping_a_test_with_zero(llmrun, smollm2: Path) -> None:
    r = llmrun("bench", str(smollm2), "-p", "0", "-n", "4", "-r", "1", "-t", "1", "--json")
    assert r.code == 0, r.stderr
    assert [row["test"] for row in json.loads(r.stdout)] == ["tg4"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-model", *TINY], "unknown model"),
        (["-r", "0"], "-r/--repetitions must be >= 1"),
        (["-p", "0", "-n", "0"], "not both 0"),
        (["-t", "0"], "-t/--threads must be > 0"),
        (["--json", "--csv"], "choose one output format"),
        (["-ngl", "lots"], "-ngl/--n-gpu-layers"),
    ],
    ids=["unknown-model", "zero-reps", "no-tests", "zero-threads", "two-formats", "bad-ngl"],
)
def test_bad_input_is_one_line_exit_2(llmrun, smollm2: Path, args: list[str], message: str):
    model = [] if args[0] == "no-such-model" else [str(smollm2)]
    r = llmrun("bench", *model, *args)
    assert r.code == 2, r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stdout == ""


def test_missing_llama_bench_says_how_to_build_it(llmrun, smollm2: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"LLMRUN_BENCH_CACHE": str(empty), "PATH": str(empty)}
    r = llmrun("bench", str(smollm2), *TINY, "--vs-llama-bench", env=env)
    assert r.code == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "llama-bench not found" in r.stderr
    assert "python benchmarks/llama_tools.py llama-bench" in r.stderr


# CI builds llama-bench (.ci/build-llama-tools) and sets LLMRUN_REQUIRE_LLAMA_BENCH, so that a
# broken build fails this test there instead of skipping it silently.
@pytest.mark.slow
@pytest.mark.skipif(
    bench.find_llama_bench() is None and not os.environ.get("LLMRUN_REQUIRE_LLAMA_BENCH"),
    reason="llama-bench is not built here",
)
def test_vs_llama_bench_adds_its_columns(llmrun, smollm2: Path) -> None:
    assert bench.find_llama_bench() is not None, "LLMRUN_REQUIRE_LLAMA_BENCH: not built"
    r = llmrun("bench", str(smollm2), *TINY, "--vs-llama-bench", "--json")
    assert r.code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["test"] for row in rows] == ["pp32", "tg8"]
    for row in rows:
        assert row["llama_bench_tps"] > 0 and row["llama_bench_sd"] >= 0
        assert row["ratio"] == pytest.approx(row["tps"] / row["llama_bench_tps"])


# ---------------------------------------------------------------- rendering, no model


def _row(test: str, tps: float, theirs: float | None = None) -> Row:
    return Row(
        model="m", quant="Q4_0", path="/m.gguf", size=3 * 2**30, params=7_000_000_000,
        backend="CPU", n_gpu_layers=0, threads=2, test=test, n_prompt=512 if "pp" in test else 0,
        n_gen=128 if "tg" in test else 0, repetitions=5, tps=tps, sd=1.5,
        llama_bench_tps=theirs, llama_bench_sd=None if theirs is None else 2.0,
    )  # fmt: skip


def test_ratio_columns_only_when_llama_bench_ran() -> None:
    plain = render([_row("pp512", 100.0)], "md")
    assert "ratio" not in plain and "3.00 GiB" in plain and "7B" in plain
    both = [_row("pp512", 95.0, 100.0), _row("tg128", 20.0, 25.0)]
    rows = _parse_md(render(both, "md"))
    assert [row["ratio"] for row in rows] == ["0.950", "0.800"]
    assert rows[0]["llama-bench t/s"] == "100.00 ± 2.00"
    data = json.loads(render(both, "json"))
    assert data[1]["ratio"] == pytest.approx(0.8)
    assert _parse_csv(render(both, "csv"))[0]["ratio"] == "0.95"
