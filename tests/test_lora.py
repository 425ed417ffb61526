"""LoRA adapters: `--lora FILE[:SCALE]` at run time, and PEFT adapters converted to GGUF.

A PEFT adapter is made here on the tiny random llama checkpoint (random lora_B: PEFT
starts it at zero, which would make the adapter a no-op), with transformers' logits of
the merged model as the reference. Our conversion is compared with llama.cpp's own
convert_lora_to_gguf.py, tensor for tensor, and llama.cpp's logits with the adapter
applied with transformers'.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.quantize_fixtures import cached, reference, save_reference, tiny_checkpoint

RANK = 8
ALPHA = 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA_CPP_SRC = Path.home() / ".cache" / "llmrun-ci" / "llama.cpp-0.3.36" / "src"


def peft_adapter() -> Path:
    """A PEFT LoRA adapter of the tiny llama checkpoint (adapter/), with merged/: the merged
    model's float32 logits for PROMPTS, and its weights as a checkpoint (for --merge-lora's
    reference)."""
    recipe = hashlib.sha256(json.dumps([RANK, ALPHA, TARGETS, 1]).encode()).hexdigest()[:8]

    def build(out: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        base = tiny_checkpoint("llama")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS))
        model = get_peft_model(model, config)
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.05 * torch.randn_like(p))
        model.save_pretrained(out / "adapter")
        merged = model.merge_and_unload().eval()
        save_reference(merged, AutoTokenizer.from_pretrained(base), out)

    return cached(f"lora-tiny-llama-{recipe}", build)


def llama_cpp_convert(adapter: Path, base: Path, out: Path, outtype: str = "f32") -> Path:
    """llama.cpp's convert_lora_to_gguf.py, from the sdist of the installed version (it finds
    its own gguf-py and conversion/ package beside itself)."""
    script = LLAMA_CPP_SRC / "convert_lora_to_gguf.py"
    if not script.is_file():
        pytest.skip(f"llama.cpp's sources are not at {LLAMA_CPP_SRC}")
    cmd = [sys.executable, str(script), str(adapter), "--base", str(base)]
    cmd += ["--outtype", outtype, "--outfile", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The base model as an F32 GGUF, and llama.cpp's F32 conversion of the adapter."""
    import torch

    from llmrun.quantize import quantize

    torch.set_num_threads(1)
    made = peft_adapter()
    tmp = tmp_path_factory.mktemp("lora")
    ckpt = tiny_checkpoint("llama")
    base = quantize(str(ckpt), type="F32", output=tmp / "base-F32.gguf").path
    theirs = llama_cpp_convert(made / "adapter", ckpt, tmp / "theirs-F32.gguf")
    return {"made": made, "ckpt": ckpt, "base": base, "theirs": theirs, "tmp": tmp}


def adapted_logits(base: Path, adapter: Path, ids: list[int], scale: float = 1.0) -> np.ndarray:
    from dataclasses import replace

    from llmrun.engine import load_model
    from llmrun.options import Adapter
    from tests.quantize_checks import EXACT

    model = load_model(base, replace(EXACT, lora=(Adapter(adapter, scale),)))
    try:
        return model.logits(ids)
    finally:
        model.close()


# ---------------------------------------------------------------- run time: --lora


@pytest.mark.slow
def test_llama_cpp_adapter_matches_merged_transformers(files: dict[str, Path]) -> None:
    """The engine applies an adapter as transformers' merged model computes (the reference
    adapter file is llama.cpp's own conversion)."""
    from tests.quantize_checks import llama_logits, relative_error

    for ids, want in reference(files["made"]):
        err = relative_error(adapted_logits(files["base"], files["theirs"], ids), want)
        assert err < 1e-3, f"logits differ by {err:.2e} (relative)"
        plain = relative_error(llama_logits(files["base"], ids), want)
        assert plain > 1e-2, "the adapter changes nothing: the test would prove nothing"


@pytest.mark.slow
def test_scale_zero_is_the_base_model(files: dict[str, Path]) -> None:
    from tests.quantize_checks import llama_logits, relative_error

    ids, _ = reference(files["made"])[0]
    got = adapted_logits(files["base"], files["theirs"], ids, scale=0.0)
    assert relative_error(got, llama_logits(files["base"], ids)) < 1e-6


RUN = ("--temp", "0", "-n", "8", "--raw", "--no-cache", "-c", "256", "-t", "1")


@pytest.mark.slow
def test_run_with_lora_differs_from_without(files: dict[str, Path], llmrun) -> None:
    base, adapter = str(files["base"]), str(files["theirs"])
    plain = llmrun("run", base, "The quick brown fox", *RUN)
    assert plain.code == 0, plain.stderr
    adapted = llmrun("run", base, "The quick brown fox", *RUN, "--lora", adapter, "-v")
    assert adapted.code == 0, adapted.stderr
    assert adapted.stdout and adapted.stdout != plain.stdout
    assert f"lora: {adapter} (scale 1)" in adapted.stderr
    again = llmrun("run", base, "The quick brown fox", *RUN, "--lora", f"{adapter}:1.0")
    assert again.stdout == adapted.stdout


def test_lora_flag_parsing(tmp_path: Path) -> None:
    from llmrun.errors import BadOption
    from llmrun.options import Adapter, parse_lora

    assert parse_lora(["a.gguf", "b.gguf:0.5", "c:d.gguf"]) == (
        Adapter(Path("a.gguf")),
        Adapter(Path("b.gguf"), 0.5),
        Adapter(Path("c:d.gguf")),
    )
    for bad in ("", "a.gguf:nan", "a.gguf:inf"):
        with pytest.raises(BadOption):
            parse_lora([bad])


@pytest.mark.slow
@pytest.mark.parametrize("which", ["missing", "model", "not_gguf", "other_base"])
def test_bad_adapter_is_one_error_line(
    which: str, files: dict[str, Path], smollm2: Path, llmrun
) -> None:
    base, adapter = files["base"], files["theirs"]
    not_gguf = files["tmp"] / "notes.txt"
    not_gguf.write_text("not a model\n")
    given, model = {
        "missing": (files["tmp"] / "nope.gguf", base),
        "model": (smollm2, base),  # a model where an adapter belongs
        "not_gguf": (not_gguf, base),
        "other_base": (adapter, smollm2),  # llama too, but other shapes
    }[which]
    result = llmrun("run", str(model), "hi", *RUN, "--lora", str(given))
    assert result.code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    want = {
        "missing": "no such file",
        "model": "is not a LoRA adapter",
        "not_gguf": "is not a GGUF file",
        "other_base": "does not fit",
    }[which]
    assert want in lines[0]


@pytest.mark.slow
def test_prompt_cache_key_holds_the_adapters(files: dict[str, Path]) -> None:
    from dataclasses import replace

    from llmrun.engine import load_model
    from llmrun.options import Adapter
    from llmrun.promptcache import model_identity
    from tests.quantize_checks import EXACT

    identities = []
    for lora in ((), (Adapter(files["theirs"]),), (Adapter(files["theirs"], 0.5),)):
        with load_model(files["base"], replace(EXACT, lora=lora)) as model:
            identities.append(model_identity(model))
    assert "lora" not in identities[0]  # keys made before adapters existed stay valid
    entry = identities[1]["lora"][0]
    assert entry["path"] == str(files["theirs"].resolve()) and entry["scale"] == 1.0
    assert entry["size"] == files["theirs"].stat().st_size and entry["mtime_ns"]
    assert len({json.dumps(i, sort_keys=True) for i in identities}) == 3


# ---------------------------------------------------------------- conversion: --lora-base

# Keys llama.cpp's converter takes from the adapter's model card (README.md): descriptive,
# read by nothing. general.name is its title-cased folder name; ours is the folder's name.
CARD_KEYS = ("general.base_model.", "general.tags", "general.license", "general.languages")


def gguf_contents(path: Path) -> tuple[dict[str, object], dict[str, object]]:
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {
        f.name: f.contents()
        for f in reader.fields.values()
        if not f.name.startswith(("GGUF.", *CARD_KEYS))
    }
    return meta, {t.name: t for t in reader.tensors}


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_conversion_equals_llama_cpps(qtype: str, files: dict[str, Path], llmrun) -> None:
    adapter = files["made"] / "adapter"
    theirs = files["theirs"]
    if qtype != "F32":
        theirs = llama_cpp_convert(adapter, files["ckpt"], files["tmp"] / f"theirs-{qtype}.gguf",
                                   qtype.lower())  # fmt: skip
    out = files["tmp"] / f"ours-{qtype}.gguf"
    result = llmrun("quantize", str(adapter), "--lora-base", str(files["ckpt"]),
                    "--type", qtype, "-o", str(out))  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.stdout == f"{out}\n"
    ours_meta, ours = gguf_contents(out)
    their_meta, their = gguf_contents(theirs)
    assert ours_meta.pop("general.name") == "adapter"
    their_meta.pop("general.name")
    assert ours_meta == their_meta
    assert ours_meta["general.type"] == "adapter" and ours_meta["adapter.lora.alpha"] == ALPHA
    assert ours.keys() == their.keys()
    assert any(name.endswith("attn_q.weight.lora_b") for name in ours)
    for name, t in ours.items():
        other = their[name]
        assert t.tensor_type == other.tensor_type, name
        assert list(t.shape) == list(other.shape), name
        assert np.array_equal(np.asarray(t.data), np.asarray(other.data)), name


@pytest.mark.slow
def test_our_adapter_matches_merged_transformers(files: dict[str, Path]) -> None:
    from llmrun.quantize.lora import convert_adapter
    from tests.quantize_checks import relative_error

    out = files["tmp"] / "ours-logits-F32.gguf"
    convert_adapter(files["made"] / "adapter", str(files["ckpt"]), type="F32", output=out)
    for ids, want in reference(files["made"]):
        err = relative_error(adapted_logits(files["base"], out, ids), want)
        assert err < 1e-3, f"logits differ by {err:.2e} (relative)"


@pytest.mark.slow
def test_default_output_is_beside_the_adapter(files: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from llmrun.ggufinfo import read_info
    from llmrun.quantize.lora import convert_adapter

    adapter = shutil.copytree(files["made"] / "adapter", tmp_path / "my-adapter")
    done = convert_adapter(adapter, str(files["ckpt"]))
    assert done.path == adapter / "my-adapter-F16.gguf"
    assert read_info(done.path).metadata["general.type"] == "adapter"
    assert not [p for p in adapter.iterdir() if p.name.startswith(".")]  # no temporary left
    assert convert_adapter(adapter, str(files["ckpt"])).kept


@pytest.mark.slow
@pytest.mark.parametrize("which", ["not_adapter", "gguf_base", "other_base", "k_quant"])
def test_bad_conversion_is_one_error_line(
    which: str, files: dict[str, Path], llmrun, tmp_path: Path
) -> None:
    adapter, ckpt = files["made"] / "adapter", files["ckpt"]
    args, want = {
        "not_adapter": ([str(ckpt), "--lora-base", str(ckpt)], "is not a PEFT adapter"),
        "gguf_base": ([str(adapter), "--lora-base", str(files["base"])], "is a GGUF file"),
        "other_base": ([str(adapter), "--lora-base", str(tiny_checkpoint("qwen3"))], "adapter"),
        "k_quant": ([str(adapter), "--lora-base", str(ckpt), "--type", "Q4_K_M"], "F16"),
    }[which]
    result = llmrun("quantize", *args, "-o", str(tmp_path / "x.gguf"))
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and want in lines[0], result.stderr
    assert not (tmp_path / "x.gguf").exists()


# ---------------------------------------------------------------- --merge-lora


@pytest.fixture(scope="module")
def merged(files: dict[str, Path]) -> Path:
    """The checkpoint with the adapter merged by llmrun, as F32, in the store."""
    from llmrun.quantize import quantize

    result = quantize(
        str(files["ckpt"]), type="F32", merge_lora=files["made"] / "adapter", check=False,
        output=files["tmp"] / "merged-F32.gguf",
    )  # fmt: skip
    return result.path


@pytest.mark.slow
def test_merged_logits_match_merged_transformers(merged: Path, files: dict[str, Path]) -> None:
    from tests.quantize_checks import llama_logits, relative_error

    for ids, want in reference(files["made"]):
        err = relative_error(llama_logits(merged, ids), want)
        assert err < 1e-3, f"logits differ by {err:.2e} (relative)"


@pytest.mark.slow
def test_run_with_lora_equals_the_merged_model(
    merged: Path, files: dict[str, Path], llmrun
) -> None:
    from llmrun.quantize.lora import convert_adapter

    ours = files["tmp"] / "ours-run-F32.gguf"
    convert_adapter(files["made"] / "adapter", str(files["ckpt"]), type="F32", output=ours)
    prompt = "The quick brown fox"
    adapted = llmrun("run", str(files["base"]), prompt, *RUN, "--lora", str(ours))
    baked = llmrun("run", str(merged), prompt, *RUN)
    plain = llmrun("run", str(files["base"]), prompt, *RUN)
    assert adapted.code == baked.code == plain.code == 0, adapted.stderr + baked.stderr
    assert adapted.stdout == baked.stdout != plain.stdout


@pytest.mark.slow
def test_merge_into_the_store_and_quantize(files: dict[str, Path], llmrun) -> None:
    """Without -o the merged model gets its own store name; K-quants go through llama.cpp."""
    result = llmrun("quantize", str(files["ckpt"]), "--merge-lora", str(files["made"] / "adapter"),
                    "--type", "Q4_K_M")  # fmt: skip
    assert result.code == 0, result.stderr
    out = Path(result.stdout.strip())
    assert out.name == "tiny-llama-adapter-Q4_K_M.gguf" and out.is_file()
    again = llmrun("run", str(out), "The quick", *RUN)
    assert again.code == 0 and again.stdout, again.stderr


# ---------------------------------------------------------------- serve


def test_serve_lora_needs_a_model(llmrun, tmp_path: Path) -> None:
    result = llmrun("serve", "--lora", str(tmp_path / "a.gguf"), "--port", "0")
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--lora needs a MODEL" in result.stderr


@pytest.mark.slow
def test_serve_applies_the_adapters_to_model(files: dict[str, Path], llmrun) -> None:
    from tests.test_serve import start_server, stop_server

    prompt, base, adapter = "The quick brown fox", files["base"], files["theirs"]
    want = llmrun("run", str(base), prompt, *RUN, "--lora", str(adapter))
    plain = llmrun("run", str(base), prompt, *RUN)
    assert want.code == plain.code == 0 and want.stdout != plain.stdout
    home = files["tmp"] / "serve-home"
    srv = start_server(base, home, "--lora", str(adapter), "-c", "256", "--parallel", "1")
    try:
        texts = [
            srv.client().completions.create(model=name, prompt=prompt, max_tokens=8).choices[0].text
            for name in ("x", str(base))  # an unknown name: MODEL; MODEL's own path: MODEL too
        ]
    finally:
        assert stop_server(srv) == 0
    assert texts[0] == texts[1] == want.stdout.rstrip("\n")


@pytest.mark.slow
def test_serve_per_request_lora(files: dict[str, Path], llmrun) -> None:
    """llama-server's `lora` field: scales per request over serve's --lora list (0 for an
    adapter left out); requests under other scales never share KV cells or a batch."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_serve import start_server, stop_server

    prompt = "The quick brown fox jumps over the lazy dog, and then the dog"  # > 8 tokens
    base, adapter = files["base"], files["theirs"]
    want = {
        1.0: llmrun("run", str(base), prompt, *RUN, "--lora", str(adapter)).stdout.rstrip("\n"),
        0.0: llmrun("run", str(base), prompt, *RUN).stdout.rstrip("\n"),
        0.5: llmrun("run", str(base), prompt, *RUN, "--lora", f"{adapter}:0.5").stdout.rstrip(),
    }
    assert len(set(want.values())) == 3
    home = files["tmp"] / "serve-per-request"
    srv = start_server(base, home, "--lora", str(adapter), "-c", "512", "--parallel", "2")

    def complete(lora: list[dict[str, float]] | None) -> str:
        extra = {} if lora is None else {"lora": lora}
        answer = srv.client().completions.create(
            model="x", prompt=prompt, max_tokens=8, extra_body=extra
        )
        return answer.choices[0].text

    try:
        # One after another: the second finds the first's cells, made under other scales.
        assert complete(None) == want[1.0]
        assert complete([{"id": 0, "scale": 0.0}]) == want[0.0]
        assert complete([]) == want[0.0]  # left out: scale 0, as in llama-server
        assert complete([{"id": 0, "scale": 0.5}]) == want[0.5]
        # At once: three scales, two sequences decoding in separate batches.
        asks = [None, [{"id": 0, "scale": 0.0}], [{"id": 0, "scale": 0.5}]] * 2
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(complete, asks))
        assert got == [want[1.0], want[0.0], want[0.5]] * 2
        status, body = srv.request(
            "POST", "/v1/completions",
            json.dumps({"prompt": "hi", "max_tokens": 1, "lora": [{"id": 1, "scale": 1}]}).encode(),
        )  # fmt: skip
        assert status == 400 and "no LoRA adapter with id 1" in json.dumps(body), body
    finally:
        assert stop_server(srv) == 0


@pytest.mark.slow
def test_bench_and_chat_take_lora(files: dict[str, Path], llmrun) -> None:
    base, adapter = str(files["base"]), str(files["theirs"])
    short = ("-p", "8", "-n", "4", "-r", "1", "-t", "1", "--json")
    bench = llmrun("bench", base, "--lora", adapter, *short)
    assert bench.code == 0, bench.stderr
    assert [row["test"] for row in json.loads(bench.stdout)] == ["pp8", "tg4"]
    missing = llmrun("bench", base, "--lora", str(files["tmp"] / "nope.gguf"), *short)
    assert missing.code == 2 and "no such file" in missing.stderr  # the flag reaches the load
    chat = llmrun("chat", base, "--lora", f"{adapter}:0.25", "-n", "4", "-v", input="hi\n")
    assert chat.code == 0, chat.stderr
    assert f"lora: {adapter} (scale 0.25)" in chat.stderr
    refused = llmrun("bench", base, "--lora", adapter, "--vs-llama-bench")
    assert refused.code == 2 and "does not go with --lora" in refused.stderr
