"""Cutting an upstream's NDJSON body into whole lines: each byte copied a bounded number of times
however the lines arrive, and no line held beyond its limit.

A line that grows across many chunks is kept as a list of its pieces and joined once, when its
newline comes: re-joining it on every chunk would cost the square of its length.
"""

from __future__ import annotations


class LineTooLong(Exception):
    """A line grew beyond the limit before its newline came."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line longer than {limit} bytes")
        self.limit = limit


class LineSplitter:
    """Feed it chunks; it gives back runs of whole lines and holds the partial line after them."""

    __slots__ = ("_max", "_parts", "_size")

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._parts: list[bytes] = []  # the partial line so far, in pieces
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        """The whole lines this chunk completes, each ending in a newline; b"" when it completes
        none. Raises LineTooLong once a line is longer than the limit."""
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            self._size += len(chunk)
            if self._size > self._max:
                raise LineTooLong(self._max)
            self._parts.append(chunk)
            return b""
        limit = self._max
        if self._size + chunk.find(b"\n") > limit:
            raise LineTooLong(limit)
        if cut > limit and self._long_inside(chunk, cut):
            raise LineTooLong(limit)
        if self._parts:
            self._parts.append(chunk[:cut])
            block = b"".join(self._parts)
        else:
            block = chunk if cut == len(chunk) else chunk[:cut]
        rest = chunk[cut:]
        self._parts = [rest] if rest else []
        self._size = len(rest)
        if self._size > limit:
            raise LineTooLong(limit)
        return block

    def _long_inside(self, chunk: bytes, cut: int) -> bool:
        # Only a chunk longer than the limit can hold a whole line that is: rare, so scanned here.
        start = chunk.find(b"\n") + 1
        while start < cut:
            end = chunk.find(b"\n", start)
            if end - start > self._max:
                return True
            start = end + 1
        return False

    def tail(self) -> bytes:
        """What is left at the body's end: a last line without its newline, or b""."""
        parts, self._parts, self._size = self._parts, [], 0
        return b"".join(parts)
