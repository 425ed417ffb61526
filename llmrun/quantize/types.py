"""The quantization types `llmrun quantize --type` accepts: one table, printed by --list-types.

F32, F16, BF16 and Q8_0 are written by our converter directly. The others go
through llama.cpp's `llama_model_quantize` from a temporary F16/BF16 file.
Bits per weight of the mixes (the K-quants) are llama.cpp's measurements on
Llama-3-8B; on other models they differ a little. The types marked needs_imatrix are
the ones llama.cpp refuses to make without an importance matrix (`--imatrix`); every
type beyond Q8_0 takes one and is the better for it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import gguf

from llmrun.errors import BadOption
from llmrun.quantize import DEFAULT_TYPE  # noqa: F401  (its old home; pipeline imports it here)

FT = gguf.LlamaFileType
QT = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class QuantType:
    name: str
    ftype: gguf.LlamaFileType  # llama.cpp's llama_ftype: general.file_type in the GGUF
    bpw: float  # bits per weight
    description: str
    tensor_type: gguf.GGMLQuantizationType | None = None  # set: our converter writes it directly
    needs_imatrix: bool = False  # llama.cpp refuses it without an importance matrix

    @property
    def direct(self) -> bool:
        return self.tensor_type is not None


TYPES: dict[str, QuantType] = {
    t.name: t
    for t in (
        QuantType("F32", FT.ALL_F32, 32.0, "full precision; reference for tests", QT.F32),
        QuantType("F16", FT.MOSTLY_F16, 16.0, "half precision, lossless for most models", QT.F16),
        QuantType("BF16", FT.MOSTLY_BF16, 16.0, "bfloat16, the usual training type", QT.BF16),
        QuantType("Q8_0", FT.MOSTLY_Q8_0, 8.5, "8-bit, nearly lossless", QT.Q8_0),
        QuantType("Q6_K", FT.MOSTLY_Q6_K, 6.57, "6-bit K-quant, very close to F16"),
        QuantType("Q5_K_M", FT.MOSTLY_Q5_K_M, 5.70, "5-bit K-quant mix, high quality"),
        QuantType("Q5_K_S", FT.MOSTLY_Q5_K_S, 5.57, "5-bit K-quant, smaller"),
        QuantType("Q4_K_M", FT.MOSTLY_Q4_K_M, 4.89, "4-bit K-quant mix: the usual choice"),
        QuantType("Q4_K_S", FT.MOSTLY_Q4_K_S, 4.67, "4-bit K-quant, smaller"),
        QuantType("Q4_0", FT.MOSTLY_Q4_0, 4.64, "4-bit legacy quant, fast on some CPUs"),
        QuantType("IQ4_NL", FT.MOSTLY_IQ4_NL, 4.50, "4-bit non-linear, in 32-weight blocks"),
        QuantType("IQ4_XS", FT.MOSTLY_IQ4_XS, 4.25, "4-bit non-linear, small for its quality"),
        QuantType("Q3_K_L", FT.MOSTLY_Q3_K_L, 4.30, "3-bit K-quant mix, larger"),
        QuantType("Q3_K_M", FT.MOSTLY_Q3_K_M, 4.00, "3-bit K-quant mix, noticeable loss"),
        QuantType("IQ3_M", FT.MOSTLY_IQ3_M, 3.66, "3-bit i-quant mix"),
        QuantType("Q3_K_S", FT.MOSTLY_Q3_K_S, 3.64, "3-bit K-quant, smaller"),
        QuantType("IQ3_S", FT.MOSTLY_IQ3_S, 3.44, "3-bit i-quant"),
        QuantType("IQ3_XS", FT.MOSTLY_IQ3_XS, 3.30, "3-bit i-quant mix, smaller"),
        QuantType("Q2_K", FT.MOSTLY_Q2_K, 3.17, "2-bit K-quant mix, large loss"),
        QuantType(
            "Q2_K_S",
            FT.MOSTLY_Q2_K_S,
            3.16,
            "2-bit K-quant, Q2_K in more places",
            needs_imatrix=True,
        ),
        QuantType("IQ3_XXS", FT.MOSTLY_IQ3_XXS, 3.06, "3-bit i-quant", needs_imatrix=True),
        QuantType("IQ2_M", FT.MOSTLY_IQ2_M, 2.70, "2-bit i-quant mix", needs_imatrix=True),
        QuantType("IQ2_S", FT.MOSTLY_IQ2_S, 2.50, "2-bit i-quant", needs_imatrix=True),
        QuantType("IQ2_XS", FT.MOSTLY_IQ2_XS, 2.31, "2-bit i-quant", needs_imatrix=True),
        QuantType("IQ2_XXS", FT.MOSTLY_IQ2_XXS, 2.06, "2-bit i-quant", needs_imatrix=True),
        QuantType("IQ1_M", FT.MOSTLY_IQ1_M, 1.75, "1-bit i-quant mix", needs_imatrix=True),
        QuantType("IQ1_S", FT.MOSTLY_IQ1_S, 1.56, "1-bit i-quant", needs_imatrix=True),
    )
}


def get_type(name: str, imatrix: bool = False) -> QuantType:
    """The type called `name` (any case); BadOption naming the choices otherwise, or when
    it needs an importance matrix and there is none (`imatrix`)."""
    qtype = TYPES.get(name.strip().upper())
    if qtype is None:
        close = difflib.get_close_matches(name.upper(), list(TYPES), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise BadOption(
            f"unknown quantization type {name!r}",
            f"{hint}choose one of {', '.join(usable_names())} (`llmrun quantize --list-types`)",
        )
    if qtype.needs_imatrix and not imatrix:
        raise BadOption(
            f"{qtype.name} needs an importance matrix",
            "add --imatrix (computed from a shipped text), --imatrix TEXT_FILE or "
            "--imatrix FILE.imatrix.gguf; or choose a type without that note (`--list-types`)",
        )
    return qtype


def usable_names() -> list[str]:
    return list(TYPES)


def types_table() -> str:
    """The table as plain text: name, llama.cpp ftype, bits per weight, description."""
    lines = [f"{'TYPE':<8} {'FTYPE':>5} {'BPW':>6}  DESCRIPTION"]
    for t in TYPES.values():
        note = " (needs an importance matrix: --imatrix)" if t.needs_imatrix else ""
        lines.append(f"{t.name:<8} {int(t.ftype):>5} {t.bpw:>6.2f}  {t.description}{note}")
    return "\n".join(lines)
