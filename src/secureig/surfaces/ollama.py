"""Ollama's own API (`/api/*`), so every Ollama client works through the gateway.

Routes are matched against an explicit table; anything else is refused, never forwarded. The
body a client sent is parsed, checked and re-serialised, so the upstream reads exactly the fields
the policy checked. Errors are `{"error": "<string>"}`, as Ollama's clients expect.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from secureig.policy import (
    SPECS,
    Forbidden,
    Gatekeeper,
    Operation,
    Principal,
    Refusal,
)
from secureig.surfaces._asgi import (
    JSON,
    BodyTooLarge,
    CancelOnDisconnect,
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    api_key,
    client_address,
    exchange_of,
    header,
    json_bytes,
    parse_json,
    read_body,
    refusal_status,
    respond,
    respond_json,
)
from secureig.upstream import (
    OllamaClient,
    RawResponse,
    UpstreamError,
    UpstreamTimeout,
)

NDJSON = b"application/x-ndjson"

ROUTES: dict[str, dict[str, Operation]] = {
    "/api/version": {"GET": Operation.VERSION, "HEAD": Operation.VERSION},
    "/api/tags": {"GET": Operation.LIST_MODELS, "HEAD": Operation.LIST_MODELS},
    "/api/ps": {"GET": Operation.RUNNING},
    "/api/show": {"POST": Operation.SHOW},
    "/api/generate": {"POST": Operation.GENERATE},
    "/api/chat": {"POST": Operation.CHAT},
    "/api/embed": {"POST": Operation.EMBED},
    "/api/embeddings": {"POST": Operation.EMBEDDINGS},
    "/api/pull": {"POST": Operation.PULL},
    "/api/push": {"POST": Operation.PUSH},
    "/api/create": {"POST": Operation.CREATE},
    "/api/copy": {"POST": Operation.COPY},
    "/api/delete": {"DELETE": Operation.DELETE},
}
_BLOBS = {"HEAD": Operation.BLOB_CHECK, "POST": Operation.BLOB_UPLOAD}
_DIGEST = re.compile(r"sha256[:-][0-9a-f]{64}")
# These act on the Ollama server's own ollama.com account: no key may reach them.
_NEVER_EXACT = frozenset({"/api/me", "/api/signout"})
_NEVER_PREFIXES = ("/api/user/keys/", "/api/experimental/")


class NativeError(Exception):
    def __init__(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _refusal_error(refusal: Refusal) -> NativeError:
    status, headers = refusal_status(refusal)
    return NativeError(status, refusal.message, headers)


def _upstream_error(error: UpstreamError) -> NativeError:
    return NativeError(504 if isinstance(error, UpstreamTimeout) else 502, str(error))


def classify(method: str, path: str) -> Operation | None:
    """The operation for a route; raises NativeError for routes that are not served."""
    methods = ROUTES.get(path)
    if methods is None and path.startswith("/api/blobs/"):
        if not _DIGEST.fullmatch(path.removeprefix("/api/blobs/")):
            raise NativeError(400, "invalid digest: expected sha256:<64 hex digits>")
        methods = _BLOBS
    if methods is None:
        if path in _NEVER_EXACT or path.startswith(_NEVER_PREFIXES):
            return None
        raise NativeError(404, f"{path} is not a route the gateway serves")
    operation = methods.get(method)
    if operation is None:
        allow = ", ".join(sorted(methods)).encode()
        raise NativeError(405, f"method {method} not allowed", [(b"allow", allow)])
    return operation


def parse_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise NativeError(400, "missing request body")
    try:
        value = parse_json(body)
    except ValueError as exc:
        raise NativeError(400, f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise NativeError(400, "the request body must be a JSON object")
    return value


class OllamaSurface:
    """The ASGI callable behind `/api/*`."""

    def __init__(
        self, gatekeeper: Gatekeeper, client: OllamaClient, max_body_bytes: int, max_blob_bytes: int
    ) -> None:
        self._gate = gatekeeper
        self._client = client
        self._limit = max_body_bytes
        self._blob_limit = max_blob_bytes
        self._background: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = exchange_of(scope)
        try:
            await self._handle(scope, receive, send, exchange)
        except NativeError as exc:
            if exc.status == 413:
                # An oversized upload is not drained for keep-alive: the connection closes.
                exc.headers = [*(exc.headers or []), (b"connection", b"close")]
            await respond_json(send, exc.status, {"error": exc.message}, exc.headers)
        except ClientGone:
            exchange.status, exchange.outcome = 499, "client-disconnected"

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        method, path = scope["method"], scope["path"]
        ex.surface = "ollama"
        operation = classify(method, path)
        ex.route = operation.value if operation is not None else "never-forwarded"
        try:
            principal = self._gate.authenticate(api_key(scope), client_address(scope), ex.ledger)
            if operation is None:
                raise Forbidden(
                    f"{path} acts on the Ollama server's ollama.com account;"
                    " the gateway never forwards it"
                )
            self._gate.check_scope(principal, operation)
        except Refusal as refusal:
            raise _refusal_error(refusal) from None

        if operation is Operation.BLOB_UPLOAD:
            await self._upload(scope, receive, send, ex, principal, path)
            return
        data: dict[str, Any] | None = None
        if method in ("POST", "DELETE"):
            try:
                data = parse_object(await read_body(scope, receive, self._limit))
            except BodyTooLarge as exc:
                raise NativeError(413, f"request body is larger than {exc.limit} bytes") from None
        try:
            admission = await self._gate.admit(principal, operation, ex.ledger, data)
        except Refusal as refusal:
            raise _refusal_error(refusal) from None
        ex.model = admission.model or ex.model

        if operation in (Operation.LIST_MODELS, Operation.RUNNING):
            await self._listing(send, ex, principal, path, head=method == "HEAD")
            return
        payload = json_bytes(data) if data is not None else None
        await self._forward(receive, send, ex, method, path, payload)
        if SPECS[operation].mutates and 200 <= ex.status < 300:
            self._rediscover()

    def _rediscover(self) -> None:
        # What was pulled, created or deleted shows in listings and routing without waiting.
        task = asyncio.create_task(self._gate.catalog.refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _listing(
        self, send: Send, ex: Exchange, principal: Principal, path: str, head: bool
    ) -> None:
        """`/api/tags` and `/api/ps`, showing only the models this key may use."""
        started = time.perf_counter()
        try:
            async with self._client.request("GET", path) as raw:
                body = await raw.read()
                status = raw.status
        except UpstreamError as exc:
            raise _upstream_error(exc) from None
        ex.upstream_seconds = time.perf_counter() - started
        if status >= 400:
            raise NativeError(status, _message_of(body))
        if not principal.is_admin:
            try:
                listing = parse_json(body)
                listing["models"] = [
                    m
                    for m in listing.get("models") or []
                    if self._gate.visible(principal, str(m.get("name") or m.get("model") or ""))
                ]
            except (ValueError, AttributeError, TypeError):
                raise NativeError(
                    502, "upstream sent a model list the gateway cannot read"
                ) from None
            body = json_bytes(listing)
        await respond(send, 200, b"" if head else body, JSON)

    async def _forward(
        self,
        receive: Receive,
        send: Send,
        ex: Exchange,
        method: str,
        path: str,
        payload: bytes | None,
    ) -> None:
        started = time.perf_counter()
        async with CancelOnDisconnect(receive, ex):
            try:
                async with self._client.request(method, path, payload) as raw:
                    ex.upstream_seconds = raw.waited
                    if raw.status >= 400:
                        raise NativeError(raw.status, await raw.error_message())
                    if raw.content_type.startswith("application/x-ndjson"):
                        await self._stream(raw, send, ex, started)
                    else:
                        body = b"" if method == "HEAD" else await raw.read()
                        ex.upstream_seconds = time.perf_counter() - started
                        _count_tokens(ex, body)
                        content_type = raw.content_type.encode() or JSON
                        await respond(send, raw.status, body, content_type)
            except UpstreamError as exc:
                raise _upstream_error(exc) from None

    async def _stream(self, raw: RawResponse, send: Send, ex: Exchange, started: float) -> None:
        """Forward whole NDJSON lines as they arrive; a failure becomes a last `{"error"}` line."""
        lines = await raw.next_lines()
        ex.upstream_seconds = time.perf_counter() - started
        await send(
            {
                "type": "http.response.start",
                "status": raw.status,
                "headers": [(b"content-type", NDJSON), (b"cache-control", b"no-store")],
            }
        )
        last = b""
        try:
            while lines is not None:
                # A line a token: what a cut stream is charged when no counts come.
                ex.ledger.chunks += lines.count(b"\n")
                await send({"type": "http.response.body", "body": lines, "more_body": True})
                last = lines
                lines = await raw.next_lines()
        except UpstreamError as exc:
            # A partial line would break every client's JSON parser: drop it, say what happened.
            ex.outcome = "upstream-failed-mid-stream"
            line = json_bytes({"error": str(exc)}) + b"\n"
            await send({"type": "http.response.body", "body": line, "more_body": False})
            return
        # Only the final line carries the counts; the lines before it pass through unparsed.
        _count_tokens(ex, last[last.rfind(b"\n", 0, len(last) - 1) + 1 :])
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _upload(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        ex: Exchange,
        principal: Principal,
        path: str,
    ) -> None:
        """`POST /api/blobs/:digest`: the body streams through, never held whole."""
        try:
            await self._gate.admit(principal, Operation.BLOB_UPLOAD, ex.ledger)
        except Refusal as refusal:
            raise _refusal_error(refusal) from None
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._blob_limit:
            raise NativeError(413, f"blob is larger than {self._blob_limit} bytes")
        limit = self._blob_limit
        too_large = False

        async def body() -> AsyncIterator[bytes]:
            nonlocal too_large
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                ex.bytes_in = size
                if size > limit:
                    too_large = True
                    raise BodyTooLarge(limit)
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        try:
            async with self._client.request("POST", path, body()) as raw:
                ex.upstream_seconds = raw.waited
                if raw.status >= 400:
                    raise NativeError(raw.status, await raw.error_message())
                answer = await raw.read()
                await respond(send, raw.status, answer, raw.content_type.encode() or b"text/plain")
        except UpstreamError as exc:
            if too_large:
                raise NativeError(413, f"blob is larger than {limit} bytes") from None
            raise _upstream_error(exc) from None


def _count_tokens(ex: Exchange, line: bytes) -> None:
    if b"eval_count" not in line:
        return
    try:
        value = parse_json(line)
    except ValueError:
        return
    if isinstance(value, dict):
        ex.ledger.count_tokens(value.get("prompt_eval_count"), value.get("eval_count"))


def _message_of(body: bytes) -> str:
    try:
        value = parse_json(body)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    return body.decode("utf-8", "replace").strip()[:200] or "upstream error"
