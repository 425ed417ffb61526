"""Importance matrices: computed in-process as llama-imatrix does, saved and loaded in its format.

An importance matrix holds, for every weight matrix W of the model, the sum over a
calibration text of the squared activations x[j]^2 that meet each input column j of W
(per expert for a mixture of experts), and how many activations were summed. The
quantizer then spends its precision on the columns that matter (llama_model_quantize's
`imatrix`: the mean x[j]^2 per column).

Computing it follows llama.cpp's tools/imatrix/imatrix.cpp: the text is tokenized once and
cut into chunks of `ctx_size` tokens; each chunk is evaluated from an empty context, its
first token replaced by BOS when the model adds one, with outputs for every token (else
llama.cpp skips the last layer's feed-forward for the tokens it need not output); an eval
callback sees every matrix product whose weight is a `blk.*` tensor (MUL_MAT with at
least 16 rows of F32 input, and every MUL_MAT_ID) and accumulates its input.

The file is llama-imatrix's GGUF: general.type "imatrix", imatrix.datasets,
imatrix.chunk_count, imatrix.chunk_size, and per weight `<name>.in_sum2` (F32, one row
per expert) and `<name>.counts` (F32, one per expert). Its legacy .dat format loads too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from llmrun import store
from llmrun.engine import ggml, load_model
from llmrun.errors import BadInput, BadModelFile, EngineError
from llmrun.evaluate import document_chunks
from llmrun.ggufinfo import tensor_index
from llmrun.options import Load
from llmrun.quantize.progress import QuantizeProgress

SHIPPED_TEXT = "calibration.txt"  # llmrun/data/: see its README.md
DEFAULT_CTX = 512  # llama-imatrix's default chunk
MIN_ROWS = 16  # llama-imatrix ignores products of fewer input rows (tiny batches)
GGUF_MAGIC = b"GGUF"
LEGACY_SUFFIX = ".dat"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUMS, COUNTS = ".in_sum2", ".counts"


@dataclass
class Entry:
    """One weight's statistics: sums (n_mat, n_cols) of x^2, and counts (n_mat,) or (1,)."""

    sums: np.ndarray
    counts: np.ndarray

    def importance(self) -> np.ndarray:
        """What llama-quantize passes on: the mean per column, 1 where nothing was seen."""
        counts = np.broadcast_to(self.counts, (self.sums.shape[0],)).astype(np.float64)
        mean = np.ones(self.sums.shape, dtype=np.float64)
        seen = counts > 0
        mean[seen] = self.sums[seen] / counts[seen, None]
        return mean.astype(np.float32).ravel()


@dataclass
class Imatrix:
    entries: dict[str, Entry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def importance(self) -> dict[str, np.ndarray]:
        """Per weight name, the float32 values for llama_model_quantize."""
        return {name: e.importance() for name, e in sorted(self.entries.items())}

    def save(self, path: Path) -> None:
        """Write llama-imatrix's GGUF format (atomically)."""
        import gguf

        with store.atomic_write(path) as tmp:
            w = gguf.GGUFWriter(tmp, arch="")
            w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none
            w.add_type("imatrix")
            w.add_array(KEY_DATASETS, self.datasets)
            w.add_uint32(KEY_CHUNK_COUNT, self.chunk_count)
            w.add_uint32(KEY_CHUNK_SIZE, self.chunk_size)
            for name, e in sorted(self.entries.items()):
                n_mat = e.sums.shape[0]
                counts = np.broadcast_to(e.counts, (n_mat,))
                w.add_tensor(name + SUMS, e.sums.astype(np.float32))
                w.add_tensor(name + COUNTS, counts.astype(np.float32).reshape(n_mat, 1))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()

    @classmethod
    def load(cls, path: Path) -> Imatrix:
        """Read a llama-imatrix file: GGUF, or the legacy .dat format."""
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise BadInput(f"cannot read --imatrix file {path}: {e.strerror}") from None
        if magic == GGUF_MAGIC:
            return _load_gguf(path)
        return _load_legacy(path)


def is_matrix_file(path: Path) -> bool:
    """Whether `path` holds an importance matrix (GGUF or .dat) rather than a text."""
    if path.suffix.lower() == LEGACY_SUFFIX:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError as e:
        raise BadInput(f"cannot read --imatrix file {path}: {e.strerror}") from None


def _load_gguf(path: Path) -> Imatrix:
    import gguf

    # The tensor index first: a model given by mistake is told apart in a fraction of a
    # second, where GGUFReader parses its whole vocabulary (seconds for a large one).
    try:
        names = [t.name for t in tensor_index(path)]
    except BadModelFile as e:
        raise BadInput(f"--imatrix {path} is not a readable GGUF file: {e.message}") from None
    if not _pairs(names):
        raise BadInput(
            f"{path} is a GGUF file but not an importance matrix "
            f"(no matching {SUMS} and {COUNTS} tensors)",
            "give a file made by llama-imatrix or llmrun quantize --imatrix-out",
        )
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise BadInput(f"--imatrix {path} is not a readable GGUF file: {e}") from None
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        for suffix, into in ((SUMS, sums), (COUNTS, counts)):
            if t.name.endswith(suffix):
                into[t.name[: -len(suffix)]] = np.array(t.data, dtype=np.float64)
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in reader.fields]
    if missing:  # llama-quantize refuses such a file too
        raise BadInput(f"importance matrix {path} lacks {', '.join(missing)}")
    entries = {}
    for name, s in sums.items():
        n_mat = s.shape[0] if s.ndim == 2 else 1
        entries[name] = Entry(s.reshape(n_mat, -1), counts[name].reshape(-1).astype(np.int64))
    datasets = [str(v) for v in reader.fields[KEY_DATASETS].contents()]
    return Imatrix(
        entries,
        datasets,
        int(reader.fields[KEY_CHUNK_COUNT].contents()),
        int(reader.fields[KEY_CHUNK_SIZE].contents()),
    )


def _pairs(names: list[str]) -> bool:
    """Whether the tensor names are a matrix's: each weight's sums with its counts."""
    sums = {n[: -len(SUMS)] for n in names if n.endswith(SUMS)}
    counts = {n[: -len(COUNTS)] for n in names if n.endswith(COUNTS)}
    return bool(sums) and sums == counts


def _load_legacy(path: Path) -> Imatrix:
    """The .dat format: per weight its name, ncall and the means times ncall."""
    data = path.read_bytes()
    bad = BadInput(
        f"{path} is neither a GGUF nor a legacy .dat importance matrix",
        "give a file made by llama-imatrix or llmrun quantize --imatrix-out",
    )
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise bad
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise bad
    entries = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if length <= 0:
            raise bad
        name = bytes(take(f"<{length}s")[0]).decode("utf-8", errors="replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise bad
        sums = np.array(take(f"<{nval}f"), dtype=np.float64).reshape(1, nval)
        entries[name] = Entry(sums, np.array([ncall], dtype=np.int64))
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):  # optional trailer: chunk count and the dataset's name
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if 0 < length <= len(data) - pos:
                datasets = [bytes(take(f"<{length}s")[0]).decode("utf-8", errors="replace")]
    return Imatrix(entries, datasets, chunk_count, 0)


# ---------------------------------------------------------------- computing one


class Collector:
    """The eval callback: accumulates each weight's input, as llama-imatrix's collect_imatrix.

    An error inside the callback cannot cross llama.cpp: it is kept in `error`, the graph
    stops (the callback returns False), and the caller raises it after llama_decode.
    """

    def __init__(self, process_output: bool = False) -> None:
        self.entries: dict[str, Entry] = {}
        self.error: BaseException | None = None
        self.process_output = process_output
        self._mul_mat = ggml.op_id("MUL_MAT")
        self._mul_mat_id = ggml.op_id("MUL_MAT_ID")

    def __call__(self, address: int, ask: bool) -> bool:
        try:
            t = ggml.tensor_at(address)
            if ask:
                return self._wanted(t)
            self._collect(t)
            return True
        except BaseException as e:  # raised again by the caller, after llama_decode
            self.error = e
            return False

    def _wanted(self, t: ggml.Tensor) -> bool:
        if t.op == self._mul_mat_id:
            return True
        if t.op != self._mul_mat:
            return False
        src1 = ggml.source(t, 1)
        if src1 is None or src1.ne[1] < MIN_ROWS or src1.type != ggml.TYPE_F32:
            return False
        name = weight_name(t)
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def _collect(self, t: ggml.Tensor) -> None:
        if t.op == self._mul_mat_id:
            self._collect_experts(t)
        else:
            self._collect_dense(t)

    def _collect_dense(self, t: ggml.Tensor) -> None:
        w, src1 = ggml.source(t, 0), ggml.source(t, 1)
        assert w is not None and src1 is not None
        name = weight_name(t)
        x = ggml.values(src1)  # (ne3, ne2, rows, cols)
        n2, n3 = w.ne[2], w.ne[3]
        e = self._entry(name, n2 * n3, x.shape[3], n_counts=1)
        sq = np.square(x).sum(axis=2, dtype=np.float64)  # (ne3, ne2, cols)
        for i3 in range(x.shape[0]):  # a 2D weight against 3D+ input: all rows onto one
            for i2 in range(x.shape[1]):
                e.sums[(i3 % n3) * n2 + (i2 % n2)] += sq[i3, i2]
        e.counts += x.shape[0] * x.shape[1] * x.shape[2] // (n2 * n3)
        _check_finite(name, e.sums)

    def _collect_experts(self, t: ggml.Tensor) -> None:
        w, src1, ids = ggml.source(t, 0), ggml.source(t, 1), ggml.source(t, 2)
        assert w is not None and src1 is not None and ids is not None
        name = weight_name(t)
        n_experts = w.ne[2]
        x = ggml.values(src1)  # (1, tokens, 1 or n_used, cols)
        if x.shape[0] != 1:
            raise EngineError(f"{name}: an expert product of more than three dimensions")
        chosen = ggml.values(ids)[0, 0]  # (tokens, n_used): the experts each token went to
        n_used = chosen.shape[1]
        rows = x[0][:, np.arange(n_used) % x.shape[2], :]  # (tokens, n_used, cols)
        e = self._entry(name, n_experts, x.shape[3], n_counts=n_experts)
        if chosen.size and (chosen.min() < 0 or chosen.max() >= n_experts):
            raise EngineError(f"{name}: expert ids out of range")
        flat = chosen.reshape(-1)
        np.add.at(e.sums, flat, np.square(rows.reshape(-1, rows.shape[2]), dtype=np.float64))
        e.counts += np.bincount(flat, minlength=n_experts)
        _check_finite(name, e.sums)

    def _entry(self, name: str, n_mat: int, n_cols: int, n_counts: int) -> Entry:
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = Entry(
                np.zeros((n_mat, n_cols), dtype=np.float64), np.zeros(n_counts, dtype=np.int64)
            )
        elif e.sums.shape != (n_mat, n_cols):
            raise EngineError(f"{name}: inconsistent sizes {e.sums.shape} and {(n_mat, n_cols)}")
        return e


def weight_name(t: ggml.Tensor) -> str:
    """The weight's own name: a copy to another backend is named "CUDA0#blk.0.attn_k.weight#0"."""
    src0 = ggml.source(t, 0)
    name = ggml.name(src0) if src0 is not None else ""
    if "#" in name:
        name = name.split("#")[1]
    return name


def _check_finite(name: str, sums: np.ndarray) -> None:
    if not np.isfinite(sums).all():
        raise EngineError(
            f"non-finite activations in {name} while computing the importance matrix",
            "the model overflows on this text: try another --imatrix-text, or no --imatrix",
        )


def compute_imatrix(
    model: Path,
    text: Path | None = None,
    *,
    ctx_size: int = DEFAULT_CTX,
    chunks: int | None = None,
    threads: int | None = None,
    n_gpu_layers: int | str = "auto",
    progress: QuantizeProgress | None = None,
) -> Imatrix:
    """The importance matrix of the GGUF `model` over `text` (default: the shipped one).

    `chunks` caps the chunks evaluated (llama-imatrix's --chunks).
    """
    progress = progress or QuantizeProgress()
    body, dataset = read_text(text)
    collector = Collector()
    load = Load(n_gpu_layers=n_gpu_layers, ctx_size=ctx_size, threads=threads or 0)
    with load_model(model, load, eval_callback=collector) as m:
        tokens = m.tokenize(body, add_special=True)
        pieces = document_chunks(
            m, tokens, ctx_size, chunks, dataset, "give a longer text to --imatrix"
        )
        n_chunks = len(pieces)
        progress.steps(0, n_chunks)
        for i, chunk in enumerate(pieces):
            m.reset()
            m.decode(chunk, all_logits=True)
            if collector.error is not None:
                raise collector.error
            progress.steps(i + 1, n_chunks)
    progress.end()
    if not collector.entries:
        raise EngineError(f"llama.cpp evaluated {model.name} without any matrix product to see")
    return Imatrix(collector.entries, [dataset], n_chunks, ctx_size)


def read_text(text: Path | None) -> tuple[str, str]:
    """The calibration text and its name (the dataset recorded in the file)."""
    if text is None:
        shipped = resources.files("llmrun") / "data" / SHIPPED_TEXT
        return shipped.read_text(encoding="utf-8"), SHIPPED_TEXT
    try:
        body = Path(text).read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read the --imatrix text {text}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(
            f"--imatrix {text} is neither UTF-8 text nor an importance matrix",
            "give a text file, an .imatrix.gguf or a legacy .dat file",
        ) from None
    if not body.strip():
        raise BadInput(f"the --imatrix text {text} is empty")
    return body, str(text)


# ---------------------------------------------------------------- what --imatrix asks for


@dataclass(frozen=True)
class ImatrixPlan:
    """What `quantize --imatrix` will use: a matrix read from a file, or one to compute."""

    matrix: Imatrix | None = None  # read from `file`
    text: Path | None = None  # compute from this text (None: the shipped one)
    file: Path | None = None  # the matrix's file: read from, or (--imatrix-out) saved to

    def make(self, model: Path, progress: QuantizeProgress) -> Imatrix:
        """The matrix: as read, or computed on the F32/F16/BF16 GGUF `model` (and saved)."""
        if self.matrix is not None:
            return self.matrix
        progress.stage("computing the importance matrix")
        matrix = compute_imatrix(model, self.text, progress=progress)
        if self.file is not None:
            matrix.save(self.file)
            progress.note(f"saved the importance matrix to {self.file}")
        return matrix


def plan_imatrix(imatrix: Path | bool | None, imatrix_out: Path | None) -> ImatrixPlan | None:
    """Check `--imatrix [FILE]` and `--imatrix-out` before anything is written.

    `imatrix`: True for the shipped text; a path to a text, or to a matrix file.
    """
    if imatrix is None or imatrix is False:
        if imatrix_out is not None:
            raise BadInput("--imatrix-out saves a computed importance matrix", "add --imatrix")
        return None
    out = Path(imatrix_out).expanduser() if imatrix_out is not None else None
    if imatrix is True:
        read_text(None)
        return ImatrixPlan(file=out)
    path = Path(imatrix).expanduser()
    if not path.is_file():
        raise BadInput(f"--imatrix {path}: no such file", "give a text file or an .imatrix.gguf")
    if is_matrix_file(path):
        if out is not None:
            raise BadInput(f"--imatrix {path} is a matrix already: --imatrix-out has nothing to do")
        return ImatrixPlan(matrix=Imatrix.load(path), file=path)
    read_text(path)
    return ImatrixPlan(text=path, file=out)
