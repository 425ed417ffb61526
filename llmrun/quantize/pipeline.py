"""`quantize()`: a checkpoint or F32/F16/BF16 GGUF in, a checked GGUF file out.

A short linear pipeline: find the source; read config and tensor list; pick the
architecture module; export the tokenizer; write F32/F16/BF16/Q8_0 directly,
or an F16/BF16 file that llama.cpp quantizes further; self-check; rename into
place; record a manifest when the output is in the store. Every file is written
under a temporary name, so an interrupted or failed run leaves nothing behind.

With `mmproj`, the checkpoint's vision tower and projector also become an mmproj file
beside the model (`projector_path`), in F16 or another direct type whatever the model's.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gguf import GGUFWriter

from llmrun import store
from llmrun.errors import BadInput, BadModelFile, BadOption, StoreError
from llmrun.quantize import DEFAULT_MMPROJ_TYPE
from llmrun.quantize.archs import converter_for, projector_for
from llmrun.quantize.archs.base import Converter, TensorPlan
from llmrun.quantize.archs.projector import ProjectorConverter
from llmrun.quantize.checkpoint import open_checkpoint
from llmrun.quantize.progress import QuantizeProgress
from llmrun.quantize.selfcheck import projector_check, self_check
from llmrun.quantize.source import Source, find_source
from llmrun.quantize.types import DEFAULT_TYPE, TYPES, QuantType, get_type
from llmrun.quantize.vocab import Reference, Vocab
from llmrun.quantize.writer import write_gguf
from llmrun.store import store_name

if TYPE_CHECKING:
    from llmrun.quantize.imatrix import ImatrixPlan
    from llmrun.quantize.lora import LoraAdapter

# A check run on the finished output against the file it was made from (or None).
Evaluate = Callable[[Path, "Path | None"], Any]

# GGUF file types llama.cpp quantizes from without loss of quality.
REQUANTIZABLE = ("F32", "F16", "BF16")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass
class Result:
    path: Path
    name: str
    quant: str
    kept: bool = False  # the output existed and was left alone (no --force)
    intermediate: Path | None = None  # the F16/BF16 file, with keep_f16
    seconds: float = 0.0
    evaluation: Any = None  # what the `evaluate` hook returned
    mmproj: Path | None = None  # the projector file, with mmproj
    mmproj_kept: bool = False  # it existed and was left alone
    imatrix: str | None = None  # the importance matrix's dataset, when one guided llama.cpp


def quantize(
    model: str,
    *,
    type: str = DEFAULT_TYPE,
    output: Path | None = None,
    force: bool = False,
    keep_f16: bool = False,
    check: bool = True,
    progress: QuantizeProgress | None = None,
    evaluate: Evaluate | None = None,
    merge_lora: Path | None = None,
    mmproj: bool = False,
    mmproj_type: str = DEFAULT_MMPROJ_TYPE,
    imatrix: Path | bool | None = None,
    imatrix_out: Path | None = None,
    dequantize_mxfp4: bool = False,
) -> Result:
    """Convert and/or quantize MODEL (a pulled model, alias, checkpoint folder or GGUF).

    `imatrix`: guide llama.cpp's quantizer with an importance matrix: read from a file
    (llama-imatrix's .imatrix.gguf or .dat), or computed on the F16/BF16 file from a text
    (a path, or True for the shipped one) and saved to `imatrix_out` if given.

    `merge_lora`: a PEFT LoRA adapter folder, baked into the weights (W + alpha/r * B @ A)
    while converting; the output is named <model>-<adapter> so it never replaces the base.

    `mmproj`: also write the vision tower and projector of an image-and-text checkpoint,
    in `mmproj_type` (F16, or F32, BF16, Q8_0), as mmproj-<model>-<TYPE>.gguf beside the
    model file (`projector_path`); an existing one is kept unless `force`.
    `dequantize_mxfp4`: MXFP4 weights of the checkpoint (gpt-oss's experts) decoded and
    written at `type`; otherwise they stay MXFP4, as llama.cpp's converter keeps them,
    which only the types written here allow (F32/F16/BF16/Q8_0 for the other tensors).

    `evaluate(output, reference)` runs once the output is in place, while the
    higher-precision file it was made from still exists (the input GGUF, or the
    F16/BF16 intermediate; None for a direct conversion).
    """
    from llmrun.quantize.imatrix import plan_imatrix

    progress = progress or QuantizeProgress()
    guide = plan_imatrix(imatrix, imatrix_out)
    qtype = get_type(type, imatrix=guide is not None)
    if guide is not None and qtype.direct:
        raise BadOption(
            f"--imatrix guides llama.cpp's quantizer, but {qtype.name} is written directly",
            "drop --imatrix, or choose a type beyond Q8_0 (Q4_K_M, IQ3_XXS, ...)",
        )
    proj_type = projector_type(mmproj_type) if mmproj else None
    source = find_source(model)
    adapter = None
    if merge_lora is not None:
        from llmrun.quantize.lora import base_checkpoint, open_adapter

        adapter = open_adapter(merge_lora)
        source = base_checkpoint(model, "--merge-lora needs a checkpoint as MODEL:")
        source = replace(source, name=store_name(f"{source.name}-{adapter.name}"))
    out = Path(output).expanduser() if output else store.model_path(source.name, qtype.name)
    if source.kind == "gguf" and source.path.resolve() == out.resolve():
        raise BadInput(f"{out} is both the input and the output", "give another -o")
    started = time.monotonic()
    # every check of the input, before any write
    job = _prepare(source, progress, adapter, projector=mmproj, dequantize_mxfp4=dequantize_mxfp4)
    if not qtype.direct and any(p.raw_type is not None for p in job.plans or ()):
        raise BadInput(
            f"{source.path}: its experts are MXFP4, kept as they are in F32, F16, BF16 and "
            f"Q8_0 files; llama.cpp does not requantize them to {qtype.name}",
            "add --dequantize-mxfp4 to decode them first, or give --type Q8_0",
        )
    in_store = output is None or store.inside_store(out)
    # The store's writers take its lock; elsewhere the rename alone keeps readers safe,
    # and no lock file is left beside the user's file.
    with store.file_lock(out) if in_store else contextlib.nullcontext():
        if out.exists() and not force:
            progress.note(f"{out} exists: kept (--force to make it again)")
            result = Result(out, source.name, qtype.name, kept=True)
        else:
            with _disk_errors(out):
                result = job.make(qtype, out, keep_f16, check, progress, evaluate, guide)
        if proj_type is not None:
            _add_projector(job, result, proj_type, force, check, progress)
        if in_store and not result.kept:
            with _disk_errors(out):
                _manifest(out, source, qtype, result.intermediate, result.mmproj, result.imatrix)
        elif in_store and result.mmproj is not None and not result.mmproj_kept:
            _note_projector(out, result.mmproj)
    result.seconds = time.monotonic() - started
    return result


def projector_type(name: str) -> QuantType:
    """The --mmproj-type: one our converter writes (llama.cpp's quantizer takes no mmproj)."""
    qtype = get_type(name)
    if not qtype.direct:
        direct = ", ".join(t.name for t in TYPES.values() if t.direct)
        raise BadOption(f"--mmproj-type {qtype.name}: a projector is written as {direct}")
    return qtype


def projector_path(model: Path, qtype: QuantType) -> Path:
    """mmproj-<model>-<TYPE>.gguf beside the model file, <model> its name less the quant:
    models/x/x-Q4_K_M.gguf -> models/x/mmproj-x-F16.gguf, as GGUF repos name them."""
    return model.with_name(f"mmproj-{_without_quant(model.stem)}-{qtype.name}.gguf")


def _add_projector(
    job: _Job,
    result: Result,
    qtype: QuantType,
    force: bool,
    check: bool,
    progress: QuantizeProgress,
) -> None:
    path = projector_path(result.path, qtype)
    result.mmproj = path
    if path.exists() and not force:
        progress.note(f"{path} exists: kept (--force to make it again)")
        result.mmproj_kept = True
        return
    with _disk_errors(path):
        job.make_projector(qtype, path, result.path, check, progress)


@dataclass
class _Job:
    """A source that passed every check, with what converting it needs."""

    source: Source
    conv: Converter | None = None  # None: a GGUF to requantize
    vocab: Vocab | None = None
    plans: list[TensorPlan] | None = None
    projector: ProjectorConverter | None = None
    projector_plans: list[TensorPlan] | None = None

    def metadata(self, w: GGUFWriter) -> None:
        assert self.conv is not None and self.vocab is not None
        w.add_name(self.source.repo.split("/")[-1] if self.source.repo else self.source.name)
        self.conv.metadata(w)
        self.vocab.write(w)

    def write(self, path: Path, qtype: QuantType, progress: QuantizeProgress) -> None:
        assert self.conv is not None and self.plans is not None
        write_gguf(path, self.conv.arch_name, self.metadata, self.plans, qtype, progress)

    def projector_metadata(self, w: GGUFWriter) -> None:
        assert self.projector is not None
        w.add_name(self.source.repo.split("/")[-1] if self.source.repo else self.source.name)
        self.projector.metadata(w)

    def make_projector(
        self, qtype: QuantType, out: Path, model: Path, check: bool, progress: QuantizeProgress
    ) -> None:
        """The mmproj file at `out`, checked to load in llama.cpp's mtmd with `model`."""
        assert self.projector is not None and self.projector_plans is not None
        arch = self.projector.arch_name
        with store.atomic_write(out) as tmp:
            progress.stage(f"converting the projector to {qtype.name}")
            write_gguf(tmp, arch, self.projector_metadata, self.projector_plans, qtype, progress)
            if check:
                progress.stage("checking the projector with llama.cpp")
                projector_check(tmp, model, shown=out)
                progress.end()

    def make(
        self,
        qtype: QuantType,
        out: Path,
        keep_f16: bool,
        check: bool,
        progress: QuantizeProgress,
        evaluate: Evaluate | None = None,
        guide: ImatrixPlan | None = None,
    ) -> Result:
        result = Result(out, self.source.name, qtype.name)

        def quantize_from(src: Path, tmp: Path) -> None:
            from llmrun.quantize.llama_quant import llama_quantize

            matrix = guide.make(src, progress) if guide is not None else None
            if matrix is not None:
                result.imatrix = matrix.datasets[0] if matrix.datasets else "unnamed"
            progress.stage(f"quantizing to {qtype.name} with llama.cpp")
            file = str(guide.file) if guide is not None and guide.file else None
            llama_quantize(src, tmp, qtype, progress, matrix, file)

        if self.conv is None:  # requantize a GGUF
            with store.atomic_write(out) as tmp:
                quantize_from(self.source.path, tmp)
                _check(tmp, out, None, check, progress)
            if evaluate:
                result.evaluation = evaluate(out, self.source.path)
            return result

        assert self.vocab is not None and self.plans is not None
        if qtype.direct:
            with store.atomic_write(out) as tmp:
                progress.stage(f"converting to {qtype.name}")
                self.write(tmp, qtype, progress)
                _check(tmp, out, self.vocab.reference, check, progress)
            if evaluate:
                result.evaluation = evaluate(out, None)
            return result

        # Beyond Q8_0: an intermediate file of the checkpoint's own precision, for llama.cpp.
        bf16 = any(src.dtype == "BF16" for p in self.plans for src in p.inputs)
        inter_type = TYPES["BF16" if bf16 else "F16"]
        inter = _intermediate_path(out, inter_type) if keep_f16 else _scratch(out, inter_type)
        try:
            with store.atomic_write(inter) as tmp:
                progress.stage(f"converting to {inter_type.name}")
                self.write(tmp, inter_type, progress)
            with store.atomic_write(out) as tmp:
                quantize_from(inter, tmp)
                _check(tmp, out, self.vocab.reference, check, progress)
            if evaluate:
                result.evaluation = evaluate(out, inter)
        finally:
            if not keep_f16:
                inter.unlink(missing_ok=True)
        if keep_f16:
            result.intermediate = inter
            if store.inside_store(inter):
                _manifest(inter, self.source, inter_type, None)
        return result


def _prepare(
    source: Source,
    progress: QuantizeProgress,
    adapter: LoraAdapter | None,
    projector: bool,
    dequantize_mxfp4: bool = False,
) -> _Job:
    if source.kind == "gguf":
        if projector:
            raise BadInput(
                f"{source.path} is a GGUF file: --mmproj needs the checkpoint, "
                "whose vision tower it converts",
                "give the checkpoint folder (config.json, *.safetensors, preprocessor_config.json)",
            )
        _check_requantizable(source.path)
        return _Job(source)
    progress.stage(f"reading {source.path}")
    ckpt = open_checkpoint(source.path)
    conv = converter_for(ckpt)
    conv.dequantize_mxfp4 = dequantize_mxfp4
    vocab = conv.vocab()
    conv.adjust_vocab(vocab)
    plans = conv.plans()
    if adapter is not None:
        from llmrun.quantize.lora import merged_plans

        plans = merged_plans(plans, adapter, conv)
    job = _Job(source, conv, vocab, plans)
    if projector:
        job.projector = projector_for(ckpt)
        job.projector_plans = job.projector.plans()
        # its keys too (a missing preprocessor_config.json...), before the model is written
        job.projector_metadata(GGUFWriter(path=None, arch=job.projector.arch_name))
    progress.end()
    if ckpt.imported:  # said once every check has passed
        progress.note(
            f"{source.name} is a {ckpt.imported} checkpoint: its weights are dequantized "
            "as read, and the output is requantized from the dequantized weights"
        )
    for warning in vocab.warnings:
        progress.note(f"warning: {warning}")
    return job


def _check(
    path: Path,
    out: Path,
    reference: Reference | None,
    check: bool,
    progress: QuantizeProgress,
) -> None:
    if check:
        progress.stage("checking the file with llama.cpp")
        self_check(path, reference, shown=out)
        progress.end()


def _check_requantizable(path: Path) -> None:
    from llmrun.ggufinfo import read_info

    info = read_info(path)
    if (info.quant or "").upper() not in REQUANTIZABLE:
        raise BadModelFile(
            f"{path} is {info.quant or 'of unknown type'}: llmrun requantizes only "
            f"{', '.join(REQUANTIZABLE)} files, since requantizing loses quality",
            "quantize from the original checkpoint or an F16 GGUF",
        )


def _intermediate_path(out: Path, qtype: QuantType) -> Path:
    # models/x/x-Q4_K_M.gguf -> models/x/x-F16.gguf
    return out.with_name(f"{_without_quant(out.stem)}-{qtype.name}.gguf")


def _without_quant(stem: str) -> str:
    """A file name's stem less a trailing -<TYPE>: x-Q4_K_M -> x."""
    for t in TYPES:
        if stem.upper().endswith("-" + t):
            return stem[: -len(t) - 1]
    return stem


def _scratch(out: Path, qtype: QuantType) -> Path:
    """Hidden (a leading dot), so `llmrun list` never shows it."""
    return out.with_name(f".{out.stem}.{qtype.name}-intermediate.gguf")


def _manifest(
    path: Path,
    source: Source,
    qtype: QuantType,
    intermediate: Path | None,
    mmproj: Path | None = None,
    imatrix: str | None = None,
) -> None:
    extra: dict[str, object] = {"source": str(source.path), "converted_by": "llmrun quantize"}
    if intermediate is not None:
        extra["intermediate"] = intermediate.name
    if mmproj is not None:  # the projector beside it, for run, chat and serve to load
        extra["mmproj"] = {"file": mmproj.name}  # as pull records one (store.StoredModel.mmproj)
    if imatrix is not None:
        extra["imatrix"] = imatrix
    store.write_manifest(
        path,
        name=source.name,
        quant=qtype.name,
        repo=source.repo,
        revision=source.revision,
        **extra,
    )


def _note_projector(model: Path, mmproj: Path) -> None:
    """Name a new projector in the manifest of a model that was kept as it was."""
    old = store.read_manifest(model)
    entry = {"file": mmproj.name}
    if old.get("name") and old.get("quant") and old.get("mmproj") != entry:
        store.write_manifest(model, **{**old, "mmproj": entry})


@contextlib.contextmanager
def _disk_errors(out: Path) -> Iterator[None]:
    """A full disk or a file size limit is a runtime failure (exit 1) that says so."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise StoreError(
                f"cannot write {out}: {e.strerror} (the disk is full or a file size limit was hit)",
                "free some space or write elsewhere with -o; nothing was left behind",
            ) from None
        if e.errno is not None:
            raise StoreError(f"cannot write {out}: {e.strerror}") from None
        raise
