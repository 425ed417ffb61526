"""Images in prompts, through llama.cpp's multimodal library (mtmd) and a projector GGUF.

A prompt with images is rendered with mtmd's marker where each image goes; mtmd splits
it into text and image chunks. In the token list the engine keeps (Model.cached_tokens,
the batch engine's slots) an image stands as `n_pos` copies of one negative id derived
from the image's SHA-256: prefix reuse then works as it does for text (the same image in
the same place is the same "tokens"), and nothing negative is ever handed to llama.cpp
as a token. The image's chunk is kept here under that id until it is decoded, and its
embeddings (the vision tower's and projector's output) are kept after, so that a turn
that has to evaluate an earlier image again does not encode it again.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmrun.errors import BadInput, BadModelFile, EngineError

if TYPE_CHECKING:
    import numpy as np  # only with images: a plain run never imports it

MARKER = "<__media__>"  # where an image goes in a rendered prompt (mtmd's default marker)
MAX_IMAGE_BYTES = 20 << 20  # a photo is a few MB; anything past this is refused unread
MAX_PIXELS = 64 << 20  # decoded width x height (8192 x 8192)
KEEP_CHUNKS = 16  # tokenized images waiting to be (or recently) decoded (~10 MB each)
KEEP_EMBEDDINGS = 64  # encoded images kept for later turns


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


# Format name -> (does the data start like one, who decodes it). "stb": llama.cpp's
# stb_image inside mtmd; "pillow": Pillow (the `vision` extra), which stb cannot read.
FORMATS: dict[str, tuple[Callable[[bytes], bool], str]] = {
    "jpeg": (lambda d: d[:3] == b"\xff\xd8\xff", "stb"),
    "png": (lambda d: d[:8] == b"\x89PNG\r\n\x1a\n", "stb"),
    "gif": (lambda d: d[:6] in (b"GIF87a", b"GIF89a"), "stb"),  # the first frame
    "bmp": (lambda d: d[:2] == b"BM", "stb"),
    "webp": (_is_webp, "pillow"),
}
FORMAT_NAMES = "JPEG, PNG, WebP, GIF or BMP"


class BadImage(BadInput):
    """An image that cannot be used: not an image, corrupt, too large."""


@dataclass(frozen=True)
class Image:
    """The bytes of one image file, checked to look like a format we read."""

    data: bytes
    format: str
    source: str  # where it came from, for messages: a path, "stdin", "messages[0]..."

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def image_from_bytes(data: bytes, source: str) -> Image:
    """`data` as an Image; BadImage when it is empty, too large or no format we read."""
    if not data:
        raise BadImage(f"image {source} is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImage(
            f"image {source} is {len(data) / (1 << 20):.1f} MiB, over the "
            f"{MAX_IMAGE_BYTES >> 20} MiB limit",
            "send a smaller image",
        )
    for name, (looks_like, _) in FORMATS.items():
        if looks_like(data):
            return Image(data, name, source)
    raise BadImage(f"{source} is not an image llmrun reads", f"use {FORMAT_NAMES}")


@dataclass(frozen=True)
class RemoteImage:
    """An http(s) image URL in a request, fetched only where the server allows it."""

    url: str
    source: str


def fetch_image(remote: RemoteImage, *, timeout: float, max_bytes: int = MAX_IMAGE_BYTES) -> Image:
    """Download an image URL, at most `max_bytes` within `timeout` seconds; BadImage if not."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(remote.url, headers={"User-Agent": "llmrun"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise BadImage(f"cannot fetch image {remote.url}: {reason}") from None
    if len(data) > max_bytes:
        raise BadImage(f"image {remote.url} is over the {max_bytes >> 20} MiB limit")
    return image_from_bytes(data, remote.url)


def read_image_file(path: Path) -> Image:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            return image_from_bytes(b"\0" * (MAX_IMAGE_BYTES + 1), str(path))  # the size error
        return image_from_bytes(path.read_bytes(), str(path))
    except OSError as e:
        raise BadImage(f"cannot read image {path}: {e.strerror}") from None


def image_from_base64(text: str, source: str) -> Image:
    try:
        return image_from_bytes(base64.b64decode(text, validate=True), source)
    except (binascii.Error, ValueError):
        raise BadImage(f"{source} is not valid base64") from None


def image_from_data_url(url: str, source: str) -> Image:
    """A `data:image/...;base64,...` URL as an Image."""
    head, comma, body = url.partition(",")
    if not comma or not head.startswith("data:") or not head.endswith(";base64"):
        raise BadImage(f"{source} must be a data:image/...;base64,... URL")
    return image_from_base64(body, source)


def with_markers(text: str, n: int) -> str:
    """`text` after a marker per image, each on its own line (images go before the text, as
    Ollama and llama.cpp's mtmd-cli put them)."""
    return "".join(f"{MARKER}\n" for _ in range(n)) + text


def image_token(digest: str) -> int:
    """The negative id an image stands as in a token list (never a real token)."""
    return -1 - int(digest[:15], 16)


def is_image_token(token: int) -> bool:
    return token < 0


def image_start(tokens: Sequence[int], n: int) -> int:
    """`n`, moved back to where an image starts when it falls inside one: a prefix of a token
    list may only end between whole images."""
    while 0 < n < len(tokens) and tokens[n] < 0 and tokens[n - 1] == tokens[n]:
        n -= 1
    return n


def runs(tokens: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of each stretch of text tokens and of each image, in order."""
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(tokens) + 1):
        if (
            i == len(tokens)
            or (tokens[i] < 0) != (tokens[i - 1] < 0)
            or (tokens[i] < 0 and tokens[i] != tokens[i - 1])
        ):
            out.append((start, i))
            start = i
    return out


def _decode_with_pillow(image: Image) -> tuple[int, int, bytes]:
    try:
        from PIL import Image as PilImage
    except ImportError:
        raise BadImage(
            f"{image.source} is {image.format.upper()}, which needs Pillow",
            "pip install 'llmrun[vision]', or convert the image to PNG or JPEG",
        ) from None
    import io

    try:
        with PilImage.open(io.BytesIO(image.data)) as pil:
            rgb = pil.convert("RGB")
    except Exception as e:  # Pillow raises many kinds for a damaged file
        raise BadImage(f"image {image.source} is damaged: {e}") from None
    return rgb.width, rgb.height, rgb.tobytes()


class Projector:
    """A projector GGUF loaded for one model: tokenizes prompts with images, evaluates them.

    `tokenize` may be called from any thread; `decode` only where the context is used.
    """

    def __init__(
        self,
        path: Path,
        llama_model: object,
        *,
        n_embd: int,
        n_threads: int,
        use_gpu: bool,
        verbose: bool,
    ) -> None:
        from llama_cpp import mtmd_cpp as mtmd

        from llmrun.engine import logs

        self._mtmd = mtmd
        self.path = path
        self.n_embd = n_embd  # the text model's input width: each image token's length
        logs.route_mtmd()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = verbose
        params.warmup = False  # the first image pays for it instead of every load
        params.media_marker = MARKER.encode()
        start = logs.mark()
        self._ctx = mtmd.mtmd_init_from_file(str(path).encode(), llama_model, params)
        if not self._ctx:
            said = [line.strip() for line in logs.since(start) if "error" in line]
            reason = said[-1] if said else logs.last_error("unknown reason")
            raise BadModelFile(
                f"llama.cpp cannot load the projector {path}: {reason}",
                "the projector (mmproj) must be made for this model",
            )
        if not mtmd.mtmd_support_vision(self._ctx):
            self.close()
            raise BadModelFile(f"{path} has no vision encoder", "use an image projector")
        self.marker = MARKER
        self._lock = threading.Lock()
        self._chunks: OrderedDict[int, int] = OrderedDict()  # image token -> chunk copy
        self._embeddings: OrderedDict[int, np.ndarray] = OrderedDict()
        self.encoded = 0  # images encoded so far, and the seconds it took
        self.encode_seconds = 0.0

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            for chunk in self._chunks.values():
                self._mtmd.mtmd_input_chunk_free(chunk)
            self._chunks.clear()
            self._mtmd.mtmd_free(self._ctx)
            self._ctx = None

    def forget(self) -> None:
        """Drop the kept embeddings: the next use of each image encodes it again."""
        with self._lock:
            self._embeddings.clear()

    # ------------------------------------------------------------ prompts

    def tokenize(
        self, text: str, images: Sequence[Image], *, add_special: bool, parse_special: bool
    ) -> list[int]:
        """`text` (one marker per image, in order) as token ids, each image as its run of
        image tokens."""
        mtmd = self._mtmd
        found = text.count(self.marker)
        if found != len(images):
            raise BadInput(
                f"the prompt has {found} image places ({self.marker}) for {len(images)} images",
                f"do not write {self.marker} in the text yourself",
            )
        bitmaps = [self._bitmap(image) for image in images]
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            data = text.encode("utf-8")
            inp = mtmd.mtmd_input_text(data, len(data), add_special, parse_special)
            array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(inp), array, len(bitmaps))
            if rc != 0:
                raise BadImage(f"llama.cpp cannot prepare the images ({rc})")
            return self._tokens(chunks)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def _bitmap(self, image: Image) -> int:
        mtmd = self._mtmd
        if FORMATS[image.format][1] == "pillow":
            nx, ny, rgb = _decode_with_pillow(image)
            _check_pixels(image, nx, ny)
            buf = (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb)
            bitmap = mtmd.mtmd_bitmap_init(nx, ny, buf)
            mtmd.mtmd_bitmap_set_id(bitmap, image.digest.encode())
            return bitmap
        buf = (ctypes.c_uint8 * len(image.data)).from_buffer_copy(image.data)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self._ctx, buf, len(image.data), False)
        if not bitmap:
            raise BadImage(f"image {image.source} is damaged: llama.cpp cannot decode it")
        try:
            _check_pixels(image, mtmd.mtmd_bitmap_get_nx(bitmap), mtmd.mtmd_bitmap_get_ny(bitmap))
        except BadImage:
            mtmd.mtmd_bitmap_free(bitmap)
            raise
        return bitmap

    def _tokens(self, chunks: int) -> list[int]:
        mtmd = self._mtmd
        tokens: list[int] = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens += ids[: n.value]
                continue
            if kind != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                raise BadInput("only images are supported, not audio")
            token = image_token(mtmd.mtmd_input_chunk_get_id(chunk).decode())
            with self._lock:
                if token not in self._chunks:
                    self._chunks[token] = mtmd.mtmd_input_chunk_copy(chunk)
                self._chunks.move_to_end(token)
                while len(self._chunks) > KEEP_CHUNKS:
                    _, old = self._chunks.popitem(last=False)
                    mtmd.mtmd_input_chunk_free(old)
            tokens += [token] * mtmd.mtmd_input_chunk_get_n_pos(chunk)
        return tokens

    # ------------------------------------------------------------ evaluation

    def positions(self, token: int) -> int:
        """How many positions the image `token` stands for takes (its run's length, unless
        the same image comes twice in a row)."""
        with self._lock:
            chunk = self._chunks.get(token)
        if chunk is None:
            raise EngineError("an image of this prompt is no longer prepared", "send it again")
        return self._mtmd.mtmd_input_chunk_get_n_pos(chunk)

    def decode_run(
        self, ctx: object, tokens: Sequence[int], pos: int, seq: int, n_batch: int
    ) -> None:
        """Evaluate a run of one image's tokens (the image once, or more times in a row)."""
        n = self.positions(tokens[0])
        for i in range(0, len(tokens), n):
            self.decode(ctx, tokens[0], pos + i, seq, n_batch)

    def decode(self, ctx: object, token: int, pos: int, seq: int, n_batch: int) -> None:
        """Evaluate the image that `token` stands for into sequence `seq` at `pos`."""
        mtmd = self._mtmd
        with self._lock:
            chunk = self._chunks.get(token)
            embd = self._embeddings.get(token)
            if embd is not None:
                self._embeddings.move_to_end(token)
        if chunk is None:
            raise EngineError("an image of this prompt is no longer prepared", "send it again")
        if embd is None:
            embd = self._encode(chunk)
            with self._lock:
                self._embeddings[token] = embd
                while len(self._embeddings) > KEEP_EMBEDDINGS:
                    self._embeddings.popitem(last=False)
        new_pos = ctypes.c_int32(0)
        rc = mtmd.mtmd_helper_decode_image_chunk(
            self._ctx,
            ctx,
            chunk,
            embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            pos,
            seq,
            n_batch,
            ctypes.byref(new_pos),
            mtmd.mtmd_helper_post_decode_callback(),  # NULL: no callback
            None,
        )
        if rc != 0:
            raise EngineError(f"llama.cpp could not evaluate an image (code {rc})")

    def _encode(self, chunk: int) -> np.ndarray:
        """The image's embeddings, (tokens, n_embd) float32, computed now."""
        import numpy as np

        mtmd = self._mtmd
        started = time.perf_counter()
        rc = mtmd.mtmd_encode_chunk(self._ctx, chunk)
        if rc != 0:
            raise EngineError(f"llama.cpp could not encode an image (code {rc})")
        n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        out = mtmd.mtmd_get_output_embd(self._ctx)
        flat = np.ctypeslib.as_array(out, shape=(n_tokens * self.n_embd,))
        self.encode_seconds += time.perf_counter() - started
        self.encoded += 1
        return flat.reshape(n_tokens, self.n_embd).copy()

    def embeddings(self, image: Image) -> np.ndarray:
        """The embeddings of one image on its own, (tokens, n_embd): for checks and tests."""
        tokens = self.tokenize(self.marker, [image], add_special=False, parse_special=True)
        token = next(t for t in tokens if t < 0)
        with self._lock:
            chunk = self._chunks[token]
        return self._encode(chunk)


def _check_pixels(image: Image, nx: int, ny: int) -> None:
    if nx * ny > MAX_PIXELS:
        raise BadImage(
            f"image {image.source} is {nx}x{ny} pixels, over the limit of "
            f"{MAX_PIXELS >> 20} megapixels",
            "send a smaller image",
        )
