"""Usage records say when their tokens are an estimate (an answer cut short before its counts).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(
            sa.Column("tokens_estimated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        # The longest name Ollama accepts is 593 characters; 200 would refuse such a record.
        batch.alter_column("model", type_=sa.String(600), existing_type=sa.String(200))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("model", type_=sa.String(200), existing_type=sa.String(600))
        batch.drop_column("tokens_estimated")
