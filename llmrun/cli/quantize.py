"""`llmrun quantize MODEL|DIR|FILE.gguf`: convert a checkpoint to GGUF and quantize it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand

from llmrun.cli.common import app, err, quiet_stderr
from llmrun.cli.flags import QuietOpt
from llmrun.cli.output import human_size
from llmrun.errors import BadInput, BadOption
from llmrun.quantize import DEFAULT_ADAPTER_TYPE, DEFAULT_MMPROJ_TYPE, DEFAULT_TYPE
from llmrun.quantize import progress as qprogress

if TYPE_CHECKING:  # rich's bars are imported when drawn: every other command loads this module
    import click
    from rich.progress import Progress, TaskID

QuantizeModelArg = Annotated[
    str | None,
    typer.Argument(
        help="A pulled model or alias, org/repo (in the Hugging Face cache), a checkpoint "
        "folder (config.json + *.safetensors), or an F32/F16/BF16 .gguf to requantize.",
        show_default=False,
    ),
]
TypeOpt = Annotated[
    str | None,
    typer.Option(
        "--type",
        "-q",
        help=f"Quantization type (see --list-types). [default: {DEFAULT_TYPE}; "
        f"{DEFAULT_ADAPTER_TYPE} for an adapter]",
        show_default=False,
    ),
]
LoraBaseOpt = Annotated[
    str | None,
    typer.Option(
        "--lora-base",
        metavar="MODEL",
        help="MODEL is a PEFT LoRA adapter folder: convert it to a GGUF adapter (for --lora) "
        "of this base checkpoint.",
        show_default=False,
    ),
]
DequantizeMxfp4Opt = Annotated[
    bool,
    typer.Option(
        "--dequantize-mxfp4",
        help="Decode MXFP4 experts (gpt-oss) and write them at --type, rather than keep them "
        "MXFP4 (which only F32, F16, BF16 and Q8_0 files allow).",
    ),
]
MergeLoraOpt = Annotated[
    Path | None,
    typer.Option(
        "--merge-lora",
        metavar="ADAPTER_DIR",
        help="Bake this PEFT LoRA adapter into the checkpoint's weights while converting.",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="Write this file (default: the store, models/<name>/<name>-<TYPE>.gguf).",
        show_default=False,
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]
KeepF16Opt = Annotated[
    bool,
    typer.Option(
        "--keep-f16", help="Keep the F16/BF16 file made on the way to a K-quant, beside the output."
    ),
]
ListTypesOpt = Annotated[
    bool, typer.Option("--list-types", help="Print the quantization types and exit.")
]
ListArchsOpt = Annotated[
    bool,
    typer.Option(
        "--list-archs",
        help="Print the checkpoint architectures (config.json's) that can be converted, and exit.",
    ),
]
MmprojOpt = Annotated[
    bool,
    typer.Option(
        "--mmproj",
        help="Also write the vision tower and projector of an image-and-text checkpoint, "
        "as mmproj-<name>-<TYPE>.gguf beside the model (for llama.cpp's --mmproj).",
    ),
]
MmprojTypeOpt = Annotated[
    str,
    typer.Option(
        "--mmproj-type",
        metavar="TYPE",
        help="The projector's type with --mmproj: F16, Q8_0, BF16 or F32.",
    ),
]
NoCheckOpt = Annotated[
    bool,
    typer.Option(
        "--no-check", help="Skip the self-check (load in llama.cpp, compare tokenizer ids)."
    ),
]


class QuantizeNotes(qprogress.QuantizeProgress):
    """Progress when stderr is not a terminal: warnings and notes only."""

    def note(self, text: str) -> None:
        err.print(text, markup=False, style="yellow")


class QuantizeBars(QuantizeNotes):
    """A bar of tensors and bytes while converting, a spinner while llama.cpp quantizes."""

    def __init__(self) -> None:
        self._bars: Progress | None = None
        self._task: TaskID | None = None

    def note(self, text: str) -> None:
        (self._bars.console if self._bars else err).print(text, markup=False, style="yellow")

    def stage(self, text: str) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.end()
        self._bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            TextColumn("{task.fields[where]}", markup=False),
            TimeElapsedColumn(),
            console=err.console,
            transient=True,
        )
        self._task = self._bars.add_task(text, total=None, where="")
        self._bars.start()

    def start(self, tensors: int, nbytes: int) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        description = self._bars.tasks[0].description if self._bars else "converting"
        self.end()
        self._bars = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[done]}/{task.fields[of]} tensors"),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=err.console,
            transient=True,
        )
        self._task = self._bars.add_task(description, total=nbytes, done=0, of=tensors)
        self._bars.start()

    def advance(self, tensors: int, nbytes: int) -> None:
        if self._bars is None or self._task is None:
            return
        done = self._bars.tasks[0].fields["done"] + tensors
        self._bars.update(self._task, advance=nbytes, done=done)

    def steps(self, done: int, total: int) -> None:
        if done == 0 or self._bars is None or self._task is None:
            self._counted(total)
        assert self._bars is not None and self._task is not None
        self._bars.update(self._task, completed=done, total=total)

    def _counted(self, total: int) -> None:
        """A bar of chunks with the time left, under the current stage's name."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        description = self._bars.tasks[0].description if self._bars else "computing"
        self.end()
        self._bars = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("chunks"),
            TimeRemainingColumn(),
            console=err.console,
            transient=True,
        )
        self._task = self._bars.add_task(description, total=total)
        self._bars.start()

    def tick(self, text: str) -> None:
        if self._bars is not None and self._task is not None:
            self._bars.update(self._task, where=text)

    def end(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            self._task = None


ImatrixOpt = Annotated[
    str | None,
    typer.Option(
        "--imatrix",
        metavar="[TEXT_FILE|FILE.imatrix.gguf]",
        help="Guide llama.cpp's quantizer with an importance matrix: computed from a text "
        "(alone, last or before another option: a shipped calibration text), or read from a "
        "llama-imatrix file (.gguf, .dat). The IQ1/IQ2/IQ3_XXS and Q2_K_S types need one.",
        show_default=False,
    ),
]
ImatrixTextOpt = Annotated[
    Path | None,
    typer.Option(
        "--imatrix-text",
        metavar="TEXT_FILE",
        help="Compute the importance matrix from this UTF-8 text (as --imatrix TEXT_FILE).",
        show_default=False,
    ),
]
ImatrixOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--imatrix-out",
        metavar="FILE",
        help="Save the computed importance matrix (llama-imatrix's GGUF format), for reuse.",
        show_default=False,
    ),
]
EvalOpt = Annotated[
    bool,
    typer.Option(
        "--eval",
        help="Afterwards, measure the loss: perplexity, and KL divergence against the file "
        "it was quantized from (see llmrun eval).",
    ),
]


def _evaluate(output: Path, reference: Path | None) -> object:
    from llmrun.evaluate import evaluate

    return evaluate(output, ref=reference)


class _QuantizeCommand(TyperCommand):
    """The types table as the epilog, made when --help shows it: it needs gguf."""

    @property  # type: ignore[override]
    def epilog(self) -> str:
        from llmrun.quantize.types import types_table

        return "Types (--type):\n\n\b\n" + types_table()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, bare_imatrix(args))


def bare_imatrix(args: list[str]) -> list[str]:
    """`--imatrix` with no value (last, or followed by an option) gets "" (the shipped text):
    typer's options take a value always or never."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--imatrix" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append("")
    return out


@app.command("quantize", cls=_QuantizeCommand)
def quantize_cmd(
    model: QuantizeModelArg = None,
    type: TypeOpt = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    keep_f16: KeepF16Opt = False,
    list_types: ListTypesOpt = False,
    list_archs: ListArchsOpt = False,
    no_check: NoCheckOpt = False,
    eval: EvalOpt = False,
    lora_base: LoraBaseOpt = None,
    merge_lora: MergeLoraOpt = None,
    mmproj: MmprojOpt = False,
    mmproj_type: MmprojTypeOpt = DEFAULT_MMPROJ_TYPE,
    imatrix: ImatrixOpt = None,
    imatrix_text: ImatrixTextOpt = None,
    imatrix_out: ImatrixOutOpt = None,
    dequantize_mxfp4: DequantizeMxfp4Opt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a Hugging Face checkpoint to GGUF and quantize it, or requantize a GGUF.

    F32, F16, BF16 and Q8_0 are written directly; other types are quantized by llama.cpp
    from an F16/BF16 file that is deleted afterwards (unless --keep-f16). The new file
    is loaded and its tokenizer checked before it is put in place; its path goes to stdout.

    With --imatrix, an importance matrix (llama-imatrix's, computed in-process from a text
    on the F16/BF16 file) tells the quantizer which weights matter: lower loss at the same
    size, and the 1- to 3-bit i-quants become possible.

    A PEFT LoRA adapter converts to a GGUF adapter for --lora with --lora-base (F32, F16,
    BF16 or Q8_0; beside the adapter by default), or is merged into the weights with
    --merge-lora.

    With --mmproj, an image-and-text checkpoint (SmolVLM, Gemma 3, Qwen2-VL, Qwen2.5-VL) also
    gives its projector file, F16 unless --mmproj-type, beside the model; both paths go to
    stdout.

    A pre-quantized checkpoint (GPTQ, AWQ GEMM, compressed-tensors, FP8: config.json's
    quantization_config) is dequantized exactly as read, then converted and requantized.

    Examples: llmrun quantize smollm2-135m --type Q4_K_M
    llmrun quantize ./Llama-3.2-1B-Instruct --type Q8_0 -o llama-1b-q8.gguf
    llmrun quantize ./Qwen2.5-7B-Instruct-AWQ --type Q4_K_M
    llmrun quantize --list-archs
    llmrun quantize ./my-adapter --lora-base ./Llama-3.2-1B-Instruct -o my-adapter.gguf
    llmrun quantize ./Llama-3.2-1B-Instruct --merge-lora ./my-adapter --type Q4_K_M
    llmrun quantize ./SmolVLM-256M-Instruct --mmproj -o smolvlm.gguf
    llmrun quantize ./Llama-3.2-1B-Instruct --type IQ3_XXS --imatrix
    llmrun quantize m-F16.gguf --type Q4_K_M --imatrix book.txt --imatrix-out m.imatrix.gguf
    llmrun quantize m-F16.gguf --type IQ2_XS --imatrix m.imatrix.gguf
    llmrun quantize ./gpt-oss-20b --type Q4_K_M --dequantize-mxfp4
    """
    quiet_stderr(quiet)
    if list_types:
        from llmrun.quantize.types import types_table

        sys.stdout.write(types_table() + "\n")
        return
    if list_archs:
        from llmrun.quantize.archs import ARCHITECTURES

        sys.stdout.write("".join(f"{name}\n" for name in ARCHITECTURES))
        return
    if model is None:
        raise BadInput("missing MODEL", "give a model, a checkpoint folder or a .gguf file")
    progress = QuantizeBars() if err.is_terminal else QuantizeNotes()
    guide = _imatrix_choice(imatrix, imatrix_text)
    if lora_base is not None:
        if merge_lora is not None or keep_f16 or eval or mmproj or guide is not None:
            raise BadOption(
                "--lora-base does not go with --merge-lora, --keep-f16, --eval, --mmproj"
                " or --imatrix"
            )
        return _convert_adapter(model, lora_base, type, output, force, progress)
    from llmrun.quantize import quantize

    try:
        result = quantize(
            model,
            type=type or DEFAULT_TYPE,
            merge_lora=merge_lora,
            imatrix=guide,
            imatrix_out=imatrix_out,
            dequantize_mxfp4=dequantize_mxfp4,
            output=output,
            force=force,
            keep_f16=keep_f16,
            check=not no_check,
            progress=progress,
            evaluate=_evaluate if eval else None,
            mmproj=mmproj,
            mmproj_type=mmproj_type,
        )
    finally:
        progress.end()  # a live bar must not outlive an error
    if err.is_terminal and not result.kept:
        size = human_size(result.path.stat().st_size)
        err.print(
            f"wrote {result.name}:{result.quant} ({size}) in {result.seconds:.1f} s", markup=False
        )
    if result.intermediate is not None:
        err.print(f"kept {result.intermediate}", markup=False)
    if result.evaluation is not None:
        size = human_size(result.path.stat().st_size)
        err.print(f"{result.quant} {size}: {result.evaluation.summary()}", markup=False)
    if err.is_terminal and result.mmproj is not None and not result.mmproj_kept:
        size = human_size(result.mmproj.stat().st_size)
        err.print(f"wrote projector {result.mmproj.name} ({size})", markup=False)
    sys.stdout.write(f"{result.path}\n")
    if result.mmproj is not None:
        sys.stdout.write(f"{result.mmproj}\n")


def _imatrix_choice(imatrix: str | None, imatrix_text: Path | None) -> Path | bool | None:
    """--imatrix alone: True (the shipped text); with a file, or --imatrix-text: its path."""
    if imatrix_text is not None:
        if imatrix:
            raise BadOption("give --imatrix FILE or --imatrix-text TEXT_FILE, not both")
        return imatrix_text
    if imatrix is None:
        return None
    return Path(imatrix) if imatrix else True


def _convert_adapter(
    adapter: str,
    base: str,
    type: str | None,
    output: Path | None,
    force: bool,
    progress: QuantizeNotes,
) -> None:
    from llmrun.quantize.lora import convert_adapter

    try:
        done = convert_adapter(
            adapter,
            base,
            type=type or DEFAULT_ADAPTER_TYPE,
            output=output,
            force=force,
            progress=progress,
        )
    finally:
        progress.end()
    if err.is_terminal and not done.kept:
        size = human_size(done.path.stat().st_size)
        err.print(f"wrote adapter {done.name}:{done.quant} ({size})", markup=False)
    sys.stdout.write(f"{done.path}\n")
