"""Per-key option clamps: the largest num_ctx and num_predict a key may ask for.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("max_num_ctx", sa.Integer()))
        batch.add_column(sa.Column("max_num_predict", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("max_num_predict")
        batch.drop_column("max_num_ctx")
