"""Operations routes that need no key: `GET/HEAD /`, `/healthz` (liveness), `/readyz` (ready)."""

from __future__ import annotations

from typing import Protocol

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse


class Readiness(Protocol):
    async def readiness(self) -> tuple[bool, dict[str, object]]:
        """(ready, report): ready while the store answers and the server is not draining."""
        ...


def ops_router(probe: Readiness) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
    async def root() -> str:
        """Answers as Ollama does, so clients that probe `/` find a server; never calls upstream."""
        return "Ollama is running"

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
