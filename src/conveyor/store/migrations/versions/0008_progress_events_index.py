"""A partial index of `progress` job events, for the Omni progress relay's look-back scan

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_job_events_progress",
        "job_events",
        ["id"],
        sqlite_where=sa.text("kind = 'progress'"),
        postgresql_where=sa.text("kind = 'progress'"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_events_progress", table_name="job_events")
