"""OpenAI's Responses API (`POST /v1/responses`), stateless, translated to Ollama's native chat and
back, on every backend. Errors use OpenAI's envelope, as on the rest of `/v1`; a stream that fails
midway ends with `response.failed`. Nothing is stored, so every path under `/v1/responses/` that
would read a stored response is a 404 that says so.
"""

from __future__ import annotations

import time

from secureig.errors import MethodNotAllowed, RouteNotFound
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
from secureig.surfaces.openai import render
from secureig.translate import (
    ResponsesStream,
    new_id,
    response_object,
    responses_request,
)
from secureig.upstream import NDJSONStream

RESPONSES = "/v1/responses"


class ResponsesSurface(TranslatingSurface):
    """The ASGI callable behind `/v1/responses` and everything under it."""

    render = staticmethod(render)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        ex.surface = "responses"
        path, method = scope["path"], scope["method"]
        if path != RESPONSES:
            raise RouteNotFound(
                f"Invalid URL ({method} {path}): this gateway stores no responses, so none can"
                " be retrieved, cancelled or listed"
            )
        if method != "POST":
            raise MethodNotAllowed(f"Method {method} not allowed on {path}", "POST")
        ex.route = Operation.CHAT.value
        principal = self._gate.authenticate(api_key(scope), client_of(scope), ex.ledger)
        self._gate.check_scope(principal, Operation.CHAT)
        plan, call = await self._admit(
            scope, receive, ex, principal, Operation.CHAT, responses_request, "/api/chat"
        )
        started = time.perf_counter()
        async with self._forwarder.open(receive, ex, call) as raw:
            upstream = NDJSONStream(raw)
            if plan.stream:
                events = ResponsesStream(model=plan.model, id=new_id("resp_"), echo=plan.echo)
                await relay(upstream, send, ex, events, started)
            else:
                native = await whole_answer(upstream, ex, started)
                answer = response_object(
                    native, model=plan.model, id=new_id("resp_"), echo=plan.echo
                )
                await respond_json(send, 200, answer)
