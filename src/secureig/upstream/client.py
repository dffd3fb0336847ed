"""What every backend client shares, whatever the backend's kind: one connection pool with its
limits, the backend's own credential, and the catalogue entries a health check gives."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from secureig import __version__
from secureig.upstream.answers import get_json
from secureig.upstream.connections import ConnectionPool, Timeouts
from secureig.urls import safe_url

USER_AGENT = f"secureig/{__version__}"


@dataclass(frozen=True, slots=True)
class TagEntry:
    """One model a backend serves, as Ollama's `/api/tags` lists it."""

    name: str
    digest: str
    size: int
    modified_at: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Loaded:
    """One model a backend has loaded, until `expires_at` (RFC 3339)."""

    name: str
    expires_at: str


class PooledClient:
    """A backend reached through one pool; open() before use, close() at shutdown. It knows URLs
    and bytes, never a client's key: the only credential it sends is the backend's own."""

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts,
        headers: dict[str, str],
        max_connections: int = 100,
        max_line_bytes: int = 16 * 1024 * 1024,
        max_answer_bytes: int = 64 * 1024 * 1024,
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self.address = safe_url(self.base_url)  # what logs and answers may show
        # A backend mounted below a path (behind a proxy, or an engine's /v1) keeps its prefix.
        self._prefix = urlsplit(self.base_url).path
        self._timeouts = timeouts
        self._max_connections = max_connections
        self.max_line_bytes = max_line_bytes
        self.max_answer_bytes = max_answer_bytes
        self._headers = {**headers, "User-Agent": USER_AGENT}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._pool: ConnectionPool | None = None

    async def open(self) -> None:
        if self._pool is None:
            self._pool = ConnectionPool(
                self.base_url,
                self._timeouts,
                max_connections=self._max_connections,
                keepalive_seconds=30.0,
                headers=self._headers,
                ssl_context=self._ssl,
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    @property
    def _http(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError(f"{type(self).__name__}.open() was not called")
        return self._pool

    async def get_json(self, path: str, what: str) -> Any:
        """A small JSON answer below the base URL (health checks, lists), within a short time."""
        return await get_json(
            self._http, self._prefix + path, what, self._timeouts.connect + 10,
            self.max_answer_bytes,
        )  # fmt: skip
