"""The admin API (`/admin/*`): keys, usage and models, for keys with the admin scope.

FastAPI serves it, for its schema and validation (these routes are not on the hot path), behind
AdminGate, which checks the key first. Errors are `{"error": "<string>"}`.
"""

# No `from __future__ import annotations` here: FastAPI resolves the route annotations at import,
# and `Admin` is local to admin_router.
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field, create_model

from secureig.credentials import parse_scopes
from secureig.durations import parse_duration
from secureig.errors import GatewayError
from secureig.keylimits import SPECS as LIMIT_SPECS
from secureig.keylimits import KeyLimits, LimitError
from secureig.metrics import Metrics
from secureig.names import MAX_NAME_LENGTH, InvalidModelName
from secureig.networks import MAX_NETWORKS
from secureig.policy import ConsoleSessions, Gatekeeper, Operation, Principal
from secureig.routing import Router
from secureig.store import UNCHANGED, KeyRecord, KeyStore, KeyStoreError
from secureig.store.keystore import MAX_PATTERNS, KeyExists, KeyNotFound
from secureig.store.usage import GroupBy, UsageStore
from secureig.surfaces._asgi import (
    ASGIApp,
    ClientGone,
    Exchange,
    Message,
    Receive,
    Scope,
    Send,
    api_key,
    client_of,
    cookie,
    exchange_of,
    header,
    read_body,
    respond_json,
)
from secureig.surfaces.console import CSRF_HEADER, SESSION_COOKIE
from secureig.untrusted import shown


class AdminError(HTTPException):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)


# The key's clamps and limits, one field each, as secureig.keylimits names and bounds them.
LimitsIn = create_model(  # type: ignore[call-overload]
    "LimitsIn",
    __doc__="Clamps and limits to set; on update, omitted fields stay and 0 removes one.",
    **{
        spec.name: (
            int | None,
            Field(default=None, ge=0, le=spec.maximum, strict=True, description=spec.help),
        )
        for spec in LIMIT_SPECS
    },
)


Pattern = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]
Cidr = Annotated[str, Field(max_length=64)]
Scopes = list[Literal["inference", "manage", "admin"]]


class KeyCreate(LimitsIn):  # type: ignore[misc, valid-type]
    name: str
    scopes: Scopes = Field(default=["inference"], max_length=3)
    models: list[Pattern] = Field(
        default_factory=list,
        max_length=MAX_PATTERNS,
        description="Names or globs; empty: every model of the default registry.",
    )
    expires_in: str | None = Field(default=None, max_length=32, description="90s, 45m, 12h, 30d")
    allow_from: list[Cidr] = Field(
        default_factory=list,
        max_length=MAX_NETWORKS,
        description="Client networks (CIDR) the key may be used from; empty: anywhere.",
    )


class KeyUpdate(LimitsIn):  # type: ignore[misc, valid-type]
    scopes: Scopes | None = Field(default=None, max_length=3)
    models: list[Pattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    expires_in: str | None = Field(
        default=None, max_length=32, description="90s, 45m, 12h, 30d, or never"
    )
    allow_from: list[Cidr] | None = Field(
        default=None, max_length=MAX_NETWORKS, description="Replaces the list; []: anywhere."
    )


class KeyOut(BaseModel):
    name: str
    prefix: str
    scopes: list[str]
    models: list[str]
    status: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    limits: dict[str, int | None]
    allow_from: list[str]

    @classmethod
    def of(cls, record: KeyRecord) -> "KeyOut":
        return cls(
            name=record.name,
            prefix=record.prefix,
            scopes=sorted(s.value for s in record.scopes),
            models=list(record.models),
            status=record.status,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            last_used_at=record.last_used_at,
            limits=dict(record.limits.pairs()),
            allow_from=list(record.networks),
        )


class KeyWithSecret(BaseModel):
    key: KeyOut
    secret: str = Field(description="Shown only in this answer; store it now.")


class UsageOut(BaseModel):
    group: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: int = Field(description="Requests whose tokens are an estimate: cut short.")
    incomplete: int = Field(
        description="Requests whose answer did not go out whole (client left, upstream broke"
        " off, shutdown); group by outcome to tell them apart."
    )
    mean_ttfb_ms: float | None = Field(
        description="Mean time to the answer's first byte, over the requests that had one."
    )
    mean_duration_ms: float = Field(description="Mean time to the answer's end.")


class LiveBackend(BaseModel):
    name: str
    state: str
    in_flight: int
    queued: int


class LiveOut(BaseModel):
    """Counters of the replica that answers, since it started: two readings give rates."""

    uptime_seconds: float
    requests: int = Field(
        description="Requests answered since start, the admin API's and the console's left out."
    )
    server_errors: int = Field(description="Of those, answered with a 5xx status.")
    in_flight: int = Field(description="Requests in flight, this one left out.")
    streams: int = Field(description="Generations streaming their answer now.")
    connections: int = Field(description="Client connections open.")
    tokens_in: int
    tokens_out: int
    refusals: dict[str, int] = Field(description="Requests and connections turned away, by why.")
    backends: list[LiveBackend]


def _expiry(text: str | None) -> datetime | None:
    if text is None or text.strip().lower() == "never":
        return None
    try:
        return datetime.now(UTC) + parse_duration(text)
    except ValueError as exc:
        raise AdminError(400, str(exc)) from None


class AdminGate:
    """In front of the admin routes: the key and the body's size are checked before FastAPI
    reads or parses anything, so a stranger's upload costs nothing. A request without a key may
    come from the console: its session cookie stands for the admin key it logged in with, and
    a change needs the session's CSRF token too."""

    def __init__(
        self, gatekeeper: Gatekeeper, sessions: ConsoleSessions, app: ASGIApp, max_body_bytes: int
    ) -> None:
        self._gate = gatekeeper
        self._sessions = sessions
        self._app = app
        self._limit = max_body_bytes

    async def _principal(self, scope: Scope, ex: Exchange) -> Principal:
        secret = api_key(scope)
        token = cookie(scope, SESSION_COOKIE) if secret is None else None
        if not token:
            return self._gate.authenticate(secret, client_of(scope), ex.ledger)
        session = await self._sessions.resolve(token, client_of(scope), ex.ledger)
        if scope["method"] not in ("GET", "HEAD"):
            self._sessions.check_csrf(session, header(scope, CSRF_HEADER))
        return session.principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = exchange_of(scope)
        ex.surface, ex.route = "admin", Operation.ADMIN.value
        try:
            principal = await self._principal(scope, ex)
            await self._gate.admit(principal, Operation.ADMIN, ex.ledger)
            body = await read_body(scope, receive, self._limit)
        except GatewayError as exc:
            await respond_json(send, exc.status, {"error": exc.message}, exc.headers)
            return
        except ClientGone:
            ex.status, ex.outcome = 499, "client-disconnected"
            return
        delivered = False

        async def replay() -> Message:
            # The body once, as read; afterwards whatever the server says (a disconnect).
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self._app(scope, replay, send)


def admin_router(
    gatekeeper: Gatekeeper, keys: KeyStore, usage: UsageStore, router: Router, metrics: Metrics
) -> APIRouter:
    catalog = router.fleet

    async def admin(request: Request) -> Principal:
        """The principal AdminGate admitted; refused here too, should a route ever be reached
        around the gate."""
        principal = exchange_of(request.scope).ledger.principal
        if principal is None:
            raise AdminError(401, "no API key", {"WWW-Authenticate": "Bearer"})
        if not principal.is_admin:
            raise AdminError(403, f"the key {principal.name!r} lacks the 'admin' scope")
        return principal

    Admin = Annotated[Principal, Depends(admin)]
    api = APIRouter(prefix="/admin", tags=["admin"])

    @api.get("/keys")
    async def list_keys(_: Admin, include_revoked: bool = False) -> list[KeyOut]:
        """Every key (never a secret)."""
        return [KeyOut.of(r) for r in await keys.list(include_revoked=include_revoked)]

    @api.post("/keys", status_code=201)
    async def create_key(_: Admin, body: KeyCreate) -> KeyWithSecret:
        """Create a key; its secret is in this answer only."""
        try:
            limits = KeyLimits().changed(**body.model_dump(include=set(LimitsIn.model_fields)))
            record, secret = await keys.create(
                body.name, parse_scopes(body.scopes), body.models, _expiry(body.expires_in), limits,
                body.allow_from,
            )  # fmt: skip
        except KeyExists as exc:
            raise AdminError(409, str(exc)) from None
        except (KeyStoreError, InvalidModelName, ValueError) as exc:
            raise AdminError(400, _message(exc)) from None
        return KeyWithSecret(key=KeyOut.of(record), secret=secret)

    async def _live(name: str) -> KeyRecord:
        record = next((r for r in await keys.list() if r.name == name), None)
        if record is None:
            raise AdminError(404, f"no live key named {shown(name, 64)}")
        return record

    @api.patch("/keys/{name}")
    async def update_key(_: Admin, name: str, body: KeyUpdate) -> KeyOut:
        """Change scopes, models, expiry or limits; the secret stays."""
        current = await _live(name)
        changes = body.model_dump(include=set(LimitsIn.model_fields), exclude_unset=True)
        try:
            record = await keys.update(
                name,
                scopes=parse_scopes(body.scopes) if body.scopes is not None else None,
                models=body.models,
                expires_at=(
                    _expiry(body.expires_in) if "expires_in" in body.model_fields_set else UNCHANGED
                ),
                limits=current.limits.changed(**changes),
                networks=body.allow_from,
            )
        except KeyNotFound as exc:
            raise AdminError(404, str(exc)) from None
        except (KeyStoreError, LimitError, InvalidModelName) as exc:
            raise AdminError(400, _message(exc)) from None
        return KeyOut.of(record)

    @api.delete("/keys/{name}")
    async def revoke_key(_: Admin, name: str) -> KeyOut:
        """Revoke a key; every replica refuses it within 2 seconds."""
        try:
            return KeyOut.of(await keys.revoke(name))
        except KeyNotFound as exc:
            raise AdminError(404, str(exc)) from None

    @api.post("/keys/{name}/rotate")
    async def rotate_key(_: Admin, name: str) -> KeyWithSecret:
        """A new secret for the key, in this answer only; the old one stops working."""
        try:
            record, secret = await keys.rotate(name)
        except KeyNotFound as exc:
            raise AdminError(404, str(exc)) from None
        return KeyWithSecret(key=KeyOut.of(record), secret=secret)

    @api.get("/usage")
    async def usage_totals(
        _: Admin,
        by: GroupBy = "key",
        since: Annotated[str, Query(max_length=32, description="12h, 7d, 30d")] = "7d",
        key: Annotated[str | None, Query(max_length=64)] = None,
        model: Annotated[str | None, Query(max_length=MAX_NAME_LENGTH)] = None,
    ) -> list[UsageOut]:
        """Requests, tokens and mean latencies per key, model, backend, hour (UTC, "2026-12-04
        13:00"), day (UTC) or outcome, as `secureig usage` prints them."""
        try:
            start = datetime.now(UTC) - parse_duration(since)
        except ValueError as exc:
            raise AdminError(400, str(exc)) from None
        totals = await usage.totals(by=by, since=start, key=key, model=model)
        return [UsageOut(**asdict(t), total_tokens=t.total_tokens) for t in totals]

    @api.get("/models")
    async def models(_: Admin) -> dict[str, Any]:
        """The catalogue, every backend's models together, refreshed now."""
        state = await catalog.refresh()
        return {
            "status": "up" if state.up else "down",
            "error": state.error,
            "models": sorted(entry.name for entry in state.models.values()),
            "backends": {
                b.name: sorted(e.name for e in b.models.values()) for b in catalog.backends
            },
        }

    @api.get("/live")
    async def live(_: Admin) -> LiveOut:
        """This replica's counters now, for the console's live page (it polls them)."""
        counts = metrics.live()
        fields = asdict(counts)
        fields["in_flight"] = max(counts.in_flight - 1, 0)  # this request is one of them
        backends = [
            LiveBackend(name=b.name, state=b.state, in_flight=b.in_flight, queued=b.queued)
            for b in router.report()
        ]
        return LiveOut(**fields, backends=backends)

    @api.get("/backends")
    async def backends(_: Admin) -> list[dict[str, Any]]:
        """Each backend: kind, state and why, models, loaded models, requests in flight and
        queued, as `secureig backends` prints them."""
        return [asdict(report) for report in router.report()]

    return api


def _message(exc: Exception) -> str:
    if isinstance(exc, InvalidModelName):
        return f"invalid model pattern {shown(str(exc))}"
    return str(exc)
