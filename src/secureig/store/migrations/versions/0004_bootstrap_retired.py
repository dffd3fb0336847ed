"""The store remembers when it first held an admin key: from then on the bootstrap key is over.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("keyring_state") as batch:
        batch.add_column(sa.Column("admin_created_at", sa.DateTime(timezone=True)))
    # A store that has ever held an admin key, revoked or expired since, has retired it already.
    op.execute(
        sa.text(
            "UPDATE keyring_state SET admin_created_at = ("
            " SELECT MIN(created_at) FROM api_keys WHERE ' ' || scopes || ' ' LIKE '% admin %'"
            ") WHERE id = 1"
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("keyring_state") as batch:
        batch.drop_column("admin_created_at")
