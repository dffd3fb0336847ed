"""The floor to compare against: the 40-line FastAPI proxy the issue describes.

One route that checks X-API-KEY against a constant and posts the body to the backend through one
shared aiohttp ClientSession, under uvicorn with uvloop and httptools. No policy, no accounting.
Run: BACKEND=http://127.0.0.1:11435 python bench/floor.py --port 8090
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI, Request, Response

BACKEND = os.environ.get("BACKEND", "http://127.0.0.1:11435")
KEY = os.environ.get("FLOOR_KEY", "floor-key")
session: aiohttp.ClientSession | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    yield
    await session.close()


app = FastAPI(lifespan=lifespan)


@app.post("/{path:path}")
async def proxy(path: str, request: Request) -> Response:
    if request.headers.get("x-api-key") != KEY:
        return Response("Unauthorized access", status_code=403)
    assert session is not None
    async with session.post(f"{BACKEND}/{path}", data=await request.body()) as upstream:
        body = await upstream.read()
        return Response(body, upstream.status, media_type=upstream.content_type)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
        log_level="warning", access_log=False,
    )  # fmt: skip
