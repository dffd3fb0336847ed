"""A hostile upstream: a raw asyncio HTTP server that answers as a broken or malicious Ollama
would, for the fault tests and `bench/faults.py`. It lists one model and answers every other
request by its `behaviour`; it counts what it managed to send, so a test can see where the
gateway stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from dataclasses import dataclass

MODEL = "hostile:latest"
_TAGS = json.dumps(
    {
        "models": [
            {
                "name": MODEL,
                "model": MODEL,
                "modified_at": "2026-01-01T00:00:00Z",
                "size": 1,
                "digest": "0" * 64,
                "details": {},
            }
        ]
    }
).encode()


@dataclass
class Behaviour:
    """What the server sends for a request other than `/api/tags`.

    `long-line`: an NDJSON answer of `good_lines` token lines, then a line that never ends, `total`
    bytes in `chunk`-byte pieces.
    `huge-answer`: an `application/json` answer of `total` bytes, never complete JSON.
    `lines`: `total` ordinary NDJSON token lines, then a final line with counts
    (`prompt_count` and `eval_count`, `total` when None: a hostile backend may say anything).
    `fixed`: one whole answer, `status`, `content_type` and `body` as given.
    """

    kind: str = "lines"
    total: int = 10
    chunk: int = 64 * 1024
    good_lines: int = 0
    path: str | None = None  # misbehave on this path only; others get three good lines
    prompt_count: object = 3
    eval_count: object = None
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b"{}"


class HostileBackend:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.sent = 0  # body bytes sent on answers other than /api/tags, since the last reset
        self.closed_early = 0  # answers the peer closed before their end
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"

    def reset(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.sent = self.closed_early = self.requests = 0

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", self.port)
            )
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="hostile-backend", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("hostile backend did not start")

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                if path == "/api/tags":
                    await self._send(writer, 200, "application/json", _TAGS)
                elif path == "/api/ps":
                    await self._send(writer, 200, "application/json", b'{"models":[]}')
                elif path == "/api/version":
                    await self._send(writer, 200, "application/json", b'{"version":"0.0.0"}')
                elif self.behaviour.path not in (None, path):
                    await self._misbehave(writer, Behaviour("lines", total=3))
                else:
                    self.requests += 1
                    await self._misbehave(writer, self.behaviour)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
        writer.write(
            f"HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _misbehave(self, writer: asyncio.StreamWriter, b: Behaviour) -> None:
        if b.kind == "fixed":
            head = (
                f"HTTP/1.1 {b.status} Whatever\r\nContent-Type: {b.content_type}\r\n"
                f"Content-Length: {len(b.body)}\r\n\r\n"
            )
            writer.write(head.encode() + b.body)
            await writer.drain()
            return
        ctype = "application/json" if b.kind == "huge-answer" else "application/x-ndjson"
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
        writer.write(head.encode())
        try:
            good = b.total if b.kind == "lines" else b.good_lines
            for i in range(good):
                line = {"model": MODEL, "message": {"role": "assistant", "content": f"t{i} "}}
                await self._chunk(writer, json.dumps(line).encode() + b"\n")
            if b.kind == "lines":
                final = {"model": MODEL, "done": True, "prompt_eval_count": b.prompt_count}
                final["eval_count"] = b.total if b.eval_count is None else b.eval_count
                await self._chunk(writer, json.dumps(final).encode() + b"\n")
            else:
                first = b'{"model":"' + MODEL.encode() + b'","message":{"content":"'
                await self._chunk(writer, first)
                piece = b"x" * b.chunk
                left = b.total
                while left > 0:
                    await self._chunk(writer, piece[:left])
                    left -= len(piece)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self.closed_early += 1
            raise

    async def _chunk(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()
        if writer.is_closing() or writer.transport.get_extra_info("socket") is None:
            raise ConnectionResetError
        self.sent += len(data)
