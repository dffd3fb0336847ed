"""Operations routes: `GET/HEAD /`, `/healthz` (liveness), `/readyz` (ready), `/metrics`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from secureig.policy import Gatekeeper, Operation, Refusal
from secureig.surfaces._asgi import (
    Receive,
    Scope,
    Send,
    api_key,
    client_of,
    exchange_of,
    respond,
    respond_json,
)


class Readiness(Protocol):
    async def readiness(self) -> tuple[bool, dict[str, object]]:
        """(ready, report): ready while the store answers and the server is not draining."""
        ...


def ops_router(probe: Readiness) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/", response_class=PlainTextResponse)
    async def root() -> str:
        """Answers as Ollama does, so clients that probe `/` find a server; never calls upstream."""
        return "Ollama is running"

    router.add_api_route(
        "/", root, methods=["HEAD"], response_class=PlainTextResponse, operation_id="root_head"
    )

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: 200 whenever the process serves."""
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"description": "store unreachable or draining"}})
    async def readyz() -> JSONResponse:
        """Readiness: the store is reachable and the server is not draining. Upstream outages are
        reported but do not fail readiness: every replica shares the upstream."""
        ready, report = await probe.readiness()
        return JSONResponse(report, status_code=200 if ready else 503)

    return router


class MetricsEndpoint:
    """`GET /metrics`: for admin keys; open when made public, and by default to a client on
    this machine that reached the gateway directly (never through a proxy)."""

    def __init__(
        self, gatekeeper: Gatekeeper, render: Callable[[], bytes], public: bool | None
    ) -> None:
        self._gate = gatekeeper
        self._render = render
        self._public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = exchange_of(scope)
        ex.route = "metrics"
        if scope["method"] not in ("GET", "HEAD"):
            await respond_json(send, 405, {"error": "use GET"}, [(b"allow", b"GET, HEAD")])
            return
        public = self._public
        if not (public or (public is None and client_of(scope).local)):
            try:
                principal = self._gate.authenticate(api_key(scope), client_of(scope), ex.ledger)
                await self._gate.admit(principal, Operation.ADMIN, ex.ledger)
            except Refusal as refusal:
                error = {"error": refusal.message}
                await respond_json(send, refusal.status, error, refusal.headers)
                return
        body = b"" if scope["method"] == "HEAD" else self._render()
        await respond(send, 200, body, CONTENT_TYPE_LATEST.encode())
