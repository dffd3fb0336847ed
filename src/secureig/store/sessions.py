"""Console sessions in the database: created at login, read on every console request, deleted at
logout. Only digests are stored: a copy of the table logs nobody in."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from secureig.credentials import key_digest
from secureig.store.tables import ConsoleSession

# Sessions one key may hold at once; a login beyond it ends that key's oldest.
MAX_SESSIONS_PER_KEY = 20


@dataclass(frozen=True, slots=True)
class SessionRecord:
    token_digest: str
    key_digest: str
    csrf: str
    created_at: datetime
    last_seen_at: datetime


class SessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def create(self, key: str, now: datetime) -> tuple[str, SessionRecord]:
        """A new session for the key with this digest: its token (given once) and its record."""
        token = secrets.token_urlsafe(32)
        record = SessionRecord(key_digest(token), key, secrets.token_urlsafe(32), now, now)
        async with self._sessions.begin() as session:
            held = await session.scalar(
                select(func.count()).where(ConsoleSession.key_digest == key)
            )
            if held is not None and held >= MAX_SESSIONS_PER_KEY:
                oldest = (
                    select(ConsoleSession.id)
                    .where(ConsoleSession.key_digest == key)
                    .order_by(ConsoleSession.created_at)
                    .limit(held - MAX_SESSIONS_PER_KEY + 1)
                )
                await session.execute(delete(ConsoleSession).where(ConsoleSession.id.in_(oldest)))
            row = ConsoleSession(token_digest=record.token_digest, key_digest=key, csrf=record.csrf)
            row.created_at = row.last_seen_at = now
            session.add(row)
        return token, record

    async def get(self, token: str) -> SessionRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(ConsoleSession).where(ConsoleSession.token_digest == key_digest(token))
            )
        if row is None:
            return None
        return SessionRecord(
            row.token_digest, row.key_digest, row.csrf, row.created_at, row.last_seen_at
        )  # fmt: skip

    async def touch(self, token_digest: str, now: datetime) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(ConsoleSession)
                .where(ConsoleSession.token_digest == token_digest)
                .values(last_seen_at=now)
            )

    async def end(self, token_digest: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                delete(ConsoleSession).where(ConsoleSession.token_digest == token_digest)
            )

    async def purge(self, idle_before: datetime, created_before: datetime) -> int:
        """Delete the sessions past either expiry; how many were."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                delete(ConsoleSession).where(
                    or_(
                        ConsoleSession.last_seen_at < idle_before,
                        ConsoleSession.created_at < created_before,
                    )
                )
            )
        return int(getattr(result, "rowcount", 0) or 0)
