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

from secureig.errors import (
    BodyTooLarge,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    RequestError,
    RouteNotFound,
    UpstreamError,
    UpstreamStatusError,
)
from secureig.policy import SPECS, Gatekeeper, Operation, Principal
from secureig.surfaces._asgi import (
    JSON,
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    api_key,
    client_of,
    exchange_of,
    for_client,
    header,
    json_bytes,
    parse_json,
    read_body,
    respond,
    respond_json,
)
from secureig.surfaces._forward import Forwarder, Target
from secureig.translate import RequestBounds, TranslationError, check_bounds
from secureig.upstream import Answer

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


def classify(method: str, path: str) -> Operation | None:
    """The operation for a route, None for one never forwarded; raises for routes not served."""
    methods = ROUTES.get(path)
    if methods is None and path.startswith("/api/blobs/"):
        if not _DIGEST.fullmatch(path.removeprefix("/api/blobs/")):
            raise RequestError("invalid digest: expected sha256:<64 hex digits>")
        methods = _BLOBS
    if methods is None:
        if path in _NEVER_EXACT or path.startswith(_NEVER_PREFIXES):
            return None
        raise RouteNotFound(f"{path} is not a route the gateway serves")
    operation = methods.get(method)
    if operation is None:
        raise MethodNotAllowed(f"method {method} not allowed", ", ".join(sorted(methods)))
    return operation


def parse_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise RequestError("missing request body")
    try:
        value = parse_json(body)
    except ValueError as exc:
        raise RequestError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError("the request body must be a JSON object")
    return value


class OllamaSurface:
    """The ASGI callable behind `/api/*`."""

    def __init__(
        self,
        gatekeeper: Gatekeeper,
        forwarder: Forwarder,
        max_body_bytes: int,
        max_blob_bytes: int,
        bounds: RequestBounds,
    ) -> None:
        self._gate = gatekeeper
        self._forwarder = forwarder
        self._limit = max_body_bytes
        self._blob_limit = max_blob_bytes
        self._bounds = bounds
        self._background: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = exchange_of(scope)
        try:
            await self._handle(scope, receive, send, exchange)
        except GatewayError as exc:
            exc = for_client(exc, exchange)
            await respond_json(send, exc.status, {"error": exc.message}, exc.headers)
        except ClientGone:
            exchange.status, exchange.outcome = 499, "client-disconnected"

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        method, path = scope["method"], scope["path"]
        ex.surface = "ollama"
        operation = classify(method, path)
        ex.route = operation.value if operation is not None else "never-forwarded"
        principal = self._gate.authenticate(api_key(scope), client_of(scope), ex.ledger)
        if operation is None:
            raise Forbidden(
                f"{path} acts on the Ollama server's ollama.com account;"
                " the gateway never forwards it"
            )
        self._gate.check_scope(principal, operation)

        if operation is Operation.BLOB_UPLOAD:
            await self._upload(scope, receive, send, ex, principal, path)
            return
        data: dict[str, Any] | None = None
        if method in ("POST", "DELETE"):
            data = parse_object(await read_body(scope, receive, self._limit))
            if operation is Operation.CHAT:
                # An engine backend translates the messages: as bounded as on every API.
                try:
                    check_bounds(data, self._bounds)
                except TranslationError as exc:
                    raise RequestError(exc.message, exc.param) from None
        admission = await self._gate.admit(principal, operation, ex.ledger, data)
        ex.model = admission.model or ex.model

        if operation in (Operation.LIST_MODELS, Operation.RUNNING):
            await self._listing(send, ex, principal, path, head=method == "HEAD")
            return
        forwarder = self._forwarder
        spec = SPECS[operation]
        if spec.inference:
            assert data is not None
            requested = str(data.get("model") or "")
            call = forwarder.inference(
                admission, path, data, requested, forwarder.pinned(scope, principal)
            )
        elif operation in _MANAGEMENT:
            payload = json_bytes(data) if data is not None else None
            call = forwarder.management(scope, principal, method, path, payload)
        else:
            payload = json_bytes(data) if data is not None else None
            target = Target.MODEL if admission.models else Target.ANY
            key = admission.key if admission.models else None
            call = forwarder.call(method, path, payload, target, ex.model or "", key)
        started = time.perf_counter()
        async with forwarder.open(receive, ex, call) as raw:
            if raw.content_type.startswith("application/x-ndjson"):
                await self._stream(raw, send, ex, started)
            else:
                body = b"" if method == "HEAD" else await raw.read()
                ex.upstream_seconds = time.perf_counter() - started
                _count_tokens(ex, body)
                # JSON, whatever the backend says: a text/html answer served from the gateway's
                # origin could run a script with the console's session.
                await respond(send, raw.status, body, JSON)
        if spec.mutates and 200 <= ex.status < 300:
            self._rediscover()

    def _rediscover(self) -> None:
        # What was pulled, created or deleted shows in listings and routing without waiting.
        task = asyncio.create_task(self._gate.catalog.refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _listing(
        self, send: Send, ex: Exchange, principal: Principal, path: str, head: bool
    ) -> None:
        """`/api/tags` and `/api/ps` across the fleet, showing only the models this key may use."""
        started = time.perf_counter()
        answers = await self._forwarder.gather(path)
        ex.upstream_seconds = time.perf_counter() - started
        good = [(backend, body) for backend, status, body in answers if status < 400]
        if not good:
            _, status, body = answers[0]
            raise UpstreamStatusError(status, _message_of(body))
        if len(good) == 1 and principal.is_admin:
            body = good[0][1]  # one backend, nothing to hide: its answer as it came
        else:
            try:
                models: list[Any] = []
                seen: set[str] = set()
                for _, answer in good:
                    for m in parse_json(answer).get("models") or []:
                        name = str(m.get("name") or m.get("model") or "")
                        if name in seen or not (
                            principal.is_admin or self._gate.visible(principal, name)
                        ):
                            continue
                        seen.add(name)
                        models.append(m)
            except (ValueError, AttributeError, TypeError):
                raise UpstreamError("upstream sent a model list the gateway cannot read") from None
            body = json_bytes({"models": models})
        await respond(send, 200, b"" if head else body, JSON)

    async def _stream(self, raw: Answer, send: Send, ex: Exchange, started: float) -> None:
        """Forward whole NDJSON lines as they arrive; a failure becomes a last `{"error"}` line."""
        try:
            lines = await raw.next_lines()
        finally:
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
            line = json_bytes({"error": for_client(exc, ex).message}) + b"\n"
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
        await self._gate.admit(principal, Operation.BLOB_UPLOAD, ex.ledger)
        declared = header(scope, b"content-length")
        limit = self._blob_limit
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(limit, "blob")
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
                    raise BodyTooLarge(limit, "blob")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        call = self._forwarder.management(scope, principal, "POST", path, body())
        try:
            async with self._forwarder.open(receive, ex, call) as raw:
                answer = await raw.read()
                await respond(send, raw.status, answer, JSON)
        except UpstreamError:
            if too_large:
                raise BodyTooLarge(limit, "blob") from None
            raise


# What acts on one backend's models: sent where the operator says, and never retried.
_MANAGEMENT = frozenset({
    Operation.PULL, Operation.PUSH, Operation.CREATE, Operation.COPY, Operation.DELETE,
    Operation.BLOB_CHECK, Operation.BLOB_UPLOAD,
})  # fmt: skip


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
