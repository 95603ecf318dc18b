"""users' organizations and issued tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 05:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("org_id", sa.String(length=36), nullable=True))
        batch.create_foreign_key("fk_users_org_id", "organizations", ["org_id"], ["id"])
    op.create_table(
        "auth_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_auth_tokens_user", "auth_tokens", ["user_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_auth_tokens_user", table_name="auth_tokens")
    op.drop_table("auth_tokens")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("fk_users_org_id", type_="foreignkey")
        batch.drop_column("org_id")
    op.drop_table("organizations")
