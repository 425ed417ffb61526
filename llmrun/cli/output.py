"""Output shared by the commands: tables, key/value lines, run stats, download progress.

No command owns this module, so commands import it and never each other.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llmrun.cli.common import err

# rich's tables and bars are imported where they are drawn: a piped run draws none.
if TYPE_CHECKING:
    from rich.progress import TaskID

    from llmrun.engine import Stats
    from llmrun.hub import RemoteFile


def human_size(n: int | None) -> str:
    """Bytes the way disks are sold: 98.4 MB, 4.7 GB."""
    if n is None:
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on stdout: rich at a terminal, plain aligned columns when piped."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    if sys.stdout.isatty():
        from rich import box
        from rich.console import Console
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, header_style="bold")
        for i, header in enumerate(headers):  # only the last column may wrap
            table.add_column(header, no_wrap=i < len(headers) - 1)
        for row in cells:
            table.add_row(*row)
        Console(highlight=False, emoji=False).print(table)
        return
    widths = [max(len(x) for x in col) for col in zip(headers, *cells, strict=True)]
    for row in [list(headers), *cells]:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")


def print_fields(fields: Sequence[tuple[str, Any]]) -> None:
    """`key  value` lines on stdout, keys aligned."""
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        sys.stdout.write(f"{key.ljust(width)}  {'-' if value is None else value}\n")


def print_stats(stats: Stats) -> None:
    err.print(
        f"load {stats.load_seconds:.2f} s | "
        f"prompt {stats.prompt_tokens} tokens, {stats.prompt_tps:.1f} tokens/s"
        + (f" ({stats.restored_tokens} from the prompt cache)" if stats.restored_tokens else "")
        + " | "
        f"generation {stats.gen_tokens} tokens, {stats.gen_tps:.1f} tokens/s"
        + (f" | draft {stats.accepted}/{stats.drafted} kept" if stats.drafted else "")
        + (
            f" | {stats.images_encoded} image(s) encoded in {stats.image_seconds * 1e3:.0f} ms"
            if stats.images_encoded
            else ""
        ),
        style="dim",
    )


class DownloadNotes:
    """Progress when stderr is not a terminal: the notes, no bars."""

    def note(self, text: str) -> None:
        err.print(text, markup=False, style="yellow")

    def begin(self, files: Sequence[RemoteFile], on_disk: Mapping[str, int]) -> None:
        pass

    def advance(self, name: str, nbytes: int) -> None:
        pass

    def end(self) -> None:
        pass


class DownloadBars(DownloadNotes):
    """One bar per file and one for the total: bytes, speed, time left."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bars = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err.console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._total: TaskID | None = None

    def note(self, text: str) -> None:
        self._bars.console.print(text, markup=False, style="yellow")  # above the bars

    def begin(self, files: Sequence[RemoteFile], on_disk: Mapping[str, int]) -> None:
        for f in files:
            self._tasks[f.name] = self._bars.add_task(
                _short(f.name), total=f.size, completed=on_disk.get(f.name, 0)
            )
        if len(files) > 1:
            self._total = self._bars.add_task(
                "total",
                total=sum(f.size or 0 for f in files),
                completed=sum(on_disk.values()),
            )
        self._bars.start()

    def advance(self, name: str, nbytes: int) -> None:
        if name in self._tasks:
            self._bars.advance(self._tasks[name], nbytes)
        if self._total is not None:
            self._bars.advance(self._total, nbytes)

    def end(self) -> None:
        self._bars.stop()


def progress_for_stderr() -> DownloadNotes:
    """Bars at a terminal, notes only otherwise."""
    return DownloadBars() if err.is_terminal else DownloadNotes()


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]
