"""What every backend client gives back, whatever the backend's kind: an open answer the
forwarder and the surfaces read, and the one mapping of HTTP failures to gateway errors."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from secureig.errors import (
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from secureig.upstream.connections import (
    ConnectError,
    ConnectionPool,
    HTTPError,
    ReadTimeout,
    Response,
    ServerDisconnected,
    Timeout,
)

_ERROR_BODY_LIMIT = 64 * 1024


class Answer(Protocol):
    """An open answer in Ollama's native shape: NDJSON lines, or one JSON object."""

    status: int
    content_type: str
    waited: float  # seconds until the backend's response headers

    async def next_chunk(self) -> bytes | None: ...

    async def next_lines(self) -> bytes | None: ...

    async def read(self) -> bytes: ...

    async def error_message(self) -> str: ...


class Pending(Protocol):
    """What `client.request(...)` returns: entered once, released once."""

    async def __aenter__(self) -> Answer: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def release(self) -> None: ...


def broken(exc: HTTPError) -> UpstreamError:
    """An error after the answer began: the stream is cut short."""
    if isinstance(exc, Timeout):
        said = "upstream stopped sending before it finished"
        return UpstreamTimeout(said, public=said)
    said = "upstream connection broke off"
    return UpstreamStreamError(f"{said}: {exc}", public=said)


def unanswered(exc: HTTPError, what: str) -> UpstreamError:
    """An error before the answer began."""
    late = f"upstream did not {what} in time"
    if isinstance(exc, ReadTimeout):
        return UpstreamTimeout(late, public=late)
    if isinstance(exc, Timeout):
        return UpstreamTimeout(f"{late} ({exc})", public=late)
    if isinstance(exc, ConnectError):
        return UpstreamUnavailable(
            f"upstream is unreachable ({exc})", public="upstream is unreachable"
        )
    if isinstance(exc, ServerDisconnected):
        said = "upstream closed the connection"
        return UpstreamUnavailable(said, public=said)
    return UpstreamUnavailable(f"upstream failed: {exc}", public="upstream failed")


async def error_message(response: Response) -> str:
    """The message of an error answer: Ollama's `{"error": "..."}`, OpenAI's
    `{"error": {"message": "..."}}`, or the start of its text."""
    # An error body is read only as far as a message needs; the rest is dropped with the stream.
    try:
        body = (await response.read(_ERROR_BODY_LIMIT))[:_ERROR_BODY_LIMIT]
    except HTTPError:
        body = b""
    try:
        value = orjson.loads(body)
    except ValueError:
        value = None
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if isinstance(error, str):
        return error[:500]
    text = body.decode("utf-8", "replace").strip()
    return text[:200] or (response.reason or "no reason given")


async def get_json(pool: ConnectionPool, path: str, what: str, total: float, max_bytes: int) -> Any:
    """A small JSON answer (a model list, the version), with a short total timeout: these are
    health checks and listings, which must not hang for as long as a generation may."""
    try:
        response = await pool.send("GET", path, total=total)
    except HTTPError as exc:
        raise unanswered(exc, what) from None
    try:
        if response.status >= 400:
            message = await error_message(response)
            raise UpstreamUnavailable(f"upstream answered {response.status}: {message}")
        body = await response.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise UpstreamUnavailable(f"upstream sent an answer to {path} larger than it may")
        return orjson.loads(body)
    except HTTPError as exc:
        raise unanswered(exc, what) from None
    except ValueError:
        raise UpstreamUnavailable(f"upstream failed: its answer to {path} is not JSON") from None
    finally:
        response.release()
