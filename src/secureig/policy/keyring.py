"""Key verification in memory: digests of the store's live keys, kept up to date with the store.

The request path does one SHA-256 and one dict lookup. A poll of the store's keyring generation,
every `key_refresh_interval` seconds, brings revocations and new keys in within that interval:
only the keys changed since the generation held are read and applied, so a change costs the
keys it changed, not all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from secureig.credentials import Scope, key_digest
from secureig.keylimits import Kind
from secureig.names import unusable_patterns
from secureig.networks import Networks
from secureig.policy.limits import Limits
from secureig.policy.principal import BOOTSTRAP, Principal
from secureig.store import KeyRecord, KeyStore

log = logging.getLogger("secureig.keys")

BOOTSTRAP_KEY = "admin"
# last-used times are bookkeeping, not security: written in batches, not per request.
_LAST_USED_FLUSH_SECONDS = 10.0


class AuthError(Exception):
    """The request carries no key, or one that is unknown, revoked or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BootstrapPolicy:
    """When the bootstrap key may serve: never once the store has held an admin key, even after
    that key expired or was revoked (the store remembers). Recovering from a lost admin key is
    `secureig keys create NAME --scope admin` on the server.

    `enabled` is settled at start: on loopback, or where the operator opted in, or where the
    operator chose the bootstrap key's value with SECUREIG_ADMIN_KEY; never the well-known
    `admin` behind trusted proxies. `local_only`: the key is accepted only from a client on
    this machine that reached the gateway directly (the well-known `admin`, unless opted in).
    """

    enabled: bool
    secret: str = BOOTSTRAP_KEY
    local_only: bool = False


def _principal(record: KeyRecord) -> Principal:
    return Principal(
        name=record.name,
        scopes=record.scopes,
        patterns=record.models,
        key_id=record.id,
        expires_at=record.expires_at.timestamp() if record.expires_at else None,
        max_num_ctx=record.limits.max_num_ctx,
        max_num_predict=record.limits.max_num_predict,
        limits=Limits(**record.limits.of_kind(Kind.LIMIT)),
        networks=Networks.of(record.networks) if record.networks else None,
    )


def _warn_unusable(record: KeyRecord) -> None:
    for pattern in unusable_patterns(record.models):
        log.warning(
            "key %r: model pattern %r allows nothing (a pattern for another registry names its"
            " host, namespace and model, such as hf.co/*/*)",
            record.name,
            pattern,
        )


class Keyring:
    def __init__(
        self, store: KeyStore, bootstrap: BootstrapPolicy, refresh_interval: float
    ) -> None:
        self._store = store
        self._bootstrap = bootstrap
        self._bootstrap_digest = key_digest(bootstrap.secret)
        self._interval = refresh_interval
        self._by_digest: dict[str, Principal] = {}
        self._digest_of: dict[int, str] = {}  # key id -> its digest in _by_digest
        self._admin_created: bool = False  # the store has held an admin key: bootstrap is over
        self._generation: int | None = None
        self._last_used: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._store_ok = True
        self.key_count = 0

    async def load(self) -> None:
        """Read every live key from the store and swap the lookup table in one assignment."""
        state = await self._store.state()
        records = await self._store.list()
        for record in records:
            _warn_unusable(record)
        self._by_digest = {r.digest: _principal(r) for r in records}
        self._digest_of = {r.id: r.digest for r in records}
        self._settle(state.admin_created_at is not None, records)
        self._generation = state.generation

    async def refresh(self) -> int:
        """Apply what changed in the store since the generation held; the keys applied."""
        state = await self._store.state()
        held = self._generation
        if held is None or state.generation < held:
            # A store that went back (restored from a backup, say): read it all again.
            await self.load()
            return self.key_count
        if state.generation == held:
            self._settle(state.admin_created_at is not None, ())
            return 0
        generation, records = await self._store.changed_since(held)
        by_digest, digest_of = self._by_digest, self._digest_of
        for i, record in enumerate(records):
            old = digest_of.pop(record.id, None)
            if old is not None:
                by_digest.pop(old, None)
            if record.revoked_at is None:
                _warn_unusable(record)
                by_digest[record.digest] = _principal(record)
                digest_of[record.id] = record.digest
            if i % 1000 == 999:
                await asyncio.sleep(0)  # a batch import of many keys must not stall requests
        self._settle(state.admin_created_at is not None, records)
        self._generation = max(generation, state.generation)
        return len(records)

    def _settle(self, admin_recorded: bool, records: Iterable[KeyRecord]) -> None:
        was_active = self.bootstrap_active
        self._admin_created = (
            self._admin_created
            or admin_recorded
            or any(Scope.ADMIN in r.scopes for r in records if r.revoked_at is None)
        )
        if was_active and self._generation is not None and not self.bootstrap_active:
            log.warning(
                "bootstrap key retired for good: the store holds an admin key; a lost admin key"
                " is replaced with: secureig keys create NAME --scope admin"
            )
        self.key_count = len(self._by_digest)

    @property
    def bootstrap_active(self) -> bool:
        return self._bootstrap.enabled and not self._admin_created

    @property
    def bootstrap_local_only(self) -> bool:
        return self._bootstrap.local_only

    def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            raise AuthError("missing")
        return self.holder(key_digest(secret))

    def holder(self, digest: str) -> Principal:
        """The principal of the key with this digest, as `authenticate` would find it: a console
        session holds the digest of the key it logged in with, and ends when this refuses it."""
        principal = self._by_digest.get(digest)
        if principal is None:
            if digest == self._bootstrap_digest and self.bootstrap_active:
                return BOOTSTRAP
            raise AuthError("unknown")
        now = time.time()
        if principal.expires_at is not None and principal.expires_at <= now:
            raise AuthError("expired")
        if principal.key_id is not None:
            self._last_used[principal.key_id] = now
        return principal

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="secureig-keyring")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._flush_last_used()

    async def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(self._interval)
            try:
                if await self._store.generation() != self._generation:
                    changed = await self.refresh()
                    log.info("keys changed: %d applied, %d live", changed, self.key_count)
                if time.monotonic() - last_flush >= _LAST_USED_FLUSH_SECONDS:
                    last_flush = time.monotonic()
                    await self._flush_last_used()
                if not self._store_ok:
                    self._store_ok = True
                    log.info("key store reachable again")
            except Exception as exc:  # keep serving the last known keys while the store is away
                if self._store_ok:
                    self._store_ok = False
                    log.warning("key store unreachable, serving the last known keys: %s", exc)

    async def _flush_last_used(self) -> None:
        used, self._last_used = self._last_used, {}
        try:
            await self._store.record_last_used(
                {key_id: datetime.fromtimestamp(ts, UTC) for key_id, ts in used.items()}
            )
        except Exception:
            # Put them back unless newer times arrived meanwhile.
            for key_id, ts in used.items():
                self._last_used.setdefault(key_id, ts)
            raise
