"""Load clients that wrk cannot be: streams timed chunk by chunk, paced traffic beside a flood, and
many slow streams held open at once. `bench/run.py` runs each as its own process, pinned away from
the gateway, and reads the one JSON line it prints. Loopback only; every run is bounded in time.

  python bench/clients.py streams URL BODY --key K --streams 16 --seconds 10
  python bench/clients.py flood URL BODY --key K --rate 100 --flood-rate 1000 --seconds 10
  python bench/clients.py hold URL BODY --key K --streams 1000 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


@dataclass
class Answer:
    status: int = 0
    first_byte: float | None = None
    arrivals: list[float] = field(default_factory=list)  # when each piece of body arrived
    done: bool = False


class _Reader:
    """httptools callbacks for one answer."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        if self.answer.first_byte is None:
            self.answer.first_byte = now
        if not self.answer.arrivals or now - self.answer.arrivals[-1] > 0.0005:
            self.answer.arrivals.append(now)  # pieces of one read count once

    def on_message_complete(self) -> None:
        self.answer.done = True


class Connection:
    """One keep-alive HTTP/1.1 connection that sends one request at a time."""

    def __init__(self, url: str, body: bytes, key: str | None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        headers = [
            f"POST {parts.path} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        if key:
            name = "Authorization" if key.startswith("Bearer ") else "X-API-KEY"
            headers.append(f"{name}: {key}")
        self.request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self) -> tuple[float, Answer]:
        """Send the request; return when it was sent and the whole answer."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        answer = Answer()
        parser = httptools.HttpResponseParser(_Reader(answer))
        sent = time.perf_counter()
        self.writer.write(self.request)
        while not answer.done:
            data = await self.reader.read(65536)
            if not data:
                self.close()
                raise ConnectionError("closed mid-answer")
            parser.feed_data(data)
        answer.status = parser.get_status_code()
        if not parser.should_keep_alive():
            self.close()
        return sent, answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)] * 1000


async def streams(
    url: str, body: bytes, key: str | None, count: int, seconds: float
) -> dict[str, object]:
    """`count` connections streaming back to back: time to first byte and gaps between pieces."""
    ttfb: list[float] = []
    gaps: list[float] = []
    pieces: list[int] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        connection = Connection(url, body, key)
        while time.perf_counter() < deadline:
            try:
                sent, answer = await connection.exchange()
            except OSError:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            if answer.status != 200 or answer.first_byte is None:
                errors += 1
                continue
            ttfb.append(answer.first_byte - sent)
            gaps.extend(b - a for a, b in zip(answer.arrivals, answer.arrivals[1:], strict=False))
            pieces.append(len(answer.arrivals))
        connection.close()

    await asyncio.gather(*(worker() for _ in range(count)))
    return {
        "streams": len(ttfb),
        "errors": errors,
        "ttfb_p50_ms": _ms(ttfb, 0.5),
        "ttfb_p99_ms": _ms(ttfb, 0.99),
        "gap_p50_ms": _ms(gaps, 0.5),
        "gap_p99_ms": _ms(gaps, 0.99),
        "pieces_per_stream": statistics.median(pieces) if pieces else None,
    }


async def paced(
    url: str, body: bytes, key: str | None, rate: float, seconds: float, latencies: list[float]
) -> dict[int, int]:
    """Requests started at a steady `rate`, each on a free keep-alive connection."""
    statuses: dict[int, int] = {}
    idle: list[Connection] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        connection = idle.pop() if idle else Connection(url, body, key)
        try:
            sent, answer = await connection.exchange()
        except OSError:
            statuses[0] = statuses.get(0, 0) + 1
            connection.close()
            return
        latencies.append(time.perf_counter() - sent)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        idle.append(connection)

    start = time.perf_counter()
    for n in range(int(rate * seconds)):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    for connection in idle:
        connection.close()
    return statuses


async def flood(
    url: str, body: bytes, key: str | None, rate: float, flood_rate: float, seconds: float
) -> dict[str, object]:
    """Real traffic at `rate` beside requests with invalid keys at `flood_rate`."""
    real: list[float] = []
    refused: list[float] = []
    jobs = [paced(url, body, key, rate, seconds, real)]
    if flood_rate > 0:
        jobs.append(paced(url, body, "sig_" + "0" * 40, flood_rate, seconds, refused))
    results = await asyncio.gather(*jobs)
    return {
        "real_p50_ms": _ms(real, 0.5),
        "real_p99_ms": _ms(real, 0.99),
        "real_statuses": results[0],
        "refused_p50_ms": _ms(refused, 0.5),
        "flood_statuses": results[1] if flood_rate > 0 else {},
        "flood_per_s": (sum(results[1].values()) / seconds) if flood_rate > 0 else 0.0,
    }


async def hold(url: str, body: bytes, key: str | None, count: int, seconds: float) -> None:
    """Open `count` slow streams at once; say so on stdout when every one has begun, and report
    when they have all ended."""
    begun = 0
    answers: list[Answer] = []
    everyone = asyncio.Event()

    async def one() -> None:
        nonlocal begun
        connection = Connection(url, body, key)
        answer = Answer()
        answers.append(answer)
        reader, writer = await asyncio.open_connection(connection.host, connection.port)
        parser = httptools.HttpResponseParser(_Reader(answer))
        writer.write(connection.request)
        counted = False
        try:
            while not answer.done:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
                if answer.first_byte is not None and not counted:
                    counted = True
                    begun += 1
                    if begun == count:
                        everyone.set()
            answer.status = parser.get_status_code()
        finally:
            writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    try:
        await asyncio.wait_for(everyone.wait(), seconds)
        print(json.dumps({"begun": begun}), flush=True)
    except TimeoutError:
        print(json.dumps({"begun": begun, "timeout": True}), flush=True)
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    complete = sum(1 for a in answers if a.done and a.status == 200)
    print(json.dumps({"complete": complete, "of": count}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("mode", choices=["streams", "flood", "hold"])
    parser.add_argument("url")
    parser.add_argument("body", help="the JSON request body")
    parser.add_argument("--key")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--flood-rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("bench clients talk to loopback only")
    body = args.body.encode()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.mode == "streams":
        print(
            json.dumps(asyncio.run(streams(args.url, body, args.key, args.streams, args.seconds)))
        )
    elif args.mode == "flood":
        result = asyncio.run(
            flood(args.url, body, args.key, args.rate, args.flood_rate, args.seconds)
        )
        print(json.dumps(result))
    else:
        asyncio.run(hold(args.url, body, args.key, args.streams, args.seconds))


if __name__ == "__main__":
    main()
