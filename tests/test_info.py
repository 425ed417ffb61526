"""`llmrun info` and the system report behind it."""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import pytest

from llmrun.engine.system import parse_features, system_info


@pytest.fixture
def llmrun(llmrun_inprocess):
    """In-process: these tests check output and exit codes only, not signals or terminals."""
    return llmrun_inprocess


def test_system_info(isolated_home: Path) -> None:
    info = system_info()
    assert info["llama_cpp_python"] == llama_cpp.__version__
    assert info["llmrun_home"] == str(isolated_home)
    assert info["hf_cache"].endswith("hub")
    assert isinstance(info["supports_gpu_offload"], bool)
    assert info["default_threads"] >= 1
    # Every build has the CPU backend, and it reports its memory.
    assert "CPU" in info["backends"]
    cpu = [d for d in info["devices"] if d["type"] == "cpu"]
    assert cpu and cpu[0]["backend"] == "CPU" and cpu[0]["memory_total"] > 0
    assert "CPU" in info["features"]
    json.dumps(info)  # plain values only


def test_parse_features() -> None:
    text = "CPU : SSE3 = 1 | AVX2 = 1 | OPENMP = 1 | CUDA : ARCHS = 890 | FORCE_MMQ = 0 | "
    assert parse_features(text) == {
        "CPU": {"SSE3": "1", "AVX2": "1", "OPENMP": "1"},
        "CUDA": {"ARCHS": "890", "FORCE_MMQ": "0"},
    }
    assert parse_features("") == {}


def test_info_json(llmrun, isolated_home: Path) -> None:
    r = llmrun("info", "--json")
    assert r.code == 0, r.stderr
    assert r.stderr == ""  # llama.cpp's start-up chatter is captured
    info = json.loads(r.stdout)
    expected = {
        "llmrun": str,
        "llama_cpp_python": str,
        "ggml_version": (str, type(None)),
        "backends": list,
        "devices": list,
        "supports_gpu_offload": bool,
        "features": dict,
        "system_info": str,
        "default_threads": int,
        "llmrun_home": str,
        "hf_cache": str,
    }
    for key, kind in expected.items():
        assert isinstance(info[key], kind), key
    assert info["llmrun_home"] == str(isolated_home)
    for device in info["devices"]:
        assert {"name", "description", "type", "backend", "memory_free", "memory_total"} <= set(
            device
        )


def test_info_for_people(llmrun) -> None:
    r = llmrun("info")
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[0] == "llmrun"
    assert any(line.startswith("llama-cpp-python") for line in lines)
    assert any(line.startswith("LLMRUN_HOME") for line in lines)
    assert any(line.split()[:1] == ["DEVICE"] for line in lines)
