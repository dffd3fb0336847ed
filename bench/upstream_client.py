"""Which async HTTP client should talk to the upstream? aiohttp and httpx, measured in one run.

Starts the Ollama stand-in (a separate process, loopback only), then sends the same bounded load
through each client in turn, A B A B, and prints requests/s and client CPU per request, with the
ratio of aiohttp to httpx. Run: `.venv/bin/python bench/upstream_client.py [--requests 2000]`.
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
    standin = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "standin.py"),
            "--port",
            str(port),
            "--chunk-delay",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/version").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/api/generate"
        results: dict[str, list[tuple[float, float]]] = {"aiohttp": [], "httpx": []}
        for _ in range(args.repetitions):
            results["aiohttp"].append(measure(with_aiohttp, url, args.requests, args.concurrency))
            results["httpx"].append(measure(with_httpx, url, args.requests, args.concurrency))
    finally:
        standin.terminate()
        standin.wait(timeout=10)

    medians = {
        name: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in results.items()
    }
    print(f"{args.requests} requests x {args.repetitions}, concurrency {args.concurrency}, medians")
    print(f"{'client':8}  {'req/s':>8}  {'client CPU ms/req':>18}")
    for name, (rate, cpu) in medians.items():
        print(f"{name:8}  {rate:8.0f}  {cpu:18.3f}")
    a, h = medians["aiohttp"], medians["httpx"]
    print(f"aiohttp/httpx: {a[0] / h[0]:.2f}x requests/s, {h[1] / a[1]:.2f}x less CPU per request")


if __name__ == "__main__":
    main()
