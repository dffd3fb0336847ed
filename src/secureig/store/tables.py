"""The key store's tables, as SQLAlchemy 2 mappings; Alembic migrations create and evolve them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """A time with its zone, always read back as UTC: SQLite hands back naive datetimes, and
    everything the store writes is UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value  # type: ignore[no-any-return]
        return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    # Space-separated scope names and a JSON list of model patterns: read whole, never queried.
    scopes: Mapped[str] = mapped_column(String(64), nullable=False)
    models: Mapped[str] = mapped_column(Text, nullable=False)
    # A JSON list of the CIDR networks the key may be used from; NULL: anywhere.
    networks: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    max_num_ctx: Mapped[int | None] = mapped_column(Integer)
    max_num_predict: Mapped[int | None] = mapped_column(Integer)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    daily_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # The keyring generation of this row's last change: servers reload what changed after the
    # generation they hold, not every key.
    changed_generation: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")

    __table_args__ = (
        # A name belongs to one live key; revoked keys keep theirs for the record.
        Index(
            "ix_api_keys_live_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
        Index("ix_api_keys_changed_generation", "changed_generation"),
    )


class KeyringState(Base):
    """One row whose generation changes with every key change; servers poll it to reload."""

    __tablename__ = "keyring_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, nullable=False)
    # When the store first held an admin key; from then on the bootstrap key never serves.
    admin_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class UsageRow(Base):
    """One request that passed authentication, whatever its outcome."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    request_id: Mapped[str] = mapped_column(String(32), nullable=False)
    key_id: Mapped[int | None] = mapped_column(Integer)
    key_name: Mapped[str] = mapped_column(String(64), nullable=False)
    surface: Mapped[str] = mapped_column(String(16), nullable=False)
    route: Mapped[str] = mapped_column(String(200), nullable=False)
    model: Mapped[str | None] = mapped_column(String(600))
    backend: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    # The tokens were estimated: the answer was cut short before the upstream counted them.
    tokens_estimated: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    ttfb_ms: Mapped[float | None] = mapped_column(Float)
    duration_ms: Mapped[float] = mapped_column(Float, nullable=False)
    bytes_in: Mapped[int] = mapped_column(BigInteger, nullable=False)
    bytes_out: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # How the request ended (store.usage.OUTCOMES); NULL on records from before it was kept.
    outcome: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        # Unique: a record written twice (a retried batch, a replayed spool) is stored once.
        Index("ux_usage_records_at_request", "at", "request_id", unique=True),
        Index("ix_usage_records_key_at", "key_name", "at"),
    )


class ConsoleSession(Base):
    """One browser logged in to the console: the digests of its token and of the admin key it
    logged in with (never either secret), and when it began and was last used."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    key_digest: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    csrf: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
