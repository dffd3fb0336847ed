"""Usage records say how their request ended, and a record is stored at most once.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        # Records written before this revision did not say: NULL, shown as "-".
        batch.add_column(sa.Column("outcome", sa.String(32), nullable=True))
    # A batch whose insert timed out may have been written after all, and a spooled record
    # is written again at the next start: the second write of a record is a no-op. The time
    # leads, so rows are appended to the index as they come (a random id first would scatter
    # every insert across it, at three times the cost), and it replaces the index on the time.
    op.create_index(
        "ux_usage_records_at_request", "usage_records", ["at", "request_id"], unique=True
    )
    op.drop_index("ix_usage_records_at", table_name="usage_records")


def downgrade() -> None:
    op.create_index("ix_usage_records_at", "usage_records", ["at"])
    op.drop_index("ux_usage_records_at_request", table_name="usage_records")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("outcome")
