"""Each key row says at which keyring generation it last changed, so servers reload only what
changed since the generation they hold.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("changed_generation", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_index("ix_api_keys_changed_generation", "api_keys", ["changed_generation"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_changed_generation", table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("changed_generation")
