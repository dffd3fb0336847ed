"""The gateway in process: its ASGI application, started and stopped here, spoken to through
httpx's ASGI transport, with the client address (the socket's, as the listener would give it)
chosen per client. For API behaviour that needs no listener."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from secureig.app import GatewayApp, create_app
from secureig.config import load_settings
from secureig.credentials import Scope


class InProcess:
    def __init__(self, app: GatewayApp) -> None:
        self.app = app

    def client(self, peer: str = "127.0.0.1", **headers: str) -> httpx.AsyncClient:
        """A client whose connections come from `peer`."""
        transport = httpx.ASGITransport(app=self.app, client=(peer, 40000))
        return httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1:8085", headers=headers, timeout=30
        )

    async def create_key(
        self, name: str, *scopes: Scope, models: tuple[str, ...] = ("*",), **fields: Any
    ) -> str:
        """A key in the store, applied at once (not at the next refresh); its secret."""
        gateway = self.app.gateway
        _, secret = await gateway.keystore.create(
            name, scopes or (Scope.INFERENCE,), models, **fields
        )
        await gateway.keyring.refresh()
        return secret


@asynccontextmanager
async def serving(tmp: Path, **settings: Any) -> AsyncIterator[InProcess]:
    """A gateway on a store of its own in `tmp`, started as the server's lifespan starts it."""
    settings.setdefault("database_url", f"sqlite:///{tmp / 'keys.db'}")
    settings.setdefault("usage_spool", str(tmp / "usage.spool"))
    app = create_app(load_settings(**settings))
    await app.gateway.start()
    try:
        yield InProcess(app)
    finally:
        await app.gateway.stop()


def run(tmp: Path, test: Callable[[InProcess], Awaitable[None]], **settings: Any) -> None:
    """`test` against a gateway `serving` these settings, on an event loop of its own."""

    async def main() -> None:
        async with serving(tmp, **settings) as gateway:
            await test(gateway)

    asyncio.run(main())
