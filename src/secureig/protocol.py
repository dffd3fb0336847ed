"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol, with the limits on
connections, request heads and bodies that it lacks.

uvicorn's httptools protocol keeps a request head in memory for as long as it grows, waits for a
head or a body for as long as it trickles in, and accepts connections until the process runs out
of file descriptors, all before any of the gateway's code can look at the request: a client
without a key could hold memory, connections or every descriptor. Here:

- a connection beyond `max_connections` in all, or `max_per_client` from one address, is answered
  503 and closed as it opens;
- the head is refused past `head_bytes` (431) and when it has not arrived `head_timeout` seconds
  after the connection opened or the request began (408, or a plain close when not a byte of it
  came);
- a body must keep coming: at least `body_min_rate` bytes a second over each `body_timeout`
  window (and some byte in each), or 408 and a close. A body the gateway itself is not reading
  yet (a slow upstream, a `100-continue` not yet sent) is not the client's delay.

Counting costs an addition per read and two clock readings per request: the timer is one per
connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from secureig.networks import Networks
from secureig.surfaces._asgi import Receive, Scope, Send

log = logging.getLogger("secureig.http")

_TOO_LARGE = 431
_TIMEOUT = 408
_UNAVAILABLE = 503
_FORBIDDEN = 403
_REASONS = {
    _TOO_LARGE: b"Request Header Fields Too Large",
    _TIMEOUT: b"Request Timeout",
    _UNAVAILABLE: b"Service Unavailable",
    _FORBIDDEN: b"Forbidden",
}
# /readyz says "exhausted" for this long after a connection was refused for the total cap.
_EXHAUSTED_FOR = 5.0


@dataclass(frozen=True, slots=True)
class ServeLimits:
    head_bytes: int
    head_timeout: float  # seconds
    body_timeout: float  # seconds
    body_min_rate: int  # bytes a second, over each body_timeout window
    max_connections: int
    max_per_client: int
    # Peers a connection may come from (allowed networks and trusted proxies); None: any.
    admitted: Networks | None = None


class OpenConnections:
    """The connections open now, in all and per client address, and those refused; one per
    server, shared by its connections and read by `/readyz` and `/metrics`."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.open = 0
        self._by_client: dict[str, int] = {}
        self.refused: dict[str, int] = {}  # by reason: connections, per-client, head-size, ...
        self._full_at = -_EXHAUSTED_FOR

    def admit(self, client: str) -> str | None:
        """Count a new connection in, or say why it is refused."""
        limits = self.limits
        if limits.admitted is not None and client not in limits.admitted:
            return "network"
        if self.open >= limits.max_connections:
            self._full_at = time.monotonic()
            return "connections"
        held = self._by_client.get(client, 0)
        if held >= limits.max_per_client:
            return "per-client"
        self.open += 1
        self._by_client[client] = held + 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        held = self._by_client[client] - 1
        if held:
            self._by_client[client] = held
        else:
            del self._by_client[client]

    def count_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    @property
    def exhausted(self) -> bool:
        """At the cap now, or refused a connection for it a moment ago."""
        recently = time.monotonic() - self._full_at < _EXHAUSTED_FOR
        return recently or self.open >= self.limits.max_connections


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
    open_connections: OpenConnections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        HttpToolsProtocol.__init__(self, *args, **kwargs)
        self.limits = self.open_connections.limits
        self._counted: str | None = None  # the client address this connection is counted under
        self._in_head = True  # waiting for (the rest of) a request head
        self._head_bytes = 0  # bytes read while in the head, an upper bound on its size
        self._began = False  # a byte of this head has arrived
        self._fresh = False  # the next head's clock starts with its first byte
        self._deadline = 0.0  # loop time by which the head must be whole
        self._in_body = False  # the head is whole, the body is not
        self._body_bytes = 0  # read while in the body
        self._body_mark = 0  # _body_bytes when the current window began
        self._window_end = 0.0  # loop time at which the body's progress is next judged
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    # One timer a connection, not one a request: it wakes at the head's deadline or the end of
    # the body's window, and while the connection is busy with a request (or idle between two)
    # it looks again a head timeout later.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        HttpToolsProtocol.connection_made(self, transport)
        client = str(self.client[0]) if self.client else ""
        refusal = self.open_connections.admit(client)
        if refusal is not None:
            self._refuse_connection(refusal)
            return
        self._counted = client
        self._deadline = self.loop.time() + self.limits.head_timeout
        self._timer = self.loop.call_at(self._deadline, self._look)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted is not None:
            self.open_connections.release(self._counted)
            self._counted = None
        HttpToolsProtocol.connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        elif self._in_body:
            self._body_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)
        if self._in_head and self._head_bytes > self.limits.head_bytes:
            limit = self.limits.head_bytes
            self._refuse(_TOO_LARGE, f"the request head is larger than {limit} bytes")

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._began = True
        if self._fresh:
            self._fresh = False
            self._deadline = self.loop.time() + self.limits.head_timeout

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._body_bytes = self._body_mark = 0
        self._window_end = self.loop.time() + self.limits.body_timeout
        limit = self.limits.head_bytes
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
        self._in_body = False
        self._head_bytes = 0
        self._began = False
        self._fresh = True

    # -- the limits ------------------------------------------------------------------------------

    def _look(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._in_body:
            self._look_at_body(now)
            return
        due = self._in_head and not self._fresh  # the first head, or one that has begun
        if not due or now < self._deadline:
            # Not yet: look again at the deadline. Or busy, or idle between requests (uvicorn's
            # keep-alive timeout closes those): a head that begins from now on is due no sooner
            # than a timeout from now.
            when = self._deadline if due else now + self.limits.head_timeout
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
            _TIMEOUT,
            f"the request head did not arrive within {self.limits.head_timeout:g} seconds",
        )

    def _look_at_body(self, now: float) -> None:
        limits = self.limits
        if now < self._window_end:
            self._timer = self.loop.call_at(self._window_end, self._look)
            return
        needed = max(1, int(limits.body_min_rate * limits.body_timeout))
        cycle = self.cycle
        waiting_on_us = self.flow.read_paused or (
            cycle is not None and cycle.waiting_for_100_continue
        )
        if waiting_on_us or self._body_bytes - self._body_mark >= needed:
            self._body_mark = self._body_bytes
            self._window_end = now + limits.body_timeout
            self._timer = self.loop.call_at(self._window_end, self._look)
            return
        self._log_refusal(_TIMEOUT, body=True)
        self._refused = True
        if cycle is not None:
            started = cycle.response_started
            # The request's receive() now says the client left; nothing it sends goes out.
            cycle.disconnected = True
            cycle.message_event.set()
            if not started:
                message = (
                    f"the request body arrived slower than {limits.body_min_rate} bytes a second"
                    f" over {limits.body_timeout:g} seconds"
                )
                self.transport.write(_response(_TIMEOUT, message))
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        self._log_refusal(status)
        self._refused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport.write(_response(status, message))
        self.transport.close()

    def _refuse_connection(self, reason: str) -> None:
        self._refused = True
        self.open_connections.count_refusal(reason)
        if reason == "network":
            _log.warning(
                "network",
                "refused a connection from %s: not in SECUREIG_ALLOWED_NETWORKS",
                self._client(),
            )
            message = "this address may not connect to the gateway"
            self.transport.write(_response(_FORBIDDEN, message))
            self.transport.close()
            return
        if reason == "connections":
            cap = self.limits.max_connections
            message = f"the gateway holds its most connections ({cap}); try again shortly"
            _log.warning(
                "connections",
                "refused a connection from %s: %d open, the most allowed"
                " (SECUREIG_MAX_CONNECTIONS)",
                self._client(),
                cap,
            )
        else:
            cap = self.limits.max_per_client
            message = f"this address holds its most connections ({cap}); close some first"
            _log.warning(
                "per-client",
                "refused a connection from %s: %d open from that address, the most allowed"
                " (SECUREIG_MAX_CONNECTIONS_PER_CLIENT)",
                self._client(),
                cap,
            )
        self.transport.write(_response(_UNAVAILABLE, message))
        self.transport.close()

    def _client(self) -> str:
        return str(self.client[0]) if self.client else "unknown"

    def _log_refusal(self, status: int, body: bool = False) -> None:
        if status == _TOO_LARGE:
            self.open_connections.count_refusal("head-size")
            _log.warning(
                "head-size",
                "refused a request head of more than %d bytes from %s (431)",
                self.limits.head_bytes,
                self._client(),
            )
        elif body:
            self.open_connections.count_refusal("body-time")
            _log.warning(
                "body-time",
                "closed a connection from %s: its request body came slower than %d bytes a"
                " second over %gs (408)",
                self._client(),
                self.limits.body_min_rate,
                self.limits.body_timeout,
            )
        else:
            self.open_connections.count_refusal("head-time")
            _log.warning(
                "head-time",
                "closed a connection from %s: no whole request head within %gs (408)",
                self._client(),
                self.limits.head_timeout,
            )


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


def protocol_class(connections: OpenConnections) -> type[HttpToolsProtocol]:
    """uvicorn's `http=` setting: the httptools protocol with these limits and this count."""
    return type("LimitedProtocol", (_LimitedProtocol,), {"open_connections": connections})


def fit_descriptors(wanted: int, reserve: int) -> tuple[int, int]:
    """Raise the soft limit on open files towards `wanted + reserve` (within the hard limit);
    gives the connections that fit beside `reserve` descriptors, and the limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + reserve
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted, soft
    return max(1, min(wanted, soft - reserve)), soft
