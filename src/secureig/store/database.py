"""Opening the database a URL names, with the async driver picked for it, and migrating it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger("secureig.store")

_MIGRATIONS = Path(__file__).parent / "migrations"

# Plain URLs are accepted; which async driver serves them is the gateway's business.
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class DatabaseURLError(ValueError):
    """The database URL names a database or driver the gateway cannot use."""


def async_url(url: str) -> str:
    """`sqlite:///x.db` -> `sqlite+aiosqlite:///x.db`, `postgresql://` -> `postgresql+asyncpg://`."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseURLError(f"not a database URL: {exc}") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise DatabaseURLError(
            f"unsupported database {parsed.drivername!r}: use sqlite:///PATH or postgresql://..."
        )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def describe(url: str) -> str:
    """The URL with any password hidden, and a SQLite path made absolute, for messages."""
    parsed = make_url(async_url(url))
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite {Path(parsed.database or ':memory:').resolve()}"
    return f"PostgreSQL {parsed.set(drivername='postgresql').render_as_string(hide_password=True)}"


def create_engine(url: str) -> AsyncEngine:
    full = async_url(url)
    parsed = make_url(full)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private_file(Path(parsed.database))
        engine = create_async_engine(full, connect_args={"timeout": 15})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # A database that stopped answering fails a query after command_timeout instead of holding
    # it (and whoever waits for it, shutdown included) for as long as it stays stopped.
    return create_async_engine(
        full,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=10,
        connect_args={"timeout": 10, "command_timeout": 30},
    )


def _create_private_file(path: Path) -> None:
    # The store holds key digests and usage: readable by its owner only from the first byte.
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets the CLI write while the server reads; busy_timeout makes writers wait, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


def _is_current(connection: Connection) -> bool:
    head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
    return MigrationContext.configure(connection).get_current_revision() == head


# Replicas starting together must not migrate together: PostgreSQL serialises them with an
# advisory lock held for the migration's transaction (any fixed number will do).
_MIGRATION_LOCK = 0x5EC0_8085


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision; a no-op when it is already there."""
    async with engine.connect() as connection:
        if await connection.run_sync(_is_current):
            return
    log.info("migrating the store schema to the newest revision")
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK}
                )
            elif connection.dialect.name == "sqlite":
                # SQLite's write lock, taken up front: a second process waits (busy_timeout),
                # then finds every migration done. DDL is transactional in SQLite.
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            # Alembic reads the current revision itself, so a migration that lost the race to
            # the lock finds nothing left to do.
            await connection.run_sync(_upgrade)
    except Exception:
        # Another process may have migrated between our look and our write (a SQLite file
        # created by an older release, say). If the schema is current now, all is well.
        async with engine.connect() as connection:
            if not await connection.run_sync(_is_current):
                raise
