"""The few ASGI pieces the hot routes need: headers, a size-capped body, responses, timing.

The proxy routes are plain ASGI callables rather than FastAPI routes: per-request dependency
machinery costs more than everything the gateway decides (see DESIGN.md, "Hot path budget").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from secureig.errors import BodyTooLarge, GatewayError, UpstreamError
from secureig.policy import UNKNOWN_CLIENT, Client, Ledger
from secureig.untrusted import printable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXCHANGE = "secureig.exchange"
log = logging.getLogger("secureig.upstream")
JSON = b"application/json; charset=utf-8"


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class StreamAborted(Exception):
    """Raised after the response started, so the server cuts the connection and the client sees an
    incomplete transfer rather than a short answer that looks complete."""


@dataclass(slots=True)
class Exchange:
    """What the access log, usage records, metrics and Server-Timing need about one request."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    client: Client = UNKNOWN_CLIENT  # who asks, resolved once (surfaces.forwarded)
    surface: str = "ops"
    route: str = "other"  # the operation: a bounded label, unlike the path
    ledger: Ledger = field(default_factory=Ledger)
    model: str | None = None
    status: int = 0
    upstream_seconds: float | None = None
    outcome: str | None = None  # what went wrong after the status left, for the access log
    bytes_in: int = 0
    bytes_out: int = 0
    first_byte: float | None = None  # perf_counter when the first body byte left
    backend: str | None = None  # the backend's name, once the router picked one
    queue_seconds: float = 0.0  # how long it waited for a free place on a backend
    span: Any = None  # its trace span, when tracing is on (secureig.tracing)

    @property
    def key_name(self) -> str | None:
        principal = self.ledger.principal
        return principal.name if principal is not None else None

    def server_timing(self) -> bytes:
        total = time.perf_counter() - self.started
        if self.upstream_seconds is None:
            return f"gateway;dur={total * 1000:.2f}".encode()
        own = max(total - self.upstream_seconds, 0.0)
        return (
            f"gateway;dur={own * 1000:.2f}, upstream;dur={self.upstream_seconds * 1000:.2f}"
        ).encode()


def for_client(error: GatewayError, exchange: Exchange) -> GatewayError:
    """The error as this request's client may read it: a backend's names and words are for
    keys with the admin scope, and the log (`error.message` is replaced in place)."""
    if isinstance(error, UpstreamError):
        principal = exchange.ledger.principal
        if principal is None or not principal.is_admin:
            detail, error.message = error.message, error.public()
            if detail != error.message:
                log.info(
                    "rid=%s %s (told the client: %s)",
                    exchange.request_id,
                    printable(detail, 300),
                    error.message,
                )
    return error


def client_of(scope: Scope) -> Client:
    """The request's client, as `ClientAddress` resolved it for every decision by address."""
    return exchange_of(scope).client


def exchange_of(scope: Scope) -> Exchange:
    exchange: Exchange = scope[EXCHANGE]
    return exchange


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header (names are lower-case bytes in ASGI)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def cookie(scope: Scope, name: str) -> str | None:
    """One cookie's value from the `Cookie` headers, or None."""
    for key, value in scope["headers"]:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                found, _, content = part.strip().partition("=")
                if found == name:
                    return str(content)
    return None


def api_key(scope: Scope) -> str | None:
    """The key from `X-API-KEY`, `Authorization: Bearer`, or `Authorization: Basic` with the key
    as the password (`http://user:KEY@host`; the user part is ignored); never from the query
    string."""
    authorization: bytes | None = None
    for key, value in scope["headers"]:
        if key == b"x-api-key":
            return str(value.decode("latin-1")).strip()
        if key == b"authorization":
            authorization = value
    if authorization is not None:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return str(token).strip()
        if scheme == "basic":
            return _basic_password(token.strip())
    return None


def _basic_password(token: str) -> str | None:
    # A value that is not base64 "user:password" is no key at all: 401 like any wrong key.
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon and password else None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused as soon as it is known to cross `limit` (chunked uploads too)."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            body = b"".join(chunks)
            exchange_of(scope).bytes_in = len(body)
            return body


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_bytes(value: object) -> bytes:
    """Compact UTF-8 JSON. orjson: the stdlib's encoder and decoder were a tenth of a request."""
    return orjson.dumps(value)


def parse_json(body: bytes) -> Any:
    """A JSON document; raises ValueError (orjson.JSONDecodeError) when it is not one."""
    return orjson.loads(body)


async def respond_json(
    send: Send, status: int, value: object, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await respond(send, status, json_bytes(value), JSON, extra)


async def respond_error(
    scope: Scope, send: Send, status: int, message: str, param: str | None = None
) -> None:
    """An error before any surface has looked at the request, in the shape its path's surface
    uses: plain text for the seed, Anthropic's envelope under /v1/messages, OpenAI's under the
    rest of /v1, `{"error"}` everywhere else."""
    path: str = scope.get("path", "")
    if path == "/request":
        await respond(send, status, message.encode(), b"text/plain; charset=utf-8")
    elif path == "/v1/messages" or path.startswith("/v1/messages/"):
        refusal = {"type": "invalid_request_error", "message": message}
        await respond_json(send, status, {"type": "error", "error": refusal})
    elif path == "/v1" or path.startswith("/v1/"):
        error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
        await respond_json(send, status, {"error": error})
    else:
        await respond_json(send, status, {"error": message})


# Most answers are over before this; a client gone sooner is noticed this much later.
WATCH_AFTER = 0.05


class CancelOnDisconnect:
    """`async with CancelOnDisconnect(receive, exchange):` runs the block, cancelling it if the
    client goes away, so the upstream request is dropped at once rather than generating for
    nobody. That cancellation ends the block quietly.

    The watch starts only once the block has run for WATCH_AFTER seconds: a task per request
    would cost more than everything the gateway decides, and a quick answer needs no watching.
    """

    __slots__ = ("_exchange", "_handle", "_receive", "_task", "_watcher")

    def __init__(self, receive: Receive, exchange: Exchange) -> None:
        self._receive = receive
        self._exchange = exchange
        self._watcher: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        self._handle = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                assert self._task is not None
                self._task.cancel()
                return

    async def __aexit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> bool:
        assert self._handle is not None and self._task is not None
        self._handle.cancel()
        watcher = self._watcher
        if watcher is not None and not watcher.done():
            watcher.cancel()
        if kind is asyncio.CancelledError:
            if watcher is None or not watcher.done() or watcher.cancelled():
                return False  # cancelled by someone else: let it propagate
            self._task.uncancel()
            self._exchange.status, self._exchange.outcome = 499, "client-disconnected"
            return True
        return False
