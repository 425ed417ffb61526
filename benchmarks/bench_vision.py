"""Image encode time and time to first token with one image.

    .venv/bin/python benchmarks/bench_vision.py [--model FILE.gguf --mmproj FILE.gguf] [-t 2] [-r 5]

Without --model, the tiny Gemma 3 vision model of the tests (tests/vision_fixtures.py, made
with transformers and llama.cpp's converter; run from the repository root). Each repeat loads
nothing again: it clears the KV cache and the image cache, then times one prompt with one
image (encode, evaluate, first token), then the same prompt again with the image's embeddings
cached, then without the image. llama.cpp's own multimodal tool (llama-mtmd-cli) is not built
by llama-cpp-python, so there is no ratio column.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--mmproj", type=Path)
    ap.add_argument("--image", type=Path, help="an image file (default: a 32x32 test PNG)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.model is None:
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
