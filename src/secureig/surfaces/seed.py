"""The seed's documented endpoint, `POST /request`: a prompt in, the model's text out, plain text.

Errors are plain text with the seed's status codes: 403 for a missing or wrong key, for no models
or an unreachable upstream, and for a model that does not exist or cannot be served; 422 for a
malformed body, 413 for an oversized one.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secureig.errors import (
    BodyTooLarge,
    Forbidden,
    GatewayError,
    Headers,
    InvalidModel,
    InvalidRequest,
    LimiterDown,
    ModelNotFound,
    NoModels,
    RequestError,
    TooManyRequests,
    Unauthenticated,
    UpstreamBusy,
    UpstreamDown,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from secureig.policy import Gatekeeper, Operation
from secureig.surfaces._asgi import (
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    StreamAborted,
    api_key,
    client_of,
    exchange_of,
    for_client,
    read_body,
    respond,
)
from secureig.surfaces._forward import Forwarder
from secureig.upstream import NDJSONStream

TEXT = b"text/plain; charset=utf-8"


class SeedRequest(BaseModel):
    """Body of `POST /request`."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(min_length=1, description="Model name, resolved as Ollama does.")
    request: str = Field(min_length=1, description="The prompt.")
    stream: bool = Field(default=False, description="Send the text as it is generated.")
    options: dict[str, Any] = Field(default_factory=dict, description="Ollama model options.")


def render(error: GatewayError) -> tuple[int, str, Headers]:
    """The seed's plain-text answer for an error: its own statuses (403 for most refusals and for
    an upstream that cannot serve) and its own words."""
    if isinstance(error, RequestError):
        if isinstance(error, BodyTooLarge):
            return 413, f"Request body too large: the limit is {error.limit} bytes", error.headers
        return error.status, error.message, error.headers
    if isinstance(error, TooManyRequests):
        return 429, f"Too many requests: {error.message}", error.headers
    if isinstance(error, LimiterDown):
        return 503, f"Service unavailable: {error.message}", []
    if isinstance(error, Unauthenticated):
        return 403, f"Unauthorized access: {error.message}", []
    if isinstance(error, Forbidden):
        return 403, f"Forbidden: {error.message}", []
    if isinstance(error, UpstreamDown | NoModels):
        return 403, error.message[:1].upper() + error.message[1:], []
    if isinstance(error, ModelNotFound | InvalidModel):
        return 403, f"Model not available: {error.message}", []
    if isinstance(error, InvalidRequest):
        return 422, f"Invalid request body: {error.message}", []
    if isinstance(error, UpstreamBusy):
        return 503, f"Upstream busy: {error.message}", error.headers
    if isinstance(error, UpstreamStatusError):
        model = error.model
        if error.status == 404:
            return 403, f"Model not available: model {model!r} not found", []
        if error.status in (429, 503):
            return error.status, f"Upstream busy: {error.message}", []
        return 403, f"Model {model!r} cannot be served: {error.message}", []
    if isinstance(error, UpstreamUnavailable):
        return 403, f"No models available: {error.message}", []
    if isinstance(error, UpstreamTimeout):
        return 504, f"Upstream timed out: {error.message}", []
    if isinstance(error, UpstreamError):
        return 502, f"Upstream failed: {error.message}", []
    return 403, error.message, []


def _validation_message(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "body"
        problems.append(f"{where}: {item['msg']}")
    return "Invalid request body: " + "; ".join(problems)


def parse(body: bytes) -> SeedRequest:
    if not body.strip():
        raise RequestError(
            'Invalid request body: expected JSON {"model": ..., "request": ...}', status=422
        )
    try:
        return SeedRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestError(_validation_message(exc), status=422) from None


class SeedSurface:
    """The ASGI callable behind `/request`."""

    def __init__(self, gatekeeper: Gatekeeper, forwarder: Forwarder, max_body_bytes: int) -> None:
        self._gate = gatekeeper
        self._forwarder = forwarder
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = exchange_of(scope)
        exchange.surface, exchange.route = "seed", Operation.GENERATE.value
        if scope["method"] != "POST":
            await respond(send, 405, b"Method not allowed: use POST", TEXT, [(b"allow", b"POST")])
            return
        try:
            await self._handle(scope, receive, send, exchange)
        except GatewayError as exc:
            status, message, headers = render(for_client(exc, exchange))
            await respond(send, status, message.encode(), TEXT, headers)
        except ClientGone:
            exchange.status, exchange.outcome = 499, "client-disconnected"

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        # Key and scope are checked before the body is read: a stranger's upload costs nothing.
        principal = self._gate.authenticate(api_key(scope), client_of(scope), ex.ledger)
        self._gate.check_scope(principal, Operation.GENERATE)
        seed = parse(await read_body(scope, receive, self._limit))
        upstream_body: dict[str, Any] = {
            "model": seed.model,
            "prompt": seed.request,
            "stream": True,
        }
        if seed.options:
            upstream_body["options"] = seed.options
        admission = await self._gate.admit(principal, Operation.GENERATE, ex.ledger, upstream_body)
        assert admission.upstream is not None
        upstream_body["model"] = admission.upstream.name
        ex.model = admission.model
        pinned = self._forwarder.pinned(scope, principal)
        call = self._forwarder.inference(
            admission, "/api/generate", upstream_body, seed.model, pinned
        )
        started = time.perf_counter()
        async with self._forwarder.open(receive, ex, call) as raw:
            upstream = NDJSONStream(raw)
            try:
                if seed.stream:
                    await self._stream(upstream, send, ex, started)
                else:
                    await self._collect(upstream, send, ex, started)
            except UpstreamError as exc:
                if ex.status:  # headers already left
                    ex.outcome = "upstream-failed-mid-stream"
                    raise StreamAborted(str(exc)) from None
                raise

    async def _collect(
        self, upstream: NDJSONStream, send: Send, ex: Exchange, started: float
    ) -> None:
        parts: list[str] = []
        size, limit = 0, self._forwarder.max_answer_bytes
        async for line in upstream.lines():
            ex.ledger.chunks += 1
            piece = line.get("response")
            if isinstance(piece, str):
                parts.append(piece)
                size += len(piece)
                if size > limit:
                    raise UpstreamTooLarge.answer(limit)
            if line.get("done"):
                ex.ledger.count_tokens(line.get("prompt_eval_count"), line.get("eval_count"))
        # Nothing left before the upstream finished: all of that wait was the upstream's.
        ex.upstream_seconds = time.perf_counter() - started
        await respond(send, 200, "".join(parts).encode(), TEXT)

    async def _stream(
        self, upstream: NDJSONStream, send: Send, ex: Exchange, started: float
    ) -> None:
        lines = upstream.lines()
        # The first line decides the status: an error before any output is still a proper error.
        first = await anext(lines, None)
        ex.upstream_seconds = time.perf_counter() - started
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", TEXT), (b"cache-control", b"no-store")],
            }
        )
        if first is not None:
            await self._send_piece(send, first, ex)
            async for line in lines:
                await self._send_piece(send, line, ex)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _send_piece(send: Send, line: dict[str, Any], ex: Exchange) -> None:
        ex.ledger.chunks += 1
        if line.get("done"):
            ex.ledger.count_tokens(line.get("prompt_eval_count"), line.get("eval_count"))
        piece = line.get("response")
        if isinstance(piece, str) and piece:
            await send({"type": "http.response.body", "body": piece.encode(), "more_body": True})
