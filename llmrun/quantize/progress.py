"""What the converter and quantizer report while they work. The library reports; the CLI shows.

The base class does nothing: library callers and pipelines get silence, and the
command line passes a subclass that draws on stderr when it is a terminal.
"""

from __future__ import annotations


class QuantizeProgress:
    def note(self, text: str) -> None:
        """A one-line remark (a warning, a step); shown even when not a terminal."""

    def stage(self, text: str) -> None:
        """A new step begins (convert, quantize, check)."""

    def start(self, tensors: int, nbytes: int) -> None:
        """Conversion begins: this many tensors and output bytes."""

    def advance(self, tensors: int, nbytes: int) -> None:
        """Conversion wrote this many more tensors and bytes."""

    def steps(self, done: int, total: int) -> None:
        """A counted stage (the importance matrix's chunks) has done this many of `total`."""

    def tick(self, text: str) -> None:
        """Quantization is still going; `text` says where (e.g. "[ 12/272] blk.1.ffn_up")."""

    def end(self) -> None:
        """The current stage is done."""
