"""`llmrun quantize --mmproj` on tiny random image-and-text checkpoints (SmolVLM, Gemma 3,
Qwen2-VL, Qwen2.5-VL) made by transformers: the text model and the projector are the files
llama.cpp's reference converter writes (`convert_hf_to_gguf.py`, and with `--mmproj`),
tensor for tensor and key for key, and llama.cpp's mtmd loads the projector with the text
model and encodes an image into the embeddings transformers computes from it."""

from __future__ import annotations

import ctypes
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from llama_cpp import mtmd_cpp

from llmrun import store
from llmrun.engine import logs
from llmrun.quantize import quantize
from tests.mmproj_fixtures import FAMILIES, sample_image, tiny_vlm
from tests.quantize_checks import PROVENANCE, gguf_differences, llama_cpp_conversion
from tests.quantize_fixtures import tiny_checkpoint
from tests.test_quantize_dense import KNOWN_DIFFERENCES

pytestmark = pytest.mark.slow

# The text models' differences from llama.cpp's converter, by family, and why.
TEXT_DIFFERENCES = {"gemma3": KNOWN_DIFFERENCES["gemma3mm"]}  # the same Gemma tokenizer
# Qwen2-VL's text part is Qwen2.5-VL's, compared there (llama.cpp's converter takes half a
# minute over SmolLM2's 49k-token vocabulary)
TEXT_FAMILIES = [f for f in FAMILIES if f != "qwen2vl"]
N_EMBD = 256  # the text models' width (quantize_fixtures.SMALL), the projectors' output


@dataclass
class Converted:
    family: str
    ckpt: Path
    text: Path  # F32
    mmproj: Path  # F16


@pytest.fixture(scope="module", params=list(FAMILIES))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    ckpt = tiny_vlm(family)
    out = tmp_path_factory.mktemp(family) / f"{family}-F32.gguf"
    result = quantize(str(ckpt), type="F32", output=out, mmproj=True)
    assert result.mmproj == out.with_name(f"mmproj-{family}-F16.gguf")
    return Converted(family, ckpt, result.path, result.mmproj)


@pytest.mark.parametrize("converted", TEXT_FAMILIES, indirect=True)
def test_text_model_is_llama_cpps(converted: Converted, llama_cpp_src: Path, tmp_path: Path):
    theirs = llama_cpp_conversion(llama_cpp_src, converted.ckpt)
    ignore = {**PROVENANCE, **TEXT_DIFFERENCES.get(converted.family, {})}
    assert gguf_differences(converted.text, theirs, ignore) == []


def test_projector_is_llama_cpps(converted: Converted, llama_cpp_src: Path, tmp_path: Path):
    theirs = llama_cpp_conversion(llama_cpp_src, converted.ckpt, "f16", mmproj=True)
    assert gguf_differences(converted.mmproj, theirs) == []


# Q8_0 where a family fixes types: Gemma 3's input projection F16, Qwen2.5-VL's patches F32
@pytest.mark.parametrize("family", ["gemma3", "qwen25vl"])
def test_q8_0_projector_is_llama_cpps(family: str, llama_cpp_src: Path, tmp_path: Path) -> None:
    ckpt = tiny_vlm(family)
    ours = quantize(
        str(ckpt), type="Q8_0", output=tmp_path / "x.gguf", mmproj=True, mmproj_type="Q8_0"
    ).mmproj
    assert ours == tmp_path / "mmproj-x-Q8_0.gguf"
    theirs = llama_cpp_conversion(llama_cpp_src, ckpt, "q8_0", mmproj=True)
    assert gguf_differences(ours, theirs) == []


def test_projector_encodes_an_image_as_transformers(converted: Converted) -> None:
    """The same pixels in (mmproj_fixtures.IMAGE_SIZES says how): mtmd's embeddings are
    transformers' vision tower and projector's, view for view, to F16's precision."""
    embd = mtmd_image_embeddings(converted.mmproj, converted.text, sample_image(converted.family))
    want = np.load(converted.ckpt / "image-embeddings.npy")
    assert embd.shape == want.shape and embd.shape[1] == N_EMBD
    assert want.std() > 0
    # F16 weights: 1e-3 at most here (Gemma 3's), where Qwen2.5-VL's windows set 2 tokens
    # wide in transformers but 7 in llama.cpp already made 1.1e-2
    assert np.max(np.abs(embd - want)) / np.max(np.abs(want)) < 3e-3


def mtmd_image_embeddings(mmproj: Path, text: Path, image: np.ndarray) -> np.ndarray:
    """llama.cpp's mtmd, with its warm-up encode: `image`'s embeddings (tokens, width)."""
    logs.install(verbose=False)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True  # mtmd reads the width and the vocabulary only
    model = llama_cpp.llama_model_load_from_file(str(text).encode(), params)
    assert model
    ctx_params = mtmd_cpp.mtmd_context_params_default()
    ctx_params.use_gpu = False
    ctx_params.n_threads = 1
    ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), model, ctx_params)
    assert ctx, f"mtmd cannot load {mmproj}"
    data = np.ascontiguousarray(image)
    pixels = data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    bitmap = mtmd_cpp.mtmd_bitmap_init(data.shape[1], data.shape[0], pixels)
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    try:
        prompt = b"Look: " + mtmd_cpp.mtmd_default_marker()
        text_in = mtmd_cpp.mtmd_input_text(prompt, len(prompt), False, True)
        bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(text_in), bitmaps, 1) == 0
        out = []
        for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            if mtmd_cpp.mtmd_input_chunk_get_type(chunk) != mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            assert mtmd_cpp.mtmd_encode_chunk(ctx, chunk) == 0
            n = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
            embd = mtmd_cpp.mtmd_get_output_embd(ctx)
            out.append(np.ctypeslib.as_array(embd, shape=(n * N_EMBD,)).reshape(n, N_EMBD).copy())
        return np.concatenate(out)
    finally:
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)
        mtmd_cpp.mtmd_free(ctx)
        llama_cpp.llama_model_free(model)


# ---------------------------------------------------------------- the command line


def test_cli_writes_both_beside_the_output_and_keeps_them(llmrun, tmp_path: Path) -> None:
    ckpt = tiny_vlm("gemma3")
    out = tmp_path / "gemma-vision-Q8_0.gguf"
    want = f"{out}\n{tmp_path / 'mmproj-gemma-vision-F16.gguf'}\n"
    made = llmrun("quantize", str(ckpt), "--type", "Q8_0", "-o", str(out), "--mmproj")
    assert made.code == 0, made.stderr
    assert made.stdout == want
    again = llmrun("quantize", str(ckpt), "--type", "Q8_0", "-o", str(out), "--mmproj")
    assert again.code == 0 and again.stdout == want
    assert again.stderr.count("exists: kept") == 2


def test_cli_adds_a_projector_to_a_stored_model_and_its_manifest(llmrun) -> None:
    ckpt = str(tiny_vlm("gemma3"))
    model = store.model_path("tiny-gemma3", "F16")
    first = llmrun("quantize", ckpt, "--type", "F16")
    assert first.code == 0 and first.stdout == f"{model}\n"
    before = json.loads(store.manifest_path(model).read_text())
    made = llmrun("quantize", ckpt, "--type", "F16", "--mmproj")  # the model is kept
    assert made.code == 0, made.stderr
    projector = model.with_name("mmproj-tiny-gemma3-F16.gguf")
    assert made.stdout == f"{model}\n{projector}\n"
    manifest = json.loads(store.manifest_path(model).read_text())
    assert manifest == {**before, "mmproj": {"file": projector.name}}
    # run, chat and serve find it as they find a pulled one; it is not a model of its own
    assert [m.mmproj for m in store.list_models()] == [projector]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--mmproj-type", "Q4_K_M"], "--mmproj-type Q4_K_M: a projector is written as"),
        (["--mmproj-type", "Q9"], "unknown quantization type 'Q9'"),
    ],
)
def test_cli_refuses_a_projector_type(llmrun, tmp_path: Path, args: list[str], says: str) -> None:
    r = llmrun(
        "quantize", str(tiny_vlm("gemma3")), "-o", str(tmp_path / "x.gguf"), "--mmproj", *args
    )
    assert r.code == 2 and says in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_mmproj_for_a_text_model(llmrun, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint("qwen2")
    r = llmrun("quantize", str(ckpt), "-o", str(tmp_path / "x.gguf"), "--mmproj")
    assert r.code == 2 and "Traceback" not in r.stderr
    assert "writes no projector (mmproj) for Qwen2ForCausalLM" in r.stderr
    assert "Gemma3ForConditionalGeneration" in r.stderr  # what --mmproj takes
    assert list(tmp_path.iterdir()) == []


def test_cli_needs_the_image_processor_before_writing_anything(llmrun, tmp_path: Path) -> None:
    ckpt = tmp_path / "no-preprocessor"
    shutil.copytree(tiny_vlm("smolvlm"), ckpt)
    (ckpt / "preprocessor_config.json").unlink()
    out = tmp_path / "out"
    out.mkdir()
    r = llmrun("quantize", str(ckpt), "-o", str(out / "x.gguf"), "--mmproj")
    assert r.code == 2 and "Traceback" not in r.stderr
    assert "preprocessor_config.json gives no image_mean" in r.stderr
    assert list(out.iterdir()) == []
