"""The gateway as an ASGI application: its parts, their start and stop, and request dispatch.

Hot routes are plain ASGI callables looked up by path; everything else (operations routes, the
OpenAPI schema) is a FastAPI application behind them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from secureig import __version__
from secureig.accesslog import AccessLog
from secureig.accounting import Accounting
from secureig.config import Settings
from secureig.metrics import Metrics
from secureig.networks import Networks
from secureig.policy import (
    BOOTSTRAP_KEY,
    AuthThrottle,
    BootstrapPolicy,
    ClampPolicy,
    ConsoleSessions,
    Gatekeeper,
    Keyring,
    Limiter,
    LocalLimiter,
)
from secureig.protocol import OpenConnections, ServeLimits
from secureig.routing import Backend, Fleet, Router
from secureig.store import KeyStore, SessionStore, create_engine, describe, migrate
from secureig.store.usage import UsageStore, UsageWriter
from secureig.surfaces._asgi import (
    EXCHANGE,
    ASGIApp,
    Exchange,
    Message,
    Receive,
    Scope,
    Send,
)
from secureig.surfaces._forward import Forwarder
from secureig.surfaces.admin import AdminGate, admin_router
from secureig.surfaces.anthropic import AnthropicSurface
from secureig.surfaces.console import ConsoleSurface
from secureig.surfaces.forwarded import ClientAddress
from secureig.surfaces.ollama import OllamaSurface
from secureig.surfaces.openai import OpenAISurface
from secureig.surfaces.ops import MetricsEndpoint, ops_router
from secureig.surfaces.responses import ResponsesSurface
from secureig.surfaces.schema import document
from secureig.surfaces.seed import SeedRequest, SeedSurface
from secureig.surfaces.trustedhost import TrustedHost
from secureig.tls import client_context
from secureig.tracing import Tracing, traces_endpoint
from secureig.translate import RequestBounds
from secureig.upstream import OllamaClient, OpenAIClient, Timeouts

log = logging.getLogger("secureig")
# Request ids tell requests apart in logs and usage; they guard nothing, so a seeded generator
# serves (a system call per request for os.urandom showed in profiles).
_ids = random.Random(os.urandom(16))  # noqa: S311
# Each part closed at shutdown after the usage records gets this long.
_STOP_STEP_SECONDS = 2.0


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


def bootstrap_policy(settings: Settings) -> BootstrapPolicy:
    """When the bootstrap key serves. An operator's own SECUREIG_ADMIN_KEY is a secret like any
    key. The well-known `admin` serves a client of a loopback listener on this machine that
    reached it directly, or anyone where the operator opted in; never behind trusted proxies,
    where a remote client's request arrives from a local address."""
    if settings.admin_key is not None:
        return BootstrapPolicy(enabled=True, secret=settings.admin_key.get_secret_value())
    return BootstrapPolicy(
        enabled=(settings.listens_on_loopback or settings.allow_bootstrap_key)
        and not settings.trusted_proxies,
        local_only=not settings.allow_bootstrap_key,
    )


def build_fleet(settings: Settings) -> Fleet:
    """The backends the settings name, each with its own client and connection pool."""
    timeouts = Timeouts(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_read_timeout,
        total=settings.upstream_total_timeout,
    )
    backends = [
        Backend(
            spec,
            (OpenAIClient if spec.kind == "openai" else OllamaClient)(
                spec.url,
                timeouts,
                max_connections=settings.upstream_max_connections,
                max_line_bytes=settings.max_line_bytes,
                max_answer_bytes=settings.max_answer_bytes,
                api_key=spec.api_key,
                ssl_context=client_context(spec.ca_file, spec.tls_verify, spec.name),
            ),
        )
        for spec in settings.fleet
    ]
    return Fleet(backends, settings.health_interval)


def _admitted(settings: Settings) -> Networks | None:
    """Who may open a connection: the allowed networks and the proxies in front of them."""
    if not settings.allowed_networks:
        return None
    return Networks.of([*settings.allowed_networks, *(settings.trusted_proxies or ())])


def build_limiter(settings: Settings) -> Limiter:
    if settings.redis_url is None:
        return LocalLimiter()
    from secureig.policy.redis_limits import RedisLimiter

    return RedisLimiter(
        settings.redis_url,
        settings.redis_prefix,
        lease_ttl=settings.redis_lease_ttl,
        timeout=settings.redis_timeout,
    )


class Gateway:
    """The long-lived parts of one gateway process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(settings.database_url)
        self.keystore = KeyStore(self.engine)
        self.keyring = Keyring(
            self.keystore, bootstrap_policy(settings), settings.key_refresh_interval
        )
        self.fleet = build_fleet(settings)
        self.metrics = Metrics()
        self.router = Router(
            self.fleet,
            queue_timeout=settings.queue_timeout,
            max_queued=settings.max_queued,
            max_queued_per_key=settings.max_queued_per_key,
            observe_wait=self.metrics.queue_wait,
        )
        self.metrics.watch_backends(self.router)
        endpoint = traces_endpoint(settings.otel_endpoint, dict(os.environ))
        self.tracing = Tracing(endpoint) if endpoint is not None else None
        self.forwarder = Forwarder(self.router, settings.max_answer_bytes, self.tracing)
        self.metrics.watch_streams(lambda: self.forwarder.streams)
        self.limiter = build_limiter(settings)
        self.gatekeeper = Gatekeeper(
            self.keyring,
            self.fleet,
            ClampPolicy(
                max_keep_alive=settings.max_keep_alive, min_keep_alive=settings.min_keep_alive
            ),
            self.limiter,
            AuthThrottle(settings.auth_failures_per_minute),
        )
        self.connections = OpenConnections(
            ServeLimits(
                head_bytes=settings.max_header_bytes,
                head_timeout=settings.header_timeout,
                body_timeout=settings.body_timeout,
                body_min_rate=settings.body_min_rate,
                max_connections=settings.max_connections,
                max_per_client=settings.connections_per_client,
                reserved=settings.connections_reserved,
                tls_handshake_timeout=settings.tls_handshake_timeout,
                tls_handshakes_per_client=settings.max_tls_handshakes_per_client,
                admitted=_admitted(settings),
                proxies=Networks.of(settings.trusted_proxies) if settings.trusted_proxies else None,
            )
        )
        self.metrics.watch_connections(lambda: self.connections.open, self.connections.refused)
        self.access_log = AccessLog()
        self.usage = UsageWriter(
            UsageStore(self.engine),
            batch_size=settings.usage_batch_size,
            interval=settings.usage_flush_interval,
            max_pending=settings.usage_max_pending,
            write_timeout=settings.usage_write_timeout,
            spool=settings.usage_spool,
            on_drop=self.metrics.usage_dropped.inc,
        )
        self.metrics.usage_pending.set_function(lambda: self.usage.pending)
        self.accounting = Accounting(self.gatekeeper, self.metrics, self.usage)
        self.sessions = ConsoleSessions(
            self.gatekeeper,
            SessionStore(self.engine),
            idle_seconds=settings.console_idle_timeout,
            lifetime_seconds=settings.console_session_lifetime,
        )
        self.draining = False

    async def start(self) -> None:
        await migrate(self.engine)
        await self.keyring.load()
        reason = refusal_reason(self.settings, self.keyring.key_count)
        if reason:
            raise StartupRefused(reason)
        await self.limiter.start()
        await self.fleet.open()
        await self.fleet.refresh()
        self.fleet.start()
        self.keyring.start()
        await self.usage.start()
        self._announce()

    def _announce(self) -> None:
        log.info(
            "key store: %s, %d live keys",
            describe(self.settings.database_url),
            self.keyring.key_count,
        )
        for backend in self.fleet.backends:
            label = f"backend {backend.name} ({backend.kind}, {backend.address})"
            if backend.up:
                models = sorted(e.name for e in backend.models.values())
                shown = ", ".join(models[:10]) + (" ..." if len(models) > 10 else "")
                cap = backend.max_concurrency
                log.info(
                    "%s: up, %d models%s%s",
                    label,
                    len(models),
                    f" ({shown})" if models else "",
                    f", at most {cap} in flight" if cap else "",
                )
            else:
                log.warning(
                    "%s: down (%s); serving anyway, checking every %gs and on request",
                    label,
                    backend.why,
                    self.settings.health_interval,
                )
        redis = self.settings.redis_url
        log.info("limits: %s", "shared through Redis" if redis else "in this process")
        hosts = self.settings.trusted_hosts
        if "*" not in hosts:
            log.info("answering for Host: %s (SECUREIG_ALLOWED_HOSTS)", ", ".join(hosts))
        elif not self.settings.listens_on_loopback:
            log.warning(
                "answering for any Host: set SECUREIG_ALLOWED_HOSTS to the names clients use,"
                " so a DNS-rebinding page cannot reach the gateway"
            )
        if self.keyring.bootstrap_active:
            which = "SECUREIG_ADMIN_KEY" if self.settings.admin_key else f"{BOOTSTRAP_KEY!r}"
            where = (
                " for this machine's own clients"
                if self.keyring.bootstrap_local_only
                else ""
            )  # fmt: skip
            log.warning(
                "bootstrap key %s is active%s until an admin key exists"
                " (secureig keys create NAME --scope admin)",
                which,
                where,
            )
        elif self.settings.trusted_proxies and not self.keyring.key_count:
            log.warning(
                "bootstrap key %r is off behind trusted proxies (SECUREIG_TRUSTED_PROXIES) and"
                " the store holds no keys: create one on this machine with"
                " secureig keys create NAME --scope admin, or set SECUREIG_ADMIN_KEY",
                BOOTSTRAP_KEY,
            )
        else:
            log.info("bootstrap key: inactive")

    async def stop(self) -> None:
        """In-flight requests have finished (or the grace ran out) before this runs. It takes at
        most the flush timeout and a few seconds: a database or Redis that stopped answering
        must not keep the process up until an orchestrator's SIGKILL loses what it held."""
        connections = self.connections
        connections.abort_handshakes()
        for _ in range(50):  # what the aborts set off takes a few turns of the loop
            if not connections.open:
                break
            await asyncio.sleep(0.01)
        if connections.open:
            log.warning(
                "shutdown: %d client connections still counted as open after the server closed"
                " them",
                connections.open,
            )
        else:
            log.info("shutdown: every client connection closed")
        # Requests the server cancelled when the grace ran out record themselves as they unwind.
        deadline = time.monotonic() + 1.0
        while self.metrics.active and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await self.usage.close(within=self.settings.shutdown_flush_timeout)
        for name, step in (
            ("limits", self.limiter.close()),
            ("key refresh", self.keyring.stop()),
            ("health checks", self.fleet.stop()),
            ("backend connections", self.fleet.close()),
            ("store connections", self.engine.dispose()),
            ("traces", self._flush_traces()),
        ):
            try:
                await asyncio.wait_for(step, _STOP_STEP_SECONDS)
            except TimeoutError:
                log.warning("shutdown: %s did not close within %gs", name, _STOP_STEP_SECONDS)
            except Exception as exc:
                log.warning("shutdown: closing %s failed: %s", name, exc)
        self.access_log.flush()

    async def _flush_traces(self) -> None:
        if self.tracing is not None:
            # The SDK's flush blocks: in a thread, bounded like every other step.
            await asyncio.to_thread(self.tracing.shutdown, _STOP_STEP_SECONDS - 0.5)

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        store = "ok"
        try:
            await asyncio.wait_for(self.keystore.ping(), timeout=2.0)
        except Exception:
            store = "unreachable"
        if time.monotonic() - self.fleet.state.refreshed_at > 2.0:
            await self.fleet.refresh()
        limits = "in-process"
        if self.settings.redis_url is not None:
            # Reported, not required: without Redis only keys with limits are refused, on
            # every replica alike.
            try:
                await asyncio.wait_for(self.limiter.ping(), timeout=2.0)
                limits = "ok"
            except Exception:
                limits = "unreachable"
        exhausted = self.connections.exhausted
        ready = store == "ok" and not self.draining and not exhausted
        status = "draining" if self.draining else ("ready" if ready else "not ready")
        return ready, {
            "status": status,
            "store": store,
            "limits": limits,
            "connections": "exhausted" if exhausted else "ok",
            # Names and states, never addresses: /readyz needs no key.
            "backends": {b.name: "up" if b.up else "down" for b in self.fleet.backends},
        }


def _api(gateway: Gateway) -> FastAPI:
    api = FastAPI(
        title="secureig",
        version=__version__,
        description="Secure Inference Gateway: keys, scopes and limits in front of Ollama.",
        # FastAPI's /docs and /redoc pages load scripts from a CDN at a floating version: no
        # third-party script may run on the console's origin. /openapi.json is served.
        docs_url=None,
        redoc_url=None,
    )
    api.include_router(ops_router(gateway))
    api.include_router(
        admin_router(
            gateway.gatekeeper,
            gateway.keystore,
            UsageStore(gateway.engine),
            gateway.router,
            gateway.metrics,
        )
    )

    @api.exception_handler(StarletteHTTPException)
    async def _error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, 400)

    def openapi() -> dict[str, Any]:
        # The hot routes are plain ASGI callables; surfaces.schema describes them.
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title, version=api.version, description=api.description, routes=api.routes
            )
            api.openapi_schema = document(schema, SeedRequest)
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
        fallback: FastAPI,
        allowed_hosts: tuple[str, ...] = ("*",),
        clients: ClientAddress | None = None,
    ) -> None:
        clients = clients if clients is not None else ClientAddress(Networks(()), Networks(()))
        self.gateway = gateway
        self._clients = clients
        self.openapi = fallback.openapi  # the whole API's schema, hot routes included
        self._routes = routes
        self._prefixes = tuple(prefixes.items())
        self._fallback = fallback
        # Every host allowed: no check to pay for at all.
        self._hosts = (
            None
            if "*" in allowed_hosts
            else TrustedHost(allowed_hosts, exempt_paths=("/healthz", "/readyz"))
        )

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
        exchange = Exchange(request_id=f"{_ids.getrandbits(64):016x}")
        scope[EXCHANGE] = exchange
        rid = exchange.request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body:
                    exchange.bytes_out += len(body)
                    if exchange.first_byte is None:
                        exchange.first_byte = time.perf_counter()
            elif message["type"] == "http.response.start":
                exchange.status = message["status"]
                ticket = exchange.ledger.ticket
                message["headers"] = [
                    *message.get("headers", ()),
                    *(ticket.headers if ticket is not None else ()),
                    (b"server-timing", exchange.server_timing()),
                    (b"x-request-id", rid),
                    # No answer is ever to be read as anything but the type it declares.
                    (b"x-content-type-options", b"nosniff"),
                ]
            await send(message)

        self.gateway.metrics.started()
        peer = scope.get("client")  # the socket's, before a trusted proxy names the client
        tracing = self.gateway.tracing
        if tracing is not None:
            exchange.span = tracing.request(scope["method"], scope["headers"])
        try:
            hosts, clients = self._hosts, self._clients
            if not clients.admits(scope):
                await clients.refuse(scope, send_with_id)
            elif hosts is not None and not hosts.allows(scope):
                await hosts.refuse(scope, send_with_id)
            else:
                await self._route(scope["path"])(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # The server cancels what is still running when the shutdown grace runs out.
            if exchange.outcome is None:
                exchange.outcome = "cut-by-shutdown" if self.gateway.draining else "cancelled"
            raise
        finally:
            if exchange.ledger.principal is not None and peer:
                # A valid key came from this address: it may use the connections kept back.
                self.gateway.connections.vouch(peer[0])
            await self.gateway.accounting.finish(exchange)
            if exchange.span is not None and tracing is not None:
                try:
                    tracing.finish(exchange.span, exchange, scope["method"])
                except Exception:  # a tracing fault must not cost the access log its line
                    log.exception("ending a request's trace span failed")
            access = self.gateway.access_log
            if access.enabled:
                access.request(scope["method"], scope["path"], exchange)

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
                # What start-up made (modules, schemas, the app: over 100k objects) lives as long
                # as the process. Frozen, the collector stops walking it in every full collection,
                # each of which otherwise stalled every request in flight for 50-80 ms.
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings) -> GatewayApp:
    gateway = Gateway(settings)
    forwarder = gateway.forwarder
    bounds = RequestBounds(
        messages=settings.max_messages,
        content_blocks=settings.max_content_blocks,
        tools=settings.max_tools,
    )
    gate, body_limit = gateway.gatekeeper, settings.max_body_bytes
    seed = SeedSurface(gate, forwarder, body_limit)
    ollama = OllamaSurface(gate, forwarder, body_limit, settings.max_blob_bytes, bounds)
    openai = OpenAISurface(gate, forwarder, body_limit, bounds)
    messages = AnthropicSurface(gate, forwarder, body_limit, bounds)
    responses = ResponsesSurface(gate, forwarder, body_limit, bounds)
    metrics = MetricsEndpoint(gateway.gatekeeper, gateway.metrics.render, settings.metrics_public)
    api = _api(gateway)
    admin = AdminGate(gateway.gatekeeper, gateway.sessions, api, settings.max_body_bytes)
    console = ConsoleSurface(gateway.sessions, settings.console_session_lifetime)
    return GatewayApp(
        gateway,
        routes={
            "/request": seed, "/api": ollama, "/v1": openai, "/metrics": metrics, "/admin": admin,
            "/v1/messages": messages, "/v1/responses": responses, "/ui": console,
        },
        # In order: the Messages and Responses paths before the rest of /v1.
        prefixes={
            "/api/": ollama, "/v1/messages/": messages, "/v1/responses/": responses,
            "/v1/": openai, "/admin/": admin, "/ui/": console,
        },
        fallback=api,
        allowed_hosts=settings.trusted_hosts,
        clients=ClientAddress(
            Networks.of(settings.trusted_proxies or ()),
            Networks.of(settings.allowed_networks or ()),
            exempt_paths=("/healthz", "/readyz"),
            header=settings.forwarded_header,
        ),
    )  # fmt: skip


def app_factory() -> GatewayApp:
    """For `uvicorn --factory secureig.app:app_factory`: settings from the environment only."""
    from secureig.config import load_settings

    return create_app(load_settings())
