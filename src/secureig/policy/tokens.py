"""Prompt tokens when the upstream never said: an estimate from the prompt's text.

Used only for an answer cut short before its final line, so a budget cannot be dodged by
closing the connection first. One token per four bytes of text is the usual rule of thumb for
English; it is marked as an estimate wherever it is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from secureig.policy.operations import Operation

BYTES_PER_TOKEN = 4


def _texts(operation: Operation, body: dict[str, Any]) -> Iterable[object]:
    if operation is Operation.CHAT:
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                yield message.get("content")
                yield message.get("thinking")
        yield body.get("tools") and repr(body["tools"])
    elif operation is Operation.EMBED:
        given = body.get("input")
        yield from given if isinstance(given, list) else (given,)
    else:  # generate, embeddings
        for name in ("prompt", "system", "suffix"):
            yield body.get(name)


def estimate_prompt_tokens(operation: Operation, body: dict[str, Any]) -> int:
    size = sum(
        len(t.encode("utf-8", "replace")) for t in _texts(operation, body) if isinstance(t, str)
    )
    return -(-size // BYTES_PER_TOKEN)  # rounded up: a prompt of 1 to 4 bytes is one token
