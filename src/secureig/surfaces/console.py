"""The admin console (`/ui`): its pages and assets, shipped in the package, and its sessions.

Logging in exchanges an admin key for a session (`POST /ui/session`); the browser keeps only the
session's cookie, `HttpOnly` and `SameSite=Strict`, and the page reads and changes everything
through the admin API, which takes that cookie (and, for a change, the CSRF token) in place of a
key. Every answer carries a CSP that allows nothing but this origin.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from secureig.errors import (
    GatewayError,
    MethodNotAllowed,
    RequestError,
    RouteNotFound,
    Unauthenticated,
)
from secureig.policy import ConsoleSessions, Operation, Session
from secureig.surfaces._asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    client_of,
    cookie,
    exchange_of,
    header,
    json_bytes,
    parse_json,
    read_body,
    respond,
)

SESSION_COOKIE = "secureig_session"
CSRF_HEADER = b"x-csrf-token"
_LOGIN_LIMIT = 4096  # a key, in JSON: nothing longer is a login
_ASSETS = {
    "console.js": b"text/javascript; charset=utf-8",
    "console.css": b"text/css; charset=utf-8",
}
_SECURITY = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        b" connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_NO_STORE = [(b"cache-control", b"no-store")]
_JSON = b"application/json"


def _asset(name: str) -> bytes:
    return files("secureig").joinpath("console", name).read_bytes()


class ConsoleSurface:
    """The ASGI callable behind `/ui` and everything under it."""

    def __init__(self, sessions: ConsoleSessions, lifetime_seconds: float) -> None:
        self._sessions = sessions
        self._max_age = int(lifetime_seconds)
        # Read once: the files ship with the package and never change while it runs.
        self._page = _asset("index.html")
        self._assets = {name: (_asset(name), kind) for name, kind in _ASSETS.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = exchange_of(scope)
        ex.surface, ex.route = "console", "page"
        try:
            await self._handle(scope, receive, send)
        except GatewayError as exc:
            body = json_bytes({"error": exc.message})
            await respond(send, exc.status, body, _JSON, [*_SECURITY, *_NO_STORE, *exc.headers])
        except ClientGone:
            ex.status, ex.outcome = 499, "client-disconnected"

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/ui/session":
            exchange_of(scope).route = Operation.ADMIN.value
            if method == "POST":
                await self._login(scope, receive, send)
            elif method == "GET":
                session = await self._session(scope)
                await self._answer(send, 200, _described(session))
            elif method == "DELETE":
                session = await self._session(scope)
                self._sessions.check_csrf(session, header(scope, CSRF_HEADER))
                await self._sessions.logout(session)
                await self._answer(send, 200, {"ended": True}, [self._cookie(scope, "", 0)])
            else:
                allowed = "GET, POST, DELETE"
                raise MethodNotAllowed(f"Method {method} not allowed on {path}", allowed)
            return
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"Method {method} not allowed on {path}", "GET, HEAD")
        if path in ("/ui", "/ui/"):
            await respond(send, 200, self._page, b"text/html; charset=utf-8",
                          [*_SECURITY, *_NO_STORE])  # fmt: skip
            return
        asset = self._assets.get(path.removeprefix("/ui/static/"))
        if not path.startswith("/ui/static/") or asset is None:
            raise RouteNotFound(f"no console page at {path}")
        body, kind = asset
        await respond(send, 200, body, kind, [*_SECURITY, (b"cache-control", b"no-cache")])

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        # JSON only: a form on another site can post text/plain, never application/json without
        # a preflight, so nobody can log a visitor in to a session of their own choosing.
        kind = (header(scope, b"content-type") or "").partition(";")[0].strip().lower()
        if kind != "application/json":
            message = "log in with a JSON body: Content-Type: application/json"
            raise RequestError(message, status=415)
        raw = await read_body(scope, receive, _LOGIN_LIMIT)
        try:
            body = parse_json(raw)
        except ValueError:
            body = None
        secret = body.get("key") if isinstance(body, dict) else None
        if not isinstance(secret, str):
            raise RequestError('expected JSON {"key": "<an admin key>"}')
        ledger = exchange_of(scope).ledger
        token, session = await self._sessions.login(secret.strip(), client_of(scope), ledger)
        cookie_header = self._cookie(scope, token, self._max_age)
        await self._answer(send, 201, _described(session), [cookie_header])

    async def _session(self, scope: Scope) -> Session:
        token = cookie(scope, SESSION_COOKIE)
        if not token:
            raise _not_logged_in()
        return await self._sessions.resolve(token, client_of(scope), exchange_of(scope).ledger)

    @staticmethod
    def _cookie(scope: Scope, token: str, max_age: int) -> tuple[bytes, bytes]:
        # Path=/ so the admin API, which the page calls, receives it too.
        value = f"{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
        if client_of(scope).secure:
            value += "; Secure"
        return (b"set-cookie", value.encode())

    @staticmethod
    async def _answer(
        send: Send, status: int, value: object, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [*_SECURITY, *_NO_STORE, *(extra or ())]
        await respond(send, status, json_bytes(value), _JSON, headers)


def _described(session: Session) -> dict[str, Any]:
    return {
        "name": session.principal.name,
        "csrf": session.csrf,
        "expires_at": session.expires_at.isoformat().replace("+00:00", "Z"),
    }


def _not_logged_in() -> GatewayError:
    return Unauthenticated("not logged in to the console")
