"""An Ollama backend client: pooled aiohttp connections, explicit timeouts, NDJSON as it arrives.

It knows URLs and bytes, never keys: the only headers it sends are its own, and aiohttp sets
`Host` from the upstream URL, which Ollama's DNS-rebinding guard requires.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from secureig import __version__

_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/x-ndjson, application/json",
    "User-Agent": f"secureig/{__version__}",
}


_ERROR_BODY_LIMIT = 64 * 1024


class UpstreamError(Exception):
    """Anything that kept the upstream from answering as asked; `str()` is safe to show clients."""


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached (refused, unresolvable, reset before answering)."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect or answer within the configured timeouts."""


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; `message` is its own `error` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"upstream answered {status}: {message}")
        self.status = status
        self.message = message


class UpstreamStreamError(UpstreamError):
    """The upstream broke off, or reported an error, after its answer had started."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    read: float
    total: float


@dataclass(frozen=True, slots=True)
class TagEntry:
    """One model as `/api/tags` lists it."""

    name: str
    digest: str
    size: int
    modified_at: str
    details: dict[str, Any] = field(default_factory=dict)


class RawResponse:
    """An open upstream answer, passed through as bytes."""

    def __init__(self, response: aiohttp.ClientResponse, waited: float) -> None:
        self.response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "")
        self.waited = waited  # seconds until the upstream's response headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a broken connection raises UpstreamStreamError."""
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamStreamError(f"upstream connection broke off: {_reason(exc)}") from None
        except TimeoutError:
            raise UpstreamTimeout("upstream stopped sending before it finished") from None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def error_message(self) -> str:
        return await _error_message(self.response)


class NDJSONStream:
    """An open upstream answer whose lines are parsed as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse, max_line_bytes: int) -> None:
        self._response = response
        self._max_line = max_line_bytes
        self.status = response.status

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        """Each JSON object in turn; an `{"error": ...}` line raises UpstreamStreamError."""
        buffer = b""
        try:
            async for chunk in self._response.content.iter_any():
                # Search only the new bytes: a long line arriving in many pieces stays linear.
                scan = len(buffer)
                buffer += chunk
                while (end := buffer.find(b"\n", scan)) >= 0:
                    line, buffer, scan = buffer[:end], buffer[end + 1 :], 0
                    if line.strip():
                        yield _parse_line(line)
                if len(buffer) > self._max_line:
                    raise UpstreamStreamError(
                        "upstream sent a line longer than the gateway accepts"
                    )
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamStreamError(f"upstream connection broke off: {_reason(exc)}") from None
        except TimeoutError:
            raise UpstreamTimeout("upstream stopped sending before it finished") from None
        if buffer.strip():
            yield _parse_line(buffer)


def _parse_line(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        raise UpstreamStreamError("upstream sent a line that is not JSON") from None
    if not isinstance(value, dict):
        raise UpstreamStreamError("upstream sent a JSON line that is not an object")
    error = value.get("error")
    if error:
        raise UpstreamStreamError(str(error))
    return value


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    # The OS's words, without addresses: the message may reach clients.
    code = exc.os_error.errno
    return os.strerror(code).lower() if code else "cannot connect"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _error_message(response: aiohttp.ClientResponse) -> str:
    # An error body is read only as far as a message needs; the rest is dropped with the stream.
    body = b""
    while len(body) < _ERROR_BODY_LIMIT:
        chunk = await response.content.read(_ERROR_BODY_LIMIT - len(body))
        if not chunk:
            break
        body += chunk
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    text = body.decode("utf-8", "replace").strip()
    return text[:200] or (response.reason or "no reason given")


class OllamaClient:
    """One upstream Ollama server; open() before use, close() at shutdown."""

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts,
        max_connections: int = 100,
        max_line_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._max_line = max_line_bytes
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=30, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=self._timeouts.total,
                    sock_connect=self._timeouts.connect,
                    sock_read=self._timeouts.read,
                ),
                headers=_HEADERS,
                # Never let aiohttp pick up proxy settings or cookies from anywhere.
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OllamaClient.open() was not called")
        return self._session

    @asynccontextmanager
    async def request(
        self, method: str, path: str, body: bytes | AsyncIterable[bytes] | None = None
    ) -> AsyncIterator[RawResponse]:
        """Send a request and yield the open answer, whatever its status."""
        started = time.perf_counter()
        try:
            async with self._http.request(method, self.base_url + path, data=body) as response:
                yield RawResponse(response, time.perf_counter() - started)
        except TimeoutError:
            raise UpstreamTimeout("upstream did not answer in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(f"upstream is unreachable ({_os_reason(exc)})") from None
        except aiohttp.ServerDisconnectedError:
            raise UpstreamUnavailable("upstream closed the connection") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream failed: {_reason(exc)}") from None

    @asynccontextmanager
    async def stream(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[tuple[NDJSONStream, float]]:
        """POST `body` and yield its NDJSON answer and the seconds the upstream took to answer.

        An error status raises UpstreamStatusError before anything is yielded.
        """
        payload = json.dumps(body, ensure_ascii=False).encode()
        async with self.request("POST", path, payload) as raw:
            if raw.status >= 400:
                raise UpstreamStatusError(raw.status, await raw.error_message())
            yield NDJSONStream(raw.response, self._max_line), raw.waited

    async def tags(self) -> list[TagEntry]:
        """The models the upstream serves, as `/api/tags` lists them."""
        try:
            async with self._http.get(
                self.base_url + "/api/tags",
                timeout=aiohttp.ClientTimeout(
                    total=self._timeouts.connect + 10, sock_connect=self._timeouts.connect
                ),
            ) as response:
                if response.status >= 400:
                    raise UpstreamStatusError(response.status, await _error_message(response))
                data = await response.json(content_type=None)
        except TimeoutError:
            raise UpstreamTimeout("upstream did not list its models in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(f"upstream is unreachable ({_os_reason(exc)})") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise UpstreamUnavailable(f"upstream failed: {_reason(exc)}") from None
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise UpstreamUnavailable("upstream sent no model list")
        entries = []
        for item in models:
            if isinstance(item, dict) and isinstance(item.get("name") or item.get("model"), str):
                entries.append(
                    TagEntry(
                        name=str(item.get("name") or item.get("model")),
                        digest=str(item.get("digest", "")),
                        size=int(item.get("size") or 0),
                        modified_at=str(item.get("modified_at", "")),
                        details=dict(item.get("details") or {}),
                    )
                )
        return entries
