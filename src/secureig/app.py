"""The gateway as an ASGI application: its parts, their start and stop, and request dispatch.

Hot routes are plain ASGI callables looked up by path; everything else (operations routes, the
OpenAPI schema) is a FastAPI application behind them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from secureig import __version__
from secureig.config import Settings
from secureig.policy import BOOTSTRAP_KEY, BootstrapPolicy, ClampPolicy, Gatekeeper, Keyring
from secureig.store import KeyStore, create_engine, describe, migrate
from secureig.surfaces._asgi import (
    EXCHANGE,
    ASGIApp,
    Exchange,
    Message,
    Receive,
    Scope,
    Send,
)
from secureig.surfaces.ollama import OllamaSurface
from secureig.surfaces.openai import OpenAISurface
from secureig.surfaces.ops import ops_router
from secureig.surfaces.seed import SeedRequest, SeedSurface
from secureig.upstream import ModelCatalog, OllamaClient, Timeouts

log = logging.getLogger("secureig")
access_log = logging.getLogger("secureig.access")


class StartupRefused(Exception):
    """The gateway will not serve with this configuration; the message says what to do."""


def refusal_reason(settings: Settings, live_keys: int) -> str | None:
    """Why the server must not start, or None. A network address with no keys would serve nobody,
    or everybody through the bootstrap key: neither is what the operator meant."""
    if (
        settings.listens_on_loopback
        or live_keys
        or settings.admin_key
        or settings.allow_bootstrap_key
    ):
        return None
    return (
        f"refusing to listen on {settings.host}:{settings.port}: the key store holds no keys, and"
        f" the bootstrap key {BOOTSTRAP_KEY!r} only serves on loopback.\n"
        "Create a key first, with the same settings the server reads:\n"
        "    secureig keys create ops --scope admin\n"
        "or set SECUREIG_ADMIN_KEY to a secret of 16 characters or more, or pass"
        " --allow-bootstrap-key (SECUREIG_ALLOW_BOOTSTRAP_KEY=1) to accept 'admin' on this address."
    )


class Gateway:
    """The long-lived parts of one gateway process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(settings.database_url)
        self.keystore = KeyStore(self.engine)
        secret = settings.admin_key.get_secret_value() if settings.admin_key else BOOTSTRAP_KEY
        self.keyring = Keyring(
            self.keystore,
            BootstrapPolicy(
                enabled=bool(
                    settings.listens_on_loopback
                    or settings.allow_bootstrap_key
                    or settings.admin_key
                ),
                secret=secret,
            ),
            settings.key_refresh_interval,
        )
        self.client = OllamaClient(
            settings.ollama_url,
            Timeouts(
                connect=settings.upstream_connect_timeout,
                read=settings.upstream_read_timeout,
                total=settings.upstream_total_timeout,
            ),
            max_connections=settings.upstream_max_connections,
        )
        self.catalog = ModelCatalog(self.client, settings.discovery_interval)
        self.gatekeeper = Gatekeeper(
            self.keyring, self.catalog, ClampPolicy(max_keep_alive=settings.max_keep_alive)
        )
        self.draining = False

    async def start(self) -> None:
        await migrate(self.engine)
        await self.keyring.load()
        reason = refusal_reason(self.settings, self.keyring.key_count)
        if reason:
            raise StartupRefused(reason)
        await self.client.open()
        state = await self.catalog.refresh()
        self.catalog.start()
        self.keyring.start()
        self._announce(state.up, state.error, sorted(e.name for e in state.models.values()))

    def _announce(self, up: bool, error: str | None, models: list[str]) -> None:
        log.info(
            "key store: %s, %d live keys",
            describe(self.settings.database_url),
            self.keyring.key_count,
        )
        if up:
            shown = ", ".join(models[:10]) + (" ..." if len(models) > 10 else "")
            log.info(
                "upstream %s: up, %d models%s",
                self.settings.ollama_url,
                len(models),
                f" ({shown})" if models else "",
            )
        else:
            log.warning(
                "upstream %s: down (%s); serving anyway, retrying every %gs and on request",
                self.settings.ollama_url,
                error,
                self.settings.discovery_interval,
            )
        if self.keyring.bootstrap_active:
            which = "SECUREIG_ADMIN_KEY" if self.settings.admin_key else f"{BOOTSTRAP_KEY!r}"
            log.warning(
                "bootstrap key %s is active until an admin key exists"
                " (secureig keys create NAME --scope admin)",
                which,
            )
        else:
            log.info("bootstrap key: inactive")

    async def stop(self) -> None:
        await self.keyring.stop()
        await self.catalog.stop()
        await self.client.close()
        await self.engine.dispose()

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        store = "ok"
        try:
            await asyncio.wait_for(self.keystore.ping(), timeout=2.0)
        except Exception:
            store = "unreachable"
        state = self.catalog.state
        if time.monotonic() - state.refreshed_at > 2.0:
            state = await self.catalog.refresh()
        ready = store == "ok" and not self.draining
        status = "draining" if self.draining else ("ready" if ready else "not ready")
        return ready, {
            "status": status,
            "store": store,
            "upstreams": {self.settings.ollama_url: "up" if state.up else "down"},
        }


def _api(gateway: Gateway) -> FastAPI:
    api = FastAPI(
        title="secureig",
        version=__version__,
        description="Secure Inference Gateway: keys, scopes and limits in front of Ollama.",
    )
    api.include_router(ops_router(gateway))

    def openapi() -> dict[str, Any]:
        # /request is served by a plain ASGI callable; describe it here so the schema is whole.
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title, version=api.version, description=api.description, routes=api.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {})["SeedRequest"] = (
                SeedRequest.model_json_schema()
            )
            text = {"text/plain": {"schema": {"type": "string"}}}
            schema["paths"]["/request"] = {
                "post": {
                    "summary": "Generate text (the seed endpoint)",
                    "tags": ["seed"],
                    "parameters": [
                        {
                            "name": "X-API-KEY",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SeedRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {"description": "The model's text", "content": text},
                        "403": {
                            "description": "Bad key, no models, unknown model",
                            "content": text,
                        },
                        "413": {"description": "Body over the limit", "content": text},
                        "422": {"description": "Malformed body", "content": text},
                    },
                }
            }
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api


class GatewayApp:
    """The ASGI entry point: lifespan, request ids, the access log, and dispatch by path."""

    def __init__(
        self,
        gateway: Gateway,
        routes: dict[str, ASGIApp],
        prefixes: dict[str, ASGIApp],
        fallback: ASGIApp,
    ) -> None:
        self.gateway = gateway
        self._routes = routes
        self._prefixes = tuple(prefixes.items())
        self._fallback = fallback

    def _route(self, path: str) -> ASGIApp:
        app = self._routes.get(path)
        if app is not None:
            return app
        for prefix, prefixed in self._prefixes:
            if path.startswith(prefix):
                return prefixed
        return self._fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self._fallback(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(request_id=os.urandom(8).hex())
        scope[EXCHANGE] = exchange
        rid = exchange.request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"server-timing", exchange.server_timing()),
                    (b"x-request-id", rid),
                ]
            await send(message)

        app = self._route(scope["path"])
        try:
            await app(scope, receive, send_with_id)
        finally:
            self._log(scope, exchange)

    @staticmethod
    def _log(scope: Scope, exchange: Exchange) -> None:
        # The path only: a query string could carry anything, and bodies (prompts) never appear.
        duration = (time.perf_counter() - exchange.started) * 1000
        upstream = exchange.upstream_seconds
        access_log.info(
            "rid=%s %s %s key=%s model=%s status=%s dur_ms=%.1f upstream_ms=%s%s",
            exchange.request_id,
            scope["method"],
            scope["path"][:200],
            exchange.key_name or "-",
            exchange.model or "-",
            exchange.status or "aborted",
            duration,
            f"{upstream * 1000:.1f}" if upstream is not None else "-",
            f" outcome={exchange.outcome}" if exchange.outcome else "",
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as exc:
                    log.error("%s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings) -> GatewayApp:
    gateway = Gateway(settings)
    seed = SeedSurface(gateway.gatekeeper, gateway.client, settings.max_body_bytes)
    ollama = OllamaSurface(
        gateway.gatekeeper, gateway.client, settings.max_body_bytes, settings.max_blob_bytes
    )
    openai = OpenAISurface(gateway.gatekeeper, gateway.client, settings.max_body_bytes)
    return GatewayApp(
        gateway,
        routes={"/request": seed, "/api": ollama, "/v1": openai},
        prefixes={"/api/": ollama, "/v1/": openai},
        fallback=_api(gateway),
    )


def app_factory() -> GatewayApp:
    """For `uvicorn --factory secureig.app:app_factory`: settings from the environment only."""
    from secureig.config import load_settings

    return create_app(load_settings())
