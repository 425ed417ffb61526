"""Turning a stream of token bytes into text: whole characters, stop strings.

Tokens are byte pieces; one UTF-8 character can span several tokens, and a
stop string can span several pieces. Both filters hold back only what they must.
"""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Bytes in, complete characters out; an incomplete tail waits for the next piece."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        """At the end: whatever is left, with U+FFFD for a character cut short."""
        return self._decoder.decode(b"", final=True)


class StopFilter:
    """Passes text through until a stop string appears; never emits any of it.

    Holds back only the longest tail that could still grow into a stop string.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was reached)."""
        if not self._stops:
            return text, False
        pending = self._pending + text
        hits = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return pending[: min(hits)], True
        keep = self._held_back(pending)
        self._pending = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep], False

    def flush(self, text: str = "") -> str:
        out, stopped = self.feed(text)
        if stopped:
            return out
        out += self._pending
        self._pending = ""
        return out

    def _held_back(self, pending: str) -> int:
        """Length of the longest suffix of pending that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(pending)), best, -1):
                if pending.endswith(stop[:n]):
                    best = n
                    break
        return best
