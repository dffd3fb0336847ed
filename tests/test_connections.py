"""The upstream HTTP/1.1 client on its own: keep-alive, the connection cap, each timeout, chunked
bodies both ways, and how every way an answer can go wrong is reported.

The peer here is a loopback TCP server that writes exactly the bytes each test needs, since the
Ollama stand-in (rightly) never sends a malformed answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httptools
import pytest

from secureig.upstream.connections import (
    ConnectError,
    ConnectionPool,
    ConnectTimeout,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    ServerDisconnected,
    Timeouts,
)

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
QUICK = Timeouts(connect=2.0, read=2.0, total=5.0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


class Request:
    """One request as the peer read it."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def read_request(reader: asyncio.StreamReader) -> tuple[Request, bytes] | None:
    """The next request and its method, or None at end of stream."""
    request = Request()
    parser = httptools.HttpRequestParser(request)
    while not request.done:
        data = await reader.read(65536)
        if not data:
            return None
        parser.feed_data(data)
    return request, parser.get_method()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@asynccontextmanager
async def peer(handler: Handler) -> AsyncIterator[str]:
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.close()


async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request on the connection with its own path."""
    while (got := await read_request(reader)) is not None:
        writer.write(ok(got[0].url))
        await writer.drain()


def test_keeps_connections_alive_and_sends_its_own_head() -> None:
    seen: list[Request] = []
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while (got := await read_request(reader)) is not None:
            seen.append(got[0])
            writer.write(ok(got[0].url))

    async def main() -> list[bytes]:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK, headers={"User-Agent": "secureig-test"})
            bodies = []
            for i in range(20):
                response = await pool.send("POST", f"/api/x{i}", b'{"a":1}')
                bodies.append(await response.read())
                response.release()
            assert pool.open_connections == pool.idle_connections == 1
            await pool.aclose()
            return bodies

    bodies = run(main())
    assert bodies == [f"/api/x{i}".encode() for i in range(20)]
    assert connections == 1
    port = seen[0].headers[b"host"].split(b":")[1]
    assert seen[0].headers[b"host"] == b"127.0.0.1:" + port
    assert seen[0].headers[b"user-agent"] == b"secureig-test"
    assert seen[0].headers[b"content-length"] == b"7" and seen[0].body == b'{"a":1}'


def test_never_opens_more_connections_than_its_cap() -> None:
    active = peak = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            while (got := await read_request(reader)) is not None:
                await asyncio.sleep(0.05)
                writer.write(ok(got[0].url))
        finally:
            active -= 1

    async def one(pool: ConnectionPool, i: int) -> bytes:
        response = await pool.send("GET", f"/{i}")
        try:
            return await response.read()
        finally:
            response.release()

    async def main() -> list[bytes]:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK, max_connections=3)
            results = await asyncio.gather(*(one(pool, i) for i in range(15)))
            assert pool.open_connections <= 3
            await pool.aclose()
            return results

    assert run(main()) == [f"/{i}".encode() for i in range(15)]
    assert peak == 3


def test_waiting_for_a_connection_ends_at_the_deadline() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, Timeouts(connect=1, read=5, total=0.3), max_connections=1)
            busy = asyncio.create_task(pool.send("GET", "/slow", total=5))
            await asyncio.sleep(0.05)
            with pytest.raises(PoolTimeout):
                await pool.send("GET", "/waits")
            assert not busy.done()
            busy.cancel()  # a request given up on gives its connection up too
            with pytest.raises(asyncio.CancelledError):
                await busy
            assert pool.open_connections == 0
            await pool.aclose()

    run(main())


def test_read_timeout_when_no_answer_comes() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, Timeouts(connect=1, read=0.2, total=5))
            with pytest.raises(ReadTimeout, match="no answer in time"):
                await pool.send("POST", "/api/generate", b"{}")
            assert pool.open_connections == 0
            await pool.aclose()

    run(main())


def test_read_timeout_between_body_bytes_and_total_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100):
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
        await asyncio.sleep(10)

    async def main() -> None:
        async with peer(handler) as url:
            # Bytes keep coming, so only the total timeout can end it.
            pool = ConnectionPool(url, Timeouts(connect=1, read=1, total=0.5))
            response = await pool.send("GET", "/drip")
            got = b""
            with pytest.raises(ReadTimeout, match="total timeout"):
                async for chunk in response.chunks():
                    got += chunk
            assert 1 <= len(got) < 10
            response.release()
            await pool.aclose()
        async with peer(stalls) as url:
            pool = ConnectionPool(url, Timeouts(connect=1, read=0.2, total=5))
            response = await pool.send("GET", "/stall")
            with pytest.raises(ReadTimeout, match="stopped sending"):
                await response.read()
            response.release()
            assert pool.open_connections == 0
            await pool.aclose()

    run(main())


def test_connect_refused_and_connect_timeout() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]

    async def refused() -> None:
        pool = ConnectionPool(f"http://127.0.0.1:{refused_port}", QUICK)
        with pytest.raises(ConnectError, match="connection refused"):
            await pool.send("GET", "/")
        assert pool.open_connections == 0

    run(refused())

    # A listener that never accepts, with its backlog full: the kernel drops further SYNs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)

        async def hangs() -> None:
            pool = ConnectionPool(f"http://127.0.0.1:{port}", Timeouts(0.3, 5, 5))
            with pytest.raises(ConnectTimeout):
                await pool.send("GET", "/")
            assert pool.open_connections == 0

        try:
            run(hangs())
        finally:
            for filler in fillers:
                filler.close()


def test_chunked_answers_arrive_piece_by_piece() -> None:
    sent = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
        await writer.drain()
        await sent.wait()
        writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)
        writer.write(ok(b"again"))
        await asyncio.sleep(1)

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            response = await pool.send("POST", "/api/chat", b"{}")
            pieces = []
            async for chunk in response.chunks():
                pieces.append(chunk)
                sent.set()  # the second piece is written only after the first arrived
            response.release()
            assert pieces == [b"first\n", b"second\n"]
            assert pool.idle_connections == 1  # read to its end: kept alive
            again = await pool.send("GET", "/")
            assert await again.read() == b"again"
            again.release()
            await pool.aclose()

    run(main())


def test_streams_a_request_body_chunked() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (got := await read_request(reader)) is not None:
            request = got[0]
            digest = hashlib.sha256(request.body).hexdigest().encode()
            writer.write(ok(request.headers.get(b"transfer-encoding", b"") + b" " + digest))

    blob = bytes(range(256)) * 8192  # 2 MiB, written through flow control

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(blob), 100_000):
            yield blob[start : start + 100_000]
            await asyncio.sleep(0)

    async def main() -> bytes:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            response = await pool.send("POST", "/api/blobs/x", body())
            answer = await response.read()
            response.release()
            await pool.aclose()
            return answer

    assert run(main()) == b"chunked " + hashlib.sha256(blob).hexdigest().encode()


def test_an_error_in_the_streamed_body_propagates_and_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        closed.set()

    class TooBig(Exception):
        pass

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise TooBig

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            with pytest.raises(TooBig):
                await pool.send("POST", "/api/blobs/x", body())
            assert pool.open_connections == 0
            await asyncio.wait_for(closed.wait(), 2)
            await pool.aclose()

    run(main())


def test_a_body_without_a_length_ends_with_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"world")
        await writer.drain()

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            response = await pool.send("GET", "/")
            assert response.header(b"content-type") == "text/plain"
            assert await response.read() == b"hello world"
            response.release()
            assert pool.open_connections == 0  # never reused: its end was the connection's
            await pool.aclose()

    run(main())


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (b"", ServerDisconnected, "before an answer began"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", RemoteProtocolError, "before"),
        (b"HTTP/1.1 2x0 Nope\r\n\r\n", RemoteProtocolError, "malformed"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            RemoteProtocolError,
            "malformed",
        ),
    ],
)
def test_broken_answers_are_reported(answer: bytes, error: type[Exception], message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            with pytest.raises(error, match=message):
                response = await pool.send("POST", "/api/generate", b"{}")
                try:
                    await response.read()
                finally:
                    response.release()
            assert pool.open_connections == 0
            await pool.aclose()

    run(main())


def test_a_stale_keep_alive_connection_is_retried_only_when_safe() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers one request, then drops the connection as the next one arrives.
        got = await read_request(reader)
        assert got is not None
        writer.write(ok(b"first"))
        await writer.drain()
        await read_request(reader)

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            for method in ("GET", "POST"):
                response = await pool.send(method, "/")
                assert await response.read() == b"first"
                response.release()
                assert pool.idle_connections == 1
                if method == "GET":
                    again = await pool.send("GET", "/")  # resent on a new connection
                    assert await again.read() == b"first"
                    again.release()
                    await pool.aclose()
                    pool = ConnectionPool(url, QUICK)
                else:
                    with pytest.raises(ServerDisconnected):
                        await pool.send("POST", "/api/generate", b"{}")
            await pool.aclose()

    run(main())


def test_an_unread_or_abandoned_answer_closes_its_connection() -> None:
    closed = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(200):
                writer.write(b"5\r\nchunk\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            closed += 1

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            response = await pool.send("POST", "/api/generate", b"{}")
            response.release()  # not read: dropped, so the upstream stops generating
            assert pool.open_connections == 0

            response = await pool.send("POST", "/api/generate", b"{}")

            async def consume() -> None:
                async for _ in response.chunks():
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            response.release()
            assert pool.open_connections == 0
            await asyncio.sleep(0.3)
            await pool.aclose()

    run(main())
    assert closed == 2


def test_head_answers_have_no_body_and_keep_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (got := await read_request(reader)) is not None:
            if got[1] == b"HEAD":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            else:
                writer.write(ok(b"after"))

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            head = await pool.send("HEAD", "/api/blobs/x")
            assert head.status == 200 and await head.read() == b""
            head.release()
            after = await pool.send("GET", "/")
            assert await after.read() == b"after"
            after.release()
            assert pool.open_connections == 1
            await pool.aclose()

    run(main())


def test_refuses_paths_and_urls_it_cannot_send_safely() -> None:
    pool = ConnectionPool("http://127.0.0.1:1", QUICK)
    for path in ("/api/x\r\nX-Evil: 1", "/a b", "api/x", "/caf\u00e9"):
        with pytest.raises(ValueError):
            run(pool.send("GET", path))
    with pytest.raises(ValueError):
        ConnectionPool("ftp://127.0.0.1:1", QUICK)
    with pytest.raises(ValueError):
        ConnectionPool("http://127.0.0.1:1", QUICK, headers={"X": "a\r\nB: c"})


def test_https_upstreams_are_verified(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a certificate for this test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def main() -> None:
        server = await asyncio.start_server(answer_all, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = ConnectionPool(f"https://127.0.0.1:{port}", QUICK, ssl_context=trusting)
        response = await pool.send("GET", "/over-tls")
        assert await response.read() == b"/over-tls"
        response.release()
        await pool.aclose()
        # A certificate nobody vouched for is refused before anything is sent.
        stranger = ConnectionPool(f"https://127.0.0.1:{port}", QUICK)
        with pytest.raises(ConnectError, match="TLS failed"):
            await stranger.send("GET", "/")
        server.close()

    run(main())


def test_bytes_after_an_answer_spoil_only_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"one") + ok(b"two"))  # two answers to one request, in one packet
        await asyncio.sleep(1)

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            response = await pool.send("GET", "/")
            assert await response.read() == b"one"
            assert response.headers == [(b"content-length", b"3")]
            response.release()
            assert pool.open_connections == 0  # never reused
            await pool.aclose()

    run(main())


def test_an_answer_before_the_upload_ends_stops_the_upload() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the head and the first piece, no more
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 5\r\n\r\nlarge")
        await asyncio.sleep(2)

    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 1
            yield b"x" * 1000
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with peer(handler) as url:
            pool = ConnectionPool(url, QUICK)
            response = await pool.send("POST", "/api/blobs/x", body())
            assert response.status == 413 and await response.read() == b"large"
            response.release()
            assert sent < 100  # the rest of the upload was never read from its source
            assert pool.open_connections == 0  # the unfinished request spoilt the connection
            await pool.aclose()

    run(main())
