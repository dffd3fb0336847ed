"""An Ollama backend client: explicit timeouts and a connection cap, NDJSON as it arrives.

It knows URLs and bytes, never keys: the only headers it sends are its own, and `Host` names the
upstream as its URL does, which Ollama's DNS-rebinding guard requires.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

from secureig.errors import (
    UpstreamStreamError,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from secureig.upstream.answers import Answer, broken, error_message, unanswered
from secureig.upstream.client import Loaded, PooledClient, TagEntry
from secureig.upstream.connections import ConnectionPool, HTTPError, Response, Timeouts
from secureig.upstream.lines import LineSplitter, LineTooLong

_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/x-ndjson, application/json",
}

__all__ = ["Exchange", "Loaded", "NDJSONStream", "OllamaClient", "RawResponse", "TagEntry"]


class RawResponse:
    """An open upstream answer, passed through as bytes."""

    __slots__ = (
        "_ended", "_max_answer", "_max_line", "_splitter", "content_type", "response", "status",
        "waited",
    )  # fmt: skip

    def __init__(self, response: Response, max_line_bytes: int, max_answer_bytes: int) -> None:
        self.response = response
        self.status = response.status
        self.content_type = response.header(b"content-type") or ""
        self.waited = response.waited  # seconds until the upstream's response headers
        self._max_line = max_line_bytes
        self._max_answer = max_answer_bytes
        self._splitter: LineSplitter | None = None  # made when lines are first asked for
        self._ended = False

    async def next_chunk(self) -> bytes | None:
        """The body's next bytes, None at its end; a broken connection raises
        UpstreamStreamError."""
        try:
            return await self.response.next_chunk()
        except HTTPError as exc:
            raise broken(exc) from None

    async def next_lines(self) -> bytes | None:
        """The body's next whole NDJSON lines, each ending in a newline; None at its end. A line
        longer than the line limit raises UpstreamTooLarge."""
        if self._ended:
            return None
        splitter = self._splitter
        if splitter is None:
            splitter = self._splitter = LineSplitter(self._max_line)
        try:
            while (chunk := await self.next_chunk()) is not None:
                if lines := splitter.feed(chunk):
                    return lines
        except LineTooLong as exc:
            raise UpstreamTooLarge(f"upstream sent {exc}, more than the gateway accepts") from None
        self._ended = True
        tail = splitter.tail()
        return tail + b"\n" if tail.strip() else None

    async def read(self) -> bytes:
        """The whole body; one larger than the answer limit raises UpstreamTooLarge."""
        limit = self._max_answer
        try:
            body = await self.response.read(limit + 1)
        except HTTPError as exc:
            raise broken(exc) from None
        if len(body) > limit:
            raise UpstreamTooLarge.answer(limit)
        return body

    async def error_message(self) -> str:
        return await error_message(self.response)


class NDJSONStream:
    """An open upstream answer whose lines are parsed as they arrive."""

    def __init__(self, raw: Answer) -> None:
        self._raw = raw
        self.status = raw.status

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        """Each JSON object in turn; an `{"error": ...}` line raises UpstreamStreamError."""
        raw = self._raw
        while (block := await raw.next_lines()) is not None:
            start = 0
            while (end := block.find(b"\n", start)) >= 0:
                line = block[start:end] if start or end + 1 < len(block) else block
                start = end + 1
                if line.strip():
                    yield _parse_line(line)


def _parse_line(line: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except ValueError:
        said = "upstream sent a line that is not JSON"
        raise UpstreamStreamError(said, public=said) from None
    if not isinstance(value, dict):
        said = "upstream sent a JSON line that is not an object"
        raise UpstreamStreamError(said, public=said)
    error = value.get("error")
    if error:
        # The model's own failure, said mid-answer ("an error was encountered while running the
        # model"): about the generation, so the client's to read.
        said = str(error)
        raise UpstreamStreamError(said, public=said)
    return value


class Exchange:
    """What `OllamaClient.request` returns: a plain class, not a generator-based context manager,
    because every proxied request enters one."""

    __slots__ = ("_body", "_extra", "_limits", "_method", "_path", "_pool", "_response")

    def __init__(
        self,
        pool: ConnectionPool,
        method: str,
        path: str,
        body: bytes | AsyncIterable[bytes] | None,
        limits: tuple[int, int],
        extra: bytes = b"",
    ) -> None:
        self._pool, self._method, self._path, self._body = pool, method, path, body
        self._limits = limits  # the longest line, the largest answer held whole
        self._extra = extra
        self._response: Response | None = None

    async def __aenter__(self) -> RawResponse:
        try:
            self._response = await self._pool.send(
                self._method, self._path, self._body, extra=self._extra
            )
        except HTTPError as exc:
            raise unanswered(exc, "answer") from None
        return RawResponse(self._response, *self._limits)

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Hand the connection back (or close it), once."""
        response, self._response = self._response, None
        if response is not None:
            response.release()


class OllamaClient(PooledClient):
    """One upstream Ollama server; open() before use, close() at shutdown."""

    kind = "ollama"

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts,
        max_connections: int = 100,
        max_line_bytes: int = 16 * 1024 * 1024,
        max_answer_bytes: int = 64 * 1024 * 1024,
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # api_key: the backend's own credential (a proxy in front of it).
        super().__init__(
            base_url, timeouts, _HEADERS, max_connections, max_line_bytes, max_answer_bytes,
            api_key, ssl_context,
        )  # fmt: skip

    def request(
        self,
        method: str,
        path: str,
        body: bytes | AsyncIterable[bytes] | None = None,
        whole: bool = False,
        extra: bytes = b"",
    ) -> Exchange:
        """`async with client.request(...) as raw:` sends a request and gives the open answer,
        whatever its status; leaving the block hands the connection back (or closes it). An
        answer that is `whole` (one JSON object, `stream: false`) may have one line as long as
        an answer held whole. `extra`: header lines of the gateway's own (a traceparent)."""
        line = self.max_answer_bytes if whole else self.max_line_bytes
        return Exchange(
            self._http, method, self._prefix + path, body, (line, self.max_answer_bytes), extra
        )

    async def version(self) -> str:
        """The upstream's version, from `/api/version`: the health check."""
        data = await self.get_json("/api/version", "answer its health check")
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str):
            raise UpstreamUnavailable("upstream sent no version: is it an Ollama server?")
        return version[:64]

    async def _listed(self, path: str, what: str, missing: str) -> list[tuple[str, dict[str, Any]]]:
        """Each named model of an Ollama list (`/api/tags`, `/api/ps`), with its entry."""
        data = await self.get_json(path, what)
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise UpstreamUnavailable(f"upstream sent no {missing}")
        listed = []
        for item in models:
            if isinstance(item, dict):
                name = item.get("name") or item.get("model")
                if isinstance(name, str):
                    listed.append((name, item))
        return listed

    async def tags(self) -> list[TagEntry]:
        """The models the upstream serves, as `/api/tags` lists them."""
        return [
            TagEntry(
                name=name,
                digest=str(item.get("digest", "")),
                size=int(item.get("size") or 0),
                modified_at=str(item.get("modified_at", "")),
                details=dict(item.get("details") or {}),
            )
            for name, item in await self._listed("/api/tags", "list its models", "model list")
        ]

    async def running(self) -> list[Loaded]:
        """What the upstream has loaded, from `/api/ps`, and until when."""
        loaded = []
        for name, item in await self._listed(
            "/api/ps", "list its loaded models", "list of loaded models"
        ):
            until = item.get("expires_at")
            loaded.append(
                Loaded(name=name[:500], expires_at=until[:64] if isinstance(until, str) else "")
            )
        return loaded
