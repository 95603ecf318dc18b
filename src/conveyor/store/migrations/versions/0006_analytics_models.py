"""Analytics: connections, data models and branches, and their YAML files

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_LIVE_SHARED = "kind = 'SHARED' AND deleted_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "analytics_connections",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "analytics_models",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("base_model_id", sa.String(length=36), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["connection_id"], ["analytics_connections.id"]),
        sa.ForeignKeyConstraint(["base_model_id"], ["analytics_models.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_analytics_models_created", "analytics_models", ["created_at", "id"])
    op.create_index("ux_analytics_models_branch", "analytics_models", ["base_model_id", "name"], unique=True)
    op.create_index(
        "ux_analytics_models_shared_name",
        "analytics_models",
        ["name"],
        unique=True,
        sqlite_where=sa.text(_LIVE_SHARED),
        postgresql_where=sa.text(_LIVE_SHARED),
    )
    op.create_table(
        "analytics_model_files",
        sa.Column("model_id", sa.String(length=36), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["analytics_models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "file_name"),
    )


def downgrade() -> None:
    op.drop_table("analytics_model_files")
    op.drop_index("ux_analytics_models_shared_name", table_name="analytics_models")
    op.drop_index("ux_analytics_models_branch", table_name="analytics_models")
    op.drop_index("ix_analytics_models_created", table_name="analytics_models")
    op.drop_table("analytics_models")
    op.drop_table("analytics_connections")
