"""Which async HTTP client should talk to the upstream? The gateway's own (secureig's
ConnectionPool), aiohttp and httpx, measured in one run.

Starts the fast Ollama stand-in (a separate process, loopback only), then sends the same bounded
load through each client in turn, A B C A B C, and prints requests/s and client CPU per request,
with ratios against aiohttp. Run: `.venv/bin/python bench/upstream_client.py [--requests 2000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from secureig.upstream.connections import ConnectionPool, Timeouts

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"model": "llama2", "prompt": "hello there", "stream": False}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def drive(send: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> None:
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def with_aiohttp(url: str, requests: int, concurrency: int) -> None:
    async with aiohttp.ClientSession() as session:

        async def send() -> None:
            async with session.post(url, data=BODY) as response:
                await response.read()
                assert response.status == 200

        await drive(send, requests, concurrency)


async def with_httpx(url: str, requests: int, concurrency: int) -> None:
    async with httpx.AsyncClient() as client:

        async def send() -> None:
            response = await client.post(url, content=BODY)
            assert response.status_code == 200

        await drive(send, requests, concurrency)


async def with_secureig(url: str, requests: int, concurrency: int) -> None:
    origin, _, path = url.partition("/api/")
    pool = ConnectionPool(origin, Timeouts(connect=5, read=60, total=60), max_connections=100)

    async def send() -> None:
        response = await pool.send("POST", "/api/" + path, BODY)
        await response.read()
        response.release()
        assert response.status == 200

    await drive(send, requests, concurrency)
    await pool.aclose()


def measure(
    run: Callable[[str, int, int], Coroutine[Any, Any, None]], url: str, n: int, c: int
) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(run(url, n, c))
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()

    port = free_port()
    # The fast stand-in, so the clients are what is measured, not the backend.
    standin = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fast_ollama.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/tags").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/api/generate"
        clients = {"secureig": with_secureig, "aiohttp": with_aiohttp, "httpx": with_httpx}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        for _ in range(args.repetitions):
            for name, run in clients.items():
                results[name].append(measure(run, url, args.requests, args.concurrency))
    finally:
        standin.terminate()
        standin.wait(timeout=10)

    medians = {
        name: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in results.items()
    }
    print(f"{args.requests} requests x {args.repetitions}, concurrency {args.concurrency}, medians")
    print(f"{'client':8}  {'req/s':>8}  {'client CPU ms/req':>18}  {'x aiohttp req/s':>15}")
    base = medians["aiohttp"][0]
    for name, (rate, cpu) in medians.items():
        print(f"{name:8}  {rate:8.0f}  {cpu:18.3f}  {rate / base:15.2f}")


if __name__ == "__main__":
    main()
