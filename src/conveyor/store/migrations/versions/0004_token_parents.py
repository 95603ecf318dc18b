"""tokens remember the token that issued them

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_tokens") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(length=36), nullable=True))
    op.create_index("ix_auth_tokens_parent", "auth_tokens", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_auth_tokens_parent", table_name="auth_tokens")
    with op.batch_alter_table("auth_tokens") as batch:
        batch.drop_column("parent_id")
