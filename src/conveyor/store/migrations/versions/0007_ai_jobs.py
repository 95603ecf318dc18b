"""Omni AI jobs: conversations and AI job rows

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 11:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ai_conversations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=True),
        sa.Column("model_id", sa.String(length=36), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("active_job_id", sa.String(length=64), nullable=True),
        sa.Column("active_since", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ai_conversations_user", "ai_conversations", ["user_id", "created_at", "id"])
    op.create_table(
        "ai_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=True),
        sa.Column("model_id", sa.String(length=36), nullable=False),
        sa.Column("branch_id", sa.String(length=36), nullable=True),
        sa.Column("topic_name", sa.String(length=256), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("webhook_secret", sa.Text(), nullable=True),
        sa.Column("webhook_metadata", sa.Text(), nullable=True),
        sa.Column("progress_webhook", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancelled_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["conversation_id"], ["ai_conversations.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ai_jobs_conversation", "ai_jobs", ["conversation_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ai_jobs_conversation", table_name="ai_jobs")
    op.drop_table("ai_jobs")
    op.drop_index("ix_ai_conversations_user", table_name="ai_conversations")
    op.drop_table("ai_conversations")
