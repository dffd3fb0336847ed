"""A lean HTTP/1.1 client for one origin: keep-alive connections under a cap, per-phase timeouts,
Content-Length and chunked bodies both ways, answers parsed by httptools (uvicorn's own parser).

A general-purpose client spent more CPU per proxied request than the gateway's whole policy. This
one does only what talking to an inference server needs: no redirects, cookies, proxies,
decompression or pipelining, so none of their cost either.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
from base64 import b64encode
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

# Beyond this many unread body bytes the connection stops reading: a slow client slows the
# upstream through TCP rather than filling the gateway's memory.
_HIGH_WATER = 256 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_BODYLESS = frozenset({"GET", "HEAD"})
_PATH = re.compile(r"/[!-~]*")  # printable ASCII, no spaces: nothing that could split the request


class HTTPError(Exception):
    """Anything that kept an exchange from completing; `str()` never holds addresses or bodies."""


class ConnectError(HTTPError):
    """No connection could be made (refused, unresolvable, unreachable)."""


class Timeout(HTTPError):
    """A phase took longer than its limit allows."""


class ConnectTimeout(Timeout):
    pass


class PoolTimeout(Timeout):
    """Every connection stayed busy until the exchange's deadline."""


class ReadTimeout(Timeout):
    """The answer, or its next bytes, did not come in time."""


class RemoteProtocolError(HTTPError):
    """The answer was malformed, or the connection ended before the answer did."""


class ServerDisconnected(RemoteProtocolError):
    """The connection closed before any answer began."""


class _NotSent(ServerDisconnected):
    """A kept-alive connection had closed before the request was written: safe to send again."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: to connect; to wait for the answer and between its bytes; for the whole exchange."""

    connect: float
    read: float
    total: float


def _expire(waiter: asyncio.Future[None], error: Timeout) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class _Connection(asyncio.Protocol):
    """One TCP connection; carries one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._parser_reusable = False  # it ended a whole answer and waits for the next
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self.lost = False
        self.idle_since = 0.0
        self._reset(head_only=False)

    def _reset(self, head_only: bool) -> None:
        self._head_only = head_only
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.spoilt = False  # something this exchange did forbids reusing the connection
        self.error: HTTPError | None = None
        self.chunks: list[bytes] = []
        self._buffered = 0
        self._paused_reading = False
        self._until_close = False

    def begin(self, head_only: bool) -> None:
        self._reset(head_only)
        # A parser that finished an answer starts the next one itself; making one looks up
        # every callback, which showed in profiles.
        if not self._parser_reusable:
            self._parser = httptools.HttpResponseParser(self)
        self._parser_reusable = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._parser is not None and not self.complete and self.error is None:
            if self.head_done and self._until_close:
                self.complete = True  # a body without a length ends where the connection does
            elif self.head_done:
                self.error = RemoteProtocolError("connection closed before the answer ended")
            else:
                self.error = ServerDisconnected("connection closed before an answer began")
        self._wake()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self.complete:
            # Bytes that answer nothing: the connection's state can no longer be trusted.
            self.spoilt = True
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            if not self.complete:  # after a whole answer, only the connection is spoilt
                self.error = RemoteProtocolError("malformed answer")
            self.spoilt = True
            self.close()
            self._wake()

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second answer to one request: stop parsing before it touches the first.
            raise RemoteProtocolError("bytes after the answer")

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        self.head_done = True
        if self._head_only or self.status in (204, 304):
            self._finish()
            return
        framed = any(n in (b"content-length", b"transfer-encoding") for n, _ in self.headers)
        self._until_close = not framed
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.complete:
            self._finish()
            self._parser_reusable = self.keep_alive

    def _finish(self) -> None:
        assert self._parser is not None
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive() and not self._until_close
        self._wake()

    # -- what the pool and responses use ---------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, seconds: float, error: Timeout) -> None:
        """Until something happens on the connection, or `seconds` pass."""
        waiter = self._loop.create_future()
        self._waiter = waiter
        handle = self._loop.call_later(max(seconds, 0.0), _expire, waiter, error)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None

    async def drain(self, seconds: float) -> None:
        drained = self._drained
        if drained is None or self.lost:
            return
        handle = self._loop.call_later(
            max(seconds, 0.0), _expire, drained, ReadTimeout("upstream stopped reading")
        )
        try:
            await drained
        finally:
            handle.cancel()

    def take(self) -> bytes:
        """Everything buffered so far, resuming reading if it was paused."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self._buffered = 0
        if self._paused_reading and self.transport is not None and not self.lost:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Response:
    """An answer whose head has arrived; its body is read with `read()` or `chunks()`, and
    `release()` hands the connection back (or closes it, if the body was not read to its end)."""

    __slots__ = ("_conn", "_deadline", "_pool", "_read", "headers", "reason", "status", "waited")

    def __init__(
        self, pool: ConnectionPool, conn: _Connection, deadline: float, waited: float
    ) -> None:
        self.status = conn.status
        self.reason = conn.reason.decode("latin-1")
        self.headers = conn.headers
        self.waited = waited  # seconds until the head arrived
        self._pool = pool
        self._conn: _Connection | None = conn
        self._deadline = deadline
        self._read = pool.timeouts.read

    def header(self, name: bytes) -> str | None:
        """The first value of a header, by its lower-case name."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    async def _more(self, conn: _Connection) -> bool:
        """Wait for body bytes; False once the body has ended."""
        while not conn.chunks:
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                return False
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise ReadTimeout("the answer took longer than the total timeout")
            if remaining < self._read:
                await conn.wait(remaining, ReadTimeout("the answer exceeded the total timeout"))
            else:
                await conn.wait(self._read, ReadTimeout("the upstream stopped sending"))
        return True

    async def read(self, limit: int | None = None) -> bytes:
        """The body, or its first `limit` bytes and more (the rest is dropped at release)."""
        conn = self._conn
        if conn is None:
            return b""
        if conn.complete and conn.error is None:
            return conn.take() if conn.chunks else b""
        parts: list[bytes] = []
        size = 0
        while await self._more(conn):
            part = conn.take()
            parts.append(part)
            size += len(part)
            if limit is not None and size >= limit:
                break
        return b"".join(parts)

    async def next_chunk(self) -> bytes | None:
        """The body's next bytes as they arrive, or None at its end. (A coroutine rather than an
        async iterator: one frame less per chunk, on the streaming path.)"""
        conn = self._conn
        if conn is None or not await self._more(conn):
            return None
        return conn.take()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class ConnectionPool:
    """Keep-alive connections to one `http://` or `https://` origin, at most `max_connections`."""

    def __init__(
        self,
        url: str,
        timeouts: Timeouts,
        *,
        max_connections: int = 100,
        keepalive_seconds: float = 30.0,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        self.timeouts = timeouts
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._max = max(1, max_connections)
        self._keepalive = keepalive_seconds
        host = parts.netloc.rpartition("@")[2]
        lines = [f"Host: {host}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        if parts.username is not None:
            # Credentials in the URL are the upstream's own (a proxy in front of Ollama, say):
            # sent as Basic auth on every request, and shown nowhere.
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            lines.append(f"Authorization: Basic {b64encode(userinfo.encode()).decode()}")
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError("header values may not contain line breaks")
        # Everything after the request line that every request shares, encoded once.
        self._common = (" HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines)).encode()
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def send(
        self,
        method: str,
        path: str,
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        total: float | None = None,
        extra: bytes = b"",
    ) -> Response:
        """Send a request and return once the answer's head has arrived, whatever its status.

        An exception raised by a streamed `body` propagates unchanged, and the connection is
        closed. `total`, if given, replaces the pool's total timeout for this exchange. `extra`
        is header lines of this request alone, encoded (`traceparent: ...\\r\\n`), from the
        gateway itself, never from a client.
        """
        if not _PATH.fullmatch(path):
            raise ValueError(f"not a request path: {path!r}")
        started = time.monotonic()
        deadline = started + (self.timeouts.total if total is None else total)
        head = method.encode() + b" " + path.encode() + self._common + extra
        if body is None and method not in _BODYLESS:
            body = b""
        idempotent = method in _IDEMPOTENT and not isinstance(body, AsyncIterable)
        retried = False
        while True:
            conn = await self._acquire(deadline)
            reused = conn.idle_since > 0
            try:
                await self._exchange(conn, head, method == "HEAD", body, deadline)
            except ServerDisconnected as exc:
                self._discard(conn)
                # A kept-alive connection the server had just closed. Go's rule: send again only
                # what never left, or what is safe to send twice.
                if reused and not retried and (idempotent or isinstance(exc, _NotSent)):
                    retried = True
                    continue
                raise
            except BaseException:
                self._discard(conn)
                raise
            return Response(self, conn, deadline, time.monotonic() - started)

    async def _exchange(
        self,
        conn: _Connection,
        head: bytes,
        head_only: bool,
        body: bytes | AsyncIterable[bytes] | None,
        deadline: float,
    ) -> None:
        if conn.lost:
            raise _NotSent("connection closed before the request was sent")
        conn.begin(head_only)
        if body is None:
            conn.write(head + b"\r\n")
        elif isinstance(body, bytes | bytearray | memoryview):
            conn.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + bytes(body))
        else:
            await self._write_chunked(conn, head, body, deadline)
        read = self.timeouts.read
        while not conn.head_done:
            if conn.error is not None:
                raise conn.error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReadTimeout("no answer within the total timeout")
            await conn.wait(min(read, remaining), ReadTimeout("no answer in time"))

    async def _write_chunked(
        self, conn: _Connection, head: bytes, body: AsyncIterable[bytes], deadline: float
    ) -> None:
        conn.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
        async for chunk in body:
            if conn.head_done or conn.lost:
                # Answered (or gone) before the upload ended: what is left would answer nothing,
                # and the unfinished request leaves the connection unusable.
                conn.spoilt = True
                return
            if chunk:
                conn.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                await conn.drain(min(self.timeouts.read, deadline - time.monotonic()))
        conn.write(b"0\r\n\r\n")

    async def _acquire(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ConnectError("the client is closed")
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if not conn.lost and now - conn.idle_since < self._keepalive:
                    return conn
                self._discard(conn)
            if self._open < self._max:
                self._open += 1
                try:
                    return await self._connect(loop, deadline)
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            waiter = loop.create_future()
            self._waiters.append(waiter)
            error = PoolTimeout("every upstream connection stayed busy")
            handle = loop.call_at(loop.time() + deadline - now, _expire, waiter, error)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                else:
                    self._wake_one()  # woken, then given up on: pass the wake-up on
                raise
            finally:
                handle.cancel()

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        timeout = min(self.timeouts.connect, deadline - time.monotonic())
        conn = _Connection(loop)
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await loop.create_connection(lambda: conn, self._host, self._port, ssl=self._ssl)
        except TimeoutError:
            raise ConnectTimeout("could not connect in time") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(
                f"TLS failed: the backend's certificate is not trusted ({exc.verify_message})"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS failed: {exc.reason or 'handshake error'}") from None
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else "cannot connect"
            raise ConnectError(reason) from None
        return conn

    def release(self, conn: _Connection) -> None:
        """Back to the idle set if its answer was read to the end and it may be kept alive."""
        if (
            conn.complete
            and conn.keep_alive
            and not conn.spoilt
            and conn.error is None
            and not conn.lost
        ):
            if self._closed:
                self._discard(conn)
                return
            conn.chunks = []
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            self._wake_one()
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectError("the client is closed"))
        self._waiters.clear()
