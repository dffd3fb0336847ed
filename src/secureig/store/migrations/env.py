"""Alembic environment: migrations run on a connection the gateway hands over (store.database)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from secureig.store.tables import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through `secureig` (store.database.migrate), not alembic's CLI"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
