"""The OpenAI-compatible API (`/v1/*`), translated to Ollama's native API and back.

The translation is the gateway's own (secureig.translate), so every answer carries the upstream's
token counts. Errors use OpenAI's envelope and statuses, so the SDK raises the right exception;
a stream that fails midway ends with `data: {"error": ...}` and no `[DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from secureig.errors import (
    GatewayError,
    Headers,
    MethodNotAllowed,
    ModelNotFound,
    RouteNotFound,
    TooManyRequests,
    UpstreamError,
    UpstreamStatusError,
)
from secureig.policy import Operation, Principal
from secureig.surfaces._asgi import (
    Exchange,
    Receive,
    Scope,
    Send,
    api_key,
    client_of,
    for_client,
    respond_json,
)
from secureig.surfaces._translated import SSE_HEADERS, TranslatingSurface, whole_answer
from secureig.translate import (
    SSE_DONE,
    ChatPlan,
    ChatStream,
    CompletionPlan,
    CompletionStream,
    EmbeddingsPlan,
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
from secureig.upstream import NDJSONStream

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
_TRANSLATE: dict[Operation, Callable[[object], Plan]] = {
    Operation.CHAT: chat_request,
    Operation.GENERATE: completion_request,
    Operation.EMBED: embeddings_request,
}


_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
    429: "rate_limit_error",
}  # fmt: skip


def render(error: GatewayError) -> tuple[int, dict[str, Any], Headers]:
    """OpenAI's envelope for an error, with the type (and code) its SDK tells errors apart by."""
    status, code, param, message = error.status, None, error.param, error.message
    if isinstance(error, UpstreamStatusError):
        if status == 404:
            message, param, code = f"model {error.model!r} not found", "model", "model_not_found"
        elif status not in (400, 429) and status < 500:
            status = 502
    elif isinstance(error, ModelNotFound):
        param, code = "model", "model_not_found"
    elif isinstance(error, TooManyRequests):
        code = "rate_limit_exceeded"
    elif status == 401:
        code = "invalid_api_key"
    return (
        status,
        error_body(message, _TYPES.get(status, "api_error"), param=param, code=code),
        (error.headers),
    )


class OpenAISurface(TranslatingSurface):
    """The ASGI callable behind `/v1/*`."""

    render = staticmethod(render)

    def _classify(self, method: str, path: str) -> tuple[Operation, str | None]:
        if path in _POST_ROUTES:
            if method != "POST":
                raise MethodNotAllowed(f"Method {method} not allowed on {path}", "POST")
            return _POST_ROUTES[path], None
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"Method {method} not allowed on {path}", "GET, HEAD")
            if path == "/v1/models":
                return Operation.LIST_MODELS, None
            # Names may contain "/" (namespaces, hf.co/...): everything after the prefix.
            return Operation.SHOW, path.removeprefix("/v1/models/")
        raise RouteNotFound(f"Invalid URL ({method} {path})")

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        ex.surface = "openai"
        operation, model_in_path = self._classify(scope["method"], scope["path"])
        ex.route = operation.value
        principal = self._gate.authenticate(api_key(scope), client_of(scope), ex.ledger)
        self._gate.check_scope(principal, operation)

        if operation is Operation.LIST_MODELS:
            await self._gate.admit(principal, operation, ex.ledger)
            await self._models(send, ex, principal)
            return
        if operation is Operation.SHOW:
            await self._model(send, ex, principal, model_in_path or "")
            return
        plan, call = await self._admit(
            scope, receive, ex, principal, operation, _TRANSLATE[operation],
            _NATIVE_PATH[operation],
        )  # fmt: skip
        started = time.perf_counter()
        async with self._forwarder.open(receive, ex, call) as raw:
            upstream = NDJSONStream(raw)
            if isinstance(plan, EmbeddingsPlan):
                await self._embeddings(upstream, send, ex, plan, started)
            elif plan.stream:
                await self._stream(upstream, send, ex, operation, plan, started)
            else:
                await self._complete(upstream, send, ex, operation, plan, started)

    async def _complete(
        self,
        upstream: NDJSONStream,
        send: Send,
        ex: Exchange,
        operation: Operation,
        plan: ChatPlan | CompletionPlan,
        started: float,
    ) -> None:
        native = await whole_answer(upstream, ex, started)
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
        native = await whole_answer(upstream, ex, started)
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
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
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
            event = sse(error_body(for_client(exc, ex).message, "server_error"))
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
        # The catalogue as the health checks keep it: a listing costs the backends nothing
        # (a round of health checks per request let 200 requests make 600). With every
        # backend down, one look again, at most once a second, as a request for a model does.
        started = time.perf_counter()
        state = self._gate.catalog.state
        if not state.up:
            state = await self._gate.catalog.recheck()
        ex.upstream_seconds = time.perf_counter() - started
        if not state.up:
            said = "no models available"
            raise UpstreamError(f"{said}: {state.error}", public=f"{said}: no backend is up")
        entries = sorted(state.models.values(), key=lambda e: e.modified_at, reverse=True)
        visible = [
            (e.name, e.modified_at) for e in entries if self._gate.visible(principal, e.name)
        ]
        await respond_json(send, 200, models_list(visible))

    async def _model(self, send: Send, ex: Exchange, principal: Principal, model: str) -> None:
        admission = await self._gate.admit(principal, Operation.SHOW, ex.ledger, {"model": model})
        _, entry = await self._gate.locate(admission.models[0], model)
        ex.model = admission.model
        await respond_json(send, 200, model_object(model, entry.modified_at))
