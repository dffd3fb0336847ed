"""A fast Ollama stand-in for benchmarks: canned answers over keep-alive HTTP/1.1, so the backend
is never what a benchmark measures. (tests/standin.py is the faithful one; this one is quick.)

Serves GET /api/tags, /api/version and /api/ps (nothing loaded), POST /api/generate and /api/chat,
streamed (chunked NDJSON) or not, as the request's "stream" field says (default: stream). Streams
are `--chunks` lines, sent at once, but the model "paced" sends them `--gap` seconds apart, and the
model "slow" sends `--slow-chunks` lines `--slow-gap` seconds apart, for holding streams open.
Run: python bench/fast_ollama.py --port 11435
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast

import httptools

TAGS = json.dumps(
    {
        "models": [
            {
                "name": f"{name}:latest",
                "model": f"{name}:latest",
                "modified_at": "2024-05-03T10:22:25.123456Z",
                "size": 3826793677,
                "digest": digest * 64,
                "details": {"format": "gguf", "family": "llama", "parameter_size": "7B"},
            }
            for name, digest in (("llama2", "4"), ("paced", "5"), ("slow", "6"))
        ]
    }
).encode()
CREATED = "2026-01-01T00:00:00.000000Z"
METRICS = {
    "total_duration": 1000,
    "load_duration": 10,
    "prompt_eval_count": 8,
    "prompt_eval_duration": 10,
    "eval_count": 8,
    "eval_duration": 100,
}
_PROBES = {b"/api/version": b'{"version":"0.0.0"}', b"/api/ps": b'{"models":[]}'}


def _line(chat: bool, text: str, done: bool) -> bytes:
    part: dict[str, object] = {"model": "llama2", "created_at": CREATED}
    if chat:
        part["message"] = {"role": "assistant", "content": text}
    else:
        part["response"] = text
    part["done"] = done
    if done:
        part["done_reason"] = "stop"
        part.update(METRICS)
    return json.dumps(part, separators=(",", ":")).encode() + b"\n"


def _lines(chat: bool, chunks: int) -> list[bytes]:
    return [_line(chat, f" word{i}", False) for i in range(chunks)] + [_line(chat, "", True)]


class Answers:
    def __init__(self, chunks: int, slow_chunks: int) -> None:
        words = [f" word{i}" for i in range(chunks)]
        self.stream = {chat: _lines(chat, chunks) for chat in (False, True)}
        self.slow = {chat: _lines(chat, slow_chunks) for chat in (False, True)}
        whole = "".join(words)
        self.single = {chat: _line(chat, whole, True)[:-1] for chat in (False, True)}


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


class Handler(asyncio.Protocol):
    def __init__(self, answers: Answers, gap: float, slow_gap: float) -> None:
        self.answers = answers
        self.gap = gap
        self.slow_gap = slow_gap
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.WriteTransport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.queue: asyncio.Queue[tuple[bytes, bytes, bytes]] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's classes.
        self.transport = cast(asyncio.WriteTransport, transport)
        self.worker = asyncio.get_running_loop().create_task(self.serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.queue.put_nowait((self.parser.get_method(), self.url, b"".join(self.body)))
        self.url, self.body = b"", []

    async def serve(self) -> None:
        # One request at a time per connection, in order, as HTTP/1.1 keep-alive requires.
        while True:
            method, url, body = await self.queue.get()
            await self.answer(method, url, body)

    async def answer(self, method: bytes, url: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if url == b"/api/tags":
            transport.write(_response("200 OK", b"application/json; charset=utf-8", TAGS))
            return
        if url in _PROBES:  # a gateway's health check
            transport.write(_response("200 OK", b"application/json; charset=utf-8", _PROBES[url]))
            return
        if method != b"POST" or url not in (b"/api/generate", b"/api/chat"):
            transport.write(_response("404 Not Found", b"text/plain", b"404 page not found"))
            return
        chat = url == b"/api/chat"
        stream = b'"stream":false' not in body.replace(b" ", b"")
        if not stream:
            single = self.answers.single[chat]
            transport.write(_response("200 OK", b"application/json; charset=utf-8", single))
            return
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        compact = body.replace(b" ", b"")
        slow = b'"model":"slow' in compact
        gap = self.slow_gap if slow else self.gap if b'"model":"paced' in compact else 0.0
        for line in (self.answers.slow if slow else self.answers.stream)[chat]:
            if gap:
                await asyncio.sleep(gap)
            if transport.is_closing():
                return
            transport.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        transport.write(b"0\r\n\r\n")


async def main(port: int, chunks: int, gap: float, slow_chunks: int, slow_gap: float) -> None:
    answers = Answers(chunks, slow_chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Handler(answers, gap, slow_gap), "127.0.0.1", port, backlog=4096
    )
    print(f"fast Ollama stand-in on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=11435)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--gap", type=float, default=0.02, help="the paced model's gap")
    parser.add_argument("--slow-chunks", type=int, default=30)
    parser.add_argument("--slow-gap", type=float, default=1.0, help="the slow model's gap")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.port, args.chunks, args.gap, args.slow_chunks, args.slow_gap))
