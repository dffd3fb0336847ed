"""Per-key rate limits, and the usage records every authenticated request leaves.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rpm", sa.Integer()))
        batch.add_column(sa.Column("tpm", sa.Integer()))
        batch.add_column(sa.Column("concurrency", sa.Integer()))
        batch.add_column(sa.Column("daily_tokens", sa.BigInteger()))
    op.create_table(
        "usage_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.Integer()),
        sa.Column("key_name", sa.String(64), nullable=False),
        sa.Column("surface", sa.String(16), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200)),
        sa.Column("backend", sa.String(200)),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("ttfb_ms", sa.Float()),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_usage_records_at", "usage_records", ["at"])
    op.create_index("ix_usage_records_key_at", "usage_records", ["key_name", "at"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_key_at", table_name="usage_records")
    op.drop_index("ix_usage_records_at", table_name="usage_records")
    op.drop_table("usage_records")
    with op.batch_alter_table("api_keys") as batch:
        for column in ("daily_tokens", "concurrency", "tpm", "rpm"):
            batch.drop_column(column)
