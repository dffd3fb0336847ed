"""Client-chosen text as messages and log lines may show it: bounded, and on one line."""

from __future__ import annotations


def shown(text: str, limit: int = 100) -> str:
    """A quotation for an error message: a 5 MB string is answered with its first `limit`
    characters, never echoed whole."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def printable(text: str, limit: int = 200) -> str:
    """One log line's worth of `text`: a newline in a path or a model name must not be able to
    forge a line of its own, and no field may make a line longer than `limit` characters."""
    text = text[:limit]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")[:limit]
