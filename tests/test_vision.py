"""Images in, text out: a tiny Gemma 3 vision model (tests/vision_fixtures.py), converted by
llama.cpp's own converter, run through the engine, `llmrun run --image`, and a real server
driven by the openai and ollama clients."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from llmrun.engine import Model, load_model
from llmrun.engine.images import (
    MARKER,
    BadImage,
    image_from_bytes,
    image_start,
    image_token,
    runs,
)
from llmrun.errors import BadInput
from llmrun.options import Load, Sampling
from tests.hubserver import HubServer
from tests.vision_fixtures import VisionModel, bmp, gemma3_vision, pixels, png, reference_model

GREEDY = Sampling(temp=0.0, max_tokens=8)
QUESTION = "What is in this picture?"


@pytest.fixture(scope="module")
def vision(llama_cpp_src: Path) -> VisionModel:
    return gemma3_vision(llama_cpp_src)


@pytest.fixture(scope="module")
def engine(vision: VisionModel) -> Iterator[Model]:
    model = load_model(vision.model, Load(ctx_size=512, threads=1, mmproj=vision.mmproj))
    yield model
    model.close()


def chat_prompt(n_images: int) -> str:
    """One user turn in Gemma's template, the images before the question."""
    marks = f"{MARKER}\n" * n_images
    return f"<bos><start_of_turn>user\n{marks}{QUESTION}<end_of_turn>\n<start_of_turn>model\n"


def raw_prompt(n_images: int) -> str:
    """The images, then the question: no template. The random model's answer depends on
    its last few dozen tokens only, so the image must be near the end to change it."""
    return f"{MARKER}\n" * n_images + QUESTION


def answer(model: Model, images: list, prompt: str | None = None) -> str:
    model.reset()
    text = prompt or raw_prompt(len(images))
    tokens = model.tokenize(text, add_special=True, parse_special=True, images=images)
    return "".join(model.generate(tokens, GREEDY, ignore_eos=True))


# ---------------------------------------------------------------- the engine


def test_an_image_changes_the_greedy_answer_reproducibly(engine: Model) -> None:
    image = image_from_bytes(png(pixels(1)), "test.png")
    without = answer(engine, [])
    with_image = answer(engine, [image])
    assert engine.stats.images_encoded == 1
    assert with_image != without
    assert answer(engine, [image]) == with_image
    # the same picture as a BMP is the same pixels: the same answer
    assert answer(engine, [image_from_bytes(bmp(pixels(1)), "test.bmp")]) == with_image


def test_an_image_is_tokens_of_its_own(engine: Model) -> None:
    image = image_from_bytes(png(pixels(2)), "a.png")
    tokens = engine.tokenize(chat_prompt(1), add_special=True, parse_special=True, images=[image])
    mine = [t for t in tokens if t < 0]
    assert mine == [image_token(image.digest)] * 16  # mm_tokens_per_image of the checkpoint
    start = tokens.index(mine[0])
    assert image_start(tokens, start + 2) == start  # a prefix never ends inside an image
    assert image_start(tokens, start + 16) == start + 16
    kinds = [tokens[a] < 0 for a, _ in runs(tokens)]
    assert kinds == [False, True, False]


def test_the_same_image_twice_in_a_row(engine: Model) -> None:
    """Two copies of one image: each is evaluated in its place (Gemma's image-start and -end
    text separates them; where nothing does, decode_run splits the one run)."""
    image = image_from_bytes(png(pixels(2)), "a.png")
    engine.reset()
    tokens = engine.tokenize(MARKER + MARKER + QUESTION, images=[image, image])
    assert tokens.count(image_token(image.digest)) == 32
    "".join(engine.generate(tokens, GREEDY, ignore_eos=True))
    assert engine.cached_tokens[: len(tokens)] == tokens  # the KV cache holds every position


def test_earlier_images_are_not_encoded_again(engine: Model) -> None:
    """A second turn reuses the KV cache through the image; with the cache cleared, the
    image's embeddings are kept by its hash."""
    image = image_from_bytes(png(pixels(3)), "b.png")
    first = answer(engine, [image], chat_prompt(1))
    assert engine.stats.images_encoded == 1
    turn = chat_prompt(1) + first + "<end_of_turn>\n<start_of_turn>user\nAnd now?<end_of_turn>\n"
    tokens = engine.tokenize(turn, add_special=True, parse_special=True, images=[image])
    "".join(engine.generate(tokens, GREEDY, ignore_eos=True))
    assert engine.stats.images_encoded == 0
    assert engine.stats.reused_tokens > tokens.index(image_token(image.digest)) + 16
    assert answer(engine, [image], chat_prompt(1)) == first  # embeddings from the cache
    assert engine.stats.images_encoded == 0


def test_embeddings_match_transformers(engine: Model) -> None:
    """llama.cpp's vision tower and projector against transformers', on a 32x32 image (the
    tower's own size: neither resizes it)."""
    import torch

    assert engine.images is not None
    rgb = pixels(4)
    got = engine.images.embeddings(image_from_bytes(png(rgb), "c.png"))
    model = reference_model()
    values = np.frombuffer(rgb, dtype=np.uint8).reshape(32, 32, 3).astype(np.float32) / 255
    pixel_values = torch.from_numpy((values - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixel_values)
    want = getattr(features, "pooler_output", features)
    want = np.asarray(want[0] if isinstance(want, (list, tuple)) else want).reshape(got.shape)
    assert got.shape == (16, 256)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-3


def test_bad_images_are_one_clear_error(engine: Model) -> None:
    with pytest.raises(BadImage, match="not an image"):
        image_from_bytes(b"hello, world", "x.txt")
    with pytest.raises(BadImage, match="empty"):
        image_from_bytes(b"", "x.png")
    with pytest.raises(BadImage, match="over the 20 MiB limit"):
        image_from_bytes(b"\x89PNG\r\n\x1a\n" + bytes(21 << 20), "big.png")
    corrupt = image_from_bytes(png(pixels(1))[:60], "cut.png")  # a PNG cut short
    with pytest.raises(BadImage, match="damaged"):
        engine.tokenize(chat_prompt(1), images=[corrupt])
    with pytest.raises(BadInput, match="image places"):
        engine.tokenize(chat_prompt(2), images=[image_from_bytes(png(pixels(1)), "a.png")])


def test_every_format_reads(engine: Model) -> None:
    """JPEG, GIF (its first frame) and BMP through llama.cpp's decoder, WebP through Pillow;
    lossless formats of the same pixels give the same embeddings."""
    import io

    pil = pytest.importorskip("PIL.Image")
    assert engine.images is not None
    picture = pil.frombytes("RGB", (32, 32), pixels(1))

    def encoded(image, fmt: str, **kw) -> bytes:
        out = io.BytesIO()
        image.save(out, fmt, **kw)
        return out.getvalue()

    def embeddings(data: bytes, name: str) -> np.ndarray:
        return engine.images.embeddings(image_from_bytes(data, name))

    want = embeddings(png(pixels(1)), "a.png")
    webp = encoded(picture, "WEBP", lossless=True)
    assert image_from_bytes(webp, "a.webp").format == "webp"
    assert np.array_equal(embeddings(webp, "a.webp"), want)
    assert np.array_equal(embeddings(bmp(pixels(1)), "a.bmp"), want)
    jpeg = embeddings(encoded(picture, "JPEG", quality=95), "a.jpg")
    assert jpeg.shape == want.shape and not np.array_equal(jpeg, want)  # lossy, but read
    frames = [picture.quantize(64), pil.frombytes("RGB", (32, 32), pixels(7)).quantize(64)]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = encoded(frames[0].convert("RGB"), "PNG")
    assert np.array_equal(embeddings(gif, "a.gif"), embeddings(first, "first.png"))
    with pytest.raises(BadImage, match="damaged"):
        embeddings(webp[:40], "cut.webp")


def test_a_text_model_refuses_images(smollm2: Path) -> None:
    model = load_model(smollm2, Load(ctx_size=256, threads=1))
    try:
        with pytest.raises(BadInput, match="cannot read images: it has no projector"):
            model.tokenize(MARKER + "hi", images=[image_from_bytes(png(pixels(1)), "a.png")])
    finally:
        model.close()


# ---------------------------------------------------------------- llmrun run --image


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "llmrun", "run", *args],
        input=stdin,
        capture_output=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )


def linked(vision: VisionModel, folder: Path) -> VisionModel:
    """The GGUFs under plain names (the cache's folder name has a '+', which the command line
    does not take for a model name)."""
    for src in (vision.model, vision.mmproj):
        (folder / src.name).symlink_to(src)
    return VisionModel(vision.checkpoint, folder / vision.model.name, folder / vision.mmproj.name)


def test_run_with_an_image(vision: VisionModel, tmp_path: Path) -> None:
    vision = linked(vision, tmp_path)
    picture = tmp_path / "picture.png"
    picture.write_bytes(png(pixels(1)))
    base = [str(vision.model), "--mmproj", str(vision.mmproj), "--raw", "--temp", "0", "-n", "8"]
    base += ["-t", "1", "--no-cache"]
    with_file = run_cli(*base, "--image", str(picture), QUESTION)
    assert with_file.returncode == 0, with_file.stderr
    from_stdin = run_cli(*base, "--image", "-", QUESTION, stdin=picture.read_bytes())
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == with_file.stdout
    without = run_cli(*base, QUESTION)
    assert without.returncode == 0 and without.stdout != with_file.stdout


def test_run_bad_images_exit_2(vision: VisionModel, smollm2: Path, tmp_path: Path) -> None:
    vision = linked(vision, tmp_path)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature and nothing
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    base = [str(vision.model), "--mmproj", str(vision.mmproj), "-n", "2"]
    (tmp_path / "ok.png").write_bytes(png(pixels(1)))
    cases = [
        ([*base, "--image", str(junk), "hi"], "damaged"),
        ([*base, "--image", str(text), "hi"], "is not an image llmrun reads"),
        ([*base, "--image", str(tmp_path / "missing.png"), "hi"], "cannot read image"),
        ([str(smollm2), "--image", str(tmp_path / "ok.png"), "hi"], "it has no projector"),
    ]
    for args, message in cases:
        r = run_cli(*args)
        err = r.stderr.decode()
        assert r.returncode == 2, (args, err)
        assert message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- serve


@pytest.fixture(scope="module")
def server(vision: VisionModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.test_serve import start_server, stop_server

    home = tmp_path_factory.mktemp("vision-serve")
    srv = start_server(vision.model, home, "--mmproj", str(vision.mmproj), "-c", "1024")
    yield srv
    assert stop_server(srv) == 0


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_openai_client_sends_an_image(server) -> None:
    openai = pytest.importorskip("openai")
    client = server.client()

    prompt_tokens = []

    def ask(content) -> str:
        reply = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": content}], max_tokens=8, seed=0
        )
        prompt_tokens.append(reply.usage.prompt_tokens)
        return reply.choices[0].message.content or ""

    picture = {"type": "image_url", "image_url": {"url": data_url(png(pixels(1)))}}
    with_image = ask([picture, {"type": "text", "text": QUESTION}])
    assert with_image
    assert ask([picture, {"type": "text", "text": QUESTION}]) == with_image
    # In the chat template the random model's answer does not depend on an image that far
    # back (test_an_image_changes_the_greedy_answer_reproducibly): the image is in the prompt.
    ask(QUESTION)
    assert prompt_tokens[0] == prompt_tokens[1] >= prompt_tokens[2] + 16

    bad = [
        {"type": "image_url", "image_url": {"url": data_url(b"not an image")}},
        {"type": "image_url", "image_url": {"url": data_url(png(pixels(1))[:60])}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    for part in bad:
        with pytest.raises(openai.BadRequestError) as e:
            ask([part, {"type": "text", "text": QUESTION}])
        assert e.value.status_code == 400
    assert "--allow-image-urls" in str(e.value)
    assert ask([picture, {"type": "text", "text": QUESTION}]) == with_image  # still serving


def test_ollama_client_sends_images(server) -> None:
    ollama = pytest.importorskip("ollama")
    from tests.test_serve import KEY

    client = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"})
    options = {"temperature": 0, "num_predict": 8}
    message = {"role": "user", "content": QUESTION, "images": [png(pixels(1))]}
    chat = client.chat(model="x", messages=[message], options=options)
    plain = client.chat(model="x", messages=[{**message, "images": []}], options=options)
    assert chat.message.content
    assert chat.prompt_eval_count >= plain.prompt_eval_count + 16  # the image's 16 tokens
    image = png(pixels(1))
    generated = client.generate(model="x", prompt=QUESTION, images=[image], options=options)
    assert generated.response == chat.message.content  # the same prompt, by either route
    raw = client.generate(model="x", prompt=QUESTION, images=[image], options=options, raw=True)
    plain_raw = client.generate(model="x", prompt=QUESTION, options=options, raw=True)
    assert raw.response != plain_raw.response  # near the end, the image changes the answer
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="x", messages=[{**message, "images": [b"junk"]}], options=options)
    assert e.value.status_code == 400
    # What a client does before it offers images: show, by the name /api/tags lists
    served = next(m.model for m in client.list().models if m.details.family == "gemma3")
    assert "vision" in client.show(served).capabilities


# ---------------------------------------------------------------- pull

VISION_REPO = "hubtest/Tiny-Gemma3-Vision-GGUF"
MODEL_FILE = "Tiny-Gemma3-Vision-F32.gguf"


@pytest.fixture(scope="module")
def vision_hub(vision: VisionModel) -> Iterator[HubServer]:
    """A local Hub with a vision GGUF repo: the model, and its projector in two quants (the
    same bytes under both names: which name was fetched is what the tests check)."""
    server = HubServer()
    server.add_repo(
        VISION_REPO,
        {
            MODEL_FILE: vision.model,
            "mmproj-Tiny-Gemma3-Vision-F16.gguf": vision.mmproj,
            "mmproj-Tiny-Gemma3-Vision-Q8_0.gguf": vision.mmproj,
            "README.md": b"# tiny\n",
        },
    )
    server.start()
    yield server
    server.stop()


def test_pull_fetches_the_projector(
    llmrun, vision_hub: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmrun import store

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", vision_hub.url)
    r = llmrun("pull", VISION_REPO)
    assert r.code == 0, r.stderr
    stored = Path(r.stdout.strip())
    manifest = store.read_manifest(stored)
    assert manifest["mmproj"]["name"] == "mmproj-Tiny-Gemma3-Vision-F16.gguf"
    assert (stored.parent / manifest["mmproj"]["file"]).is_file()
    name = "tiny-gemma3-vision"
    shown = llmrun("show", name)
    assert shown.code == 0
    assert re.search(r"^\s*vision\s+yes \(mmproj-", shown.stdout, re.MULTILINE), shown.stdout
    listed = llmrun("list", "--json")
    rows = [m for m in json.loads(listed.stdout) if m["path"].startswith(str(stored.parent))]
    assert [m["name"] for m in rows] == [name]  # the projector is no model of its own

    picture = tmp_path / "p.png"
    picture.write_bytes(png(pixels(1)))
    run = llmrun("run", name, "--image", str(picture), "--raw", "-n", "4", "-t", "1", QUESTION)
    assert run.code == 0, run.stderr  # found by run, with no --mmproj

    again = llmrun("pull", VISION_REPO, "--mmproj-quant", "q8_0", "--force")
    assert again.code == 0, again.stderr
    assert store.read_manifest(stored)["mmproj"]["name"] == "mmproj-Tiny-Gemma3-Vision-Q8_0.gguf"
    missing = llmrun("pull", VISION_REPO, "--mmproj-quant", "Q4_0")
    assert missing.code == 2 and "has no Q4_0 projector" in missing.stderr
    assert "available: F16, Q8_0" in missing.stderr

    assert llmrun("rm", name, "-y").code == 0
    assert not stored.parent.exists()  # the model, its manifest and its projector


# ---------------------------------------------------------------- chat


def test_chat_session_keeps_images_across_turns_and_saves(engine: Model) -> None:
    from llmrun.chat.session import ChatSession

    image = image_from_bytes(png(pixels(6)), "six.png")
    session = ChatSession(engine, GREEDY)
    engine.reset()
    engine.images.forget()
    reply = session.send(QUESTION, [image])
    first = "".join(reply)
    assert engine.stats.images_encoded == 1
    reply = session.send("And the colours?")
    "".join(reply)
    assert engine.stats.images_encoded == 0  # the image's cells are reused
    assert engine.stats.reused_tokens >= 16
    session.save("pictures")
    again = ChatSession(engine, GREEDY)
    again.load("pictures")
    assert again.messages[0]["images"][0].data == image.data
    assert again.messages[1]["content"] == first


def test_split_image_paths(tmp_path: Path) -> None:
    from llmrun.chat.repl import split_image_paths

    spaced = tmp_path / "my cat.png"
    spaced.write_bytes(png(pixels(1)))
    plain = tmp_path / "dog.JPG"
    plain.write_bytes(b"\xff\xd8\xff")
    escaped = str(spaced).replace(" ", "\\ ")
    assert split_image_paths(f"what is {escaped}?") == ("what is ?", [spaced])
    assert split_image_paths(f"'{spaced}' and {plain} differ") == ("and differ", [spaced, plain])
    assert split_image_paths("no /such/file.png here") == ("no /such/file.png here", [])


def test_chat_attaches_images(vision: VisionModel, tmp_path: Path) -> None:
    import pexpect

    vision = linked(vision, tmp_path)
    picture = tmp_path / "picture.png"
    picture.write_bytes(png(pixels(1)))
    args = [str(vision.model), "--mmproj", str(vision.mmproj), "--temp", "0", "-n", "6", "-t", "1"]
    child = pexpect.spawn(
        sys.executable,
        ["-m", "llmrun", "chat", *args],
        env={**os.environ, "NO_COLOR": "1"},
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 200),
    )
    child.expect_exact(">>> ")
    child.sendline(f"/image {picture}")
    child.expect_exact("attached picture.png")
    child.expect_exact(">>> ")
    child.sendline(QUESTION)
    child.expect_exact(">>> ")
    child.sendline(f"{picture} and this one?")  # a dragged path starts the line
    child.expect_exact(">>> ")
    child.sendline(f"/image {tmp_path / 'missing.png'}")
    child.expect_exact("cannot read image")
    child.expect_exact(">>> ")
    child.sendline("/save seen")
    child.expect_exact("saved 4 messages")
    child.expect_exact(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    saved = json.loads((Path(os.environ["LLMRUN_HOME"]) / "chats" / "seen.json").read_text())
    users = [m for m in saved["messages"] if m["role"] == "user"]
    assert [len(m["images"]) for m in users] == [1, 1]
    assert users[1]["content"] == f"{MARKER}\nand this one?"
    assert base64.b64decode(users[1]["images"][0]) == picture.read_bytes()
