"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol, with the limits on
the request head that it lacks.

uvicorn's httptools protocol keeps a request head in memory for as long as it grows and waits for
it for as long as it trickles in, before any of the gateway's code can look at the request: one
connection sending a never-ending header, or a line every few seconds, holds memory or a
connection without ever showing a key. Here the head is refused past `max_bytes` (431) and when
it has not arrived `timeout` seconds after the connection opened or the request began (408, or a
plain close when not a byte of it came). Counting costs an addition per read, and the clock one
reading per request: the timer is one per connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from secureig.surfaces._asgi import Receive, Scope, Send

log = logging.getLogger("secureig.http")

_TOO_LARGE = 431
_TIMEOUT = 408
_REASONS = {_TOO_LARGE: b"Request Header Fields Too Large", _TIMEOUT: b"Request Timeout"}


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_bytes: int
    timeout: float  # seconds


class _Throttled:
    """Log lines an attacker can cause, at most one a second per kind, with a count of the rest."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -1.0) < 1.0:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        suffix = f" (and {skipped} more like it since the last line)" if skipped else ""
        log.warning(message + suffix, *args)


_log = _Throttled()


def _response(status: int, message: str) -> bytes:
    body = message.encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, _REASONS[status], len(body))
    ) + body


async def _refuse_head(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers a request whose head turned out too large only once it was whole."""
    body = scope["secureig.refusal"].encode()
    await send(
        {
            "type": "http.response.start",
            "status": _TOO_LARGE,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _LimitedProtocol(HttpToolsProtocol):
    limits: HeadLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        HttpToolsProtocol.__init__(self, *args, **kwargs)
        self._in_head = True  # waiting for (the rest of) a request head
        self._head_bytes = 0  # bytes read while in the head, an upper bound on its size
        self._began = False  # a byte of this head has arrived
        self._fresh = False  # the next head's clock starts with its first byte
        self._deadline = 0.0  # loop time by which the head must be whole
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    # One timer a connection, not one a request: it wakes at the head's deadline, and while the
    # connection is busy with a request (or idle between two) it looks again a timeout later.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        HttpToolsProtocol.connection_made(self, transport)
        self._deadline = self.loop.time() + self.limits.timeout
        self._timer = self.loop.call_at(self._deadline, self._look)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        HttpToolsProtocol.connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)
        if self._in_head and self._head_bytes > self.limits.max_bytes:
            limit = self.limits.max_bytes
            self._refuse(_TOO_LARGE, f"the request head is larger than {limit} bytes")

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._began = True
        if self._fresh:
            self._fresh = False
            self._deadline = self.loop.time() + self.limits.timeout

    def on_headers_complete(self) -> None:
        self._in_head = False
        limit = self.limits.max_bytes
        # What was read bounds the head from above; only when that is over the limit (a head
        # and a body in one read) is the head itself measured.
        if self._head_bytes > limit and _head_size(self.url, self.headers) > limit:
            self._log_refusal(_TOO_LARGE)
            self.scope["secureig.refusal"] = f"the request head is larger than {limit} bytes"  # type: ignore[typeddict-unknown-key]
            app, self.app = self.app, _refuse_head
            try:
                HttpToolsProtocol.on_headers_complete(self)
            finally:
                self.app = app
            return
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._in_head = True
        self._head_bytes = 0
        self._began = False
        self._fresh = True

    # -- the limits ------------------------------------------------------------------------------

    def _look(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        due = self._in_head and not self._fresh  # the first head, or one that has begun
        if not due or now < self._deadline:
            # Not yet: look again at the deadline. Or busy, or idle between requests (uvicorn's
            # keep-alive timeout closes those): a head that begins from now on is due no sooner
            # than a timeout from now.
            when = self._deadline if due else now + self.limits.timeout
            self._timer = self.loop.call_at(when, self._look)
            return
        if not self._began and self._head_bytes == 0:
            # Not a byte of a request: an idle connection (a browser's preconnect, say), closed
            # without a word or a warning.
            log.debug("closed an idle connection from %s", self._client())
            self._refused = True
            self.transport.close()
            return
        self._refuse(
            _TIMEOUT, f"the request head did not arrive within {self.limits.timeout:g} seconds"
        )

    def _refuse(self, status: int, message: str) -> None:
        self._log_refusal(status)
        self._refused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport.write(_response(status, message))
        self.transport.close()

    def _client(self) -> str:
        return str(self.client[0]) if self.client else "unknown"

    def _log_refusal(self, status: int) -> None:
        if status == _TOO_LARGE:
            _log.warning(
                "head-size",
                "refused a request head of more than %d bytes from %s (431)",
                self.limits.max_bytes,
                self._client(),
            )
        else:
            _log.warning(
                "head-time",
                "closed a connection from %s: no whole request head within %gs (408)",
                self._client(),
                self.limits.timeout,
            )


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


def protocol_class(limits: HeadLimits) -> type[HttpToolsProtocol]:
    """uvicorn's `http=` setting: the httptools protocol with these limits."""
    return type("HeadLimitedProtocol", (_LimitedProtocol,), {"limits": limits})
