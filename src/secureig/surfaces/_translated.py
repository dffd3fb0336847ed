"""What the translating surfaces (OpenAI chat, Messages, Responses) share: reading, translating
and admitting the JSON body, a whole native answer, and relaying a native stream as the surface's
server-sent events."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from secureig.errors import GatewayError, Headers, RequestError, UpstreamError, UpstreamStreamError
from secureig.policy import Gatekeeper, Operation, Principal
from secureig.surfaces._asgi import (
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    exchange_of,
    for_client,
    parse_json,
    read_body,
    respond_json,
)
from secureig.surfaces._forward import Call, Forwarder
from secureig.translate import RequestBounds, TranslationError, check_bounds, requested_model
from secureig.upstream import NDJSONStream

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
ENDED_EARLY = "the upstream ended the stream before it finished"
log = logging.getLogger("secureig")


class EventStream(Protocol):
    """Native NDJSON lines in, the surface's encoded events out."""

    @property
    def done(self) -> bool: ...

    @property
    def error(self) -> str | None: ...

    def feed(self, line: dict[str, Any]) -> bytes: ...

    def failed(self, message: str) -> bytes: ...


class Translated(Protocol):
    """A translated request: the native body to check and forward, and the model it names."""

    @property
    def native(self) -> dict[str, Any]: ...

    @property
    def model(self) -> str: ...


Plan = TypeVar("Plan", bound=Translated)
Render = Callable[[GatewayError], tuple[int, dict[str, Any], Headers]]


class TranslatingSurface:
    """The ASGI callable a translating surface is: `_handle` does the work, and every error it
    raises is answered through `render`, in the surface's own shape."""

    render: Render

    def __init__(
        self,
        gatekeeper: Gatekeeper,
        forwarder: Forwarder,
        max_body_bytes: int,
        bounds: RequestBounds,
    ) -> None:
        self._gate = gatekeeper
        self._forwarder = forwarder
        self._limit = max_body_bytes
        self._bounds = bounds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = exchange_of(scope)
        try:
            await self._handle(scope, receive, send, exchange)
        except GatewayError as exc:
            status, body, headers = type(self).render(for_client(exc, exchange))
            await respond_json(send, status, body, headers)
        except ClientGone:
            exchange.status, exchange.outcome = 499, "client-disconnected"

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        raise NotImplementedError

    async def _admit(
        self,
        scope: Scope,
        receive: Receive,
        ex: Exchange,
        principal: Principal,
        operation: Operation,
        translate: Callable[[object], Plan],
        native_path: str,
    ) -> tuple[Plan, Call]:
        """Read the body; admit its model and count it against the key's limits; translate it,
        and admit the native request it became (the policy checks exactly what will be sent);
        route it. The plan for the answer, and the call to open. Nothing is translated for a
        key that may not use the model, or that is over its limits: a translation is linear in
        its input, but the input is the client's."""
        body = json_body(await read_body(scope, receive, self._limit))
        try:
            model = requested_model(body)
            check_bounds(body, self._bounds)
        except Exception as exc:
            raise translation_error(exc) from None
        admission = await self._gate.admit_model(principal, operation, ex.ledger, model)
        ex.model = admission.model
        try:
            plan = translate(body)
        except Exception as exc:
            raise translation_error(exc) from None
        self._gate.admit_body(admission, ex.ledger, plan.native)
        forwarder = self._forwarder
        pinned = forwarder.pinned(scope, principal)
        return plan, forwarder.inference(admission, native_path, plan.native, plan.model, pinned)


def translation_error(exc: Exception) -> GatewayError:
    """What a translation's failure is to the client: its refusal as the surface's 400, and
    any other fault a 400 too, logged (throttled): a body the translation did not foresee is
    still the client's, never a 500."""
    if isinstance(exc, TranslationError):
        return RequestError(exc.message, exc.param)
    if isinstance(exc, GatewayError):
        return exc
    now = time.monotonic()
    global _fault_logged
    if now - _fault_logged >= 60.0:
        _fault_logged = now
        log.error(
            "a request body the translation did not foresee (400 to the client)",
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    return RequestError(f"the request body could not be translated ({type(exc).__name__})")


_fault_logged = -60.0


def json_body(body: bytes) -> object:
    if not body.strip():
        raise RequestError("missing request body")
    try:
        return parse_json(body)
    except ValueError as exc:
        raise RequestError(f"We could not parse the JSON body of your request: {exc}") from None


async def whole_answer(upstream: NDJSONStream, ex: Exchange, started: float) -> dict[str, Any]:
    """A non-streamed native answer: one JSON object (the last, should there be several),
    counted on the request's ledger."""
    answer: dict[str, Any] | None = None
    async for line in upstream.lines():
        answer = line
    ex.upstream_seconds = time.perf_counter() - started
    if answer is None:
        said = "upstream sent an empty answer"
        raise UpstreamStreamError(said, public=said)
    ex.ledger.count_tokens(answer.get("prompt_eval_count"), answer.get("eval_count"))
    return answer


async def relay(
    upstream: NDJSONStream, send: Send, ex: Exchange, events: EventStream, started: float
) -> None:
    """Stream `upstream` out through `events`. The status goes out with the first native line,
    so a failure before it is still an HTTP error; after it, a failure ends the stream with the
    surface's own error event."""
    lines = upstream.lines()
    first = await anext(lines, None)
    ex.upstream_seconds = time.perf_counter() - started
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    try:
        line = first
        while line is not None:
            ex.ledger.chunks += 1
            if line.get("done") is True:
                ex.ledger.count_tokens(line.get("prompt_eval_count"), line.get("eval_count"))
            out = events.feed(line)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            line = await anext(lines, None)
    except UpstreamError as exc:
        ex.outcome = "upstream-failed-mid-stream"
        tail = events.failed(for_client(exc, ex).message)
    else:
        tail = b""
        if events.error is not None:
            ex.outcome = "upstream-failed-mid-stream"
        elif not events.done:
            ex.outcome = "upstream-ended-early"
            tail = events.failed(ENDED_EARLY)
    await send({"type": "http.response.body", "body": tail, "more_body": False})
