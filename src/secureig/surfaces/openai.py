"""The OpenAI-compatible API (`/v1/*`), translated to Ollama's native API and back.

The translation is the gateway's own (secureig.translate), so every answer carries the upstream's
token counts. Errors use OpenAI's envelope and statuses, so the SDK raises the right exception;
a stream that fails midway ends with `data: {"error": ...}` and no `[DONE]`.
"""

from __future__ import annotations

import time
from typing import Any

from secureig.policy import (
    Forbidden,
    Gatekeeper,
    InvalidRequest,
    LimiterDown,
    ModelNotFound,
    Operation,
    Principal,
    Refusal,
    TooManyRequests,
    Unauthenticated,
    UpstreamDown,
)
from secureig.surfaces._asgi import (
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
    parse_json,
    read_body,
    respond_json,
)
from secureig.translate import (
    SSE_DONE,
    ChatPlan,
    ChatStream,
    CompletionPlan,
    CompletionStream,
    EmbeddingsPlan,
    TranslationError,
    chat_request,
    chat_response,
    completion_request,
    completion_response,
    embeddings_request,
    embeddings_response,
    error_body,
    model_object,
    models_list,
    new_id,
    sse,
)
from secureig.upstream import (
    NDJSONStream,
    OllamaClient,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamTimeout,
)

_POST_ROUTES = {
    "/v1/chat/completions": Operation.CHAT,
    "/v1/completions": Operation.GENERATE,
    "/v1/embeddings": Operation.EMBED,
}
_NATIVE_PATH = {
    Operation.CHAT: "/api/chat",
    Operation.GENERATE: "/api/generate",
    Operation.EMBED: "/api/embed",
}
Plan = ChatPlan | CompletionPlan | EmbeddingsPlan
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type, param=param, code=code)
        self.headers = headers


def _refusal_error(refusal: Refusal) -> OpenAIError:
    if isinstance(refusal, TooManyRequests):
        return OpenAIError(
            429, refusal.message, "rate_limit_error", code="rate_limit_exceeded",
            headers=refusal.headers,
        )  # fmt: skip
    if isinstance(refusal, LimiterDown):
        return OpenAIError(503, refusal.message, "api_error")
    if isinstance(refusal, Unauthenticated):
        return OpenAIError(
            401, refusal.message, "authentication_error", code="invalid_api_key",
            headers=[(b"www-authenticate", b"Bearer")],
        )  # fmt: skip
    if isinstance(refusal, Forbidden):
        return OpenAIError(403, refusal.message, "permission_error", param=refusal.param)
    if isinstance(refusal, ModelNotFound):
        return OpenAIError(
            404, refusal.message, "invalid_request_error", param="model", code="model_not_found"
        )
    if isinstance(refusal, UpstreamDown):
        return OpenAIError(502, refusal.message, "api_error")
    if isinstance(refusal, InvalidRequest):
        return OpenAIError(400, refusal.message, "invalid_request_error", param=refusal.param)
    return OpenAIError(403, refusal.message, "permission_error")


def _upstream_error(error: UpstreamError, model: str) -> OpenAIError:
    if isinstance(error, UpstreamStatusError):
        if error.status == 404:
            return OpenAIError(
                404, f"model {model!r} not found", "invalid_request_error",
                param="model", code="model_not_found",
            )  # fmt: skip
        if error.status == 400:
            return OpenAIError(400, error.message, "invalid_request_error")
        if error.status == 429:
            return OpenAIError(429, error.message, "rate_limit_error")
        return OpenAIError(error.status if error.status >= 500 else 502, error.message, "api_error")
    if isinstance(error, UpstreamTimeout):
        return OpenAIError(504, str(error), "api_error")
    return OpenAIError(502, str(error), "api_error")


def _parse(body: bytes) -> object:
    if not body.strip():
        raise OpenAIError(400, "missing request body", "invalid_request_error")
    try:
        return parse_json(body)
    except ValueError as exc:
        raise OpenAIError(
            400, f"We could not parse the JSON body of your request: {exc}", "invalid_request_error"
        ) from None


class OpenAISurface:
    """The ASGI callable behind `/v1/*`."""

    def __init__(self, gatekeeper: Gatekeeper, client: OllamaClient, max_body_bytes: int) -> None:
        self._gate = gatekeeper
        self._client = client
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = exchange_of(scope)
        try:
            await self._handle(scope, receive, send, exchange)
        except OpenAIError as exc:
            headers = exc.headers
            if exc.status == 413:
                headers = [*(headers or []), (b"connection", b"close")]
            await respond_json(send, exc.status, exc.body, headers)
        except ClientGone:
            exchange.status, exchange.outcome = 499, "client-disconnected"

    def _classify(self, method: str, path: str) -> tuple[Operation, str | None]:
        if path in _POST_ROUTES:
            if method != "POST":
                raise OpenAIError(
                    405, f"Method {method} not allowed on {path}", "invalid_request_error",
                    headers=[(b"allow", b"POST")],
                )  # fmt: skip
            return _POST_ROUTES[path], None
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method not in ("GET", "HEAD"):
                raise OpenAIError(
                    405, f"Method {method} not allowed on {path}", "invalid_request_error",
                    headers=[(b"allow", b"GET, HEAD")],
                )  # fmt: skip
            if path == "/v1/models":
                return Operation.LIST_MODELS, None
            # Names may contain "/" (namespaces, hf.co/...): everything after the prefix.
            return Operation.SHOW, path.removeprefix("/v1/models/")
        raise OpenAIError(404, f"Invalid URL ({method} {path})", "invalid_request_error")

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        ex.surface = "openai"
        operation, model_in_path = self._classify(scope["method"], scope["path"])
        ex.route = operation.value
        try:
            principal = self._gate.authenticate(api_key(scope), client_address(scope), ex.ledger)
            self._gate.check_scope(principal, operation)
        except Refusal as refusal:
            raise _refusal_error(refusal) from None

        if operation is Operation.LIST_MODELS:
            try:
                await self._gate.admit(principal, operation, ex.ledger)
            except Refusal as refusal:
                raise _refusal_error(refusal) from None
            await self._models(send, ex, principal)
            return
        if operation is Operation.SHOW:
            await self._model(send, ex, principal, model_in_path or "")
            return
        try:
            body = _parse(await read_body(scope, receive, self._limit))
        except BodyTooLarge as exc:
            raise OpenAIError(
                413, f"Request body is larger than {exc.limit} bytes", "invalid_request_error"
            ) from None
        plan: Plan
        try:
            if operation is Operation.CHAT:
                plan = chat_request(body)
            elif operation is Operation.GENERATE:
                plan = completion_request(body)
            else:
                plan = embeddings_request(body)
        except TranslationError as exc:
            raise OpenAIError(400, exc.message, "invalid_request_error", param=exc.param) from None
        try:
            admission = await self._gate.admit(principal, operation, ex.ledger, plan.native)
        except Refusal as refusal:
            raise _refusal_error(refusal) from None
        ex.model = admission.model

        started = time.perf_counter()
        async with CancelOnDisconnect(receive, ex):
            try:
                path = _NATIVE_PATH[operation]
                async with self._client.stream(path, plan.native) as (upstream, waited):
                    ex.upstream_seconds = waited
                    if isinstance(plan, EmbeddingsPlan):
                        await self._embeddings(upstream, send, ex, plan, started)
                    elif plan.stream:
                        await self._stream(upstream, send, ex, operation, plan, started)
                    else:
                        await self._complete(upstream, send, ex, operation, plan, started)
            except UpstreamError as exc:  # before any byte left: _stream reports its own
                raise _upstream_error(exc, plan.model) from None

    async def _single(self, upstream: NDJSONStream, ex: Exchange) -> dict[str, Any]:
        """A non-streamed native answer: one JSON object (the last, should there be several)."""
        answer: dict[str, Any] | None = None
        async for line in upstream.lines():
            answer = line
        if answer is None:
            raise UpstreamStreamError("upstream sent an empty answer")
        ex.ledger.count_tokens(answer.get("prompt_eval_count"), answer.get("eval_count"))
        return answer

    async def _complete(
        self,
        upstream: NDJSONStream,
        send: Send,
        ex: Exchange,
        operation: Operation,
        plan: ChatPlan | CompletionPlan,
        started: float,
    ) -> None:
        native = await self._single(upstream, ex)
        ex.upstream_seconds = time.perf_counter() - started
        created = int(time.time())
        if operation is Operation.CHAT:
            answer = chat_response(
                native, model=plan.model, id=new_id("chatcmpl-"), created=created
            )
        else:
            answer = completion_response(
                native, model=plan.model, id=new_id("cmpl-"), created=created
            )
        await respond_json(send, 200, answer)

    async def _embeddings(
        self, upstream: NDJSONStream, send: Send, ex: Exchange, plan: EmbeddingsPlan, started: float
    ) -> None:
        native = await self._single(upstream, ex)
        ex.upstream_seconds = time.perf_counter() - started
        answer = embeddings_response(native, model=plan.model, encoding_format=plan.encoding_format)
        await respond_json(send, 200, answer)

    async def _stream(
        self,
        upstream: NDJSONStream,
        send: Send,
        ex: Exchange,
        operation: Operation,
        plan: ChatPlan | CompletionPlan,
        started: float,
    ) -> None:
        kind = ChatStream if operation is Operation.CHAT else CompletionStream
        prefix = "chatcmpl-" if operation is Operation.CHAT else "cmpl-"
        translator = kind(
            model=plan.model, id=new_id(prefix), created=int(time.time()),
            include_usage=plan.include_usage,
        )  # fmt: skip
        lines = upstream.lines()
        first = await anext(lines, None)  # an error before any output is still an HTTP error
        ex.upstream_seconds = time.perf_counter() - started
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        try:
            line = first
            while line is not None:
                ex.ledger.chunks += 1
                events = b"".join(sse(chunk) for chunk in translator.feed(line))
                if events:
                    await send({"type": "http.response.body", "body": events, "more_body": True})
                line = await anext(lines, None)
        except UpstreamError as exc:
            ex.outcome = "upstream-failed-mid-stream"
            event = sse(error_body(str(exc), "server_error"))
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        if translator.usage is not None:
            ex.ledger.count_tokens(
                translator.usage["prompt_tokens"], translator.usage["completion_tokens"]
            )
        if translator.done:
            tail = SSE_DONE
        else:
            ex.outcome = "upstream-ended-early"
            tail = sse(
                error_body("the upstream ended the stream before it finished", "server_error")
            )
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _models(self, send: Send, ex: Exchange, principal: Principal) -> None:
        started = time.perf_counter()
        state = await self._gate.catalog.refresh()
        ex.upstream_seconds = time.perf_counter() - started
        if not state.up:
            raise OpenAIError(502, f"no models available: {state.error}", "api_error")
        entries = sorted(state.models.values(), key=lambda e: e.modified_at, reverse=True)
        visible = [
            (e.name, e.modified_at) for e in entries if self._gate.visible(principal, e.name)
        ]
        await respond_json(send, 200, models_list(visible))

    async def _model(self, send: Send, ex: Exchange, principal: Principal, model: str) -> None:
        try:
            admission = await self._gate.admit(
                principal, Operation.SHOW, ex.ledger, {"model": model}
            )
            entry = await self._gate.locate(admission.models[0], model)
            ex.model = admission.model
        except Refusal as refusal:
            raise _refusal_error(refusal) from None
        await respond_json(send, 200, model_object(model, entry.modified_at))
