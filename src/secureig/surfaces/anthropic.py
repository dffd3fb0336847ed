"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`), translated to Ollama's
native chat and back, on every backend. Errors use Anthropic's envelope and statuses, so its SDK
raises its own classes; a stream that fails midway ends with `event: error` and no message_stop.
"""

from __future__ import annotations

import time
from typing import Any

from secureig.errors import (
    GatewayError,
    Headers,
    MethodNotAllowed,
    ModelNotFound,
    RouteNotFound,
    UpstreamBusy,
    UpstreamStatusError,
)
from secureig.policy import Operation
from secureig.surfaces._asgi import (
    Exchange,
    Receive,
    Scope,
    Send,
    api_key,
    client_of,
    respond_json,
)
from secureig.surfaces._translated import TranslatingSurface, relay, whole_answer
from secureig.translate import (
    MessagesStream,
    anthropic_error,
    message_response,
    messages_request,
    new_id,
)
from secureig.upstream import NDJSONStream

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
# The status Anthropic answers when it is overloaded, which its SDK raises as OverloadedError.
OVERLOADED = 529

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
    429: "rate_limit_error", OVERLOADED: "overloaded_error",
}  # fmt: skip


def render(error: GatewayError) -> tuple[int, dict[str, Any], Headers]:
    """Anthropic's envelope for an error, with the status its SDK maps to its own exception."""
    status, message = error.status, error.message
    if isinstance(error, UpstreamBusy) or (
        isinstance(error, UpstreamStatusError) and status == 503
    ):
        status = OVERLOADED  # every backend busy, or the one that had the model said so
    elif isinstance(error, UpstreamStatusError):
        if status == 404:
            message = f"model: {error.model or 'the model'} was not found"
        elif status not in (400, 429) and status < 500:
            status = 502
    elif isinstance(error, ModelNotFound):
        message = f"model: {message}"
    return status, anthropic_error(_TYPES.get(status, "api_error"), message), error.headers


class AnthropicSurface(TranslatingSurface):
    """The ASGI callable behind `/v1/messages` and everything under it."""

    render = staticmethod(render)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        ex.surface = "anthropic"
        path, method = scope["path"], scope["method"]
        if path not in (MESSAGES, COUNT_TOKENS):
            # Batches, files, models under Anthropic's paths: nothing the gateway serves.
            raise RouteNotFound(f"Not found: {method} {path}")
        if method != "POST":
            raise MethodNotAllowed(f"Method {method} not allowed on {path}", "POST")
        counting = path == COUNT_TOKENS
        ex.route = Operation.CHAT.value
        principal = self._gate.authenticate(api_key(scope), client_of(scope), ex.ledger)
        self._gate.check_scope(principal, Operation.CHAT)
        plan, call = await self._admit(
            scope, receive, ex, principal, Operation.CHAT,
            lambda body: messages_request(body, counting=counting), "/api/chat",
        )  # fmt: skip
        started = time.perf_counter()
        async with self._forwarder.open(receive, ex, call) as raw:
            upstream = NDJSONStream(raw)
            if counting:
                native = await whole_answer(upstream, ex, started)
                await self._counted(send, native)
            elif plan.stream:
                events = MessagesStream(model=plan.model, id=new_id("msg_"), thinking=plan.thinking)
                await relay(upstream, send, ex, events, started)
            else:
                native = await whole_answer(upstream, ex, started)
                answer = message_response(
                    native, model=plan.model, id=new_id("msg_"), thinking=plan.thinking
                )
                await respond_json(send, 200, answer)

    @staticmethod
    async def _counted(send: Send, native: dict[str, Any]) -> None:
        # Only a count the backend computed by evaluating the prompt: never an estimate.
        tokens = native.get("prompt_eval_count")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
            raise RouteNotFound(
                "count_tokens: the backend reported no prompt token count for this model"
            )
        await respond_json(send, 200, {"input_tokens": tokens})
