"""Image encode time and time to first token with one image.

    .venv/bin/python benchmarks/bench_vision.py [--model FILE.gguf --mmproj FILE.gguf] [-t 2] [-r 5]
    .venv/bin/python benchmarks/bench_vision.py --smolvlm-256m [--image photo.jpg]

Without --model, the tiny Gemma 3 vision model of the tests (tests/vision_fixtures.py, made
with transformers and llama.cpp's converter; run from the repository root). --smolvlm-256m:
random weights in SmolVLM-256M-Instruct's shapes (the demo model's SmolLM2-135M text model,
a 12-layer SigLIP-base tower on 512x512 images, 64 image tokens), converted by `llmrun
quantize --mmproj --type Q4_K_M` (F16 projector); made once and cached: timings only.
Each repeat loads nothing again: it clears the KV cache and the image cache, then times
one prompt with one image (encode, evaluate, first token), then the same prompt again with
the image's embeddings cached, then without the image. llama.cpp's own multimodal tool
(llama-mtmd-cli) is not built by llama-cpp-python, so there is no ratio column.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from llmrun.engine import load_model
from llmrun.engine.images import MARKER, image_from_bytes
from llmrun.options import Load, Sampling

QUESTION = "What is in this picture?"


def tiny() -> tuple[Path, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.llama_tools import cache_dir, fetch_sources, installed_version
    from tests.vision_fixtures import gemma3_vision

    version = installed_version()
    v = gemma3_vision(fetch_sources(version, cache_dir(version)))
    return v.model, v.mmproj


def smolvlm_256m() -> tuple[Path, Path]:
    """SmolVLM-256M's shapes with random weights, as Q4_K_M plus an F16 projector."""
    import json
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from tests.mmproj_fixtures import FAMILIES, _smolvlm_tokenizer
    from tests.quantize_fixtures import cached

    def build(folder: Path) -> None:
        import torch
        import transformers

        ckpt = folder / "smolvlm-256m-shaped"
        ckpt.mkdir()
        for f in _smolvlm_tokenizer().iterdir():
            if f.is_file() and f.name != ".done":
                shutil.copy(f, ckpt / f.name)
        tok = transformers.AutoTokenizer.from_pretrained(ckpt)
        text = {  # SmolLM2-135M
            "architectures": ["VLlama3ForCausalLM"], "vocab_size": len(tok), "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "rope_theta": 100000.0, "max_position_embeddings": 8192,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        }  # fmt: skip
        vision = {  # SigLIP base, patch 16, 512 px
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "image_size": 512, "patch_size": 16,
        }  # fmt: skip
        config = transformers.Idefics3Config(
            text_config=text, vision_config=vision, scale_factor=4, tie_word_embeddings=False
        )
        torch.manual_seed(0)
        transformers.Idefics3ForConditionalGeneration(config).save_pretrained(ckpt)
        pre = dict(FAMILIES["smolvlm"][4]["preprocessor_config.json"])
        pre.update(size={"longest_edge": 512}, max_image_size={"longest_edge": 512})
        pre["do_image_splitting"] = False  # one 512x512 view: 64 tokens
        (ckpt / "preprocessor_config.json").write_text(json.dumps(pre))
        out = folder / "smolvlm-256m-shaped-Q4_K_M.gguf"
        subprocess.run(
            [sys.executable, "-m", "llmrun", "quantize", str(ckpt), "--type", "Q4_K_M",
             "--mmproj", "-o", str(out), "-q"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.rmtree(ckpt)

    folder = cached("bench-smolvlm-256m-shaped", build)
    model = folder / "smolvlm-256m-shaped-Q4_K_M.gguf"
    return model, folder / "mmproj-smolvlm-256m-shaped-F16.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--mmproj", type=Path)
    ap.add_argument("--smolvlm-256m", action="store_true", help="SmolVLM-256M's shapes")
    ap.add_argument("--image", type=Path, help="an image file (default: a 32x32 test PNG)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.smolvlm_256m:
        args.model, args.mmproj = smolvlm_256m()
    elif args.model is None:
        args.model, args.mmproj = tiny()
    if args.image is not None:
        data = args.image.read_bytes()
    else:
        from tests.vision_fixtures import pixels, png

        data = png(pixels(1))
    image = image_from_bytes(data, "the image")
    model = load_model(args.model, Load(ctx_size=2048, threads=args.threads, mmproj=args.mmproj))
    assert model.images is not None
    sampling = Sampling(temp=0.0, max_tokens=1)
    rows: dict[str, list[float]] = {"encode": [], "ttft (image)": [], "ttft (cached)": []}
    rows["ttft (text)"] = []
    for _ in range(args.repeats):
        model.images.forget()
        for key, images in (
            ("ttft (image)", [image]),
            ("ttft (cached)", [image]),
            ("ttft (text)", []),
        ):
            model.reset()
            started = time.perf_counter()
            text = f"{MARKER}\n" * len(images) + QUESTION
            tokens = model.tokenize(text, add_special=True, parse_special=True, images=images)
            for _piece in model.generate(tokens, sampling, ignore_eos=True):
                break
            rows[key].append(time.perf_counter() - started)
            if key == "ttft (image)":
                rows["encode"].append(model.stats.image_seconds)
    print(f"model {args.model.name}, projector {args.mmproj.name}, {args.threads} threads")
    print(f"| {'what':<14} | {'median ms':>9} | {'min ms':>8} |")
    print(f"|{'-' * 16}|{'-' * 11}|{'-' * 10}|")
    for key, values in rows.items():
        print(f"| {key:<14} | {statistics.median(values) * 1e3:9.2f} | {min(values) * 1e3:8.2f} |")
    model.close()


if __name__ == "__main__":
    main()
