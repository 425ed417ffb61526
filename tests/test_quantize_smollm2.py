"""A real model: SmolLM2-135M-Instruct as a Hugging Face checkpoint (derived from the demo
GGUF with transformers), converted by `llmrun quantize` and compared with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrun import store
from llmrun.quantize import quantize
from tests.quantize_checks import generate
from tests.quantize_fixtures import GREEDY_TOKENS, smollm2_checkpoint

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"  # the store name, from the checkpoint's folder name


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return smollm2_checkpoint()


@pytest.mark.slow
def test_f16_greedy_equals_transformers(checkpoint: Path, tmp_path: Path) -> None:
    out = quantize(str(checkpoint), type="F16", output=tmp_path / "smollm2-F16.gguf").path
    want = json.loads((checkpoint / "greedy.json").read_text(encoding="utf-8"))
    assert generate(out, want["prompt"], n=GREEDY_TOKENS) == want["text"]


def test_q4_k_m_into_the_store_and_chat(checkpoint: Path, llmrun) -> None:
    result = llmrun("quantize", str(checkpoint), "--type", "Q4_K_M", "--keep-f16")
    assert result.code == 0, result.stderr
    path = store.model_path(NAME, "Q4_K_M")
    assert result.stdout == f"{path}\n"
    manifest = json.loads(store.manifest_path(path).read_text())
    assert manifest["quant"] == "Q4_K_M" and manifest["architecture"] == "llama"
    kept = store.model_path(NAME, "BF16")  # the checkpoint is bfloat16, and so is the way there
    assert kept.is_file() and store.manifest_path(kept).is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no scratch left

    listed = llmrun("list")
    assert f"{NAME}" in listed.stdout and "Q4_K_M" in listed.stdout and "BF16" in listed.stdout

    raw = llmrun(
        "run", f"{NAME}:Q4_K_M", "The capital of France is", "--raw", "--temp", "0", "-n", "8"
    )
    assert raw.code == 0 and "Paris" in raw.stdout

    # The chat template came along: the answer is an assistant's turn, markup not printed.
    chat = llmrun(
        "run", f"{NAME}:BF16", "What is the capital of France?", "--temp", "0", "-n", "24"
    )
    assert chat.code == 0, chat.stderr
    assert "Paris" in chat.stdout and "<|im_" not in chat.stdout
