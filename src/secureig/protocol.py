"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol, with the limits on
connections, TLS handshakes, request heads and bodies that it lacks.

uvicorn's httptools protocol keeps a request head in memory for as long as it grows, waits for a
head or a body for as long as it trickles in, hands a connection to another protocol when it asks
for an upgrade, and accepts connections until the process runs out of file descriptors, all
before any of the gateway's code can look at the request: a client without a key could hold
memory, connections or every descriptor. Here:

- a connection is counted as it is accepted, before any TLS handshake, and given back when its
  socket closes, however it ends: this class is the socket's protocol from accept to close (a
  TLS layer sits between them; no upgrade ever replaces it);
- a connection beyond `max_connections` in all, beyond `max_per_client` from one address (an
  IPv6 client's whole /64), or into the `reserved` places from an address that never completed
  a request with a valid key, is answered 503 and closed as it opens (closed without a word over
  TLS, whose handshake it never gets);
- a TLS handshake must end within `tls_handshake_timeout`, and one address may have at most
  `tls_handshakes_per_client` under way;
- an upgrade (a WebSocket, CONNECT) is answered 426 and the connection closed: the gateway
  serves none. Another upgrade token (`h2c`) is ignored, as HTTP allows: the request is served
  over HTTP/1.1 and the connection closed after it;
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
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from secureig.networks import Networks, parse_address
from secureig.recent import Recent
from secureig.surfaces._asgi import Receive, Scope, Send

log = logging.getLogger("secureig.http")

_TOO_LARGE = 431
_TIMEOUT = 408
_UNAVAILABLE = 503
_FORBIDDEN = 403
_UPGRADE_REQUIRED = 426
_REASONS = {
    _TOO_LARGE: b"Request Header Fields Too Large",
    _TIMEOUT: b"Request Timeout",
    _UNAVAILABLE: b"Service Unavailable",
    _FORBIDDEN: b"Forbidden",
    _UPGRADE_REQUIRED: b"Upgrade Required",
}
# /readyz says "exhausted" for this long after a connection was refused for the total cap.
_EXHAUSTED_FOR = 5.0
# Addresses remembered as having completed a request with a valid key (least recent forgotten).
_MAX_VOUCHED = 16384


@dataclass(frozen=True, slots=True)
class ServeLimits:
    head_bytes: int
    head_timeout: float  # seconds
    body_timeout: float  # seconds
    body_min_rate: int  # bytes a second, over each body_timeout window
    max_connections: int
    max_per_client: int
    # Places only addresses that completed a request with a valid key may take.
    reserved: int = 0
    tls_handshake_timeout: float = 5.0  # seconds
    tls_handshakes_per_client: int = 16
    # Peers a connection may come from (allowed networks and trusted proxies); None: any.
    admitted: Networks | None = None
    # Trusted proxies: each stands for many clients, so it is held to no per-client cap.
    proxies: Networks | None = None


def client_bucket(address: str) -> str:
    """What an address is counted as: itself, or for IPv6 its /64, which one host or one customer
    holds whole (a fresh count per /128 would be a fresh count per connection)."""
    if ":" not in address:
        return address
    parsed = parse_address(address)
    if parsed is None or parsed.version == 4:
        return address if parsed is None else str(parsed)
    return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))


class OpenConnections:
    """The connections open now, in all and per client, the TLS handshakes under way, and those
    refused; one per server, shared by its connections and read by `/readyz` and `/metrics`."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.open = 0
        self._handshaking: set[asyncio.Transport] = set()
        self._by_client: dict[str, int] = {}
        self._handshakes: dict[str, int] = {}
        self._vouched = Recent(_MAX_VOUCHED)
        self._open_to_all = limits.max_connections - limits.reserved
        self.refused: dict[str, int] = {}  # by reason: connections, per-client, head-size, ...
        self._full_at = -_EXHAUSTED_FOR

    def admit(self, address: str, bucket: str) -> str | None:
        """Count a new connection in, or say why it is refused."""
        limits = self.limits
        if limits.admitted is not None and address not in limits.admitted:
            return "network"
        if self.open >= limits.max_connections:
            self._full_at = time.monotonic()
            return "connections"
        if self.open >= self._open_to_all and bucket not in self._vouched:
            return "reserved"
        held = self._by_client.get(bucket, 0)
        if held >= limits.max_per_client and (
            limits.proxies is None or address not in limits.proxies
        ):
            return "per-client"
        self.open += 1
        self._by_client[bucket] = held + 1
        return None

    def release(self, bucket: str) -> None:
        self.open -= 1
        held = self._by_client[bucket] - 1
        if held:
            self._by_client[bucket] = held
        else:
            del self._by_client[bucket]

    def handshake_began(self, bucket: str, transport: asyncio.Transport) -> bool:
        """Count a TLS handshake in; False if this client has its most under way."""
        held = self._handshakes.get(bucket, 0)
        if held >= self.limits.tls_handshakes_per_client:
            return False
        self._handshakes[bucket] = held + 1
        self._handshaking.add(transport)
        return True

    def handshake_ended(self, bucket: str, transport: asyncio.Transport) -> None:
        self._handshaking.discard(transport)
        held = self._handshakes[bucket] - 1
        if held:
            self._handshakes[bucket] = held
        else:
            del self._handshakes[bucket]

    def abort_handshakes(self) -> None:
        """At shutdown: the server closes the connections it serves, but knows nothing of those
        still in their TLS handshake."""
        for transport in list(self._handshaking):
            transport.abort()

    def vouch(self, address: str) -> None:
        """This address just completed a request with a valid key: it may use the reserved
        places from now on."""
        self._vouched.add(address if ":" not in address else client_bucket(address))

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
        b"x-content-type-options: nosniff\r\n"
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
                (b"x-content-type-options", b"nosniff"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _LimitedProtocol(HttpToolsProtocol):
    open_connections: OpenConnections
    tls: ssl.SSLContext | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        HttpToolsProtocol.__init__(self, *args, **kwargs)
        self.limits = self.open_connections.limits
        self._peer = "unknown"  # the socket's address, for logs
        self._counted: str | None = None  # the bucket this connection is counted under
        self._handshake: str | None = None  # the bucket its TLS handshake is counted under
        self._raw: asyncio.Transport | None = None  # the socket's transport, under TLS
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
        self._timer_at = 0.0  # loop time the timer wakes at
        self._refused = False
        self._upgrade_ignored = False  # an upgrade token the gateway serves the request without

    # One timer a connection, not one a request: it wakes at the head's deadline or the end of
    # the body's window, and while the connection is busy with a request (or idle between two)
    # it looks again a head timeout later.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self._counted is not None:
            # The TLS layer's transport, its handshake done: the HTTP connection begins.
            self._serve(transport)
            return
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._peer = address or "unknown"
        bucket = client_bucket(address)
        connections = self.open_connections
        refusal = connections.admit(address, bucket)
        if (
            refusal is None
            and self.tls is not None
            and not connections.handshake_began(bucket, transport)
        ):
            connections.release(bucket)
            refusal = "handshakes"
        if refusal is not None:
            self._refuse_connection(transport, refusal)
            return
        self._counted = bucket
        if self.tls is None:
            self._serve(transport)
            return
        # The handshake is this protocol's own, set up before the loop reads a byte, so that
        # it is bounded in time and every way it can end reaches `_handshake_over`.
        self._handshake, self._raw = bucket, transport
        waiter = self.loop.create_future()
        layer = _tls_layer(self.loop)(
            self.loop, self, self.tls, waiter, server_side=True,
            ssl_handshake_timeout=self.limits.tls_handshake_timeout,
        )  # fmt: skip
        transport.set_protocol(layer)
        layer.connection_made(transport)
        waiter.add_done_callback(self._handshake_over)

    def _serve(self, transport: asyncio.Transport) -> None:
        self._end_handshake()
        HttpToolsProtocol.connection_made(self, transport)
        self._arm(self.loop.time() + self.limits.head_timeout)
        self._deadline = self._timer_at

    def _handshake_over(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.cancelled():
            waiter.exception()  # retrieved: a failed handshake is the client's, not an error
        if self._handshake is not None:
            # It failed, timed out or the client left before it finished: the TLS layer tells
            # no protocol of a connection lost mid-handshake, so it is given back here.
            self._end_handshake()
            self._give_back()

    def _end_handshake(self) -> None:
        bucket, self._handshake = self._handshake, None
        if bucket is not None and self._raw is not None:
            self.open_connections.handshake_ended(bucket, self._raw)

    def _give_back(self) -> None:
        bucket, self._counted = self._counted, None
        if bucket is not None:
            self.open_connections.release(bucket)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._end_handshake()
        self._give_back()
        if self.transport is not None:
            HttpToolsProtocol.connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        elif self._in_body:
            self._body_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)
        if self._in_head:
            if self._head_bytes > self.limits.head_bytes and not self._refused:
                limit = self.limits.head_bytes
                self._refuse(_TOO_LARGE, f"the request head is larger than {limit} bytes")
        elif self._in_body and self._timer_at > self._window_end:
            # The head just ended with a body to come: its first window may end before the
            # timer would have looked (a body timeout shorter than the head timeout).
            self._arm(self._window_end)

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
        upgrade = self.parser.should_upgrade()
        if upgrade and self._refuses_upgrade():
            return
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
        if upgrade:
            # An upgrade ignored: the parser reads nothing after this request, so it is the
            # connection's last.
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        HttpToolsProtocol.on_message_complete(self)
        if self._upgrade_ignored:
            # The parser reads nothing after an upgrade request: neither does the gateway.
            self._refused = True
        self._in_head = True
        self._in_body = False
        self._head_bytes = 0
        self._began = False
        self._fresh = True

    # -- upgrades --------------------------------------------------------------------------------

    def _refuses_upgrade(self) -> bool:
        """A WebSocket or CONNECT is answered 426 and closed (the gateway serves neither, and a
        client such as Codex falls back to plain HTTP at once on a 426); any other upgrade token
        is ignored. True when refused."""
        token = b""
        for name, value in self.headers:
            if name == b"upgrade":
                token = value.lower()
        if b"websocket" not in token and self.parser.get_method() != b"CONNECT":
            self._upgrade_ignored = True
            return False
        self._refused = True
        self.open_connections.count_refusal("upgrade")
        _log.warning(
            "upgrade",
            "refused an upgrade request (%s) from %s: the gateway serves no WebSocket (426)",
            "WebSocket" if b"websocket" in token else "CONNECT",
            self._peer,
        )
        message = "the gateway serves HTTP/1.1 only; no WebSocket, no CONNECT"
        self._write_and_close(_UPGRADE_REQUIRED, message)
        return True

    def handle_websocket_upgrade(self) -> None:
        # Never reached (uvicorn runs with ws="none" and upgrades are refused above); were it,
        # handing the socket to another protocol would take it out of the count.
        self._refused = True
        self._write_and_close(_UPGRADE_REQUIRED, "the gateway serves no WebSocket")

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's line for every upgrade request, unthrottled: each was refused (and logged,
        # throttled) or deliberately ignored above.
        return

    # -- the limits ------------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._look)

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
            self._arm(self._deadline if due else now + self.limits.head_timeout)
            return
        if not self._began and self._head_bytes == 0:
            # Not a byte of a request: an idle connection (a browser's preconnect, say), closed
            # without a word or a warning.
            log.debug("closed an idle connection from %s", self._peer)
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
            self._arm(self._window_end)
            return
        needed = max(1, int(limits.body_min_rate * limits.body_timeout))
        cycle = self.cycle
        waiting_on_us = self.flow.read_paused or (
            cycle is not None and cycle.waiting_for_100_continue
        )
        if waiting_on_us or self._body_bytes - self._body_mark >= needed:
            self._body_mark = self._body_bytes
            self._window_end = now + limits.body_timeout
            self._arm(self._window_end)
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
        self._write_and_close(status, message)

    def _write_and_close(self, status: int, message: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport.write(_response(status, message))
        self.transport.close()

    def _refuse_connection(self, transport: asyncio.Transport, reason: str) -> None:
        self._refused = True
        self.open_connections.count_refusal(reason)
        peer = self._peer
        if reason == "network":
            _log.warning(
                "network", "refused a connection from %s: not in SECUREIG_ALLOWED_NETWORKS", peer
            )
            message = "this address may not connect to the gateway"
            status = _FORBIDDEN
        elif reason == "handshakes":
            _log.warning(
                "handshakes",
                "refused a connection from %s: %d TLS handshakes under way from that address,"
                " the most allowed (SECUREIG_MAX_TLS_HANDSHAKES_PER_CLIENT)",
                peer,
                self.limits.tls_handshakes_per_client,
            )
            message, status = "", _UNAVAILABLE
        elif reason == "per-client":
            cap = self.limits.max_per_client
            message = f"this address holds its most connections ({cap}); close some first"
            status = _UNAVAILABLE
            _log.warning(
                "per-client",
                "refused a connection from %s: %d open from that address, the most allowed"
                " (SECUREIG_MAX_CONNECTIONS_PER_CLIENT)",
                peer,
                cap,
            )
        else:
            cap = self.limits.max_connections
            message = f"the gateway holds its most connections ({cap}); try again shortly"
            status = _UNAVAILABLE
            if reason == "reserved":
                _log.warning(
                    "reserved",
                    "refused a connection from %s: %d open, and the %d places left are kept for"
                    " clients that have used a valid key (SECUREIG_RESERVED_CONNECTIONS)",
                    peer,
                    self.open_connections.open,
                    self.limits.reserved,
                )
            else:
                _log.warning(
                    "connections",
                    "refused a connection from %s: %d open, the most allowed"
                    " (SECUREIG_MAX_CONNECTIONS)",
                    peer,
                    cap,
                )
        if self.tls is None and message:
            transport.write(_response(status, message))
            transport.close()
        else:
            transport.abort()  # no handshake for a refused connection: nothing it could read

    def _log_refusal(self, status: int, body: bool = False) -> None:
        if status == _TOO_LARGE:
            self.open_connections.count_refusal("head-size")
            _log.warning(
                "head-size",
                "refused a request head of more than %d bytes from %s (431)",
                self.limits.head_bytes,
                self._peer,
            )
        elif body:
            self.open_connections.count_refusal("body-time")
            _log.warning(
                "body-time",
                "closed a connection from %s: its request body came slower than %d bytes a"
                " second over %gs (408)",
                self._peer,
                self.limits.body_min_rate,
                self.limits.body_timeout,
            )
        else:
            self.open_connections.count_refusal("head-time")
            _log.warning(
                "head-time",
                "closed a connection from %s: no whole request head within %gs (408)",
                self._peer,
                self.limits.head_timeout,
            )


def _tls_layer(loop: asyncio.AbstractEventLoop) -> Any:
    """The event loop's own TLS protocol (uvloop's, or asyncio's), as `loop.start_tls` uses it;
    the gateway builds it itself so that the handshake starts before the loop reads a byte."""
    try:
        import uvloop
        from uvloop.loop import SSLProtocol as UVLoopTLS  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:
        if isinstance(loop, uvloop.Loop):
            return UVLoopTLS
    from asyncio.sslproto import SSLProtocol

    return SSLProtocol


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


def protocol_class(
    connections: OpenConnections, tls: ssl.SSLContext | None = None
) -> type[HttpToolsProtocol]:
    """uvicorn's `http=` setting: the httptools protocol with these limits and this count, and
    TLS with this context (uvicorn itself is then given none)."""
    attributes = {"open_connections": connections, "tls": tls}
    return type("LimitedProtocol", (_LimitedProtocol,), attributes)


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
