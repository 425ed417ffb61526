"""The self-check runs llama.cpp in a child process: an abort there is one line, not ours.

The file that makes llama.cpp abort is real: a byte-level BPE vocabulary relabelled as
SentencePiece ("llama"), which has no byte tokens, so llama.cpp's SentencePiece tokenizer
throws std::out_of_range on the first character it cannot find, and the process aborts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmrun.quantize import quantize
from llmrun.quantize.selfcheck import PROBES, SelfCheckFailed, self_check
from llmrun.resolve import demo_gguf
from tests.conftest import rewrite_gguf

pytestmark = pytest.mark.skipif(demo_gguf() is None, reason="demo model package not installed")


def as_sentencepiece(src: Path, out: Path) -> Path:
    """`src` again, its BPE vocabulary declared SentencePiece: loads, aborts on tokenizing."""
    bpe_only = ("tokenizer.ggml.merges", "tokenizer.ggml.pre")
    rewrite_gguf(src, out, drop=bpe_only, values={"tokenizer.ggml.model": "llama"})
    return out


@pytest.fixture(scope="module")
def aborting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = demo_gguf()
    assert demo is not None
    return as_sentencepiece(demo, tmp_path_factory.mktemp("abort") / "spm.gguf")


def test_an_abort_in_llama_cpp_is_one_line_and_we_survive(aborting: Path) -> None:
    shown = aborting.with_name("model-Q8_0.gguf")
    with pytest.raises(SelfCheckFailed) as caught:
        self_check(aborting, None, shown=shown)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("self-check: llama.cpp died of SIGABRT tokenizing ")
    assert f"in {shown}: " in message  # the name the user asked for, not the temporary one
    assert "std::out_of_range" in message
    assert "Backtrace" not in message and "gdb" not in message


def test_a_good_file_passes() -> None:
    demo = demo_gguf()
    assert demo is not None
    self_check(demo, None)


def test_the_child_gives_llama_cpps_ids() -> None:
    """A reference that differs by one id is caught: the ids come back whole from the child."""
    from llmrun.engine import load_model
    from llmrun.options import Load
    from llmrun.quantize.vocab import Reference

    demo = demo_gguf()
    assert demo is not None
    model = load_model(demo, Load(ctx_size=64, n_gpu_layers=0, threads=1))
    want = {t: model.tokenize(t, add_special=True, parse_special=False) for t in PROBES}
    model.close()
    self_check(demo, Reference("tokenizer.json", lambda text, _special: want[text]))
    off = {**want, PROBES[-1]: [*want[PROBES[-1]], 1]}
    with pytest.raises(SelfCheckFailed, match=r"self-check: llama\.cpp tokenizes"):
        self_check(demo, Reference("tokenizer.json", lambda text, _special: off[text]))


@pytest.mark.slow
def test_quantize_reports_the_abort_and_leaves_no_file(tmp_path: Path, llmrun) -> None:
    """Requantizing an F16 file llama.cpp aborts on: exit 1, one line, nothing written."""
    from tests.quantize_fixtures import tiny_checkpoint

    f16 = quantize(
        str(tiny_checkpoint("llama")), type="F16", output=tmp_path / "f16.gguf", check=False
    )
    source = as_sentencepiece(f16.path, tmp_path / "spm-F16.gguf")
    out = tmp_path / "out" / "spm-Q8_0.gguf"
    result = llmrun("quantize", str(source), "--type", "Q8_0", "-o", str(out))
    assert result.code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "self-check" in line]
    assert len(errors) == 1, result.stderr
    assert f"in {out}: " in errors[0] and "std::out_of_range" in errors[0]
    assert "Traceback" not in result.stderr and "terminate called" not in result.stderr.replace(
        errors[0], ""
    )
    assert not out.parent.exists() or not os.listdir(out.parent)
