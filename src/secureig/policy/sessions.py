"""Console sessions: an admin key exchanged for an opaque token the browser holds in a cookie.

A session lasts while its key does (revoked, expired, rotated or stripped of the admin scope, and
the session ends on its next request), until it is idle for `idle_seconds`, and never beyond
`lifetime_seconds`. Changes need the session's CSRF token as well as its cookie.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from secureig.credentials import key_digest
from secureig.errors import Forbidden, Unauthenticated
from secureig.policy.engine import Gatekeeper, Ledger
from secureig.policy.keyring import AuthError
from secureig.policy.principal import Client, Principal
from secureig.recent import Recent
from secureig.store import SessionStore

# last_seen_at is written at most this often: a busy console costs one write a minute.
_TOUCH_EVERY = timedelta(seconds=60)
ENDED = "the console session has ended: log in again"
_MAX_KNOWN = 4096


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    csrf: str
    token_digest: str
    expires_at: datetime  # the sooner of the idle and the absolute expiry, as of now


class ConsoleSessions:
    def __init__(
        self,
        gatekeeper: Gatekeeper,
        store: SessionStore,
        idle_seconds: float,
        lifetime_seconds: float,
    ) -> None:
        self._gate = gatekeeper
        self._store = store
        self._idle = timedelta(seconds=idle_seconds)
        self._lifetime = timedelta(seconds=lifetime_seconds)
        # Digests of the tokens of sessions this process has seen live: they are looked up even
        # while their address is over the failed-auth throttle (a colleague behind the same NAT
        # guessing keys must not lock the operator out), and only they are. Bounded.
        self._known = Recent(_MAX_KNOWN)

    async def login(
        self, secret: str | None, client: Client, ledger: Ledger
    ) -> tuple[str, Session]:
        """A new session for an admin key: the token for the cookie, and the session. A wrong
        key counts against the address as on every route."""
        principal = self._gate.authenticate(secret, client, ledger)
        if not principal.is_admin:
            raise Forbidden(f"the key {principal.name!r} lacks the 'admin' scope the console needs")
        assert secret is not None  # authenticate refused a missing one
        now = datetime.now(UTC)
        await self._store.purge(now - self._idle, now - self._lifetime)
        token, record = await self._store.create(key_digest(secret), now)
        self._known.add(record.token_digest)
        return token, Session(principal, record.csrf, record.token_digest, self._expiry(now, now))

    async def resolve(self, token: str, client: Client, ledger: Ledger) -> Session:
        """The live session this token names, or Unauthenticated. A token the store does not
        hold counts against the address, as a wrong key does, so guessing costs what it does
        with keys and a flood of made-up cookies from a throttled address is refused before the
        store is asked. A session this process knows is live is looked up all the same."""
        address = client.address
        if key_digest(token) not in self._known:
            self._gate.check_throttle(address)
        record = await self._store.get(token)
        now = datetime.now(UTC)
        if record is None:
            raise self._gate.failed_authentication(address, ENDED)
        if now - record.last_seen_at > self._idle or now - record.created_at > self._lifetime:
            await self._end(record.token_digest)
            raise Unauthenticated(ENDED)
        try:
            principal = self._gate.keyring.holder(record.key_digest)
        except AuthError:
            principal = None
        if principal is None or not principal.is_admin:
            await self._end(record.token_digest)
            raise Unauthenticated(ENDED)
        self._gate.check_origin(principal, client, ENDED)
        self._known.add(record.token_digest)
        if now - record.last_seen_at > _TOUCH_EVERY:
            await self._store.touch(record.token_digest, now)
        ledger.principal = principal
        expires = self._expiry(now, record.created_at)
        return Session(principal, record.csrf, record.token_digest, expires)

    @staticmethod
    def check_csrf(session: Session, sent: str | None) -> None:
        if sent is None or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise Forbidden("a change from the console needs its CSRF token (X-CSRF-Token)")

    async def logout(self, session: Session) -> None:
        await self._end(session.token_digest)

    async def _end(self, token_digest: str) -> None:
        self._known.discard(token_digest)
        await self._store.end(token_digest)

    def _expiry(self, now: datetime, created: datetime) -> datetime:
        return min(now + self._idle, created + self._lifetime)
