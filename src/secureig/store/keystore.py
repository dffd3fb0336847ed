"""Keys in the database: create, list, revoke, rotate, and what a server needs to verify them.

Every change bumps the keyring generation in the same transaction, so a running server that polls
the generation sees the change on its next poll.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from secureig.credentials import Scope, generate_key, key_digest, parse_scopes, visible_prefix
from secureig.keylimits import NAMES as LIMIT_NAMES
from secureig.keylimits import KeyLimits
from secureig.names import normalize_pattern
from secureig.networks import parse_networks
from secureig.store.tables import ApiKey, KeyringState
from secureig.untrusted import shown

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}")


class KeyStoreError(Exception):
    """A key operation that cannot be done, with a message meant for the operator."""


class KeyExists(KeyStoreError):
    pass


class KeyNotFound(KeyStoreError):
    pass


# Patterns per key, so a key's model list stays something a person can read.
MAX_PATTERNS = 256


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    name: str
    prefix: str
    digest: str
    scopes: frozenset[Scope]
    models: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None
    last_used_at: datetime | None
    limits: KeyLimits = field(default_factory=KeyLimits)
    networks: tuple[str, ...] = ()  # CIDR; empty: usable from anywhere

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.is_expired(datetime.now(UTC)):
            return "expired"
        return "active"


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        digest=row.digest,
        scopes=parse_scopes(row.scopes.split()),
        models=tuple(json.loads(row.models)),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        rotated_at=row.rotated_at,
        last_used_at=row.last_used_at,
        limits=KeyLimits(**{name: getattr(row, name) for name in LIMIT_NAMES}),
        networks=tuple(json.loads(row.networks)) if row.networks else (),
    )


@dataclass(frozen=True, slots=True)
class KeyringStatus:
    generation: int  # changes with every key change
    admin_created_at: datetime | None  # when the store first held an admin key


class Unchanged:
    """Marks an update argument that leaves its field alone where None would clear it."""


UNCHANGED = Unchanged()


@dataclass(frozen=True, slots=True)
class NewKey:
    """One key of a batch for `KeyStore.create_many`."""

    name: str
    scopes: frozenset[Scope]
    models: tuple[str, ...] = ()
    expires_at: datetime | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)
    networks: tuple[str, ...] = ()


def _networks_text(networks: Iterable[str]) -> str | None:
    """Parsed and written canonically (`10.1.2.3/8` is `10.0.0.0/8`); None for anywhere."""
    try:
        parsed = parse_networks(networks)
    except ValueError as exc:
        raise KeyStoreError(str(exc)) from None
    return json.dumps([str(n) for n in parsed]) if parsed else None


def _scope_text(scopes: Iterable[Scope]) -> str:
    return " ".join(sorted(s.value for s in frozenset(scopes) or {Scope.INFERENCE}))


def _patterns(models: Iterable[str]) -> list[str]:
    patterns = sorted({normalize_pattern(m) for m in models}) or ["*"]
    if len(patterns) > MAX_PATTERNS:
        raise KeyStoreError(f"a key takes at most {MAX_PATTERNS} model patterns")
    return patterns


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KeyStoreError(
            f"invalid key name {shown(name, 64)}: 1-64 characters, letters, digits and _ . @ -,"
            " starting with a letter or digit"
        )
    return name


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def _bump(self, session: AsyncSession, admin: bool = False) -> int:
        """Advance the keyring generation in this transaction and give the new one. The row's
        lock orders concurrent changes: a reader that sees generation G has every change up
        to G committed."""
        values: dict[str, Any] = {"generation": KeyringState.generation + 1}
        if admin:
            # Remembered for good, in the key's own transaction: the bootstrap key is over.
            values["admin_created_at"] = func.coalesce(
                KeyringState.admin_created_at, datetime.now(UTC)
            )
        generation = await session.scalar(
            update(KeyringState)
            .where(KeyringState.id == 1)
            .values(values)
            .returning(KeyringState.generation)
        )
        return int(generation or 0)

    async def _changed(self, session: AsyncSession, row: ApiKey, admin: bool = False) -> None:
        await session.flush()
        row.changed_generation = await self._bump(session, admin)

    async def create(
        self,
        name: str,
        scopes: Iterable[Scope],
        models: Iterable[str],
        expires_at: datetime | None = None,
        limits: KeyLimits | None = None,
        networks: Iterable[str] = (),
    ) -> tuple[KeyRecord, str]:
        """Store a new key and return it with its secret, which is not kept anywhere."""
        validate_name(name)
        patterns = _patterns(models)
        allowed = _networks_text(networks)
        limits = limits or KeyLimits()
        secret = generate_key()
        row = ApiKey(
            name=name,
            prefix=visible_prefix(secret),
            digest=key_digest(secret),
            scopes=_scope_text(scopes),
            models=json.dumps(patterns),
            networks=allowed,
            created_at=datetime.now(UTC),
            expires_at=expires_at,
            **{name: value for name, value in limits.pairs()},
        )
        try:
            async with self._sessions.begin() as session:
                session.add(row)
                await self._changed(session, row, Scope.ADMIN in parse_scopes(row.scopes.split()))
        except IntegrityError:
            raise KeyExists(f"a live key named {name!r} already exists") from None
        return _record(row), secret

    async def create_many(self, keys: Sequence[NewKey]) -> list[tuple[KeyRecord, str]]:
        """Store many keys in one transaction and one generation: all of them, or (a name
        taken) none. Gives each with its secret, in order."""
        seen: set[str] = set()
        for key in keys:
            if validate_name(key.name) in seen:
                raise KeyExists(f"the name {key.name!r} is given twice; none was created")
            seen.add(key.name)
        rows, secrets = [], []
        now = datetime.now(UTC)
        for key in keys:
            secret = generate_key()
            secrets.append(secret)
            rows.append(
                ApiKey(
                    name=key.name,
                    prefix=visible_prefix(secret),
                    digest=key_digest(secret),
                    scopes=_scope_text(key.scopes),
                    models=json.dumps(_patterns(key.models)),
                    networks=_networks_text(key.networks),
                    created_at=now,
                    expires_at=key.expires_at,
                    **{name: value for name, value in key.limits.pairs()},
                )
            )
        admin = any(Scope.ADMIN in k.scopes for k in keys)
        try:
            async with self._sessions.begin() as session:
                session.add_all(rows)
                await session.flush()
                generation = await self._bump(session, admin)
                for row in rows:
                    row.changed_generation = generation
        except IntegrityError:
            taken = await self._taken([k.name for k in keys])
            raise KeyExists(
                f"live keys already hold {len(taken)} of these names, such as {taken[0]!r};"
                " none was created"
                if taken
                else "the keys could not be stored; none was created"
            ) from None
        return [(_record(row), secret) for row, secret in zip(rows, secrets, strict=True)]

    async def _taken(self, names: list[str]) -> list[str]:
        taken: list[str] = []
        async with self._sessions() as session:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                taken += await session.scalars(
                    select(ApiKey.name).where(ApiKey.name.in_(chunk), ApiKey.revoked_at.is_(None))
                )
        return sorted(taken)

    async def _live(self, session: AsyncSession, name: str) -> ApiKey:
        row = await session.scalar(
            select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        )
        if row is None:
            raise KeyNotFound(f"no live key named {shown(name, 64)}")
        return row

    async def update(
        self,
        name: str,
        *,
        scopes: Iterable[Scope] | None = None,
        models: Iterable[str] | None = None,
        expires_at: datetime | Unchanged | None = UNCHANGED,
        limits: KeyLimits | None = None,
        networks: Iterable[str] | None = None,
    ) -> KeyRecord:
        """Change what a live key may do; the secret stays. None (or UNCHANGED) leaves a field;
        empty `networks` lets the key be used from anywhere again."""
        allowed = _networks_text(networks) if networks is not None else None
        async with self._sessions.begin() as session:
            row = await self._live(session, name)
            if scopes is not None:
                row.scopes = " ".join(
                    sorted(s.value for s in frozenset(scopes) or {Scope.INFERENCE})
                )
            if models is not None:
                row.models = json.dumps(_patterns(models))
            if networks is not None:
                row.networks = allowed
            if not isinstance(expires_at, Unchanged):
                row.expires_at = expires_at
            if limits is not None:
                for name, value in limits.pairs():
                    setattr(row, name, value)
            await self._changed(session, row, Scope.ADMIN in parse_scopes(row.scopes.split()))
        return _record(row)

    async def revoke(self, name: str) -> KeyRecord:
        async with self._sessions.begin() as session:
            row = await self._live(session, name)
            row.revoked_at = datetime.now(UTC)
            await self._changed(session, row)
        return _record(row)

    async def rotate(self, name: str) -> tuple[KeyRecord, str]:
        """Give the key a new secret; the old one stops working with the same change."""
        secret = generate_key()
        async with self._sessions.begin() as session:
            row = await self._live(session, name)
            row.digest = key_digest(secret)
            row.prefix = visible_prefix(secret)
            row.rotated_at = datetime.now(UTC)
            await self._changed(session, row)
        return _record(row), secret

    async def list(self, include_revoked: bool = False) -> list[KeyRecord]:
        query = select(ApiKey).order_by(ApiKey.name, ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        async with self._sessions() as session:
            return [_record(row) for row in await session.scalars(query)]

    async def changed_since(self, generation: int) -> tuple[int, Sequence[KeyRecord]]:
        """The keyring generation now, and every key (live or revoked) changed after
        `generation`: what a server holding `generation` must reload."""
        async with self._sessions() as session:
            now = await session.scalar(select(KeyringState.generation).where(KeyringState.id == 1))
            rows = await session.scalars(
                select(ApiKey)
                .where(ApiKey.changed_generation > generation)
                .order_by(ApiKey.changed_generation, ApiKey.id)
            )
            return int(now or 0), [_record(row) for row in rows]

    async def count_live(self) -> int:
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
            )
        return int(count or 0)

    async def generation(self) -> int:
        async with self._sessions() as session:
            value = await session.scalar(
                select(KeyringState.generation).where(KeyringState.id == 1)
            )
        return int(value or 0)

    async def state(self) -> KeyringStatus:
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(KeyringState.generation, KeyringState.admin_created_at).where(
                        KeyringState.id == 1
                    )
                )
            ).one_or_none()
        if row is None:
            return KeyringStatus(0, None)
        return KeyringStatus(int(row[0] or 0), row[1])

    async def record_last_used(self, used: Mapping[int, datetime]) -> None:
        """Write last-used times in one transaction; no generation bump, nothing to reload."""
        if not used:
            return
        async with self._sessions.begin() as session:
            for key_id, when in used.items():
                await session.execute(
                    update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when)
                )

    async def ping(self) -> None:
        async with self._sessions() as session:
            await session.execute(text("SELECT 1"))
